//! [`LogWatcher`]: a fast wake-up between hosts after a commit.
//!
//! A log reader polls the operation log on a period; a watcher cuts the delay: the committing
//! host calls [`LogWatcher::notify`] after its commit, and every other host's watcher wakes its
//! reader. A wake-up carries no data, so a lost one only delays invalidation until the next
//! poll. Implementations (file system, PostgreSQL `LISTEN/NOTIFY`, Redis pub/sub) live in the
//! `ofx-watchers` crate; the log reader is given one as a trait object.

use std::fmt;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::HostId;
use crate::operation::ScopeFuture;

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
pub trait LogWatcher: Send + Sync + fmt::Debug + 'static {
    /// Tells the other hosts that this host committed to the log.
    fn notify(&self);

    /// Notified when another host committed (or the watcher reconnected).
    fn wakes(&self) -> Arc<Notify>;
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
