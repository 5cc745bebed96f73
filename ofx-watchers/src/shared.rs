//! What every watcher is made of: the receiving side's state, the coalescing sender, the
//! reconnection loop, and the handle whose drop stops them.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ofx_core::watcher::{WakeHints, encode_hint};
use ofx_core::{HostId, Operation};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::stats::{Counter, NOTIFICATIONS_SENT, RECONNECTS, WAKEUPS, WatcherStats};
use crate::{Error, Result};

/// How long connecting (and subscribing) may take.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sending one message may take, connecting included.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest message a watcher sends (PostgreSQL's `NOTIFY` takes less than 8,000 bytes):
/// the sender's host id, then one line per hint. Hints that do not fit are left out (the other
/// hosts read those operations from the log).
pub(crate) const MAX_MESSAGE_BYTES: usize = 7_600;

// ===== impl Shared =====

/// The receiving side's state, shared by a watcher and its background tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    /// What kind of watcher it is (`fs`, `postgres`, `redis`): the `watcher` label of its
    /// metrics.
    pub(crate) kind: &'static str,
    pub(crate) host_id: HostId,
    pub(crate) wakes: Arc<Notify>,
    /// The hints received, for the log reader.
    pub(crate) hints: Arc<WakeHints>,
    pub(crate) stats: WatcherStats,
}

impl Shared {
    /// A message arrived: the sending host's id, then one hint per line. Another host's
    /// hints are queued before the host is woken, so the reader finds them when it wakes.
    pub(crate) fn on_message(&self, payload: &[u8]) {
        let mut lines = payload.split(|byte| *byte == b'\n');
        let sender = lines.next().unwrap_or_default();
        if sender == self.host_id.as_str().as_bytes() {
            self.stats.add(Counter::OwnIgnored);
            return;
        }
        // No watcher sends a longer one: its hints are not taken (the wake-up is).
        let lines = lines.take(if payload.len() > MAX_MESSAGE_BYTES {
            0
        } else {
            usize::MAX
        });
        for line in lines {
            // Untrusted: queued as text, decoded (or refused) by the reader.
            if let Ok(hint) = std::str::from_utf8(line)
                && !hint.is_empty()
            {
                self.hints.push(hint.to_owned());
                self.stats.add(Counter::HintsReceived);
            }
        }
        self.on_foreign_message();
    }

    /// Something arrived that may come from another host (it could not be told apart).
    pub(crate) fn on_foreign_message(&self) {
        self.stats.add(Counter::Received);
        metrics::counter!(WAKEUPS, "watcher" => self.kind).increment(1);
        self.wakes.notify_one();
    }

    /// The connection or watch was re-established: messages may have been missed meanwhile.
    pub(crate) fn on_reconnected(&self) {
        self.stats.add(Counter::Reconnects);
        metrics::counter!(RECONNECTS, "watcher" => self.kind).increment(1);
        metrics::counter!(WAKEUPS, "watcher" => self.kind).increment(1);
        self.wakes.notify_one();
    }
}

// ===== impl Handle =====

/// The part of a watcher its background tasks do not hold: dropping it stops them.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
    /// Notified once per burst of `notify()` calls: at most one permit is stored, so calls made
    /// while a message is in flight become one more message.
    requests: Arc<Notify>,
    /// The hints of the next message.
    pending: Arc<Mutex<PendingHints>>,
    pub(crate) stop: CancellationToken,
}

impl Handle {
    /// A handle for a watcher of `kind` (its metrics' label) and `host_id`, stopped with `stop`
    /// (or when dropped).
    pub(crate) fn new(kind: &'static str, host_id: HostId, stop: &CancellationToken) -> Self {
        Self {
            shared: Arc::new(Shared {
                kind,
                host_id,
                wakes: Arc::new(Notify::new()),
                hints: Arc::new(WakeHints::new()),
                stats: WatcherStats::default(),
            }),
            requests: Arc::new(Notify::new()),
            pending: Arc::default(),
            stop: stop.child_token(),
        }
    }

    /// Asks the sender task for one more message.
    pub(crate) fn notify(&self) {
        self.shared.stats.add(Counter::Notifies);
        self.requests.notify_one();
    }

    /// Asks the sender task for one more message, carrying `operation` as a hint if it fits.
    pub(crate) fn notify_committed(&self, operation: &Operation) {
        let room = MAX_MESSAGE_BYTES.saturating_sub(self.shared.host_id.as_str().len());
        let added = encode_hint(operation).is_some_and(|hint| {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(hint, room)
        });
        if !added {
            self.shared.stats.add(Counter::HintsOmitted);
        }
        self.notify();
    }

