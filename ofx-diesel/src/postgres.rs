//! The PostgreSQL backend: diesel-async's `AsyncPgConnection` with a deadpool pool.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::backend::{Backend, StartPosition, TransactionStatus, sealed};
use crate::events::rows::{ClaimEvents, ClaimedEvent, EventRelease, EventRow, NewEventRow};
use crate::row::{Inserted, MAX_PAYLOAD_BYTES, NewOperationRow, OperationRow};
use crate::schema::ofx_events::dsl as ev;
use crate::schema::ofx_log_trims::dsl as trims;
use crate::schema::ofx_operations::dsl;
use crate::{Error, Result};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// PostgreSQL: a `postgres://` URL.
///
/// Concurrent transactions may commit operation rows out of index order; the log reader
/// tracks the gaps this leaves, with the transactions that may still fill them (see
/// [`LogReader`](crate::LogReader#gaps)). The `ofx_operations` sequence must keep its default
/// `CACHE 1`, so that it hands out indexes in order.
#[derive(Debug, Clone, Copy)]
pub struct Postgres;

/// The common table expressions that tell which log writers are in flight, as of this
/// statement's snapshot `s` (taken at its start) and the locks held when it reads them:
///
/// - `marks`: the keys of the log-writer marks held in this database (the shared advisory lock
///   `(7300728, id mod 2^31)` that the operation row's insert takes before it draws its index,
///   held until its transaction ends; a lock is released after the transaction's commit is
///   visible to new snapshots);
/// - `xip`: the snapshot's in-progress list, and `horizon`: its `xmax`. A transaction whose id
///   is at or above `xmax` is not in the list although it may be running: an operation whose
///   transaction took its id early (a business write) and drew its index late is below the
///   horizon only once a newer transaction completed;
/// - `log_writers` (as `x`): the listed transactions that hold a mark, and, for each mark held by
///   no listed transaction, the first id at or above the horizon with its key (a transaction
///   that took its id after the snapshot's horizon). Transactions that never wrote to the log
///   (a long report, a session idle in its transaction) hold no gap open. Two transactions whose
///   ids agree mod 2^31 both count, which only keeps a gap open longer. A writer whose mark is
///   not seen here has ended before the locks were read: its row is visible to every later
///   statement.
macro_rules! log_writer_ctes {
    () => {
        "s AS MATERIALIZED (SELECT pg_current_snapshot() AS snap), \
         marks AS MATERIALIZED (SELECT DISTINCT CAST(objid AS BIGINT) AS k FROM pg_locks \
         WHERE locktype = 'advisory' AND classid = 7300728 AND objsubid = 2 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())), \
         xip AS MATERIALIZED (SELECT CAST(CAST(t AS TEXT) AS BIGINT) AS x \
         FROM s, pg_snapshot_xip(s.snap) AS t), \
         horizon AS MATERIALIZED (SELECT CAST(CAST(pg_snapshot_xmax(s.snap) AS TEXT) AS BIGINT) AS m \
         FROM s), \
         log_writers AS (SELECT x FROM xip WHERE x % 2147483648 IN (SELECT k FROM marks) \
         UNION SELECT m + ((k - m % 2147483648 + 2147483648) % 2147483648) FROM marks, horizon \
         WHERE k NOT IN (SELECT x % 2147483648 FROM xip))"
    };
}

impl sealed::Sealed for Postgres {}

impl Backend for Postgres {
    type Connection = AsyncPgConnection;
    type Pool = Pool<AsyncPgConnection>;
    type Pooled = Object<AsyncPgConnection>;
    type Inspect = Self;

    const NAME: &'static str = "postgres";
    const HAS_GAPS: bool = true;
    // The server session that received COMMIT may still be committing after our connection
    // broke: only `pg_xact_status` settles it.
    const FAILED_COMMIT_IS_FINAL: bool = false;
    const ONE_WRITER: bool = false;

    async fn connect(url: &str) -> diesel::ConnectionResult<Self::Connection> {
        AsyncPgConnection::establish(url).await
    }

    // No test query at checkout (a `SELECT 1` would be one more round trip per command): a
    // connection the server closed is seen closed without one, and one that died unseen fails
    // at `BEGIN`, before anything of the operation was sent, where the operation's scope
    // retries on another connection (`DbOperationScope::connection`).
    crate::queries::deadpool_pool!(diesel_async::pooled_connection::RecyclingMethod::Fast);

