//! An accounts service on a database, and hosts to run it.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Computed, Hub, ReprocessPolicy, command_handler,
    compute_method, invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, LogReader};
use serde::{Deserialize, Serialize};

diesel::table! {
    accounts (id) {
        id -> BigInt,
        balance -> BigInt,
    }
}

/// The account queries of one backend: Diesel's query types are per backend, so the queries
/// are written once per backend; the service over them is one generic `#[service]`.
pub(crate) trait AccountQueries: Backend {
    /// The balance, if the account exists.
    fn read_balance(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl std::future::Future<Output = QueryResult<Option<i64>>> + Send;
    /// Adds `amount` to the account, creating it.
    fn add_to(
        connection: &mut Self::Connection,
        id: i64,
        amount: i64,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
}

macro_rules! account_queries {
    ($backend:ty) => {
        impl AccountQueries for $backend {
            async fn read_balance(
                connection: &mut Self::Connection,
                id: i64,
            ) -> QueryResult<Option<i64>> {
                accounts::table
                    .find(id)
                    .select(accounts::balance)
                    .first(connection)
                    .await
                    .optional()
            }

            async fn add_to(
                connection: &mut Self::Connection,
                id: i64,
                amount: i64,
            ) -> QueryResult<usize> {
                diesel::insert_into(accounts::table)
                    .values((accounts::id.eq(id), accounts::balance.eq(amount)))
                    .on_conflict(accounts::id)
                    .do_update()
                    .set(accounts::balance.eq(accounts::balance + amount))
                    .execute(connection)
                    .await
            }
        }
    };
}

#[cfg(feature = "sqlite")]
account_queries!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
account_queries!(ofx_diesel::Postgres);

/// Deposits into an account (or fails after writing, to prove the write is rolled back).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "accounts.deposit")]
pub(crate) struct AccountDeposit {
    pub(crate) id: i64,
    pub(crate) amount: i64,
    /// Fail after writing.
    pub(crate) fail: bool,
}

impl Deposit for AccountDeposit {
    fn new(id: i64, amount: i64, fail: bool) -> Self {
        Self { id, amount, fail }
    }
}

/// One accounts service for every backend.
#[service]
impl<B: AccountQueries> Accounts<B> {
    #[compute_method]
    pub(crate) async fn balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self
            .db
            .connection()
            .await
            .map_err(|error| error.to_string())?;
        let balance = B::read_balance(&mut connection, id)
            .await
            .map_err(|error| error.to_string())?;
        Ok(balance.unwrap_or(0))
    }

    #[command_handler]
    pub(crate) async fn deposit(
        &self,
        command: AccountDeposit,
        ctx: &CommandContext,
    ) -> Result<i64, AccountError> {
        invalidate! {
            self.balance(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        B::add_to(&mut connection, command.id, command.amount).await?;
        if command.fail {
            return Err(AccountError::Refused);
        }
        Ok(B::read_balance(&mut connection, command.id)
            .await?
            .unwrap_or(0))
    }
}

impl<B: AccountQueries> HostService for Accounts<B> {
    type Deposit = AccountDeposit;

    async fn balance_of(&self, id: i64) -> Result<i64, String> {
        self.balance(id).await
    }
}

/// A deposit command of one backend.
pub(crate) trait Deposit: Command<Output = i64> {
    fn new(id: i64, amount: i64, fail: bool) -> Self;
}

/// What the generic tests need of an accounts service.
pub(crate) trait HostService: ComputeService {
    type Deposit: Deposit;
    fn balance_of(&self, id: i64) -> impl std::future::Future<Output = Result<i64, String>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("refused after writing")]
    Refused,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub(crate) struct Accounts<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<B>,
}

impl<B: Backend> ComputeService for Accounts<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// A watcher started already, shared by the hosts of a test.
#[derive(Debug)]
pub(crate) struct Started(pub(crate) Arc<dyn ofx_core::LogWatcher>);

impl ofx_core::LogWatcherFactory for Started {
    fn start(
        &self,
        _host_id: ofx_core::HostId,
        _stop: tokio_util::sync::CancellationToken,
    ) -> ofx_core::ScopeFuture<
        '_,
        Result<Arc<dyn ofx_core::LogWatcher>, Box<dyn std::error::Error + Send + Sync>>,
    > {
        let watcher = Arc::clone(&self.0);
        Box::pin(async move { Ok(watcher) })
    }
}

/// One host: a hub with the database scope, the service, and (if started) a log reader.
pub(crate) struct Host<B: Backend> {
    pub(crate) accounts: Arc<Accounts<B>>,
    pub(crate) reader: Option<LogReader>,
}

impl<B: AccountQueries> Host<B> {
    pub(crate) async fn open(url: &str, settings: DbSettings, read: bool) -> Self {
        Self::open_with(url, settings, read, None).await
    }

    pub(crate) async fn open_with(
        url: &str,
        settings: DbSettings,
        read: bool,
        watcher: Option<Arc<dyn ofx_core::LogWatcher>>,
    ) -> Self {
        Self::open_full(url, settings, read, watcher, ReprocessPolicy::default()).await
    }

    /// A host whose hub runs failed commands again as `policy` says.
    pub(crate) async fn open_reprocessing(
        url: &str,
        settings: DbSettings,
        read: bool,
        policy: ReprocessPolicy,
    ) -> Self {
        Self::open_full(url, settings, read, None, policy).await
    }

    async fn open_full(
        url: &str,
        settings: DbSettings,
        read: bool,
        watcher: Option<Arc<dyn ofx_core::LogWatcher>>,
        policy: ReprocessPolicy,
    ) -> Self {
        let mut settings = settings;
        // A host that only writes runs no reader and no event processor (its watcher still
        // announces its commits).
        settings.read_log = read;
        settings.events.process = read;
        let db = DbHub::<B>::open(url, settings).await.unwrap();
        if let Some(watcher) = watcher {
            db.set_watcher(Started(watcher)).unwrap();
        }
        let hub = Hub::builder()
            .with(db.clone())
            .reprocessing(policy)
            .start()
            .await
            .unwrap();
        let accounts = Arc::new(Accounts {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&accounts).unwrap();
        let reader = db.log_reader(&hub);
        Self { accounts, reader }
    }

    pub(crate) async fn deposit(
        &self,
        id: i64,
        amount: i64,
        fail: bool,
    ) -> Result<i64, ofx_core::Error> {
        let command = <Accounts<B> as HostService>::Deposit::new(id, amount, fail);
        self.accounts.hub.commander().call(command).await
    }

    pub(crate) async fn balance(&self, id: i64) -> Result<i64, String> {
        self.accounts.balance_of(id).await
    }

    /// Deposits, and returns the operation's sequence number in the log.
    pub(crate) async fn deposit_sequence(&self, id: i64, amount: i64) -> i64 {
        let command = <Accounts<B> as HostService>::Deposit::new(id, amount, false);
        let executed = self
            .accounts
            .hub
            .commander()
            .call_committed(command)
            .await
            .unwrap();
        executed.committed.unwrap().sequence.unwrap()
    }

    pub(crate) fn stats(&self) -> &ofx_diesel::ReaderStats {
        self.reader.as_ref().unwrap().stats()
    }
}

/// A fresh SQLite file with the business table.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!("ofx-test-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    db.exec(ACCOUNTS).await;
    path
}

/// A fresh PostgreSQL database with the business table, on the server at 127.0.0.1:5432.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_database() -> String {
    use diesel_async::AsyncConnection;
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {server} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or set OFX_TEST_POSTGRES to another server"
            )
        });
    drop_leftovers(&mut admin).await;
    let name = format!(
        "ofx_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    let db = DbHub::<ofx_diesel::Postgres>::open(&url, fast())
        .await
        .unwrap();
    db.exec(ACCOUNTS).await;
    url
}

