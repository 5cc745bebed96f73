//! A minimal accounts service (copied and trimmed from `tests/log/common.rs`), with a command
//! that can fail, panic or call a nested command.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, ReprocessPolicy, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, LogReader};
use serde::{Deserialize, Serialize};

diesel::table! {
    accounts (id) {
        id -> BigInt,
        balance -> BigInt,
    }
}

pub(crate) trait Queries: Backend {
    fn read_balance(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl std::future::Future<Output = QueryResult<Option<i64>>> + Send;
    fn add_to(
        connection: &mut Self::Connection,
        id: i64,
        amount: i64,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
}

macro_rules! queries {
    ($backend:ty) => {
        impl Queries for $backend {
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
queries!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
queries!(ofx_diesel::Postgres);

/// What a deposit's handler does after its write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Mode {
    Ok,
    Fail,
    Panic,
    /// Then calls a nested deposit of the same amount into `id + 1000`.
    Nested,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "hostile_db.deposit")]
pub(crate) struct Dep {
    pub(crate) id: i64,
    pub(crate) amount: i64,
    pub(crate) mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("refused after writing")]
    Refused,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
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

#[service]
impl<B: Queries> Accounts<B> {
    #[compute_method]
    pub(crate) async fn balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        let balance = B::read_balance(&mut connection, id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(balance.unwrap_or(0))
    }

    #[command_handler]
    pub(crate) async fn deposit(
        &self,
        command: Dep,
        ctx: &CommandContext,
    ) -> Result<i64, AccountError> {
        invalidate! {
            self.balance(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        B::add_to(&mut connection, command.id, command.amount).await?;
        let balance = B::read_balance(&mut connection, command.id)
            .await?
            .unwrap_or(0);
        drop(connection);
        match command.mode {
            Mode::Ok => {}
            Mode::Fail => return Err(AccountError::Refused),
            Mode::Panic => panic!("hostile: a handler panics after its write"),
            Mode::Nested => {
                self.hub
                    .commander()
                    .call(Dep {
                        id: command.id + 1000,
                        amount: command.amount,
                        mode: Mode::Ok,
                    })
                    .await?;
            }
        }
        Ok(balance)
    }
}

/// One host: a hub with the database, the service, and (if reading) its log reader.
pub(crate) struct Host<B: Backend> {
    pub(crate) accounts: Arc<Accounts<B>>,
    pub(crate) reader: Option<LogReader>,
}

impl<B: Queries> Host<B> {
    pub(crate) async fn open(url: &str, settings: DbSettings, read: bool) -> Self {
        Self::open_with(url, settings, read, ReprocessPolicy::default()).await
    }

    pub(crate) async fn open_with(
        url: &str,
        mut settings: DbSettings,
        read: bool,
        policy: ReprocessPolicy,
    ) -> Self {
        settings.read_log = read;
        settings.events.process = false;
        let db = DbHub::<B>::open(url, settings).await.unwrap();
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

    pub(crate) fn db(&self) -> &DbHub<B> {
        &self.accounts.db
    }

    pub(crate) async fn dep(
        &self,
        id: i64,
        amount: i64,
        mode: Mode,
    ) -> Result<i64, ofx_core::Error> {
        self.accounts
            .hub
            .commander()
            .call(Dep { id, amount, mode })
            .await
    }
}

/// Settings for tests: a short poll period, no trimmer unless asked.
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(5);
    settings.trim = false;
    settings
}

/// A fresh SQLite file with the business table.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!(
        "ofx-db-hostile-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    db.exec(ACCOUNTS).await;
    path
}

/// A fresh PostgreSQL database with the business table.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_database() -> String {
    use diesel_async::AsyncConnection;
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap();
    let name = format!("ofx_dbhostile_{}", uuid::Uuid::new_v4().simple());
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

pub(crate) trait RawSql {
    fn count(&self, sql_from: &str) -> impl std::future::Future<Output = i64> + Send;
    fn exec(&self, sql: &str) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

macro_rules! raw_sql {
    ($backend:ty) => {
        impl RawSql for DbHub<$backend> {
            async fn count(&self, sql_from: &str) -> i64 {
                let mut connection = self.connection().await.unwrap();
                let query = format!("SELECT COUNT(*) AS n FROM {sql_from}");
                diesel::sql_query(query)
                    .get_result::<Count>(&mut *connection)
                    .await
                    .unwrap()
                    .n
            }

            async fn exec(&self, sql: &str) {
                self.connection()
                    .await
                    .unwrap()
                    .batch_execute(sql)
                    .await
                    .unwrap();
            }
        }
    };
}

#[cfg(feature = "sqlite")]
raw_sql!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
raw_sql!(ofx_diesel::Postgres);

pub(crate) const ACCOUNTS: &str =
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY NOT NULL, balance BIGINT NOT NULL)";

/// Shorter than SQLite's busy timeout and the turn's wait (5 s each): a turn left taken shows
/// as a timeout.
pub(crate) const PROMPTLY: Duration = Duration::from_secs(4);
