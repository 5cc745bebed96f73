//! An accounts service on PostgreSQL, hosts that count what their readers replay, and raw SQL
//! helpers (fresh databases, log writers held open by hand, backends terminated).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ofx_core::operation::CompletionListener;
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, Operation, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::{DbHub, DbSettings, LogReader, Postgres};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

diesel::table! {
    accounts (id) {
        id -> BigInt,
        balance -> BigInt,
    }
}

async fn add_to(connection: &mut AsyncPgConnection, id: i64, amount: i64) -> QueryResult<usize> {
    diesel::insert_into(accounts::table)
        .values((accounts::id.eq(id), accounts::balance.eq(amount)))
        .on_conflict(accounts::id)
        .do_update()
        .set(accounts::balance.eq(accounts::balance + amount))
        .execute(connection)
        .await
}

async fn read_balance(connection: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<i64>> {
    accounts::table
        .find(id)
        .select(accounts::balance)
        .first(connection)
        .await
        .optional()
}

/// A deposit (the name and JSON shape the raw inserts below use too).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "gaps_hostile.deposit")]
pub(crate) struct Dep {
    pub(crate) id: i64,
    pub(crate) amount: i64,
    /// Fail after writing.
    pub(crate) fail: bool,
}

/// Calls a nested deposit first (so that the nested command is the one that begins the
/// operation's transaction, in its savepoint), swallows its failure, then (if `write`) writes
/// itself.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "gaps_hostile.nested_first")]
pub(crate) struct NestedFirst {
    pub(crate) id: i64,
    pub(crate) nested_fails: bool,
    pub(crate) write: bool,
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

pub(crate) struct Accounts {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<Postgres>,
}

impl ComputeService for Accounts {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Accounts {
    #[compute_method]
    pub(crate) async fn balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        let balance = read_balance(&mut connection, id)
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
        add_to(&mut connection, command.id, command.amount).await?;
        if command.fail {
            return Err(AccountError::Refused);
        }
        Ok(read_balance(&mut connection, command.id)
            .await?
            .unwrap_or(0))
    }

    #[command_handler]
    pub(crate) async fn nested_first(
        &self,
        command: NestedFirst,
        ctx: &CommandContext,
    ) -> Result<(), AccountError> {
        invalidate! {
            self.balance(command.id);
        }
        let nested = self
            .hub
            .commander()
            .call(Dep {
                id: command.id + 1000,
                amount: 1,
                fail: command.nested_fails,
            })
            .await;
        assert_eq!(nested.is_err(), command.nested_fails, "{nested:?}");
        if command.write {
            let mut connection = self.db.operation_connection(ctx).await?;
            add_to(&mut connection, command.id, 1).await?;
        }
        Ok(())
    }
}

/// How many times an operation completed, whether locally, and its sequence.
type Completion = (u32, bool, Option<i64>);

/// What a host's hub completed, by operation uuid: how many times, whether locally, and the
/// operation's sequence.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) by_uuid: Mutex<HashMap<Uuid, Completion>>,
    /// Notified after each listener call.
    pub(crate) changed: tokio::sync::Notify,
}

impl Seen {
    /// How many times the hub completed an operation replayed from the log (not its own).
    pub(crate) fn replayed(&self, uuid: &Uuid) -> u32 {
        match self.by_uuid.lock().unwrap().get(uuid) {
            Some((count, false, _)) => *count,
            _ => 0,
        }
    }

    /// Waits (10 s at most) until the operation was replayed from the log at least once; the
    /// listeners are told after the invalidation pass, so a value seen invalidated may come
    /// first. Returns the count.
    pub(crate) async fn replayed_eventually(&self, uuid: &Uuid) -> u32 {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let count = self.replayed(uuid);
                if count > 0 {
                    return count;
                }
                changed.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("the operation is replayed within 10 s")
    }

    /// Every operation replayed from the log, with its count.
    pub(crate) fn replayed_all(&self) -> HashMap<Uuid, u32> {
        self.by_uuid
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (_, local, _))| !local)
            .map(|(uuid, (count, _, _))| (*uuid, *count))
            .collect()
    }
}

struct Listener(Arc<Seen>);

impl CompletionListener for Listener {
    fn on_operation_completed(&self, operation: &Operation, local: bool) {
        let mut seen = self.0.by_uuid.lock().unwrap();
        let entry = seen
            .entry(operation.uuid)
            .or_insert((0, local, operation.sequence));
        entry.0 += 1;
        drop(seen);
        self.0.changed.notify_waiters();
    }
}