    fn isolation_statement(settings: &crate::DbSettings) -> Option<&'static str> {
        settings
            .serializable
            .then_some("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    }

    async fn migrate(url: &str) -> Result<()> {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut connection =
                <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                    .map_err(|error| Error::Connect(error.to_string()))?;
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
        let (idx, xid) = InsertOperation(row)
            .get_result::<(i64, Option<i64>)>(connection)
            .await?;
        Ok(Inserted { idx, xid })
    }

    async fn begin_operation(
        connection: &mut Self::Connection,
        settings: &crate::DbSettings,
    ) -> Result<Option<i64>> {
        use diesel::connection::{TransactionDepthChange, TransactionManagerStatus};
        use diesel_async::TransactionManager;
        let status = <AsyncPgConnection as AsyncConnection>::TransactionManager::
            transaction_manager_status_mut(connection);
        if !matches!(status.transaction_depth(), Ok(None)) {
            // Not a connection at rest (it never is, fresh from the pool): the transaction
            // manager begins, and says what is wrong.
            crate::backend::begin_with_manager::<Self>(connection, settings).await?;
            return Ok(None);
        }
        // Pipelined: `BEGIN` (with its isolation level) and the transaction's id in one round
        // trip, `BEGIN` first (see `in_order`). Taking the id assigns it now rather than at the
        // first write; every operation writes its row anyway.
        let shared: &AsyncPgConnection = connection;
        let begin = if settings.serializable {
            BeginSerializable.execute(&mut &*shared)
        } else {
            Begin.execute(&mut &*shared)
        };
        let xid = CurrentTransactionId.get_result::<i64>(&mut &*shared);
        let (begun, xid) = in_order(begin, xid).await;
        begun?;
        // `BEGIN` went outside the transaction manager: it is told.
        let status = <AsyncPgConnection as AsyncConnection>::TransactionManager::
            transaction_manager_status_mut(connection);
        match status {
            TransactionManagerStatus::Valid(valid) => {
                valid.change_transaction_depth(TransactionDepthChange::IncreaseDepth)?;
            }
            TransactionManagerStatus::InError => {
                return Err(diesel::result::Error::BrokenTransactionManager.into());
            }
        }
        Ok(Some(xid?))
    }

    async fn insert_operation_and_commit(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
        begun_as: Option<i64>,
    ) -> Result<(Inserted, diesel::QueryResult<()>)> {
        use diesel::connection::{TransactionDepthChange, TransactionManagerStatus};
        use diesel::result::{DatabaseErrorKind, Error as QueryError};
        use diesel_async::TransactionManager;
        // Pipelined: the row and `COMMIT` are sent before either reply is awaited, one round
        // trip instead of two, the row first (see `in_order`). A row the server refuses aborts
        // the transaction, and the `COMMIT` behind it then rolls it back.
        let shared: &AsyncPgConnection = connection;
        let insert = InsertOperation(row).get_result::<(i64, Option<i64>)>(&mut &*shared);
        let commit = Commit.execute(&mut &*shared);
        let (inserted, committed) = in_order(insert, commit).await;
        let status = <AsyncPgConnection as AsyncConnection>::TransactionManager::
            transaction_manager_status_mut(connection);
        match inserted {
            Ok((idx, xid)) => {
                let committed = committed.map(drop);
                match (&committed, &mut *status) {
                    // `COMMIT` went outside the transaction manager: it is told.
                    (Ok(()), TransactionManagerStatus::Valid(valid)) => {
                        valid.change_transaction_depth(TransactionDepthChange::DecreaseDepth)?;
                    }
                    // Verified, and the connection closed, by the caller.
                    _ => status.set_in_error(),
                }
                Ok((Inserted { idx, xid }, committed))
            }
            // Refused by the server: nothing was committed. The manager still counts the
            // transaction open; the caller's `ROLLBACK` (which the server answers with a
            // warning) closes it.
            Err(error @ QueryError::DatabaseError(kind, _))
                if !matches!(kind, DatabaseErrorKind::UnableToSendCommand) =>
            {
                Err(error.into())
            }
            // No reply to the row (the connection failed): the `COMMIT` behind it may have
            // reached the server. Verified by the transaction's id taken at `BEGIN`, the index
            // found by the operation's uuid.
            Err(lost) => {
                status.set_in_error();
                Ok((
                    Inserted::unknown(begun_as),
                    Err(committed.err().unwrap_or(lost)),
                ))
            }
        }
    }

    async fn insert_operation_completing(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
        event: &str,
        lease_token: i64,
        now: i64,
    ) -> Result<(Inserted, bool)> {
        // Pipelined: both statements are sent before either reply is awaited, and the server
        // runs them in order, in the transaction. The row's error (if any) is the one reported:
        // after it, the completion only fails as part of an aborted transaction.
        let shared: &AsyncPgConnection = connection;
        let insert = InsertOperation(row).get_result::<(i64, Option<i64>)>(&mut &*shared);
        let complete = diesel::update(
            ev::ofx_events
                .filter(ev::uuid.eq(event))
                .filter(ev::lease_token.eq(lease_token))
                .filter(ev::state.eq(0)),
        )
        .set((
            ev::state.eq(1),
            ev::finished_at.eq(Some(now)),
            ev::lease_owner.eq(None::<String>),
            ev::lease_until.eq(None::<i64>),
            ev::last_error.eq(None::<String>),
        ))
        .execute(&mut &*shared);
        let (inserted, completed) = in_order(insert, complete).await;
        let (idx, xid) = inserted?;
        Ok((Inserted { idx, xid }, completed? == 1))
    }

    async fn read_after_covered(
        connection: &mut Self::Connection,
        after: i64,
        limit: i64,
    ) -> Result<(i64, Vec<OperationRow>)> {
        // Pipelined: both statements are sent before either reply is awaited, and the server
        // runs them in order, the rows first (see the trait's documentation).
        let shared: &AsyncPgConnection = connection;
        let rows = dsl::ofx_operations
            .filter(dsl::idx.gt(after))
            .order(dsl::idx.asc())
            .limit(limit)
            .select(OperationRow::as_select())
            .load::<OperationRow>(&mut &*shared);
        let trimmed = trims::ofx_log_trims
            .select(trims::trimmed_through)
            .first::<i64>(&mut &*shared);
        let (rows, trimmed) = in_order(rows, trimmed).await;
        Ok((trimmed?, rows?))
    }

    async fn transaction_status(
        connection: &mut Self::Connection,
        xid: i64,
    ) -> Result<Option<TransactionStatus>> {
        #[derive(QueryableByName)]
        struct Status {
            #[diesel(sql_type = Nullable<Text>)]
            status: Option<String>,
        }
        // Run only to verify a failed commit: not worth a prepared statement.
        let status =
            diesel::sql_query("SELECT pg_xact_status(CAST(CAST($1 AS TEXT) AS xid8)) AS status")
                .bind::<BigInt, _>(xid)
                .get_result::<Status>(connection)
                .await?
                .status;
        Ok(match status.as_deref() {
            Some("committed") => Some(TransactionStatus::Committed),
            Some("aborted") => Some(TransactionStatus::Aborted),
            Some("in progress") => Some(TransactionStatus::InProgress),
            _ => None,
        })
    }

    crate::queries::log_queries!();

    crate::queries::event_queries!();

    crate::queries::stream_queries!();

    async fn append_stream(
        connection: &mut Self::Connection,
        rows: &[crate::state::rows::NewStreamRow<'_>],
    ) -> Result<Vec<i64>> {
        use crate::schema::ofx_stream_events::dsl as st;
        // Five parameters a row, and at most 65,535 in a statement.
        let mut inserted = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(10_000) {
            let positions: Vec<i64> = diesel::insert_into(st::ofx_stream_events)
                .values(chunk)
                .on_conflict_do_nothing()
                .returning(st::position)
                .get_results(connection)
                .await?;
            inserted.extend(positions);
        }
        Ok(inserted)
    }

    fn snapshot_statement() -> Option<&'static str> {
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    }

    async fn lock_for_append(
        connection: &mut Self::Connection,
        stream: &str,
        queue: bool,
    ) -> Result<()> {
        if queue {
            // The two-key form, with a key of ofx's own ("ofxs") as the first: it cannot take
            // an application's single-key advisory locks.
            diesel::sql_query("SELECT pg_advisory_xact_lock(1869117555, hashtext($1))")
                .bind::<diesel::sql_types::Text, _>(stream)
                .execute(connection)
                .await?;
        }
        Ok(())
    }

    async fn claim_events(
        connection: &mut Self::Connection,
        host: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedEvent>> {
        // `SKIP LOCKED`: concurrent claimers take different events, none waits for another.
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

    async fn server_time(connection: &mut Self::Connection) -> Result<Option<i64>> {
        let now: ServerTimeRow = diesel::sql_query(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT) AS micros",
        )
        .get_result(connection)
        .await?;
        Ok(Some(now.micros))
    }

    async fn start_position(connection: &mut Self::Connection) -> Result<StartPosition> {
        // One statement, one snapshot: every row with an index up to `cursor` that is not
        // visible in it belongs to a transaction in its in-progress list (the operation's
        // transaction id is assigned before its index is drawn).
        let start: StartRow = diesel::sql_query(concat!(
            "WITH ",
            log_writer_ctes!(),
            " SELECT COALESCE((SELECT MAX(idx) FROM ofx_operations), 0) AS cursor, \
             ARRAY(SELECT x FROM log_writers) AS in_flight, (SELECT m FROM horizon) AS horizon"
        ))
        .get_result(connection)
        .await?;
        Ok(StartPosition {
            cursor: start.cursor,
            in_flight: start.in_flight,
            horizon: Some(start.horizon),
        })
    }

    async fn drawn_through(connection: &mut Self::Connection) -> Result<i64> {
        // The sequence's last value as its buffer holds it now, outside any snapshot (NULL
        // before the first `nextval`). With the default `CACHE 1`, values are handed out in
        // this order, one at a time.
        let drawn: DrawnRow = diesel::sql_query(
            "SELECT COALESCE(pg_sequence_last_value(\
             CAST(pg_get_serial_sequence('ofx_operations', 'idx') AS regclass)), 0) AS drawn",
        )
        .get_result(connection)
        .await?;
        Ok(drawn.drawn)
    }

    async fn in_flight(connection: &mut Self::Connection) -> Result<Vec<i64>> {
        let in_flight: InFlightRow = diesel::sql_query(concat!(
            "WITH ",
            log_writer_ctes!(),
            " SELECT ARRAY(SELECT x FROM log_writers) AS in_flight"
        ))
        .get_result(connection)
        .await?;
        Ok(in_flight.in_flight)
    }

    async fn running_transactions(
        connection: &mut Self::Connection,
        transactions: &[i64],
    ) -> Result<Vec<i64>> {
        // Membership in this statement's snapshot rather than `pg_xact_status`: a transaction
        // leaves the snapshots' in-progress lists only once its commit is visible to them,
        // whereas a server whose `pg_xact_status` reads the commit log first may already say
        // "committed" while a new snapshot does not see the rows yet.
        // A transaction at or above the snapshot's horizon is not in its list: it runs if its
        // log-writer mark is held.
        let running: Vec<RunningRow> = diesel::sql_query(concat!(
            "WITH ",
            log_writer_ctes!(),
            " SELECT u.t AS transaction FROM unnest($1::bigint[]) AS u(t) \
             WHERE u.t IN (SELECT x FROM xip) \
             OR (u.t >= (SELECT m FROM horizon) AND u.t % 2147483648 IN (SELECT k FROM marks))"
        ))
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(transactions)
        .load(connection)
        .await?;
        Ok(running.into_iter().map(|row| row.transaction).collect())
    }
}

#[derive(QueryableByName)]
struct StartRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    cursor: i64,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::BigInt>)]
    in_flight: Vec<i64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    horizon: i64,
}

