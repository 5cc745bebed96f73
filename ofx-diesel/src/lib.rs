//! # ofx-diesel
//!
//! The operation log of ofx on Diesel and diesel-async: a **transactional outbox** (each
//! command's operation is stored in the transaction of its own writes), the **log reader** that
//! replays other hosts' operations on this host, and the **trimmer**. On SQLite (the embedded
//! default) and PostgreSQL.
//!
//! ## How it fits together
//!
//! | piece | what it does |
//! |---|---|
//! | [`DbHub`] | one database: its pool, settings and migrations ([`DbHub::open`]); added to a hub with `HubBuilder::with`, it starts there its watcher, [`LogReader`] and [`Trimmer`] |
//! | [`DbOperationScope`] | the operation's [`OperationScope`](ofx_core::OperationScope): the first [`DbHub::operation_connection`] of a command begins a transaction that its nested commands share; after the outermost main branch succeeded, the operation row is inserted and the transaction committed (an ambiguous commit is verified), on failure everything is rolled back |
//! | [`LogReader`] | polls the log (jittered, or when woken), skips what this hub completed (by uuid), decodes each operation through the compile-time registry and replays its invalidation; unreadable rows are logged and skipped, replays that fail for a passing reason are retried |
//! | [`Trimmer`] | deletes operations older than the log's max age, and finished events older than theirs, in bounded batches |
//! | [`EventProcessor`] | claims due events under a lease with a fencing number, runs each as its own operation, marks it done in that operation's transaction; retries, dead events (see [`events`]) |
//! | [`DbEvents`] | lists events, redrives and purges dead ones ([`DbHub::events`]) |
//! | [`DbLog`], [`HostInfo`] | what operators read (the `ofx` command line): the log's newest operations, one by uuid ([`DbHub::log`]); each host's reader position, written by its heartbeat ([`DbHub::hosts`], [`DbSettings::host_heartbeat`]); the state tables ([`inspect`]) |
//! | [`state::StateService`] | a state projected from a stream of domain events, followed on every host: readiness, current vs local state, snapshots, quarantine (see [`state`]) |
//! | [`maps::MapManager`] | transactional maps ([`maps::ReliableMap`]) whose changes every host delivers to observers in redo order, with commit sequence numbers and rebuilds (see [`maps`]) |
//!
//! A host in three steps (the order cannot be wrong: a watcher set after the hub started is an
//! error, and a command on a hub the database is not attached to is refused):
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ofx_diesel::{DbHub, DbSettings, Sqlite};
//!
//! let db = DbHub::<Sqlite>::open("app.db", DbSettings::default()).await?;
//! // db.set_watcher(ofx_watchers::FsWatcher::factory("/run/app", "app"))?;
//! let hub = ofx_core::Hub::builder().with(db.clone()).start().await?;
//! // hub.add_service(&service); handlers: `let mut conn = db.operation_connection(ctx).await?;`
//! # drop(hub); Ok(()) }
//! ```
//!
//! ## The promises, and how they are tested
//!
//! - **No false failure.** A command whose `COMMIT` broke is reported failed
//!   ([`Error::CommitFailed`]) only when the database says it did not commit; when that cannot
//!   be known in time, [`Error::CommitInDoubt`] (the core's `Error::CommitInDoubt`). Tested
//!   through a TCP proxy that cuts the connection before, during and after `COMMIT`.
//! - **Exact reader start.** A reader misses no operation that commits after it started, however
//!   long its transaction was open; a reader started again on its hub resumes (see
//!   [`DbHub::start_log_reader`]). Tested with a transaction held open across a reader's start,
//!   and with a reader stopped while other hosts commit.
//! - **Read-your-writes across hosts.** `Commander::call_committed` returns the operation's log
//!   sequence; [`LogReader::wait_replayed`] waits until another host replayed it.
//! - **Bad rows are isolated**, counted and skipped; a replay that fails for a reason that may
//!   pass is retried ([`DbSettings::replay_retry_window`]); a panicking invalidation branch is
//!   caught and the reader goes on.

