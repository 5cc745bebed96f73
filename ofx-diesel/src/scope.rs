//! [`DbOperationScope`]: the transactional outbox. The operation's row is inserted in the
//! transaction of the handlers' writes, then committed with them, or nothing is.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::SystemTime;

use diesel_async::{AsyncConnection, TransactionManager};
use ofx_core::{CallKind, CommandCall, CommandFilter, CommandFuture, Next};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::backend::Backend;
use crate::db_hub::{DbHub, DbInner};
use crate::row::{MAX_PAYLOAD_BYTES, NewOperationRow, micros};
use crate::{Error, Result};

/// The priority of [`DbOperationScope`]: inside the in-memory scope (which then notifies the
/// completion), outside the invalidation filter.
pub const DATABASE_OPERATION_SCOPE: i32 = 90_000;

/// The database operation scope filter. For an outermost command whose handlers asked for
/// [`DbHub::operation_connection`]: on success it inserts the operation row and commits the
/// transaction; on any failure it rolls back, so that no business row, no operation row and no
/// invalidation remain. A command that touched no database is left to the in-memory scope.
///
/// When `COMMIT` fails, it finds out on a fresh connection (for up to
/// [`DbSettings::commit_verification`](crate::DbSettings), even if the caller gave up meanwhile)
/// whether the operation committed, and reports it: success, [`Error::CommitFailed`] (certainly
/// not committed: on PostgreSQL, its transaction aborted) or [`Error::CommitInDoubt`].
pub struct DbOperationScope<B: Backend> {
    db: DbHub<B>,
}

impl<B: Backend> std::fmt::Debug for DbOperationScope<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbOperationScope")
            .field("backend", &B::NAME)
            .finish()
    }
}

impl<B: Backend> DbOperationScope<B> {
    pub(crate) fn new(db: DbHub<B>) -> Self {
        Self { db }
    }
}

/// The state of one operation's database scope, shared by its commands through the context.
pub(crate) struct ScopeState<B: Backend> {
    pub(crate) db: Arc<DbInner<B>>,
    connection: Arc<Mutex<Option<B::Pooled>>>,
}

impl<B: Backend> ScopeState<B> {
    /// The scope's connection, its transaction begun on first use.
    pub(crate) async fn connection(&self) -> Result<OperationConnection<B>> {
        // Held means held by this very operation (its commands run one after another): waiting
        // would never end. Say so instead.
        let mut guard = Arc::clone(&self.connection)
            .try_lock_owned()
            .map_err(|_| Error::ConnectionInUse)?;
        if guard.is_none() {
            let mut connection = B::get(&self.db.pool).await?;
            <B::Connection as AsyncConnection>::TransactionManager::begin_transaction(
                &mut connection,
            )
            .await?;
            *guard = Some(connection);
        }
        Ok(OperationConnection { guard })
    }

    fn take(&self) -> Option<B::Pooled> {
        self.connection
            .try_lock()
            .ok()
            .and_then(|mut guard| guard.take())
    }
}

impl<B: Backend> Drop for ScopeState<B> {
    fn drop(&mut self) {
        // Dropped with a transaction open (the command was cancelled): the connection must not
        // go back to the pool mid-transaction. Closing it makes the server roll back.
        if let Some(connection) = self.take() {
            B::discard(connection);
        }
    }
}

/// The connection of an operation's scope, in its transaction. Dereferences to the backend's
/// connection, for Diesel queries.
pub struct OperationConnection<B: Backend> {
    guard: OwnedMutexGuard<Option<B::Pooled>>,
}

impl<B: Backend> std::fmt::Debug for OperationConnection<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationConnection")
            .field("backend", &B::NAME)
            .finish()
    }
}

impl<B: Backend> Deref for OperationConnection<B> {
    type Target = B::Connection;

    fn deref(&self) -> &Self::Target {
        match self.guard.as_ref() {
            Some(connection) => connection,
            None => unreachable!("an operation connection holds its connection"),
        }
    }
}

impl<B: Backend> DerefMut for OperationConnection<B> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self.guard.as_mut() {
            Some(connection) => connection,
            None => unreachable!("an operation connection holds its connection"),
        }
    }
}

impl<B: Backend> CommandFilter for DbOperationScope<B> {
    fn priority(&self) -> i32 {
        DATABASE_OPERATION_SCOPE
    }

    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
        if call.context().kind() != CallKind::Outermost {
            return next.run(call);
        }
        Box::pin(async move {
            let state = Arc::new(ScopeState {
                db: Arc::clone(&self.db.inner),
                connection: Arc::new(Mutex::new(None)),
            });
            call.context().context_items().set(Arc::clone(&state));
            let result = next.run(call).await;
            let Some(mut connection) = state.take() else {
                return result; // no database work: an in-memory operation
            };
            let output = match result {
                Ok(output) => output,
                Err(error) => {
                    rollback::<B>(&mut connection).await;
                    return Err(error);
                }
            };
            match self.commit(call, connection).await {
                Ok(()) => Ok(output),
                Err(error) => Err(error.into()),
            }
        })
    }
}

impl<B: Backend> DbOperationScope<B> {
    /// Inserts the operation row and commits, verifying an ambiguous commit.
    async fn commit(&self, call: &CommandCall, mut pooled: B::Pooled) -> Result<()> {
        let connection = &mut pooled;
        let operation = match call.finish_operation() {
            Ok(operation) => operation,
            Err(source) => {
                rollback::<B>(connection).await;
                return Err(Error::Encode {
                    operation: call.context().operation_id(),
                    source,
                });
            }
        };
        let command_json = serde_json::to_string(&operation.command)?;
        let items_json = serde_json::to_string(&operation.items)?;
        let nested_json = serde_json::to_string(&operation.nested)?;
        let size = command_json.len() + items_json.len() + nested_json.len();
        if size > MAX_PAYLOAD_BYTES {
            rollback::<B>(connection).await;
            return Err(Error::PayloadTooLarge {
                operation: operation.uuid,
                size,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let uuid = operation.uuid.to_string();
        let row = NewOperationRow {
            uuid: &uuid,
            host_id: &operation.host_id,
            logged_at: micros(operation.logged_at),
            committed_at: micros(SystemTime::now()),
            command_name: &operation.command_name,
            command_json: &command_json,
            items_json: &items_json,
            nested_json: &nested_json,
        };
        let inserted = match B::insert_operation(connection, row).await {
            Ok(inserted) => inserted,
            Err(error) => {
                rollback::<B>(connection).await;
                return Err(error);
            }
        };
        let fault = self
            .db
            .inner
            .fault
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(fault) = fault {
            fault(connection).await;
        }
        // --- commit, and verify a failed COMMIT: see `crate::commit` ---
        let committed = crate::commit::commit(&self.db, pooled, operation.uuid, inserted)
            .await
            .into_result()
            .map(|_sequence| ());
        // --- end of commit ---
        if committed.is_ok()
            && let Some(watcher) = self.db.watcher()
        {
            // After the commit, never inside the transaction: a wake-up must not announce what
            // may still roll back (and NOTIFY inside a transaction serializes committers).
            watcher.notify();
        }
        committed
    }
}

/// Rolls back; a connection that cannot roll back is dropped from the pool.
async fn rollback<B: Backend>(connection: &mut B::Pooled) {
    if let Err(error) =
        <B::Connection as AsyncConnection>::TransactionManager::rollback_transaction(connection)
            .await
    {
        tracing::warn!(%error, "rollback failed; the connection is discarded");
    }
}
