//! [`LogWatcher`]: a fast wake-up between hosts after a commit.
//!
//! A log reader polls the operation log on a period; a watcher cuts the delay: the committing
//! host calls [`LogWatcher::notify`] after its commit, and every other host's watcher wakes its
//! reader. A lost wake-up only delays invalidation until the next poll. Implementations (file
//! system, PostgreSQL `LISTEN/NOTIFY`, Redis pub/sub) live in the `ofx-watchers` crate; the log
//! reader is given one as a trait object.
//!
//! A wake-up may also carry **hints**: the operations just committed
//! ([`LogWatcher::notify_committed`]). The receiving host's reader replays a hint as soon as it
//! wakes, before it reads the log, which saves the read's round trip from the path between a
//! commit and the other hosts' invalidations. The log stays the record: the reader still reads
//! every row, and skips the ones a hint completed (by uuid), so a hint lost, dropped (too large,
//! too many at once) or refused changes nothing but the delay.
//!
//! What a hint relies on:
//! - it is sent after its commit, and the receiving hosts read the database it was committed
//!   to: a value recomputed right after the hint sees the commit (a host reading a replica that
//!   lags would recompute from the old data, and skip the row later: hints and lagging
//!   replicas do not mix);
//! - the channel is trusted as the log is. A hint that differs from its row (forged, or sent by
//!   a host that lies) is found when the row is read: the reader logs it, counts it
//!   (`hint_mismatches` in ofx-diesel's reader stats) and runs the row's invalidations too;
//!   the listeners were told of the hint's operation. A hint's log position labels live values
//!   only until the log's end is read without it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::HostId;
use crate::operation::{Operation, ScopeFuture};

/// A wake-up channel between the hosts sharing one operation log.
///
/// Contract:
/// - [`notify`](Self::notify) is called after every local commit. It returns at once (the
///   message is sent in the background, bursts coalesced into one) and never fails: a message
///   that cannot be sent is logged, and the other hosts' polling covers it.
/// - [`wakes`](Self::wakes) is notified when another host committed, and once after the
///   watcher (re)connects, since messages may have been missed while it was disconnected.
///   Messages from this host are ignored (it completed those operations already).
/// - The watcher's background work reconnects with capped, jittered backoff after its server or
///   connection is lost, and stops when the watcher is dropped or its stop token is cancelled.
/// - A watcher that carries hints sends the operation given to
///   [`notify_committed`](Self::notify_committed) with the wake-up when it fits its message, and
///   puts the hints it receives from other hosts in [`hints`](Self::hints) before it wakes the
///   reader. One that does not keeps the defaults: a plain wake-up, no hints.
pub trait LogWatcher: Send + Sync + fmt::Debug + 'static {
    /// Tells the other hosts that this host committed to the log.
    fn notify(&self);

    /// Notified when another host committed (or the watcher reconnected).
    fn wakes(&self) -> Arc<Notify>;

    /// Tells the other hosts that this host committed `operation` (committed: its commit
    /// time set), which the wake-up may carry as a hint. The default sends a plain wake-up.
    fn notify_committed(&self, operation: &Operation) {
        let _ = operation;
        self.notify();
    }

    /// The hints other hosts' wake-ups carried, for the reader to replay when it wakes; `None`
    /// for a watcher that carries none (the default).
    fn hints(&self) -> Option<Arc<WakeHints>> {
        None
    }
}

/// The most hints a [`WakeHints`] queue keeps: past it, the oldest are dropped (the log has
/// them).
pub const MAX_QUEUED_HINTS: usize = 1024;

/// Replays one hint on the receiving host (installed by its log reader).
pub type HintReplayer = Arc<dyn Fn(&str) + Send + Sync>;

/// Operations committed by other hosts, received with their wake-ups: what a watcher hands to
/// the log reader. Each hint is an [`Operation`] as JSON, untrusted until decoded
/// ([`decode_hint`]). While the reader has a [replayer](Self::set_replayer) installed, a hint
/// is replayed as soon as the watcher [`push`](Self::push)es it, where the watcher received it
/// (a task, or the file watch's thread), without a hop to the reader's task; otherwise it
/// waits in a bounded queue for the reader to [`take`](Self::take) it.
///
/// ```
/// use ofx_core::watcher::WakeHints;
///
/// let hints = WakeHints::new();
/// hints.push("{}".to_owned());
/// assert_eq!(hints.take(), vec!["{}".to_owned()]);
/// assert!(hints.take().is_empty());
/// ```
#[derive(Default)]
pub struct WakeHints {
    queue: Mutex<VecDeque<String>>,
    replayer: Mutex<Option<HintReplayer>>,
    dropped: AtomicU64,
}