#[derive(QueryableByName)]
struct ServerTimeRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    micros: i64,
}

#[derive(QueryableByName)]
struct DrawnRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    drawn: i64,
}

#[derive(QueryableByName)]
struct InFlightRow {
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::BigInt>)]
    in_flight: Vec<i64>,
}

#[derive(QueryableByName)]
struct RunningRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    transaction: i64,
}

/// The operation row's `INSERT`, which records the id of its transaction in the row and returns
/// it with the row's index:
///
/// ```sql
/// WITH x AS MATERIALIZED (SELECT CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT) AS xid),
///      m AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(7300728,
///                         CAST(x.xid % 2147483648 AS INTEGER)) AS marked FROM x)
/// INSERT INTO ofx_operations (uuid, ..., nested_json, xid) SELECT $1, ..., $8, x.xid FROM x, m
/// RETURNING idx, xid
/// ```
///
/// The id is taken, and the transaction marked as a log writer (a shared advisory lock keyed by
/// its id, held until it ends), before the index is drawn: the materialized CTEs are evaluated
/// when the insert reads its one row, before the insert evaluates the `idx` default
/// (`nextval`). Without them the planner computes everything in one projection, in column
/// order, `idx` first. A reader that finds a gap relies on this order: whoever drew a missing
/// index is a marked transaction still in flight, or has finished (see
/// `log_writer_ctes!`).
///
/// A query of its own (not `diesel::sql_query`) so that it has a static query id: diesel caches
/// it as a prepared statement, one round trip per command.
impl QueryFragment<Pg> for ClaimEvents<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.write(&mut out, " FOR UPDATE SKIP LOCKED")
    }
}

