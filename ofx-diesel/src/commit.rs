//! Committing an operation's transaction, and, when `COMMIT` fails, finding out for certain
//! whether it committed anyway.
//!
//! A `COMMIT` whose reply never arrived (the connection broke) may have committed, may have
//! aborted, or may still be committing in the server's session. "Not committed" is said only
//! when that is certain:
//!
//! - **PostgreSQL**: the operation row's insert recorded the transaction's id (`xid`). On a
//!   fresh connection (never the pool's, whose state may be as broken as the scope's), until
//!   [`DbSettings::commit_verification`](crate::DbSettings) has passed: the operation's row is
//!   there → committed; otherwise `pg_xact_status(xid)` says `committed` → committed,
//!   `aborted` → not committed, `in progress` (the old session has not finished) → ask again a
//!   little later. The period passing, the server unreachable, an unknown transaction or no
//!   recorded id (absence alone proves nothing) → in doubt.
//! - **SQLite**: one process-local writer. Once `COMMIT` failed on our connection and that
//!   connection is closed (which rolls back whatever it still had open), the transaction can
//!   never commit: a lookup of the uuid on a fresh connection is exact.

use std::time::Duration;

use diesel_async::{AsyncConnection, TransactionManager};
use tokio::time::Instant;
use uuid::Uuid;

use crate::backend::{Backend, TransactionStatus};
use crate::db_hub::DbHub;
use crate::error::Doubt;
use crate::row::Inserted;
use crate::{Error, Result};

/// The first pause between two questions to the database while verifying.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two questions.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// How an operation's commit ended.
#[derive(Debug)]
pub(crate) enum CommitVerdict {
    /// It committed (`COMMIT` succeeded, or verification found that it did): the operation is in
    /// the log at this index.
    Committed {
        /// The operation row's index.
        sequence: i64,
    },
    /// It certainly did not commit: [`Error::CommitFailed`].
    NotCommitted(Error),
    /// Whether it committed is unknown: [`Error::CommitInDoubt`].
    InDoubt(Error),
}

/// Commits the transaction open on `connection` (the scope's, with the operation row inserted as
/// `inserted`) and, if `COMMIT` fails, finds out whether operation `operation` committed.
///
/// On success the connection goes back to the pool. After a failed `COMMIT` it is closed before
/// verification starts, so that the transaction cannot commit later on it; verification runs in
/// a task of its own, which a caller cancelled meanwhile cannot cut short (the verdict is then
/// only logged). `COMMIT` itself runs in the caller's task (a task per command would cost every
/// command a hand-off): a caller cancelled during `COMMIT` leaves the connection to be
/// discarded, and an operation that committed then reaches this host's caches through its log
/// reader, as another host's would.
pub(crate) async fn commit<B: Backend>(
    db: &DbHub<B>,
    mut connection: B::Pooled,
    operation: Uuid,
    inserted: Inserted,
) -> CommitVerdict {
    let committed =
        <B::Connection as AsyncConnection>::TransactionManager::commit_transaction(&mut connection)
            .await;
    settle(db, connection, operation, inserted, committed).await
}

/// The verdict on a `COMMIT` already sent on `connection` (by [`commit`], or together with
/// the operation row by `Backend::insert_operation_and_commit`), whose result is `committed`:
/// committed, or, when it failed, what verification finds (as [`commit`] says).
pub(crate) async fn settle<B: Backend>(
    db: &DbHub<B>,
    connection: B::Pooled,
    operation: Uuid,
    inserted: Inserted,
    committed: diesel::QueryResult<()>,
) -> CommitVerdict {
    let source = match committed {
        Ok(()) => {
            return CommitVerdict::Committed {
                sequence: inserted.idx,
            };
        }
        Err(source) => source,
    };
    tracing::warn!(%operation, %source, xid = ?inserted.xid, "commit failed; verifying");
    // Whatever the connection still has open must never commit: closing it rolls it back (a
    // SQLite transaction whose COMMIT failed with SQLITE_BUSY is still open).
    B::discard(connection);
    let task = tokio::spawn(verify(db.clone(), operation, inserted, source));
    match task.await {
        Ok(verdict) => verdict,
        Err(join) => CommitVerdict::InDoubt(Error::CommitInDoubt {
            operation,
            reason: Doubt::Task(join),
        }),
    }
}