/// One host: a hub with the database, the service, what it completed, and its reader.
pub(crate) struct Host {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<Postgres>,
    pub(crate) accounts: Arc<Accounts>,
    pub(crate) seen: Arc<Seen>,
}

impl Host {
    pub(crate) async fn open(url: &str, mut settings: DbSettings, read: bool) -> Self {
        settings.read_log = read;
        settings.events.process = false;
        settings.trim = false;
        let db = DbHub::<Postgres>::open(url, settings).await.unwrap();
        let seen = Arc::new(Seen::default());
        let hub = Hub::builder()
            .completion_listener(Listener(Arc::clone(&seen)))
            .with(db.clone())
            .start()
            .await
            .unwrap();
        let accounts = Arc::new(Accounts {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&accounts).unwrap();
        Self {
            hub,
            db,
            accounts,
            seen,
        }
    }

    pub(crate) fn reader(&self) -> LogReader {
        self.db.log_reader(&self.hub).unwrap()
    }

    /// A deposit; its operation's uuid and sequence.
    pub(crate) async fn deposit(
        &self,
        id: i64,
        amount: i64,
    ) -> Result<(Uuid, i64), ofx_core::Error> {
        let executed = self
            .hub
            .commander()
            .call_committed(Dep {
                id,
                amount,
                fail: false,
            })
            .await?;
        Ok((
            executed.operation,
            executed.committed.unwrap().sequence.unwrap(),
        ))
    }
}

/// The server the tests run against.
pub(crate) fn server() -> String {
    std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh database with the log's tables and the business table.
pub(crate) async fn database() -> String {
    let server = server();
    let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| panic!("cannot reach PostgreSQL at {server}: {error}"));
    drop_leftovers(&mut admin).await;
    let name = format!(
        "ofx_test_{}_{}",
        std::process::id(),
        Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    let db = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY NOT NULL, balance BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    url
}

/// Drops the test databases of earlier test processes (this one's are in use).
async fn drop_leftovers(admin: &mut AsyncPgConnection) {
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
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {datname}"))
                .await;
        }
    }
}

/// Settings for tests: a short poll period, a small pool.
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings.pool_size = 6;
    settings
}

/// A raw connection.
pub(crate) async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap()
}

/// An operation row's `INSERT` as the framework writes it on PostgreSQL (its transaction's id
/// recorded and the log-writer mark taken before its index is drawn), for a deposit of 1 into
/// account `id`, with the operation's uuid.
pub(crate) fn marked_insert(id: i64) -> (Uuid, String) {
    let uuid = Uuid::now_v7();
    let sql = format!(
        "WITH t AS MATERIALIZED (SELECT pg_current_xact_id()::text::bigint AS x), \
         m AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(7300728, (x % 2147483648)::int) FROM t) \
         INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, command_name, command_json, items_json, nested_json, xid) \
         SELECT '{uuid}', 'elsewhere', 0, 0, 'gaps_hostile.deposit', '{{\"id\": {id}, \"amount\": 1, \"fail\": false}}', '{{}}', '[]', x \
         FROM t, m"
    );
    (uuid, sql)
}

#[derive(QueryableByName)]
struct Big {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}

/// A number from SQL (`SELECT ... AS n`).
pub(crate) async fn query_i64(connection: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Big>(connection)
        .await
        .unwrap()
        .n
}

/// Every operation row's uuid and index.
pub(crate) async fn logged(connection: &mut AsyncPgConnection) -> HashMap<Uuid, i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT uuid::text AS t, idx AS n FROM ofx_operations")
        .load::<Row>(connection)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.t.parse().unwrap(), row.n))
        .collect()
}

/// This connection's backend pid.
pub(crate) async fn backend_pid(connection: &mut AsyncPgConnection) -> i64 {
    query_i64(connection, "SELECT pg_backend_pid()::bigint AS n").await
}

/// The name of the database at `url`.
pub(crate) fn database_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

/// The text of a one-row query (`SELECT ... AS t`).
pub(crate) async fn query_text(connection: &mut AsyncPgConnection, sql: &str) -> String {
    diesel::sql_query(sql)
        .get_result::<Text>(connection)
        .await
        .unwrap()
        .t
}