struct InsertOperation<'a>(NewOperationRow<'a>);

impl QueryId for InsertOperation<'_> {
    type QueryId = InsertOperation<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for InsertOperation<'_> {
    type SqlType = (BigInt, Nullable<BigInt>);
}

impl QueryFragment<Pg> for InsertOperation<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let row = &self.0;
        out.push_sql(
            "WITH x AS MATERIALIZED \
             (SELECT CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT) AS xid), \
             m AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(7300728, \
             CAST(x.xid % 2147483648 AS INTEGER)) AS marked FROM x) \
             INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, command_name, \
             command_json, items_json, nested_json, xid) SELECT ",
        );
        out.push_bind_param::<Text, _>(row.uuid)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.host_id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.logged_at)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.committed_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.command_name)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.command_json)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.items_json)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.nested_json)?;
        out.push_sql(", x.xid FROM x, m RETURNING idx, xid");
        Ok(())
    }
}

/// Fixed statements with a static query id: diesel-async caches each as a prepared statement
/// (a `diesel::sql_query` is prepared again at each run: one more round trip).
macro_rules! fixed_statements {
    ($($(#[$doc:meta])* $name:ident: $sql_type:ty = $sql:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        struct $name;

        impl QueryId for $name {
            type QueryId = $name;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl Query for $name {
            type SqlType = $sql_type;
        }

        impl QueryFragment<Pg> for $name {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                out.push_sql($sql);
                Ok(())
            }
        }
    )*};
}

fixed_statements! {
    /// Begins a transaction.
    Begin: BigInt = "BEGIN";
    /// Begins a serializable transaction.
    BeginSerializable: BigInt = "BEGIN ISOLATION LEVEL SERIALIZABLE";
    /// Commits the transaction.
    Commit: BigInt = "COMMIT";
    /// The running transaction's id (assigning one if it has none yet).
    CurrentTransactionId: BigInt = "SELECT CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)";
}

/// Awaits `first` and `second` together, `first` always polled first, so that two pipelined
/// statements reach the server in that order: diesel-async sends a statement in the poll that
/// gets it from the connection's statement cache, and holds that cache while it prepares one
/// (on a new connection), so `second` waits until `first` is sent. (`tokio::join!` polls in
/// turns, which may start with `second`.)
async fn in_order<A: Future, B: Future>(first: A, second: B) -> (A::Output, B::Output) {
    use std::task::Poll;
    let (mut first, mut second) = (std::pin::pin!(first), std::pin::pin!(second));
    let (mut a, mut b) = (None, None);
    std::future::poll_fn(|cx| {
        if a.is_none()
            && let Poll::Ready(output) = first.as_mut().poll(cx)
        {
            a = Some(output);
        }
        if b.is_none()
            && let Poll::Ready(output) = second.as_mut().poll(cx)
        {
            b = Some(output);
        }
        if a.is_some() && b.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (a, b) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("both outputs are there once the poll above is ready"),
    }
}