impl fmt::Debug for WakeHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeHints")
            .field("queued", &self.queue().len())
            .field("replayer", &self.replayer().is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl WakeHints {
    /// An empty queue, without a replayer.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn replayer(&self) -> Option<HintReplayer> {
        self.replayer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Hands over a received hint: to the replayer if one is installed, else to the queue,
    /// dropping the oldest when [`MAX_QUEUED_HINTS`] are waiting.
    pub fn push(&self, hint: String) {
        if let Some(replay) = self.replayer() {
            replay(&hint);
            return;
        }
        let mut queue = self.queue();
        if queue.len() >= MAX_QUEUED_HINTS {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(hint);
    }

    /// Takes every waiting hint, oldest first.
    pub fn take(&self) -> Vec<String> {
        let mut queue = self.queue();
        if queue.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *queue).into()
    }

    /// Installs `replayer` (replacing any other), and replays the hints waiting.
    pub fn set_replayer(&self, replayer: HintReplayer) {
        *self.replayer.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&replayer));
        for hint in self.take() {
            replayer(&hint);
        }
    }

    /// Removes `replayer` if it is the one installed (not one installed since).
    pub fn remove_replayer(&self, replayer: &HintReplayer) {
        let mut installed = self.replayer.lock().unwrap_or_else(PoisonError::into_inner);
        if installed
            .as_ref()
            .is_some_and(|installed| Arc::ptr_eq(installed, replayer))
        {
            *installed = None;
        }
    }

    /// How many hints were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The hint of a committed operation: the operation as one line of JSON, without its events
/// (they are delivered through their own table). `None` if it cannot be encoded.
pub fn encode_hint(operation: &Operation) -> Option<String> {
    if operation.events.is_empty() {
        serde_json::to_string(operation).ok()
    } else {
        let mut operation = operation.clone();
        operation.events.clear();
        serde_json::to_string(&operation).ok()
    }
}

/// Decodes a hint received from another host (untrusted: its commands are decoded later, by
/// name, through the compile-time registry, as a log row's are).
///
/// # Errors
/// When it is not an operation as [`encode_hint`] writes it.
pub fn decode_hint(hint: &str) -> Result<Operation, serde_json::Error> {
    serde_json::from_str(hint)
}

/// Starts a [`LogWatcher`] for one host: given to a storage (ofx-diesel's
/// `DbHub::set_watcher`), which starts it when it attaches to a hub, with that hub's host id
/// (so the watcher ignores this host's own messages) and shutdown token (so its background work
/// stops with the hub). The watchers of `ofx-watchers` each have one (`FsWatcher::factory`, ...).
pub trait LogWatcherFactory: Send + Sync + fmt::Debug + 'static {
    /// Starts the watcher of the host `host_id`, stopping when `stop` is cancelled.
    ///
    /// # Errors
    /// When it cannot start (its server unreachable, its directory not creatable): the hub
    /// does not start either.
    fn start(
        &self,
        host_id: HostId,
        stop: CancellationToken,
    ) -> ScopeFuture<'_, Result<Arc<dyn LogWatcher>, Box<dyn std::error::Error + Send + Sync>>>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn recorder() -> (HintReplayer, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replayer: HintReplayer = {
            let seen = Arc::clone(&seen);
            Arc::new(move |hint: &str| seen.lock().unwrap().push(hint.to_owned()))
        };
        (replayer, seen)
    }

    #[test]
    fn a_full_queue_drops_its_oldest_hints_and_counts_them() {
        let hints = WakeHints::new();
        for n in 0..MAX_QUEUED_HINTS + 3 {
            hints.push(n.to_string());
        }
        let taken = hints.take();
        assert_eq!(taken.len(), MAX_QUEUED_HINTS);
        assert_eq!(taken.first().map(String::as_str), Some("3"));
        assert_eq!(hints.dropped(), 3);
    }

    #[test]
    fn a_replayer_gets_the_waiting_hints_then_each_new_one_instead_of_the_queue() {
        let hints = WakeHints::new();
        hints.push("early".to_owned());
        let (replayer, seen) = recorder();
        hints.set_replayer(Arc::clone(&replayer));
        assert_eq!(*seen.lock().unwrap(), ["early"]);
        hints.push("late".to_owned());
        assert_eq!(*seen.lock().unwrap(), ["early", "late"]);
        assert!(hints.take().is_empty());
    }

    #[test]
    fn only_the_installed_replayer_is_removed() {
        let hints = WakeHints::new();
        let (first, first_seen) = recorder();
        let (second, second_seen) = recorder();
        hints.set_replayer(Arc::clone(&first));
        hints.set_replayer(Arc::clone(&second));
        // The first one's owner stops after the second was installed: the second stays.
        hints.remove_replayer(&first);
        hints.push("one".to_owned());
        assert!(first_seen.lock().unwrap().is_empty());
        assert_eq!(*second_seen.lock().unwrap(), ["one"]);
        hints.remove_replayer(&second);
        hints.push("two".to_owned());
        assert_eq!(hints.take(), ["two"]);
    }

    #[test]
    fn a_hint_is_one_line_of_the_committed_operation() {
        let operation = Operation::new(
            uuid::Uuid::now_v7(),
            HostId::from_string("a"),
            "tests.note",
            serde_json::json!({ "text": "milk" }),
        )
        .with_commit(Some(3), std::time::SystemTime::now());
        let hint = encode_hint(&operation).unwrap();
        assert!(!hint.contains('\n'), "one line");
        let decoded = decode_hint(&hint).unwrap();
        assert_eq!(
            (decoded.uuid, decoded.sequence, decoded.committed_at),
            (operation.uuid, Some(3), operation.committed_at)
        );
        assert!(decode_hint("{\"uuid\": 1}").is_err());
    }
}
