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
//! | [`DbHub`] | one database: its pool, settings and migrations ([`DbHub::open`]) |
//! | [`DbOperationScope`] | the command filter (priority [`DATABASE_OPERATION_SCOPE`]): the first [`DbHub::operation_connection`] of a command begins a transaction that its nested commands share; on success the operation row is inserted and the transaction committed (a failed `COMMIT` is verified: see below), on failure everything is rolled back |
//! | [`LogReader`] | polls the log (jittered, or when woken), skips what this hub completed (by uuid), decodes each operation through the compile-time registry and replays its invalidation; unreadable rows are logged and skipped |
//! | [`Trimmer`] | deletes operations older than the log's max age, in bounded batches |
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ofx_diesel::{DbHub, DbSettings, Sqlite};
//!
//! let db = DbHub::<Sqlite>::open("app.db", DbSettings::default()).await?;
//! let hub = ofx_core::Hub::builder().filter(db.operation_scope()).build()?;
//! let reader = db.start_log_reader(&hub);      // replays other hosts' operations
//! let trimmer = db.start_trimmer(hub.shutdown_token());
//! // handlers: `let mut conn = db.operation_connection(ctx).await?;` then Diesel queries on `&mut *conn`
//! # drop((reader, trimmer)); Ok(()) }
//! ```
//!
//! ## Rows that commit out of order
//!
//! On PostgreSQL, concurrent transactions take sequence values in one order and may commit in
//! another, so a reader can see index `n + 1` before `n` exists. The reader keeps the indexes it
//! skipped over as **gaps** (at most [`MAX_GAPS`]), reads them again on every poll, and gives
//! a gap up after [`DbSettings::gap_retention`] (a rolled-back transaction leaves a gap that
//! never fills). SQLite has one writer and `AUTOINCREMENT`: rows commit in index order.
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

mod backend;
mod commit;
mod db_hub;
mod error;
#[cfg(feature = "postgres")]
mod postgres;
mod queries;
mod reader;
mod row;
mod schema;
mod scope;
#[cfg(feature = "sqlite")]
mod sqlite;
mod trimmer;

pub use backend::{Backend, TransactionStatus};
pub use db_hub::{CommitFaultHook, DbHub, DbSettings};
pub use error::{Doubt, Error, Result};
#[cfg(feature = "postgres")]
pub use postgres::Postgres;
pub use reader::{LogReader, MAX_GAPS, ReaderStats};
pub use row::{BadRow, Inserted, MAX_PAYLOAD_BYTES, NewOperationRow, OperationRow};
pub use scope::{DATABASE_OPERATION_SCOPE, DbOperationScope, OperationConnection};
#[cfg(feature = "sqlite")]
pub use sqlite::{Sqlite, SqliteAsyncConnection};
pub use trimmer::Trimmer;
