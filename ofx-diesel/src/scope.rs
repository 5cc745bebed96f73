//! [`DbOperationScope`]: the transactional outbox. The operation's row is inserted in the
//! transaction of the handlers' writes, then committed with them, or nothing is.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::SystemTime;

use diesel_async::{AsyncConnection, SimpleAsyncConnection, TransactionManager};
use ofx_core::{CommitOutcome, Committed, Hub, Operation, OperationScope, ScopeFuture};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::backend::Backend;
use crate::commit::CommitVerdict;
use crate::db_hub::{DbHub, DbInner};
use crate::events::store::{EventClaim, store_events};
use crate::row::{MAX_PAYLOAD_BYTES, NewOperationRow, micros};
use crate::{Error, Result};

/// The database scope of one operation: begun by the first
/// [`DbHub::operation_connection`] of its commands (which begins the transaction they all
/// share), committed by the core after the outermost main branch succeeded: the operation's row
/// is inserted in the same transaction, then `COMMIT`. On any failure everything is rolled
/// back, so that no business row, no operation row and no invalidation remain.
///
/// A nested command's writes are kept in a savepoint, taken when it first writes: if it fails,
/// they are rolled back to it, even when the outer handler swallows the error and goes on, so a
/// failed nested command leaves no write (as it leaves no invalidation).
///
/// When `COMMIT` fails with an unknown outcome, the outcome is verified (see
/// [`DbSettings::commit_verification`](crate::DbSettings)), even if the caller gave up
/// meanwhile: committed, [`Error::CommitFailed`] when certainly not, or
/// [`Error::CommitInDoubt`].
pub struct DbOperationScope<B: Backend> {
    db: Arc<DbInner<B>>,
    connection: Arc<Mutex<Option<B::Pooled>>>,
    /// The nested commands that wrote, each with a savepoint, innermost last.
    savepoints: std::sync::Mutex<Vec<u64>>,
    /// The event this operation runs, marked done in its transaction.
    claim: Option<EventClaim>,
    /// Whether the operation appended to a state service's stream.
    appended: std::sync::atomic::AtomicBool,
    /// The state services of the hub that follow the streams appended to, each with the
    /// last position appended: the commit waits until they have it.
    followers: std::sync::Mutex<Vec<(Arc<dyn crate::state::StreamFollower>, u64)>>,
    /// Once a map write took the maps' lock in this transaction: the change log's next
    /// position. Forgotten when a savepoint rolls back (its writes, and maybe the lock, with it).
    maps_next: std::sync::Mutex<Option<u64>>,
    /// The hub link of the hub whose streams were appended to: woken right after `COMMIT`.
    link: std::sync::Mutex<Option<Arc<crate::link::HubLink>>>,
    /// Whether the watcher and the followers were woken right after `COMMIT` (not again in
    /// `after_commit`).
    notified: std::sync::atomic::AtomicBool,
    /// The database's writer turn, held from `BEGIN` to the end of the transaction (a
    /// one-writer database).
    writer: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// The transaction's id, where the backend takes it at `BEGIN` (PostgreSQL): what commit
    /// verification asks the server about if the operation row's reply is lost.
    xid: std::sync::Mutex<Option<i64>>,
}