/// The verdict on operation `operation`, whose `COMMIT` failed with `source`.
async fn verify<B: Backend>(
    db: DbHub<B>,
    operation: Uuid,
    inserted: Inserted,
    source: diesel::result::Error,
) -> CommitVerdict {
    let verdict = match resolve(&db, operation, inserted).await {
        // The index the log has, or, when the row was not visible yet to verification, the
        // one the insert returned (`resolve` waits for the row when the insert's reply was
        // lost).
        Resolution::Committed(found) => CommitVerdict::Committed {
            sequence: found.unwrap_or(inserted.idx),
        },
        Resolution::NotCommitted => {
            CommitVerdict::NotCommitted(Error::CommitFailed { operation, source })
        }
        Resolution::InDoubt(reason) => {
            CommitVerdict::InDoubt(Error::CommitInDoubt { operation, reason })
        }
    };
    match &verdict {
        CommitVerdict::Committed { .. } => {
            tracing::info!(%operation, "the commit failed on the client, but it happened");
        }
        CommitVerdict::NotCommitted(error) | CommitVerdict::InDoubt(error) => {
            tracing::warn!(%operation, %error, "commit verified");
        }
    }
    verdict
}

/// What verification concluded.
#[derive(Debug)]
enum Resolution {
    /// Committed; with the row's index when verification found the row.
    Committed(Option<i64>),
    NotCommitted,
    InDoubt(Doubt),
}

/// One answer of the database.
enum Answer {
    /// Settled.
    Final(Resolution),
    /// Not settled yet: ask again (and if the period ends first, this is why).
    Again(Doubt),
}

/// Asks the database, on fresh connections, until it settles whether `operation` committed or
/// the verification period ends.
async fn resolve<B: Backend>(db: &DbHub<B>, operation: Uuid, inserted: Inserted) -> Resolution {
    let period = db.settings().commit_verification;
    let deadline = Instant::now() + period;
    let uuid = operation.to_string();
    let mut connection: Option<B::Connection> = None;
    let mut pause = FIRST_PAUSE;
    let mut doubt = Doubt::NoAnswer(period);
    while Instant::now() < deadline {
        let asked = tokio::time::timeout_at(
            deadline,
            ask::<B>(db.url(), &mut connection, &uuid, inserted, period),
        )
        .await;
        match asked {
            Ok(Ok(Answer::Final(resolution))) => return resolution,
            Ok(Ok(Answer::Again(why))) => doubt = why,
            Ok(Err(error)) => {
                connection = None; // a new one next time
                doubt = Doubt::Unreachable(Box::new(error));
            }
            Err(_elapsed) => {
                // The question was cut at the deadline: if an earlier one got no answer either,
                // say so; an earlier answer ("in progress") is the better reason.
                if matches!(doubt, Doubt::Unreachable(_) | Doubt::NoAnswer(_)) {
                    doubt = Doubt::NoAnswer(period);
                }
                break;
            }
        }
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
    Resolution::InDoubt(doubt)
}

/// Asks once, on `connection` (opened first if there is none).
async fn ask<B: Backend>(
    url: &str,
    connection: &mut Option<B::Connection>,
    uuid: &str,
    inserted: Inserted,
    period: Duration,
) -> Result<Answer> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(
            B::connect(url)
                .await
                .map_err(|error| Error::Connect(error.to_string()))?,
        ),
    };
    if let Some(idx) = B::find(connection, uuid).await? {
        return Ok(Answer::Final(Resolution::Committed(Some(idx))));
    }
    if B::FAILED_COMMIT_IS_FINAL {
        return Ok(Answer::Final(Resolution::NotCommitted));
    }
    let Some(xid) = inserted.xid else {
        // Without the transaction's id, a row not there yet may still come.
        return Ok(Answer::Again(Doubt::NoTransactionId(period)));
    };
    Ok(match B::transaction_status(connection, xid).await? {
        Some(TransactionStatus::Committed) => {
            // The commit log says committed: certain. The row becomes visible to new snapshots
            // a moment after the commit log records the commit, hence a row looked up before
            // this answer may have been missed.
            match B::find(connection, uuid).await? {
                Some(idx) => Answer::Final(Resolution::Committed(Some(idx))),
                None if inserted.has_index() => {
                    tracing::debug!(uuid, xid, "committed, its row not visible yet");
                    Answer::Final(Resolution::Committed(None))
                }
                // Committed, but the row's index is known only from the row, visible a moment
                // after the commit: ask again.
                None => Answer::Again(Doubt::InProgress(period)),
            }
        }
        Some(TransactionStatus::Aborted) => Answer::Final(Resolution::NotCommitted),
        Some(TransactionStatus::InProgress) => Answer::Again(Doubt::InProgress(period)),
        None => {
            if let Some(idx) = B::find(connection, uuid).await? {
                Answer::Final(Resolution::Committed(Some(idx)))
            } else {
                Answer::Final(Resolution::InDoubt(Doubt::UnknownTransaction(xid)))
            }
        }
    })
}
