//! The SQLite backend: bundled SQLite through diesel-async's sync-connection wrapper, in WAL
//! mode. The embedded default.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::backend::{Backend, StartPosition, TransactionStatus, sealed};
use crate::events::rows::{ClaimEvents, ClaimedEvent, EventRelease, EventRow, NewEventRow};
use crate::row::{Inserted, MAX_PAYLOAD_BYTES, NewOperationRow, OperationRow};
use crate::schema::ofx_events::dsl as ev;
use crate::schema::ofx_log_trims::dsl as trims;
use crate::schema::ofx_operations::dsl;
use crate::{Error, Result};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

diesel::define_sql_function! {
    /// SQLite's scalar `max` of two values.
    #[sql_name = "max"]
    fn greatest(a: diesel::sql_types::BigInt, b: diesel::sql_types::BigInt) -> diesel::sql_types::BigInt;
}

diesel::define_sql_function! {
    /// SQLite's `ifnull`: `a`, or `b` when `a` is NULL.
    fn ifnull(a: diesel::sql_types::Nullable<diesel::sql_types::BigInt>, b: diesel::sql_types::BigInt) -> diesel::sql_types::BigInt;
}

/// The index of the operation row an insert writes: one past the newest row and past what the
/// trimmer deleted, so an index is never reused, even after a trim that emptied the log. (The
/// log has no AUTOINCREMENT, which cost every commit a write of `sqlite_sequence`; the
/// writer's transaction holds SQLite's write lock, so no other insert runs between the read and
/// the write.) Typed, not SQL text, so that the insert stays a cached prepared statement.
macro_rules! next_idx {
    () => {
        greatest(
            ifnull(
                dsl::ofx_operations
                    .select(diesel::dsl::max(dsl::idx))
                    .single_value(),
                0_i64,
            ),
            ifnull(
                trims::ofx_log_trims
                    .select(trims::trimmed_through)
                    .single_value(),
                0_i64,
            ),
        ) + 1_i64
    };
}

/// SQLite, the embedded default: a file path (or `:memory:` for one connection) as the URL.
///
/// Connections use WAL, `synchronous = NORMAL` (durable against a process crash; use
/// PostgreSQL for durability against power loss) and wait up to 5 s on a locked database.
#[derive(Debug, Clone, Copy)]
pub struct Sqlite;

impl sealed::Sealed for Sqlite {}

/// A SQLite connection usable from async code.
pub type SqliteAsyncConnection = SyncConnectionWrapper<SqliteConnection>;

// `busy_timeout` first: `journal_mode = WAL` on a fresh connection may need a lock that another
// connection being set up at the same moment holds, and must wait for it rather than fail.
const SESSION: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                       PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

impl Backend for Sqlite {
    type Connection = SqliteAsyncConnection;
    type Pool = Pool<SqliteAsyncConnection>;
    type Pooled = Object<SqliteAsyncConnection>;
    type Inspect = Self;

    const NAME: &'static str = "sqlite";
    // One writer at a time, each insert one past the newest index: rows commit in index order.
    const HAS_GAPS: bool = false;
    // One writer, in this process: a transaction whose COMMIT failed on a connection we then
    // close can no longer commit.
    const FAILED_COMMIT_IS_FINAL: bool = true;
    const ONE_WRITER: bool = true;

    async fn connect(url: &str) -> diesel::ConnectionResult<Self::Connection> {
        let mut connection = SqliteAsyncConnection::establish(url).await?;
        connection
            .batch_execute(SESSION)
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(connection)
    }

    // No test query at checkout: a connection to a local file does not go stale as a network
    // connection does, and one whose transaction manager broke is still discarded. The test
    // query was one more hop to the blocking pool per checkout: per command, per claim, per
    // read.
    crate::queries::deadpool_pool!(diesel_async::pooled_connection::RecyclingMethod::Fast);