//! ## Rows that commit out of order
//!
//! On PostgreSQL, concurrent transactions take sequence values in one order and may commit in
//! another, so a reader can see index `n + 1` before `n` exists. The reader keeps the indexes it
//! skipped over as **gaps** (ranges, at most [`MAX_GAPS`]) with the transactions that may still
//! fill them (those running just after the read: each operation row records its transaction id,
//! taken before its index is drawn), reads them again on every poll, and closes a gap once those
//! transactions have finished and a last read found nothing: a rolled-back transaction's gap
//! closes when it rolls back. Indexes the sequence has not handed out yet (below a row written
//! far ahead of it) wait until it does. [`DbSettings::gap_retention`] is only a safety net for a
//! gap held open by an unrelated long write transaction on the server. See
//! [`LogReader`](LogReader#gaps). SQLite has one writer, and each insert takes the index past
//! the newest: rows commit in index order.
//!
//! ## A `COMMIT` that fails
//!
//! A `COMMIT` whose reply was lost may have committed. The scope then finds out, on a fresh
//! connection and within [`DbSettings::commit_verification`], and says "not committed"
//! ([`Error::CommitFailed`]) only when that is certain; otherwise the call succeeds (it did
//! commit) or fails with [`Error::CommitInDoubt`]. On PostgreSQL each operation row records the
//! id of its transaction (`xid`), and `pg_xact_status` tells a transaction that aborted from one
//! whose session is still committing; on SQLite, one process-local writer, the operation's
//! presence in the log settles it once the failed connection is closed.
//!
//! On PostgreSQL the operation row and `COMMIT` are sent together (pipelined: one round trip),
//! and `BEGIN` takes the transaction's id in its own round trip: if the row's reply is lost
//! too, verification asks about that id and finds the row's index by the operation's uuid.
//!
//! ## Coverage loss
//!
//! The trimmer records how far it deleted (`ofx_log_trims`) before deleting. A reader whose
//! cursor is below that mark (its host was down longer than the log's max age) cannot know what
//! it missed: it logs an error, invalidates every value cached on its hub, and goes on from the
//! mark.
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | [`Sqlite`]: bundled SQLite through diesel-async's sync-connection wrapper, WAL |
//! | `postgres` | no | `Postgres`: diesel-async's `AsyncPgConnection` with a deadpool pool |
//! | `http` | no | `state::status_router`: the state services' `/status` route for load balancers (axum) |

mod backend;
mod clock;
mod commit;
mod db_hub;
mod error;
pub mod events;
mod following;
mod hints;
mod hosts;
pub mod inspect;
mod link;
pub mod maps;
#[cfg(feature = "postgres")]
mod postgres;
mod queries;
mod reader;
mod row;
mod schema;
mod scope;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod state;
pub mod telemetry;
mod transient;
mod trimmer;

pub use backend::{Backend, StartPosition, TransactionStatus};
pub use clock::WallClock;
pub use db_hub::{CommitFaultHook, DbHub, DbSettings};
pub use error::{Doubt, Error, Result};
pub use events::{
    DbEvents, EventCounts, EventInfo, EventProcessor, EventRetry, EventSettings, EventState,
    EventStats,
};
pub use hosts::{Heartbeat, HostInfo};
pub use inspect::{DbLog, LoggedOperation};
#[cfg(feature = "postgres")]
pub use postgres::Postgres;
pub use reader::{LogReader, MAX_GAPS, MAX_RETRIES, ReaderStats, ReplayBlock};
pub use row::{BadRow, Inserted, MAX_PAYLOAD_BYTES, NewOperationRow, OperationRow};
pub use scope::{DbOperationScope, OperationConnection};
#[cfg(feature = "sqlite")]
pub use sqlite::{Sqlite, SqliteAsyncConnection};
pub use trimmer::Trimmer;