    /// The receiving side's wake-ups.
    pub(crate) fn wakes(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wakes)
    }

    /// The hints received from other hosts.
    pub(crate) fn hints(&self) -> Arc<WakeHints> {
        Arc::clone(&self.shared.hints)
    }

    /// Starts the task that sends a message for each burst of [`notify`](Self::notify) calls.
    pub(crate) fn start_sender(&self, publisher: impl Publish) {
        ofx_core::background::spawn_supervised(
            "ofx watcher sender",
            Arc::clone(self.shared.stats.sender_health()),
            run_sender(
                publisher,
                Arc::clone(&self.requests),
                Arc::clone(&self.pending),
                Arc::clone(&self.shared),
                self.stop.clone(),
            ),
        );
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ===== sending =====

/// The hints waiting for the next message, within its size.
#[derive(Debug, Default)]
struct PendingHints {
    hints: Vec<String>,
    /// Their bytes, with a line break each.
    bytes: usize,
}

impl PendingHints {
    /// Adds `hint` if the message keeps within `room` bytes; returns whether it did.
    fn add(&mut self, hint: String, room: usize) -> bool {
        let bytes = self.bytes + 1 + hint.len();
        if bytes > room {
            return false;
        }
        self.bytes = bytes;
        self.hints.push(hint);
        true
    }

    /// The message: `sender`, then a line per hint (taken).
    fn take_message(&mut self, sender: &str) -> (String, u64) {
        let mut message = String::with_capacity(sender.len() + self.bytes);
        message.push_str(sender);
        let count = u64::try_from(self.hints.len()).unwrap_or(u64::MAX);
        for hint in self.hints.drain(..) {
            message.push('\n');
            message.push_str(&hint);
        }
        self.bytes = 0;
        (message, count)
    }
}

/// One way of telling the other hosts that this one committed.
pub(crate) trait Publish: Send + 'static {
    /// Sends `message` (this host's id, then the hints, a line each), connecting first if
    /// needed. A kept connection that turns out broken is replaced and the message tried once
    /// more.
    fn publish(&mut self, message: &str) -> impl Future<Output = Result<()>> + Send;

    /// Forgets the kept connection (a send on it timed out).
    fn reset(&mut self) {}
}

/// Sends one message per burst of requests until `stop`.
async fn run_sender(
    mut publisher: impl Publish,
    requests: Arc<Notify>,
    pending: Arc<Mutex<PendingHints>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let stats = &shared.stats;
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = requests.notified() => {}
        }
        let (message, hints) = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_message(shared.host_id.as_str());
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = tokio::time::timeout(SEND_TIMEOUT, publisher.publish(&message)) => result,
        };
        let result = result.unwrap_or_else(|_| {
            publisher.reset();
            Err(Error::Timeout {
                action: "sending a wake-up",
                after: SEND_TIMEOUT,
            })
        });
        match result {
            Ok(()) => {
                stats.add(Counter::Sent);
                stats.add_many(Counter::HintsSent, hints);
                metrics::counter!(NOTIFICATIONS_SENT, "watcher" => shared.kind).increment(1);
                if failing {
                    tracing::info!("sending wake-ups to the other hosts works again");
                    failing = false;
                }
            }
            Err(error) => {
                stats.add_many(Counter::HintsOmitted, hints);
                stats.add(Counter::NotifyFailures);
                // One warning per outage, not one per commit.
                if failing {
                    tracing::debug!(%error, "could not send a wake-up to the other hosts");
                } else {
                    tracing::warn!(%error, "could not send a wake-up to the other hosts; they will see the change at their next poll");
                    failing = true;
                }
            }
        }
    }
}

// ===== receiving =====

/// Re-establishes a lost connection or watch with `connect`, pausing per `backoff` before each
/// attempt; wakes the host once it succeeds. `None` when stopped first.
pub(crate) async fn reconnect<S, F>(
    what: &'static str,
    shared: &Shared,
    stop: &CancellationToken,
    backoff: &mut Backoff,
    mut connect: impl FnMut() -> F,
) -> Option<S>
where
    F: Future<Output = Result<S>>,
{
    loop {
        let pause = backoff.next_pause();
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(pause) => {}
        }
        let result = tokio::select! {
            () = stop.cancelled() => return None,
            result = connect() => result,
        };
        match result {
            Ok(session) => {
                tracing::info!(what, "re-established; waking the log reader");
                shared.on_reconnected();
                return Some(session);
            }
            Err(error) => {
                shared.stats.add(Counter::ConnectFailures);
                tracing::warn!(%error, what, "could not re-establish; retrying with backoff");
            }
        }
    }
}

/// `future`, failing with [`Error::Timeout`] after `after`.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) async fn timeout<T>(
    action: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(after, future)
        .await
        .unwrap_or(Err(Error::Timeout { action, after }))
}

#[cfg(any(feature = "fs", feature = "postgres"))]
/// A stable 64-bit FNV-1a hash: the same on every host and every build, unlike `std`'s hasher,
/// since hosts must derive the same channel and file names from a log's name.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "fs", feature = "postgres"))]
    #[test]
    fn stable_hash_is_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn own_messages_are_ignored_and_others_wake() {
        let handle = Handle::new("test", HostId::from_string("me"), &CancellationToken::new());
        let shared = &handle.shared;
        shared.on_message(b"me");
        shared.on_message(b"someone else");
        shared.on_reconnected();
        let stats = shared.stats.snapshot();
        assert_eq!(
            (stats.own_ignored, stats.received, stats.reconnects),
            (1, 1, 1)
        );
    }

    #[test]
    fn dropping_the_handle_cancels_its_token_only() {
        let parent = CancellationToken::new();
        let handle = Handle::new("test", HostId::new(), &parent);
        let stop = handle.stop.clone();
        drop(handle);
        assert!(stop.is_cancelled());
        assert!(!parent.is_cancelled());
    }
}
