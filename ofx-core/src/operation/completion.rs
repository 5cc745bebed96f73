//! [`OperationCompletionNotifier`]: the one place that learns an operation completed, and runs
//! its invalidation pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use event_listener::Event;
use uuid::Uuid;

use super::Operation;
use super::invalidation::{self, PassError};
use crate::event::HubEvent;
// std's, or loom's in the loom models' build.
use crate::sync::{Mutex, MutexGuard};
use crate::{Error, Hub};

/// How many completed operations the notifier remembers, to ignore a second notification.
pub const MAX_KNOWN_OPERATIONS: usize = 16_384;
/// How long the notifier remembers a completed operation.
pub const MAX_KNOWN_OPERATION_AGE: Duration = Duration::from_secs(15 * 60);

/// Something told of every completed operation, after its invalidation ran.
pub trait CompletionListener: Send + Sync + 'static {
    /// Called once per operation uuid; `local` says whether this host executed it.
    fn on_operation_completed(&self, operation: &Operation, local: bool);
}

/// Why an operation from another host could not be replayed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A command of the operation cannot be decoded by this program (unknown name, or JSON
    /// that is not the command): retrying cannot help. The other commands were invalidated.
    #[error("the operation cannot be decoded: {0}")]
    Undecodable(#[source] Error),
    /// A command's handler or service is not on this hub (yet): retrying may help, for
    /// instance once the service is attached. The other commands were invalidated.
    #[error("the operation cannot be replayed yet: {0}")]
    Unavailable(#[source] Error),
}

/// Learns that operations completed, on this host (after commit) or on others (from the log),
/// ignores an operation it has seen already, runs the operation's invalidation pass, then tells
/// the listeners.
pub struct OperationCompletionNotifier {
    recent: RecentOperations,
    listeners: Vec<Arc<dyn CompletionListener>>,
    failures: AtomicU64,
    panics: AtomicU64,
    listener_panics: AtomicU64,
}

/// The operations completed recently, by uuid: what makes an operation's invalidation pass run
/// once (and its listeners be told once), whichever paths complete it (the local completion,
/// a replay from the log, a retry of a replay), whatever their interleaving (checked by
/// `loom_models`).
#[derive(Default)]
pub(crate) struct RecentOperations {
    recent: Mutex<Recent>,
    /// Notified when a pass ends (done, or failed and forgotten).
    settled: Event,
}

#[derive(Default)]
struct Recent {
    /// The uuids completed recently (`true`), or whose pass is running (`false`).
    known: HashMap<Uuid, bool>,
    /// When each was claimed, oldest uuid first (UUID v7 are time-ordered): what is forgotten
    /// first.
    order: BTreeMap<Uuid, Instant>,
}

/// How [`RecentOperations::complete_once`] went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion<E> {
    /// The operation was completed already (by another path: its pass succeeded): nothing ran.
    Known,
    /// The pass ran and failed: the uuid is forgotten, so that a later completion runs it.
    Failed(E),
    /// The pass ran and succeeded: the caller tells the listeners.
    Done,
}

/// What [`RecentOperations::claim`] found.
enum Claim {
    /// Nothing: the caller runs the pass.
    New,
    /// Another path is running the pass.
    Running,
    /// Completed already.
    Done,
}

impl RecentOperations {
    /// Runs `pass` unless `uuid` was completed already; a pass that fails is forgotten. While
    /// another path runs the pass of `uuid`, waits for it to end: done, there is nothing left
    /// to do; failed, this path runs the pass. So a caller told "done" or "known" can count on
    /// the pass having succeeded (the log reader moves on; the local caller returns), and a
    /// failed pass is run again by the path that met it running.
    pub(crate) async fn complete_once<E>(
        &self,
        uuid: Uuid,
        pass: impl FnOnce() -> Result<(), E>,
    ) -> Completion<E> {
        loop {
            match self.claim(uuid) {
                Claim::New => break,
                Claim::Done => return Completion::Known,
                Claim::Running => {
                    let settled = self.settled.listen();
                    if self.phase(uuid) == Some(false) {
                        settled.await;
                    }
                }
            }
        }
        self.run_claimed(uuid, pass)
    }