    async fn migrate(url: &str) -> Result<()> {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut connection = SqliteConnection::establish(&url)
                .map_err(|error| Error::Connect(error.to_string()))?;
            diesel::connection::SimpleConnection::batch_execute(&mut connection, SESSION)?;
            connection
                .run_pending_migrations(MIGRATIONS)
                .map(|_| ())
                .map_err(|error| Error::Migration(error.to_string()))
        })
        .await
        .map_err(|error| Error::Migration(error.to_string()))?
    }

    async fn insert_operation(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
    ) -> Result<Inserted> {
        // Written as a tuple, not `.values(&row)`: the derived `Insertable` form is not cached
        // as a prepared statement. `xid` stays NULL.
        let idx = diesel::insert_into(dsl::ofx_operations)
            .values((
                dsl::idx.eq(next_idx!()),
                dsl::uuid.eq(row.uuid),
                dsl::host_id.eq(row.host_id),
                dsl::logged_at.eq(row.logged_at),
                dsl::committed_at.eq(row.committed_at),
                dsl::command_name.eq(row.command_name),
                dsl::command_json.eq(row.command_json),
                dsl::items_json.eq(row.items_json),
                dsl::nested_json.eq(row.nested_json),
            ))
            .returning(dsl::idx)
            .get_result(connection)
            .await?;
        Ok(Inserted { idx, xid: None })
    }

    async fn insert_operation_and_commit(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
        _xid: Option<i64>,
    ) -> Result<(Inserted, diesel::QueryResult<()>)> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        // One hop to the blocking pool for both (each statement is one otherwise): the row's
        // columns are moved into it.
        let values = (
            dsl::idx.eq(next_idx!()),
            dsl::uuid.eq(row.uuid.to_owned()),
            dsl::host_id.eq(row.host_id.to_owned()),
            dsl::logged_at.eq(row.logged_at),
            dsl::committed_at.eq(row.committed_at),
            dsl::command_name.eq(row.command_name.to_owned()),
            dsl::command_json.eq(row.command_json.to_owned()),
            dsl::items_json.eq(row.items_json.to_owned()),
            dsl::nested_json.eq(row.nested_json.to_owned()),
        );
        let (idx, committed) = connection
            .spawn_blocking(move |connection| {
                let idx: i64 = diesel::RunQueryDsl::get_result(
                    diesel::insert_into(dsl::ofx_operations)
                        .values(values)
                        .returning(dsl::idx),
                    connection,
                )?;
                let committed = AnsiTransactionManager::commit_transaction(connection);
                Ok((idx, committed))
            })
            .await?;
        Ok((Inserted { idx, xid: None }, committed))
    }

    async fn insert_operation_completing(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
        event: &str,
        lease_token: i64,
        now: i64,
    ) -> Result<(Inserted, bool)> {
        let inserted = Self::insert_operation(connection, row).await?;
        let completed = Self::complete_event(connection, event, lease_token, now).await?;
        Ok((inserted, completed))
    }

    async fn read_after_covered(
        connection: &mut Self::Connection,
        after: i64,
        limit: i64,
    ) -> Result<(i64, Vec<OperationRow>)> {
        use crate::schema::ofx_log_trims::dsl as trims;
        // One hop to the blocking pool for both statements, the rows first (see the trait's
        // documentation).
        Ok(connection
            .spawn_blocking(move |connection| {
                let rows: Vec<OperationRow> = diesel::RunQueryDsl::load(
                    dsl::ofx_operations
                        .filter(dsl::idx.gt(after))
                        .order(dsl::idx.asc())
                        .limit(limit)
                        .select(OperationRow::as_select()),
                    connection,
                )?;
                let trimmed: i64 = diesel::RunQueryDsl::first(
                    trims::ofx_log_trims.select(trims::trimmed_through),
                    connection,
                )?;
                Ok((trimmed, rows))
            })
            .await?)
    }

    async fn transaction_status(
        _connection: &mut Self::Connection,
        _xid: i64,
    ) -> Result<Option<TransactionStatus>> {
        Ok(None)
    }

    crate::queries::log_queries!();

    crate::queries::event_queries!();

    crate::queries::stream_queries!();

    async fn append_stream(
        connection: &mut Self::Connection,
        rows: &[crate::state::rows::NewStreamRow<'_>],
    ) -> Result<Vec<i64>> {
        use crate::schema::ofx_stream_events::dsl as st;
        // SQLite has no multi-row insert with `RETURNING` in Diesel: one statement per row, in
        // process.
        let mut inserted = Vec::with_capacity(rows.len());
        for row in rows {
            let position: Option<i64> = diesel::insert_into(st::ofx_stream_events)
                .values(row)
                .on_conflict_do_nothing()
                .returning(st::position)
                .get_result(connection)
                .await
                .optional()?;
            inserted.extend(position);
        }
        Ok(inserted)
    }

    async fn begin_operation(
        connection: &mut Self::Connection,
        _settings: &crate::DbSettings,
    ) -> Result<Option<i64>> {
        // `BEGIN IMMEDIATE`: the write lock from the start (waiting up to the busy timeout).
        // Every operation writes (its row at least), and a deferred transaction that read
        // first cannot take the lock once another writer committed after its read (its
        // snapshot is stale: SQLite refuses at once, without waiting).
        connection
            .spawn_blocking(|connection| {
                diesel::connection::AnsiTransactionManager::begin_transaction_sql(
                    connection,
                    "BEGIN IMMEDIATE",
                )
            })
            .await?;
        Ok(None)
    }

    async fn claim_events(
        connection: &mut Self::Connection,
        host: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedEvent>> {
        // One writing statement: SQLite runs it alone, so two claims never take one event.
        Ok(ClaimEvents {
            host,
            now,
            lease_until,
            limit,
            max_payload: MAX_PAYLOAD_BYTES as i64,
        }
        .load(connection)
        .await?)
    }

    async fn server_time(_connection: &mut Self::Connection) -> Result<Option<i64>> {
        // Embedded: the hosts sharing the file share this machine's clock.
        Ok(None)
    }

    async fn start_position(connection: &mut Self::Connection) -> Result<StartPosition> {
        // One writer at a time, each insert one past the newest index: a row not visible now gets a higher one.
        let cursor: Option<i64> = dsl::ofx_operations
            .select(diesel::dsl::max(dsl::idx))
            .first(connection)
            .await?;
        Ok(StartPosition {
            cursor: cursor.unwrap_or(0),
            in_flight: Vec::new(),
            horizon: None,
        })
    }

    async fn drawn_through(_connection: &mut Self::Connection) -> Result<i64> {
        // Rows commit in index order: nothing below a row read can still commit.
        Ok(i64::MAX)
    }

    async fn in_flight(_connection: &mut Self::Connection) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }

    async fn running_transactions(
        _connection: &mut Self::Connection,
        _transactions: &[i64],
    ) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }
}

impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for ClaimEvents<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> QueryResult<()> {
        // No row locks: SQLite runs one writing statement at a time.
        self.write(&mut out, "")
    }
}
