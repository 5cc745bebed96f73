//! [`Backend`]: what the operation log needs from a database, one implementation per backend.

use std::future::Future;

use std::ops::DerefMut;

use diesel_async::AsyncConnection;

use crate::Result;
use crate::events::rows::{ClaimedEvent, EventRelease, EventRow, NewEventRow};
use crate::row::{Inserted, NewOperationRow, OperationRow};

/// A database the operation log runs on: [`Sqlite`](crate::Sqlite) or `Postgres`. Sealed.
///
/// Contracts, for every method: it runs on the connection given, inside whatever transaction
/// that connection has open (the scope's, for `insert_operation`), and binds every value (no
/// value is ever formatted into SQL). Cancelling a returned future leaves the connection
/// unusable for the transaction in progress, which the caller then discards.
pub trait Backend: sealed::Sealed + Send + Sync + 'static {
    /// The connection type.
    type Connection: AsyncConnection + Send + 'static;
    /// A pool of connections.
    type Pool: Clone + Send + Sync + 'static;
    /// A connection taken from the pool (returned to it when dropped).
    type Pooled: DerefMut<Target = Self::Connection> + Send + 'static;

    /// The operator's queries (`inspect`, `hosts`): the backend itself.
    #[doc(hidden)]
    type Inspect: crate::inspect::queries::InspectQueries<Conn = Self::Connection>;

    /// The backend's name, for logs.
    const NAME: &'static str;

    /// Whether rows may commit out of index order (concurrent writers with a sequence), so
    /// that readers must track gaps.
    const HAS_GAPS: bool;

    /// Whether a `COMMIT` that returned an error on our connection is final, so that once that
    /// connection is closed, an operation not found in the log never commits (SQLite: one
    /// process-local writer). Otherwise (PostgreSQL) the server's session may still be
    /// committing, and only the transaction's status settles it.
    const FAILED_COMMIT_IS_FINAL: bool;
    /// Whether the database takes one writer at a time (SQLite): then the operations of a
    /// process queue for it in the process ([`DbHub`](crate::DbHub)'s writer turn) rather than
    /// in the database's busy handler, which sleeps.
    const ONE_WRITER: bool;

    /// Opens a connection with the backend's session settings.
    fn connect(
        url: &str,
    ) -> impl Future<Output = diesel::ConnectionResult<Self::Connection>> + Send;

    /// A pool of at most `size` connections to `url`, each opened with [`connect`](Self::connect).
    fn pool(url: &str, size: usize) -> Result<Self::Pool>;

    /// A connection from the pool.
    fn get(pool: &Self::Pool) -> impl Future<Output = Result<Self::Pooled>> + Send;

    /// Closes a pooled connection instead of returning it to the pool (one whose transaction
    /// was abandoned).
    fn discard(connection: Self::Pooled);

    /// Whether `connection` was used before this checkout (it came back from the pool), as
    /// opposed to opened for it.
    fn reused(connection: &Self::Pooled) -> bool;

    /// The statement run first in every operation transaction to set its isolation level, per
    /// the settings (PostgreSQL: `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE` when
    /// [`DbSettings::serializable`](crate::DbSettings::serializable)); `None` by default.
    fn isolation_statement(settings: &crate::DbSettings) -> Option<&'static str> {
        let _ = settings;
        None
    }

    /// Begins an operation's transaction on `connection`, at the isolation level the settings
    /// say ([`isolation_statement`](Self::isolation_statement)); SQLite begins `IMMEDIATE`.
    /// Returns the transaction's id where the backend takes it at `BEGIN` (PostgreSQL, in the
    /// same round trip): commit verification asks the server about it if the operation row's
    /// reply is lost.
    fn begin_operation(
        connection: &mut Self::Connection,
        settings: &crate::DbSettings,
    ) -> impl Future<Output = Result<Option<i64>>> + Send {
        async move {
            begin_with_manager::<Self>(connection, settings).await?;
            Ok(None)
        }
    }

    /// Applies the embedded migrations that have not run yet. Idempotent.
    fn migrate(url: &str) -> impl Future<Output = Result<()>> + Send;

    /// Inserts the operation row and commits: [`insert_operation`](Self::insert_operation),
    /// then the transaction manager's commit, in one hop to the blocking pool where the
    /// backend runs there (SQLite), in one round trip where it pipelines them (PostgreSQL).
    /// `Err`: the insert failed (nothing was committed; roll back). `Ok((inserted, Err))`: the
    /// commit failed, or its outcome is unknown, and must be verified; `inserted` may then be
    /// [`Inserted::unknown`] with `xid`, the transaction's id taken at `BEGIN` (the row's reply
    /// was lost: verification finds its index by the operation's uuid).
    fn insert_operation_and_commit(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
        xid: Option<i64>,
    ) -> impl Future<Output = Result<(Inserted, diesel::QueryResult<()>)>> + Send {
        let _ = xid;
        async move {
            use diesel_async::TransactionManager;
            let inserted = Self::insert_operation(connection, row).await?;
            let committed =
                <Self::Connection as AsyncConnection>::TransactionManager::commit_transaction(
                    connection,
                )
                .await;
            Ok((inserted, committed))
        }
    }

    /// Inserts one operation row; returns its index and (PostgreSQL) the id of its transaction,
    /// taken before the index is drawn and stored in the row's `xid`.
    fn insert_operation(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
    ) -> impl Future<Output = Result<Inserted>> + Send;

    /// Inserts the operation row of a run that completes a claimed event, and marks the event
    /// done as [`complete_event`](Self::complete_event) does, in the scope's transaction, the
    /// row first. Returns the row's [`Inserted`] and whether the claim was still the event's.
    /// PostgreSQL sends both statements before awaiting either reply: one round trip.
    fn insert_operation_completing(
        connection: &mut Self::Connection,
        row: NewOperationRow<'_>,
        event: &str,
        lease_token: i64,
        now: i64,
    ) -> impl Future<Output = Result<(Inserted, bool)>> + Send;

    /// The status of transaction `xid` (an [`Inserted::xid`]); `None` when the server no longer
    /// knows it (PostgreSQL's `pg_xact_status`). On a backend without transaction ids (SQLite)
    /// the answer is always `None`.
    fn transaction_status(
        connection: &mut Self::Connection,
        xid: i64,
    ) -> impl Future<Output = Result<Option<TransactionStatus>>> + Send;

    /// [`read_after`](Self::read_after), then [`trimmed_through`](Self::trimmed_through):
    /// what a log reader with nothing else to look at reads after a wake-up, in one round trip
    /// where the backend can (PostgreSQL: both statements sent before either reply is awaited;
    /// SQLite: one hop to the blocking pool). The server runs them in that order, each in a
    /// snapshot of its own: the trimmer moves `trimmed_through` before it deletes, so rows
    /// deleted before the first read show as a `trimmed_through` past the cursor in the second
    /// (the other order could miss a whole trim between the two).
    fn read_after_covered(
        connection: &mut Self::Connection,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<(i64, Vec<OperationRow>)>> + Send {
        async move {
            let rows = Self::read_after(connection, after, limit).await?;
            let trimmed = Self::trimmed_through(connection).await?;
            Ok((trimmed, rows))
        }
    }

    /// Rows with an index above `after`, in index order, at most `limit`.
    fn read_after(
        connection: &mut Self::Connection,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<OperationRow>>> + Send;

    /// The rows with an index in any of these ranges `[from, to)` (the gaps a reader is waiting
    /// for), in index order, at most `limit`.
    fn read_ranges(
        connection: &mut Self::Connection,
        ranges: &[(i64, i64)],
        limit: i64,
    ) -> impl Future<Output = Result<Vec<OperationRow>>> + Send;

    /// The index of the operation with this uuid, if it is in the log (commit verification).
    fn find(
        connection: &mut Self::Connection,
        uuid: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Every row with an index up to this one may have been trimmed.
    fn trimmed_through(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// The lowest index in the log, if any row is there.
    fn min_index(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// The database server's clock now, in µs since the Unix epoch, if it has one of its own
    /// (PostgreSQL: `clock_timestamp()`); `None` for an embedded database, whose clock is the
    /// host's.
    fn server_time(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// The highest index in the log that this connection sees committed, if any row is there
    /// (the log's head: what a reader that read a full batch measures its lag by).
    fn head_index(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Where a fresh reader starts: the highest index committed now, and (on a backend whose
    /// rows may commit out of index order) the transactions in flight now, whose rows may
    /// still commit with lower indexes. Read in one snapshot.
    fn start_position(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<StartPosition>> + Send;

    /// The highest index the log's sequence has handed out (PostgreSQL: the sequence's last
    /// value, whether or not its row committed). Every index up to it was drawn by a transaction
    /// that had its id already (see [`insert_operation`](Self::insert_operation)): read this,
    /// then [`in_flight`](Self::in_flight), and every transaction that may still commit a row at
    /// an index up to it is in that list. On a backend whose rows commit in index order,
    /// `i64::MAX`: nothing below a row read can still commit.
    fn drawn_through(connection: &mut Self::Connection)
    -> impl Future<Output = Result<i64>> + Send;

    /// The log writers in flight now (PostgreSQL: the transactions that hold the log-writer mark
    /// of this database, by transaction id); empty on a backend without transaction ids.
    fn in_flight(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Which of these transactions are still in flight: in the in-progress list of a snapshot
    /// taken now, or above its horizon with their log-writer mark held, so that the rows of one
    /// not listed are visible to every later statement.
    fn running_transactions(
        connection: &mut Self::Connection,
        transactions: &[i64],
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// The rows, up to index `through`, written by these (finished) transactions.
    fn rows_of_transactions(
        connection: &mut Self::Connection,
        through: i64,
        transactions: &[i64],
    ) -> impl Future<Output = Result<Vec<OperationRow>>> + Send;

    /// The rows, up to index `through`, written by transactions with ids at or above
    /// `horizon`.
    fn rows_at_or_above(
        connection: &mut Self::Connection,
        through: i64,
        horizon: i64,
    ) -> impl Future<Output = Result<Vec<OperationRow>>> + Send;

    /// Deletes at most `limit` rows logged before `cutoff` (µs since the epoch); returns how
    /// many it deleted. Records how far it deleted first (see
    /// [`trimmed_through`](Self::trimmed_through)), so that a crash in between can only make
    /// readers invalidate too much, never too little.
    fn trim(
        connection: &mut Self::Connection,
        cutoff: i64,
        limit: i64,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Inserts an event in the scope's transaction; a uuid taken already does what
    /// `on_conflict` says (`Fail`: the database's unique violation). Returns the rows written.
    fn insert_event(
        connection: &mut Self::Connection,
        row: NewEventRow<'_>,
        on_conflict: ofx_core::operation::KeyConflict,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Marks a claimed event done at `now`, in its operation's transaction, if the claim
    /// `lease_token` is still the event's (no other claim, redrive or replacement since).
    /// Returns whether it did.
    fn complete_event(
        connection: &mut Self::Connection,
        uuid: &str,
        lease_token: i64,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Claims at most `limit` pending events due at `now` whose lease (if any) ended, for
    /// `host` until `lease_until`, each with a new fencing number and one more attempt, in due
    /// order. Two claims at once never return one event (PostgreSQL: `FOR UPDATE SKIP LOCKED`;
    /// SQLite: one writing statement).
    fn claim_events(
        connection: &mut Self::Connection,
        host: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ClaimedEvent>>> + Send;

    /// Extends `host`'s leases on these pending events until `until`; returns how many.
    fn renew_leases(
        connection: &mut Self::Connection,
        host: &str,
        uuids: &[String],
        until: i64,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Gives a claimed event back after a failed run (pending again, or dead), if the claim is
    /// still the event's. Returns whether it did.
    fn release_event(
        connection: &mut Self::Connection,
        release: EventRelease<'_>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Gives back an event claimed but never run (its lease ends now, its attempt is not
    /// counted), if the claim `lease_token` is still the event's. Returns whether it did.
    fn unclaim_event(
        connection: &mut Self::Connection,
        uuid: &str,
        lease_token: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// When the next pending event may be claimed: the earliest due time of an unleased one or
    /// lease end of a leased one.
    fn next_event_due(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Events in `state` (all when `None`), oldest due first, at most `limit`.
    fn list_events(
        connection: &mut Self::Connection,
        state: Option<i32>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<EventRow>>> + Send;

    /// The event with this uuid.
    fn find_event(
        connection: &mut Self::Connection,
        uuid: &str,
    ) -> impl Future<Output = Result<Option<EventRow>>> + Send;

    /// Makes dead events (this one, or all) pending again, due at `now`, with their attempts
    /// reset and a new fencing number. Returns how many.
    fn redrive_events(
        connection: &mut Self::Connection,
        uuid: Option<&str>,
        now: i64,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Deletes dead events (this one, or all). Returns how many.
    fn purge_events(
        connection: &mut Self::Connection,
        uuid: Option<&str>,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Deletes at most `limit` done events finished before `done_before` and dead ones finished
    /// before `dead_before`. Returns how many.
    fn trim_events(
        connection: &mut Self::Connection,
        done_before: i64,
        dead_before: i64,
        limit: i64,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// How many events are in each state.
    fn count_events(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<(i32, i64)>>> + Send;

    /// Takes what an append to `stream` needs before the state is read, in the scope's
    /// transaction, held until it ends: with `queue`, appenders to one stream queue rather
    /// than conflict (PostgreSQL: a transaction-scoped advisory lock on the stream; without
    /// `queue`, nothing: conflicts are detected at the insert). SQLite's operation
    /// transactions hold the write lock from their start already.
    fn lock_for_append(
        connection: &mut Self::Connection,
        stream: &str,
        queue: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (connection, stream, queue);
        async { Ok(()) }
    }

    /// The highest position of `stream` (0 when it is empty).
    fn stream_head(
        connection: &mut Self::Connection,
        stream: &str,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// The events of `stream` after position `after`, up to `through`, in order, at most
    /// `limit`.
    fn read_stream(
        connection: &mut Self::Connection,
        stream: &str,
        after: i64,
        through: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<crate::state::rows::StreamRow>>> + Send;

    /// Inserts stream events, skipping the positions taken (PostgreSQL waits for the
    /// transaction that holds one to end); returns the positions inserted.
    fn append_stream(
        connection: &mut Self::Connection,
        rows: &[crate::state::rows::NewStreamRow<'_>],
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Deletes these positions of `stream` (an append that conflicted halfway, in its own
    /// transaction).
    fn delete_stream_positions(
        connection: &mut Self::Connection,
        stream: &str,
        positions: &[i64],
    ) -> impl Future<Output = Result<usize>> + Send;

    /// The snapshots of `projection`, every version, newest saved first.
    fn load_snapshots(
        connection: &mut Self::Connection,
        projection: &str,
    ) -> impl Future<Output = Result<Vec<crate::state::rows::SnapshotRow>>> + Send;

    /// The operation and append time of the event at `position` of `stream`, if any.
    fn stream_anchor(
        connection: &mut Self::Connection,
        stream: &str,
        position: i64,
    ) -> impl Future<Output = Result<Option<(String, i64)>>> + Send;

    /// Saves a snapshot over the one of the same projection and version.
    fn save_snapshot(
        connection: &mut Self::Connection,
        row: &crate::state::rows::SnapshotRow,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records a quarantined stream event (once: another host's record is kept).
    fn quarantine_stream_event(
        connection: &mut Self::Connection,
        row: &crate::state::rows::QuarantineRow,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The quarantined events of `projection` at `version`, by stream and position, at most
    /// `limit`.
    fn list_quarantine(
        connection: &mut Self::Connection,
        projection: &str,
        version: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<crate::state::rows::QuarantineRow>>> + Send;

    /// Deletes the events of `stream` appended before `before` (µs), all but the last one
    /// (which keeps the head, so that positions are never reused).
    fn trim_stream(
        connection: &mut Self::Connection,
        stream: &str,
        before: i64,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// The statement run first in a transaction that reads a consistent snapshot of several
    /// tables (PostgreSQL: `REPEATABLE READ`); `None` when `BEGIN` gives one (SQLite).
    fn snapshot_statement() -> Option<&'static str> {
        None
    }

    /// The value of `key` in `map` (JSON).
    fn map_get(
        connection: &mut Self::Connection,
        map: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Sets the value of `key` in `map`.
    fn map_put(
        connection: &mut Self::Connection,
        map: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes `key` from `map`; the rows deleted.
    fn map_delete(
        connection: &mut Self::Connection,
        map: &str,
        key: &str,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Deletes every entry of `map`; the rows deleted.
    fn map_clear(
        connection: &mut Self::Connection,
        map: &str,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// The entries of `map` (key and value, JSON), by key, after `after` (exclusive), at most
    /// `limit`.
    fn map_entries(
        connection: &mut Self::Connection,
        map: &str,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// The number of entries of `map`.
    fn map_len(
        connection: &mut Self::Connection,
        map: &str,
    ) -> impl Future<Output = Result<i64>> + Send;
}

/// Where a fresh log reader starts (see [`Backend::start_position`]).
#[derive(Debug, Clone, Default)]
pub struct StartPosition {
    /// The highest index committed.
    pub cursor: i64,
    /// Transactions in flight (PostgreSQL transaction ids): rows they commit later may have
    /// lower indexes than `cursor`.
    pub in_flight: Vec<i64>,
    /// PostgreSQL: the horizon (`xmax`) of the snapshot the cursor was read in. A transaction
    /// with an id at or above it was invisible to that snapshot; one that ended while the
    /// start was being read is in neither list: its rows up to `cursor` are read once after
    /// the start ([`Backend::rows_at_or_above`]).
    pub horizon: Option<i64>,
}

/// What the server says about a transaction (PostgreSQL's `pg_xact_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// It committed.
    Committed,
    /// It aborted (rolled back, or its session ended before `COMMIT` was processed).
    Aborted,
    /// It is still running: its session may still commit or abort it.
    InProgress,
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Begins a transaction through the connection's transaction manager, then sets the isolation
/// level the settings say: what [`Backend::begin_operation`] does by default.
pub(crate) async fn begin_with_manager<B: Backend + ?Sized>(
    connection: &mut B::Connection,
    settings: &crate::DbSettings,
) -> Result<()> {
    use diesel_async::{SimpleAsyncConnection, TransactionManager};
    <B::Connection as AsyncConnection>::TransactionManager::begin_transaction(connection).await?;
    if let Some(isolation) = B::isolation_statement(settings) {
        connection.batch_execute(isolation).await?;
    }
    Ok(())
}
