//! [`OperationCompletionNotifier`]: the one place that learns an operation completed.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Operation;
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

/// Learns that operations completed, on this host (after commit) or on others (from the log),
/// ignores an operation it has seen already, runs the operation's invalidation, then tells the
/// listeners.
pub struct OperationCompletionNotifier {
    recent: Mutex<Recent>,
    listeners: Vec<Arc<dyn CompletionListener>>,
    failures: AtomicU64,
}

#[derive(Default)]
struct Recent {
    known: HashSet<Uuid>,
    order: VecDeque<(Uuid, Instant)>,
}

impl OperationCompletionNotifier {
    pub(crate) fn new(listeners: Vec<Arc<dyn CompletionListener>>) -> Self {
        Self {
            recent: Mutex::new(Recent::default()),
            listeners,
            failures: AtomicU64::new(0),
        }
    }

    /// Remembers `uuid`; `false` if it was known already.
    fn remember(&self, uuid: Uuid) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(&(oldest, at)) = recent.order.front() {
            if recent.order.len() < MAX_KNOWN_OPERATIONS
                && now.duration_since(at) < MAX_KNOWN_OPERATION_AGE
            {
                break;
            }
            recent.order.pop_front();
            recent.known.remove(&oldest);
        }
        if !recent.known.insert(uuid) {
            return false;
        }
        recent.order.push_back((uuid, now));
        true
    }

    fn forget(&self, uuid: Uuid) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.known.remove(&uuid);
        recent.order.retain(|(known, _)| *known != uuid);
    }

    /// Whether `uuid` completed on this hub recently (executed here or replayed).
    pub fn is_known(&self, uuid: Uuid) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .known
            .contains(&uuid)
    }

    /// How many invalidation passes of operations this host executed failed (each is logged).
    pub fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Handles one completed operation. Returns `false` if it was known already.
    pub(crate) async fn notify(
        &self,
        hub: &Hub,
        operation: &Operation,
        local: bool,
    ) -> Result<bool, Error> {
        if !self.remember(operation.uuid) {
            return Ok(false);
        }
        if let Err(error) = crate::commander::invalidate_operation(hub, operation).await {
            if local {
                // The commit happened: the caller gets its result. The log reader will replay
                // the operation (it skips only what completed here, and this did not).
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.forget(operation.uuid);
                tracing::error!(operation = %operation.uuid, %error, "invalidation after a local command failed");
                return Ok(true);
            }
            self.forget(operation.uuid);
            return Err(error);
        }
        for listener in &self.listeners {
            listener.on_operation_completed(operation, local);
        }
        Ok(true)
    }
}

impl std::fmt::Debug for OperationCompletionNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationCompletionNotifier")
            .field("listeners", &self.listeners.len())
            .field("failures", &self.failure_count())
            .finish_non_exhaustive()
    }
}
