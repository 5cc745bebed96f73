//! [`OperationScope`]: where an operation is committed, and what it answers.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use super::Operation;
use crate::{Error, Hub};

/// The future of a scope's commit or rollback.
pub type ScopeFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where and when an operation was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Committed {
    /// Its position in the operation log (`None` for an operation that was not stored). Wait
    /// for another host to have replayed it with the log reader's `wait_replayed`.
    pub sequence: Option<i64>,
    /// When it was committed.
    pub at: SystemTime,
}

impl Committed {
    /// Committed at `at`, at `sequence` in its log.
    pub fn new(sequence: Option<i64>, at: SystemTime) -> Self {
        Self { sequence, at }
    }
}

/// What a scope's commit answers. A storage says [`NotCommitted`](Self::NotCommitted) only when
/// it is certain; when it cannot know (the connection broke during `COMMIT` and the outcome
/// could not be verified), it says [`InDoubt`](Self::InDoubt), and the caller gets
/// [`Error::CommitInDoubt`]: check before running a non-idempotent command again.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommitOutcome {
    /// The operation and everything written in its scope are stored.
    Committed(Committed),
    /// Nothing was stored: the caller gets this error, nothing is invalidated.
    NotCommitted(Error),
    /// Whether it was stored is unknown.
    InDoubt(Error),
}

/// A storage an operation writes to, begun lazily by the first handler that asks for it (for
/// example `DbHub::operation_connection` in ofx-diesel), shared by the operation's nested
/// commands, and committed once with the operation's record after the outermost main branch
/// succeeded, or rolled back when it failed. Without one, an operation is not stored (the
/// in-memory case): it commits at once, with no sequence number.
///
/// A scope is kept in a typed slot of the outermost command's context (see
/// [`CommandContext::operation_scope`](crate::CommandContext::operation_scope)); at most one
/// storing scope takes part in an operation.
pub trait OperationScope: Send + Sync + 'static {
    /// Stores `operation` with the scope's writes and commits them.
    fn commit<'a>(&'a self, operation: &'a Operation) -> ScopeFuture<'a, CommitOutcome>;

    /// Undoes the scope's writes (the main branch failed). Also what dropping an uncommitted
    /// scope must do.
    fn rollback(&self) -> ScopeFuture<'_, ()>;

    /// A nested command of the operation ended (`frame` is the last of its
    /// [`CommandContext::nested_frames`](crate::CommandContext::nested_frames)): keep its writes
    /// if it `succeeded`, undo them if not (a database rolls back to the savepoint it took when
    /// the nested command first wrote). The default does nothing (a scope whose writes cannot
    /// be partly undone should then refuse to commit an operation with a failed nested command).
    ///
    /// # Errors
    /// When the writes could not be kept or undone: the nested call fails with it.
    fn end_nested(&self, frame: u64, succeeded: bool) -> ScopeFuture<'_, Result<(), Error>> {
        let _ = (frame, succeeded);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether [`commit`](Self::commit) stores the operation's
    /// [`events`](Operation::events) in its transaction. An operation with events whose scope
    /// does not is refused rather than committed without them (default `false`).
    fn stores_events(&self) -> bool {
        false
    }

    /// Runs after a successful commit, before the hub's after-commit hooks and the invalidation
    /// pass: for example, waking the other hosts' log readers. Must not block.
    fn after_commit(&self, hub: &Hub, operation: &Operation) {
        let _ = (hub, operation);
    }
}

/// Something run after every operation this hub commits, in the order the hooks were added,
/// after the scope's own [`after_commit`](OperationScope::after_commit) and before the
/// invalidation pass. Must not block.
pub trait AfterCommitHook: Send + Sync + 'static {
    /// Called once per committed operation of this hub.
    fn after_commit(&self, hub: &Hub, operation: &Operation);
}