/// Drops the test databases of earlier test processes (this one's are in use).
#[cfg(feature = "postgres")]
async fn drop_leftovers(admin: &mut diesel_async::AsyncPgConnection) {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let mine = format!("ofx_test_{}_", std::process::id());
    let names: Vec<Name> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'ofx_test_%'")
            .load(admin)
            .await
            .unwrap_or_default();
    for Name { datname } in names {
        if !datname.starts_with(&mine) {
            // Fails harmlessly if another process still uses it.
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {datname}"))
                .await;
        }
    }
}

/// An operation row's `INSERT` written by hand the way the framework writes it on PostgreSQL:
/// its transaction's id recorded, and the log-writer mark taken (the shared advisory lock
/// `(7300728, id mod 2^31)`), before its index is drawn, so that readers count its transaction
/// as one that may still fill a gap. For a deposit of 1 into account `id`.
#[cfg(feature = "postgres")]
pub(crate) fn marked_insert(id: i64) -> String {
    format!(
        "WITH t AS MATERIALIZED (SELECT pg_current_xact_id()::text::bigint AS x), \
         m AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(7300728, (x % 2147483648)::int) FROM t) \
         INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, command_name, command_json, items_json, nested_json, xid) \
         SELECT '{}', 'elsewhere', 0, 0, 'accounts.deposit', '{{\"id\": {id}, \"amount\": 1, \"fail\": false}}', '{{}}', '[]', x \
         FROM t, m",
        uuid::Uuid::now_v7()
    )
}