    /// Runs the pass of `uuid`, claimed by the caller, and settles the claim: even if the pass
    /// panics (its waiters run it then).
    fn run_claimed<E>(&self, uuid: Uuid, pass: impl FnOnce() -> Result<(), E>) -> Completion<E> {
        let mut running = Running {
            recent: self,
            uuid,
            done: false,
        };
        let result = pass();
        running.done = result.is_ok();
        drop(running);
        match result {
            Ok(()) => Completion::Done,
            Err(error) => Completion::Failed(error),
        }
    }

    /// [`complete_once`](Self::complete_once) without waiting: `None`, running nothing, while
    /// another path runs the pass of `uuid` (that path settles it).
    pub(crate) fn complete_unless_running<E>(
        &self,
        uuid: Uuid,
        pass: impl FnOnce() -> Result<(), E>,
    ) -> Option<Completion<E>> {
        match self.claim(uuid) {
            Claim::New => Some(self.run_claimed(uuid, pass)),
            Claim::Done => Some(Completion::Known),
            Claim::Running => None,
        }
    }

    /// Whether `uuid` was completed recently (its pass succeeded).
    pub(crate) fn is_known(&self, uuid: Uuid) -> bool {
        self.phase(uuid) == Some(true)
    }

    fn lock(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some(true)`: completed; `Some(false)`: its pass is running; `None`: unknown.
    fn phase(&self, uuid: Uuid) -> Option<bool> {
        self.lock().known.get(&uuid).copied()
    }

    /// Claims the pass of `uuid`, unless it is running or done.
    fn claim(&self, uuid: Uuid) -> Claim {
        let mut recent = self.lock();
        match recent.known.get(&uuid) {
            Some(true) => return Claim::Done,
            Some(false) => return Claim::Running,
            None => {}
        }
        recent.known.insert(uuid, false);
        recent.order.insert(uuid, Instant::now());
        Claim::New
    }

    /// Forgets the completed operations past [`MAX_KNOWN_OPERATIONS`] or older than
    /// [`MAX_KNOWN_OPERATION_AGE`], the oldest uuid first (never one whose pass runs). Called
    /// once a pass ended, so that an operation completed again long after (its row read by a
    /// reader far behind, after it was forgotten) is the one forgotten next, not the next
    /// operation that reader will read: forgetting in the order of claims made each such
    /// completion forget the next row's, and the reader then completed every one of them again.
    fn forget_oldest(recent: &mut Recent) {
        let now = Instant::now();
        let mut running = Vec::new();
        while let Some((uuid, at)) = recent.order.pop_first() {
            let count = recent.order.len() + running.len() + 1;
            if count <= MAX_KNOWN_OPERATIONS && now.duration_since(at) < MAX_KNOWN_OPERATION_AGE {
                recent.order.insert(uuid, at);
                break;
            }
            if recent.known.get(&uuid) == Some(&false) {
                running.push((uuid, at));
            } else {
                recent.known.remove(&uuid);
            }
        }
        recent.order.extend(running);
    }

    /// Ends the pass of `uuid`: remembers it completed, or forgets it; wakes the paths that
    /// wait for it.
    fn settle(&self, uuid: Uuid, done: bool) {
        let mut recent = self.lock();
        if done {
            if let Some(phase) = recent.known.get_mut(&uuid) {
                *phase = true;
            }
            Self::forget_oldest(&mut recent);
        } else {
            recent.known.remove(&uuid);
            recent.order.remove(&uuid);
        }
        drop(recent);
        self.settled.notify(usize::MAX);
    }
}

/// A pass in progress: settled when dropped.
struct Running<'a> {
    recent: &'a RecentOperations,
    uuid: Uuid,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.recent.settle(self.uuid, self.done);
    }
}

impl OperationCompletionNotifier {
    pub(crate) fn new(listeners: Vec<Arc<dyn CompletionListener>>) -> Self {
        Self {
            recent: RecentOperations::default(),
            listeners,
            failures: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            listener_panics: AtomicU64::new(0),
        }
    }

    /// Whether `uuid` completed on this hub recently (executed here or replayed): its
    /// invalidation pass succeeded. `false` while the pass runs.
    pub fn is_known(&self, uuid: Uuid) -> bool {
        self.recent.is_known(uuid)
    }

    /// How many invalidation passes of operations this host executed failed (each is logged;
    /// the log reader replays them).
    pub fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// How many invalidation branches panicked, here or in replays (each is logged with its
    /// operation and command; the pass went on).
    pub fn panic_count(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Completes an operation this hub executed and committed: runs its invalidation pass
    /// (read-your-writes), then tells the listeners. Never fails: the commit happened. A pass
    /// that could not invalidate every command is logged and counted, and the uuid forgotten so
    /// that the log reader replays it. If the log reader is replaying the same operation (it
    /// read the row first), waits for its pass; if that pass fails, runs this one.
    pub async fn complete_local(&self, hub: &Hub, operation: Operation) {
        let completion = self
            .recent
            .complete_once(operation.uuid, || self.pass(hub, &operation, true))
            .await;
        match completion {
            Completion::Known => {}
            Completion::Failed(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let error = error.into_error();
                tracing::error!(operation = %operation.uuid, command = %operation.command_name, %error, "invalidation after a local command failed; the log reader will replay it");
            }
            Completion::Done => self.tell(hub, &operation, true),
        }
    }

    /// Completes an operation another host committed (read from the log): runs its
    /// invalidation pass, then tells the listeners. Returns `false` for an operation completed
    /// here already. If another path runs the pass of the same operation (the local completion
    /// of an operation this host executed), waits for it: `false` once it succeeded; if it
    /// failed, runs the pass.
    ///
    /// # Errors
    /// [`ReplayError`]: whether retrying may help. The uuid is forgotten, so a retry runs.
    pub async fn complete_remote(
        &self,
        hub: &Hub,
        operation: Operation,
    ) -> Result<bool, ReplayError> {
        let completion = self
            .recent
            .complete_once(operation.uuid, || self.pass(hub, &operation, false))
            .await;
        match completion {
            Completion::Known => Ok(false),
            Completion::Failed(error) => {
                let error = match error {
                    PassError::Undecodable(error) => ReplayError::Undecodable(error),
                    PassError::Unavailable(error) => ReplayError::Unavailable(error),
                };
                hub.emit(|| HubEvent::ReplayFailed {
                    operation: operation.uuid,
                    command: operation.command_name.clone(),
                    error: error.to_string(),
                });
                Err(error)
            }
            Completion::Done => {
                crate::telemetry::operation_replayed(&operation.command_name);
                self.tell(hub, &operation, false);
                Ok(true)
            }
        }
    }

    /// Completes an operation another host's wake-up carried as a hint ([`crate::watcher`]),
    /// before its row is read, without waiting: like [`complete_remote`](Self::complete_remote),
    /// except that it returns `Ok(false)` at once, running nothing, while another path runs the
    /// same operation's pass (that path completes it), and that a failure is only returned, not
    /// reported as a [`HubEvent::ReplayFailed`] (the row's replay reports it, if it fails too).
    ///
    /// # Errors
    /// As [`complete_remote`](Self::complete_remote).
    pub fn complete_hinted(&self, hub: &Hub, operation: &Operation) -> Result<bool, ReplayError> {
        let completion = self
            .recent
            .complete_unless_running(operation.uuid, || self.pass(hub, operation, false));
        match completion {
            None | Some(Completion::Known) => Ok(false),
            Some(Completion::Failed(PassError::Undecodable(error))) => {
                Err(ReplayError::Undecodable(error))
            }
            Some(Completion::Failed(PassError::Unavailable(error))) => {
                Err(ReplayError::Unavailable(error))
            }
            Some(Completion::Done) => {
                crate::telemetry::operation_replayed(&operation.command_name);
                self.tell(hub, operation, false);
                Ok(true)
            }
        }
    }

    /// Runs the invalidation pass of an operation another host committed once more, whether
    /// or not it was completed, telling no listener: for a log reader that found an operation's
    /// row differing from the hint that completed it (see [`crate::watcher`]).
    ///
    /// # Errors
    /// As [`complete_remote`](Self::complete_remote).
    pub fn invalidate_again(&self, hub: &Hub, operation: &Operation) -> Result<(), ReplayError> {
        self.pass(hub, operation, false)
            .map_err(|error| match error {
                PassError::Undecodable(error) => ReplayError::Undecodable(error),
                PassError::Unavailable(error) => ReplayError::Unavailable(error),
            })
    }

    /// Runs the invalidation pass of `operation` and counts its panics.
    fn pass(&self, hub: &Hub, operation: &Operation, local: bool) -> Result<(), PassError> {
        let report = pass(hub, operation, local);
        self.count_panics(hub, operation, report.panics);
        report.error.map_or(Ok(()), Err)
    }

    fn count_panics(&self, hub: &Hub, operation: &Operation, panics: u64) {
        if panics == 0 {
            return;
        }
        self.panics.fetch_add(panics, Ordering::Relaxed);
        for _ in 0..panics {
            hub.emit(|| HubEvent::InvalidationPanicked {
                operation: operation.uuid,
                command: operation.command_name.clone(),
            });
        }
    }

    fn tell(&self, hub: &Hub, operation: &Operation, local: bool) {
        hub.emit(|| HubEvent::OperationCompleted {
            operation: operation.uuid,
            command: operation.command_name.clone(),
            local,
        });
        for listener in &self.listeners {
            // A listener's panic stays here: it must not unwind into the path that completed
            // the operation (a log reader's task, a watcher's), nor keep the others untold.
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener.on_operation_completed(operation, local);
            }));
            if told.is_err() {
                self.listener_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(operation = %operation.uuid, command = %operation.command_name, "a completion listener panicked");
            }
        }
    }

    /// How many calls of completion listeners panicked (each is logged; the operation is
    /// completed, and the other listeners told).
    pub fn listener_panic_count(&self) -> u64 {
        self.listener_panics.load(Ordering::Relaxed)
    }
}

/// Runs the invalidation pass of `operation` in an `invalidation` span (synchronous: the span
/// is entered for the pass only).
fn pass(hub: &Hub, operation: &Operation, local: bool) -> invalidation::PassReport {
    let span = tracing::info_span!(
        "invalidation",
        command = %operation.command_name,
        operation = %operation.uuid,
        local,
        host = %hub.host_id(),
    );
    let _entered = span.enter();
    let report = invalidation::run(hub, operation);
    // One event per pass (never per cache hit), in the span: what a log at DEBUG greps by uuid.
    tracing::debug!(
        nested = operation.nested.len(),
        panics = report.panics,
        failed = report.error.is_some(),
        "invalidation pass done"
    );
    report
}

impl std::fmt::Debug for OperationCompletionNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationCompletionNotifier")
            .field("listeners", &self.listeners.len())
            .field("failures", &self.failure_count())
            .field("panics", &self.panic_count())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_hinted_completion_runs_nothing_while_another_path_runs_the_pass() {
        let recent = RecentOperations::default();
        let uuid = Uuid::now_v7();
        let mut inner = None;
        // The pass of one path is running when the hint comes.
        let outer = recent.complete_unless_running::<()>(uuid, || {
            inner = Some(recent.complete_unless_running::<()>(uuid, || {
                panic!("a second pass ran while the first was running")
            }));
            Ok(())
        });
        assert_eq!(outer, Some(Completion::Done));
        assert_eq!(inner, Some(None), "the hint found the pass running");
        // Done: known to every path after.
        assert_eq!(
            recent.complete_unless_running::<()>(uuid, || Ok(())),
            Some(Completion::Known)
        );
    }

    #[test]
    fn a_reader_far_behind_completes_again_only_what_was_forgotten() {
        const BEYOND: usize = 100;
        let recent = RecentOperations::default();
        let mut uuids: Vec<Uuid> = (0..MAX_KNOWN_OPERATIONS + BEYOND)
            .map(|_| Uuid::now_v7())
            .collect();
        uuids.sort_unstable();
        for &uuid in &uuids {
            assert_eq!(
                recent.complete_unless_running::<()>(uuid, || Ok(())),
                Some(Completion::Done)
            );
        }
        // A reader that was behind reads them all, oldest first: the oldest were forgotten and
        // complete again, and nothing else does.
        let again = uuids
            .iter()
            .filter(|&&uuid| {
                recent.complete_unless_running::<()>(uuid, || Ok(())) == Some(Completion::Done)
            })
            .count();
        assert_eq!(again, BEYOND);
    }

    #[test]
    fn a_failed_hinted_completion_is_forgotten_so_the_row_runs_it() {
        let recent = RecentOperations::default();
        let uuid = Uuid::now_v7();
        assert_eq!(
            recent.complete_unless_running(uuid, || Err("not yet")),
            Some(Completion::Failed("not yet"))
        );
        assert!(!recent.is_known(uuid));
        assert_eq!(
            recent.complete_unless_running::<()>(uuid, || Ok(())),
            Some(Completion::Done)
        );
    }
}