/// How long an operation waits for the writer turn of a one-writer database before it begins
/// anyway and leaves the waiting to the database (its busy timeout): only a handler that runs
/// another outermost command inside its own transaction waits that long, and then it fails as
/// it would without the turn.
const WRITER_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl<B: Backend> std::fmt::Debug for DbOperationScope<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbOperationScope")
            .field("backend", &B::NAME)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> DbOperationScope<B> {
    pub(crate) fn new(db: Arc<DbInner<B>>) -> Self {
        Self {
            db,
            connection: Arc::new(Mutex::new(None)),
            savepoints: std::sync::Mutex::new(Vec::new()),
            claim: None,
            appended: std::sync::atomic::AtomicBool::new(false),
            followers: std::sync::Mutex::new(Vec::new()),
            maps_next: std::sync::Mutex::new(None),
            link: std::sync::Mutex::new(None),
            notified: std::sync::atomic::AtomicBool::new(false),
            writer: std::sync::Mutex::new(None),
            xid: std::sync::Mutex::new(None),
        }
    }

    /// The scope of an operation that runs a claimed event.
    pub(crate) fn completing(db: Arc<DbInner<B>>, claim: EventClaim) -> Self {
        let mut scope = Self::new(db);
        scope.claim = Some(claim);
        scope
    }

    /// The scope's connection, its transaction begun on first use, with a savepoint for each
    /// nested command (`frames`, outermost first) that has none yet: what a failed nested
    /// command rolls back to.
    pub(crate) async fn connection(&self, frames: &[u64]) -> Result<OperationConnection<B>> {
        // Held means held by this very operation (its commands run one after another): waiting
        // would never end. Say so instead.
        let mut guard = Arc::clone(&self.connection)
            .try_lock_owned()
            .map_err(|_| Error::ConnectionInUse)?;
        if guard.is_none() {
            *guard = Some(self.begin().await?);
        }
        let missing: Vec<u64> = {
            let open = self.savepoints();
            // The open savepoints must be this call's own frame and its ancestors: one of
            // another nested command running at the same time would take this call's writes
            // with it when it rolls back.
            if !frames.starts_with(&open) {
                return Err(Error::ConcurrentNestedWrites);
            }
            frames[open.len()..].to_vec()
        };
        if let Some(connection) = guard.as_mut() {
            for frame in missing {
                // Within a transaction, diesel's transaction manager begins a savepoint.
                <B::Connection as AsyncConnection>::TransactionManager::begin_transaction(
                    connection,
                )
                .await?;
                self.savepoints().push(frame);
            }
        }
        Ok(OperationConnection { guard })
    }

    /// A connection with the operation's transaction begun. Connections are checked out
    /// without a test query, so a pooled one may have died unseen (its server restarted, a
    /// network path dropped it): its `BEGIN` fails, before anything of the operation was sent,
    /// and the operation begins again on another. Each failed connection is discarded; once
    /// the pool's idle ones are used up it opens new ones, and a `BEGIN` failing on a new
    /// connection is the operation's error.
    async fn begin(&self) -> Result<B::Pooled> {
        // A one-writer database (SQLite): the operations of this process take turns here, so
        // that a waiting one wakes as soon as the one before it ends, instead of sleeping in
        // the database's busy handler (1 ms and more per try).
        if B::ONE_WRITER {
            let turn = Arc::clone(&self.db.writer).acquire_owned();
            if let Ok(Ok(permit)) = tokio::time::timeout(WRITER_TURN_WAIT, turn).await {
                *self
                    .writer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(permit);
            }
        }
        loop {
            let mut connection = B::get(&self.db.pool).await?;
            match B::begin_operation(&mut connection, &self.db.settings).await {
                Ok(xid) => {
                    *self
                        .xid
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = xid;
                    return Ok(connection);
                }
                Err(error) => {
                    let reused = B::reused(&connection);
                    B::discard(connection);
                    if !reused || !connection_lost(&error) {
                        return Err(error);
                    }
                    tracing::debug!(
                        %error,
                        "a pooled connection failed at BEGIN: beginning on another"
                    );
                    metrics::counter!(crate::telemetry::STALE_CONNECTIONS, "backend" => B::NAME)
                        .increment(1);
                }
            }
        }
    }

    /// Notes that the operation appended up to `position` to the stream these state services
    /// follow (its commit waits until they have it, and wakes the others).
    pub(crate) fn note_append(
        &self,
        link: Option<Arc<crate::link::HubLink>>,
        followers: Vec<Arc<dyn crate::state::StreamFollower>>,
        position: u64,
    ) {
        self.appended
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(link) = link {
            *self
                .link
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(link);
        }
        let mut noted = self
            .followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for follower in followers {
            match noted
                .iter_mut()
                .find(|(known, _)| Arc::ptr_eq(known, &follower))
            {
                Some((_, last)) => *last = (*last).max(position),
                None => noted.push((follower, position)),
            }
        }
    }

    /// The change log's next position for a map write, once this transaction holds the
    /// maps' lock (`None`: take the lock and read the head).
    pub(crate) fn maps_next(&self) -> Option<u64> {
        *self
            .maps_next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_maps_next(&self, next: Option<u64>) {
        *self
            .maps_next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
    }

    /// After a commit that appended: wakes the other hosts (their watchers) and this hub's
    /// followers at once, then waits until this hub's state services and map managers have
    /// the appends, so that the call returns with its own writes readable on its host.
    async fn await_followers(&self) {
        let link = self
            .link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(link) = link {
            if let Some(watcher) = link.watcher() {
                watcher.notify();
            }
            link.wake_streams();
            self.notified
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let followers = std::mem::take(
            &mut *self
                .followers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (follower, position) in followers {
            follower.catch_up_to(position).await;
        }
    }

    fn savepoints(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.savepoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Releases (the nested command succeeded) or rolls back to (it failed) the savepoint of
    /// `frame`, if it wrote.
    async fn end_frame(&self, frame: u64, succeeded: bool) -> Result<()> {
        if !self.savepoints().contains(&frame) {
            return Ok(()); // it did not write
        }
        if self.savepoints().last() != Some(&frame) {
            return Err(Error::Savepoint(format!(
                "nested command {frame} ended before the nested commands it called"
            )));
        }
        let mut guard = self
            .connection
            .try_lock()
            .map_err(|_| Error::ConnectionInUse)?;
        let Some(connection) = guard.as_mut() else {
            return Err(Error::Savepoint(
                "the operation's connection is gone".to_owned(),
            ));
        };
        self.savepoints().pop();
        if !succeeded {
            self.set_maps_next(None);
        }
        if succeeded {
            type Manager<B> = <<B as Backend>::Connection as AsyncConnection>::TransactionManager;
            let depth = Manager::<B>::transaction_manager_status_mut(connection)
                .transaction_depth()
                .ok()
                .flatten()
                .map(std::num::NonZeroU32::get);
            let Err(error) = Manager::<B>::commit_transaction(connection).await else {
                return Ok(());
            };
            // The nested command swallowed a database error of its own (PostgreSQL then
            // refuses everything but a rollback): it fails now, and its writes are undone so
            // that the outer command can go on. The transaction manager has already counted
            // the savepoint as left; it is still there, under the name diesel gave it.
            let Some(depth) = depth.filter(|depth| *depth > 1) else {
                return Err(error.into());
            };
            self.set_maps_next(None);
            let savepoint = format!("diesel_savepoint_{}", depth - 1);
            connection
                .batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT {savepoint}; RELEASE SAVEPOINT {savepoint}"
                ))
                .await?;
            return Err(Error::Savepoint(format!(
                "the nested command's writes were undone: its savepoint could not be released ({error})"
            )));
        }
        <B::Connection as AsyncConnection>::TransactionManager::rollback_transaction(connection)
            .await?;
        Ok(())
    }

    /// Takes the connection out for the commit or rollback; `Err` when a handler still holds it.
    fn take(&self) -> Result<Option<B::Pooled>> {
        self.connection
            .try_lock()
            .map(|mut guard| guard.take())
            .map_err(|_| Error::ConnectionInUse)
    }

    /// Takes the writer turn out of the scope (ending it when dropped).
    fn take_writer(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn db(&self) -> DbHub<B> {
        DbHub {
            inner: Arc::clone(&self.db),
        }
    }

    /// Inserts the operation row and commits, verifying an ambiguous commit.
    async fn store(&self, operation: &Operation) -> CommitOutcome {
        let connection = match self.take() {
            Ok(Some(connection)) => connection,
            // Begun, but no connection was taken (a handler ignored the error of
            // `operation_connection`): the operation is still stored.
            Ok(None) => match self.connection(&[]).await {
                Ok(mut guard) => match guard.guard.take() {
                    Some(connection) => connection,
                    None => return CommitOutcome::NotCommitted(Error::ConnectionInUse.into()),
                },
                Err(error) => return CommitOutcome::NotCommitted(error.into()),
            },
            Err(error) => return CommitOutcome::NotCommitted(error.into()),
        };
        // Out of the scope from here: if this future is dropped before the transaction ends
        // (the command was cancelled), the connection must not go back to the pool in it.
        let mut connection = OpenTransaction::<B>(Some(connection));
        // The writer turn ends with the transaction: when this returns, or before waiting for
        // the followers once committed.
        let writer = self.take_writer();
        let depth =
            <B::Connection as AsyncConnection>::TransactionManager::transaction_manager_status_mut(
                &mut connection,
            )
            .transaction_depth()
            .ok()
            .flatten()
            .map(std::num::NonZeroU32::get);
        if depth != Some(1 + self.savepoints().len() as u32) {
            // A handler committed or rolled back the operation's transaction itself: what it
            // wrote is no longer atomic with the operation row. Refuse, and close the
            // connection rather than return it in an unknown state.
            B::discard(connection.into_inner());
            return CommitOutcome::NotCommitted(
                Error::Savepoint(format!(
                    "the operation's transaction was ended or nested by a handler (depth {depth:?})"
                ))
                .into(),
            );
        }
        if !self.savepoints().is_empty() {
            // Every nested command ended (releasing or rolling back its savepoint) before its
            // outer command returned; one still open means one of them failed to end.
            rollback::<B>(&mut connection).await;
            return CommitOutcome::NotCommitted(
                Error::Savepoint("a nested command's savepoint is still open".to_owned()).into(),
            );
        }
        let row = match EncodedOperation::new(operation) {
            Ok(row) => row,
            Err(error) => {
                rollback::<B>(&mut connection).await;
                return CommitOutcome::NotCommitted(error.into());
            }
        };
        let committed_at = self.db.now();
        let fault = self
            .db
            .fault
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // The common case, nothing else to write and no fault to inject: the row and `COMMIT`
        // together (SQLite: one hop to the blocking pool instead of two).
        if self.claim.is_none() && operation.events.is_empty() && fault.is_none() {
            let xid = *self
                .xid
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stored =
                B::insert_operation_and_commit(&mut connection, row.new_row(committed_at), xid)
                    .await;
            let (inserted, committed) = match stored {
                Ok(stored) => stored,
                Err(error) => {
                    rollback::<B>(&mut connection).await;
                    return CommitOutcome::NotCommitted(error.into());
                }
            };
            let verdict = crate::commit::settle(
                &self.db(),
                connection.into_inner(),
                operation.uuid,
                inserted,
                committed,
            )
            .await;
            drop(writer);
            return self.outcome(verdict, committed_at).await;
        }
        // A run of a claimed event marks it done in the same transaction, if the claim is still
        // the event's (PostgreSQL: in the round trip of the operation row).
        let stored = match &self.claim {
            None => B::insert_operation(&mut connection, row.new_row(committed_at))
                .await
                .map(|inserted| (inserted, None)),
            Some(claim) => B::insert_operation_completing(
                &mut connection,
                row.new_row(committed_at),
                &claim.uuid.to_string(),
                claim.lease_token,
                micros(self.db.now()),
            )
            .await
            .map(|(inserted, completed)| {
                let lost = (!completed).then_some(Error::EventLeaseLost { event: claim.uuid });
                (inserted, lost)
            }),
        };
        let inserted = match stored {
            Ok((inserted, None)) => inserted,
            Ok((_, Some(error))) | Err(error) => {
                rollback::<B>(&mut connection).await;
                return CommitOutcome::NotCommitted(error.into());
            }
        };
        // The events after the completion: a run that reschedules its own event (same key,
        // `KeyConflict::Replace`) makes it pending again, rather than fencing off its own claim.
        if let Err(error) =
            store_events::<B>(&mut connection, operation, self.db.clock_skew()).await
        {
            rollback::<B>(&mut connection).await;
            return CommitOutcome::NotCommitted(error.into());
        }
        if let Some(fault) = fault {
            fault(&mut connection).await;
        }
        // `COMMIT`, and a failed one verified (see `crate::commit`).
        let verdict = crate::commit::commit(
            &self.db(),
            connection.into_inner(),
            operation.uuid,
            inserted,
        )
        .await;
        drop(writer);
        self.outcome(verdict, committed_at).await
    }

    /// The operation's outcome from its commit's verdict (once committed, after this hub's
    /// followers have what it appended).
    async fn outcome(&self, verdict: CommitVerdict, committed_at: SystemTime) -> CommitOutcome {
        match verdict {
            CommitVerdict::Committed { sequence } => {
                self.await_followers().await;
                CommitOutcome::Committed(Committed::new(Some(sequence), committed_at))
            }
            CommitVerdict::NotCommitted(error) => CommitOutcome::NotCommitted(error.into()),
            CommitVerdict::InDoubt(error) => CommitOutcome::InDoubt(error.into()),
        }
    }
}

impl<B: Backend> OperationScope for DbOperationScope<B> {
    fn commit<'a>(&'a self, operation: &'a Operation) -> ScopeFuture<'a, CommitOutcome> {
        Box::pin(self.store(operation))
    }

    fn rollback(&self) -> ScopeFuture<'_, ()> {
        Box::pin(async move {
            // Without a connection no transaction was begun; one a handler still holds is
            // closed when this scope is dropped.
            let _writer = self.take_writer();
            if let Ok(Some(mut connection)) = self.take() {
                rollback::<B>(&mut connection).await;
            }
        })
    }

    fn end_nested(&self, frame: u64, succeeded: bool) -> ScopeFuture<'_, ofx_core::Result<()>> {
        Box::pin(async move { self.end_frame(frame, succeeded).await.map_err(Into::into) })
    }

    fn stores_events(&self) -> bool {
        true
    }

    fn after_commit(&self, hub: &Hub, operation: &Operation) {
        // After the commit, never inside the transaction: a wake-up must not announce what may
        // still roll back (and NOTIFY inside a transaction serializes committers).
        let Some(link) = self.db().existing_link(hub) else {
            return;
        };
        // Woken right after `COMMIT` already when it appended to a stream.
        let woken = self.notified.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(watcher) = link.watcher()
            && !woken
        {
            // The operation goes with the wake-up, as a hint the other hosts replay at once.
            watcher.notify_committed(operation);
        }
        if !operation.events.is_empty() {
            // This host's processor runs them first; the watcher wakes the others'.
            link.wake_events();
        }
        if self.appended.load(std::sync::atomic::Ordering::Relaxed) && !woken {
            link.wake_streams();
        }
    }
}

impl<B: Backend> Drop for DbOperationScope<B> {
    fn drop(&mut self) {
        // Dropped with a transaction open (the command was cancelled): the connection must not
        // go back to the pool mid-transaction. Closing it makes the server roll back.
        if let Ok(Some(connection)) = self.take() {
            B::discard(connection);
        }
    }
}

/// An operation's JSON columns, encoded and checked against the log's size limit.
struct EncodedOperation {
    uuid: String,
    host_id: String,
    logged_at: i64,
    command_name: String,
    command_json: String,
    items_json: String,
    nested_json: String,
}

impl EncodedOperation {
    fn new(operation: &Operation) -> Result<Self> {
        // JSON values the core encoded already: writing them as text cannot fail.
        let command_json = serde_json::to_string(&operation.command)?;
        let items_json = serde_json::to_string(&operation.items)?;
        let nested_json = serde_json::to_string(&operation.nested)?;
        let size = command_json.len() + items_json.len() + nested_json.len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(Error::PayloadTooLarge {
                operation: operation.uuid,
                size,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(Self {
            uuid: operation.uuid.to_string(),
            host_id: operation.host_id.to_string(),
            logged_at: micros(operation.logged_at),
            command_name: operation.command_name.clone(),
            command_json,
            items_json,
            nested_json,
        })
    }

    fn new_row(&self, committed_at: SystemTime) -> NewOperationRow<'_> {
        NewOperationRow {
            uuid: &self.uuid,
            host_id: &self.host_id,
            logged_at: self.logged_at,
            committed_at: micros(committed_at),
            command_name: &self.command_name,
            command_json: &self.command_json,
            items_json: &self.items_json,
            nested_json: &self.nested_json,
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

/// Rolls back; a connection that cannot roll back is dropped from the pool.
/// A connection taken out of its scope with its transaction open: dropped before the
/// transaction ended (its future was cancelled), it is closed rather than returned to the pool
/// (where it would hold its locks, SQLite's write lock among them, until reused).
struct OpenTransaction<B: Backend>(Option<B::Pooled>);

impl<B: Backend> OpenTransaction<B> {
    /// The connection, to end its transaction with.
    fn into_inner(mut self) -> B::Pooled {
        self.0
            .take()
            .unwrap_or_else(|| unreachable!("taken only here and on drop"))
    }
}

impl<B: Backend> Deref for OpenTransaction<B> {
    type Target = B::Pooled;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only by into_inner and on drop"))
    }
}

impl<B: Backend> DerefMut for OpenTransaction<B> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only by into_inner and on drop"))
    }
}

impl<B: Backend> Drop for OpenTransaction<B> {
    fn drop(&mut self) {
        let Some(mut connection) = self.0.take() else {
            return;
        };
        // Rolled back (or never begun): back to the pool. Still in it: closed, which ends it.
        let open =
            <B::Connection as AsyncConnection>::TransactionManager::transaction_manager_status_mut(
                &mut connection,
            )
            .transaction_depth()
            .map_or(true, |depth| depth.is_some());
        if open {
            B::discard(connection);
        }
    }
}

async fn rollback<B: Backend>(connection: &mut B::Pooled) {
    if let Err(error) =
        <B::Connection as AsyncConnection>::TransactionManager::rollback_transaction(connection)
            .await
    {
        tracing::warn!(%error, "rollback failed; the connection is discarded");
    }
}

/// Whether `error` says the connection itself is gone (closed, or unable to send), as opposed
/// to the server refusing the statement.
fn connection_lost(error: &Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as DieselError};
    match error {
        Error::Database(DieselError::DatabaseError(kind, info)) => {
            matches!(
                kind,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
            ) || info.message().starts_with("terminating connection")
        }
        _ => false,
    }
}