/// Settings for tests: a short poll period (the reader is woken by nothing else here).
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings
}

/// Waits for `computed` to be invalidated, failing after 10 s.
pub(crate) async fn invalidated(computed: &Computed) {
    tokio::time::timeout(Duration::from_secs(10), computed.when_invalidated())
        .await
        .expect("the other host's reader invalidated the value within 10 s");
}

/// Raw SQL on a test database, to check and to corrupt what the framework wrote.
pub(crate) trait RawSql {
    /// `SELECT COUNT(*) FROM table`.
    fn count(&self, table: &str) -> impl std::future::Future<Output = i64> + Send;
    /// Runs statements.
    fn exec(&self, sql: &str) -> impl std::future::Future<Output = ()> + Send;
    /// Inserts an operation row as another host would, with bound values.
    fn insert_row(
        &self,
        uuid: &str,
        name: &str,
        command: &str,
        items: &str,
    ) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

macro_rules! raw_sql {
    ($backend:ty, $placeholders:literal) => {
        impl RawSql for DbHub<$backend> {
            async fn count(&self, table: &str) -> i64 {
                let mut connection = self.connection().await.unwrap();
                let query = format!("SELECT COUNT(*) AS n FROM {table}");
                diesel::sql_query(query).get_result::<Count>(&mut *connection).await.unwrap().n
            }

            async fn exec(&self, sql: &str) {
                self.connection().await.unwrap().batch_execute(sql).await.unwrap();
            }

            async fn insert_row(&self, uuid: &str, name: &str, command: &str, items: &str) {
                let now = i64::try_from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_micros(),
                )
                .unwrap();
                let mut connection = self.connection().await.unwrap();
                diesel::sql_query(concat!(
                    "INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, command_name, ",
                    "command_json, items_json, nested_json) VALUES ",
                    $placeholders
                ))
                .bind::<diesel::sql_types::Text, _>(uuid)
                .bind::<diesel::sql_types::BigInt, _>(now)
                .bind::<diesel::sql_types::BigInt, _>(now)
                .bind::<diesel::sql_types::Text, _>(name)
                .bind::<diesel::sql_types::Text, _>(command)
                .bind::<diesel::sql_types::Text, _>(items)
                .execute(&mut *connection)
                .await
                .unwrap();
            }
        }
    };
}

#[cfg(feature = "sqlite")]
raw_sql!(ofx_diesel::Sqlite, "(?, 'elsewhere', ?, ?, ?, ?, ?, '[]')");
#[cfg(feature = "postgres")]
raw_sql!(
    ofx_diesel::Postgres,
    "($1, 'elsewhere', $2, $3, $4, $5, $6, '[]')"
);

/// The business table.
pub(crate) const ACCOUNTS: &str =
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY NOT NULL, balance BIGINT NOT NULL)";
