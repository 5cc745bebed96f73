//! [`WatcherStats`]: what a watcher did, for tests and monitoring.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ofx_core::background::TaskHealth;

use tokio::sync::Notify;

/// Counter `{watcher}` (`fs`, `postgres`, `redis`): times a watcher woke its host's log
/// reader (a message from another host, or a reconnection after which messages may have been
/// missed). Recorded through the [`metrics`] facade, as the two below.
pub const WAKEUPS: &str = "ofx_watcher_wakeups_total";
/// Counter `{watcher}`: times a watcher's connection (or directory watch) was lost and
/// re-established.
pub const RECONNECTS: &str = "ofx_watcher_reconnects_total";
/// Counter `{watcher}`: wake-up messages a watcher sent to the other hosts.
pub const NOTIFICATIONS_SENT: &str = "ofx_watcher_notifications_sent_total";

/// The counters of one watcher. Read them with [`snapshot`](Self::snapshot), or wait for a
/// condition on them with [`wait_until`](Self::wait_until).
#[derive(Debug, Default)]
pub struct WatcherStats {
    notifies: AtomicU64,
    sent: AtomicU64,
    notify_failures: AtomicU64,
    received: AtomicU64,
    own_ignored: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    hints_sent: AtomicU64,
    hints_omitted: AtomicU64,
    hints_received: AtomicU64,
    changed: Notify,
    listener: Arc<TaskHealth>,
    sender: Arc<TaskHealth>,
}

/// The counters of a watcher at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Calls of [`LogWatcher::notify`](ofx_core::LogWatcher::notify).
    pub notifies: u64,
    /// Messages sent to the other hosts (bursts of `notifies` are coalesced into few of them).
    pub sent: u64,
    /// Messages that could not be sent (logged; the other hosts' polling covers them).
    pub notify_failures: u64,
    /// Messages received from other hosts; each one woke this host.
    pub received: u64,
    /// Messages received from this host itself, ignored.
    pub own_ignored: u64,
    /// Times the connection (or the directory watch) was lost and re-established; each one woke
    /// this host.
    pub reconnects: u64,
    /// Failed attempts to re-establish the connection or the watch.
    pub connect_failures: u64,
    /// Committed operations sent as hints with the wake-ups (see
    /// [`LogWatcher::notify_committed`](ofx_core::LogWatcher::notify_committed)).
    pub hints_sent: u64,
    /// Committed operations whose wake-up went without their hint: too large for one message,
    /// or too many in one burst (the other hosts read them from the log).
    pub hints_omitted: u64,
    /// Hints received from other hosts, queued for this host's log reader.
    pub hints_received: u64,
}

/// Which counter to add to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Notifies,
    Sent,
    NotifyFailures,
    Received,
    OwnIgnored,
    Reconnects,
    ConnectFailures,
    HintsSent,
    HintsOmitted,
    HintsReceived,
}

impl WatcherStats {
    /// Whether the task that receives other hosts' messages (and reconnects) runs, stopped, or
    /// ended unexpectedly (logged at error level).
    pub fn listener_health(&self) -> &Arc<TaskHealth> {
        &self.listener
    }

    /// Whether the task that sends this host's messages runs, stopped, or ended unexpectedly.
    pub fn sender_health(&self) -> &Arc<TaskHealth> {
        &self.sender
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: Counter| self.cell(counter).load(Ordering::Relaxed);
        StatsSnapshot {
            notifies: load(Counter::Notifies),
            sent: load(Counter::Sent),
            notify_failures: load(Counter::NotifyFailures),
            received: load(Counter::Received),
            own_ignored: load(Counter::OwnIgnored),
            reconnects: load(Counter::Reconnects),
            connect_failures: load(Counter::ConnectFailures),
            hints_sent: load(Counter::HintsSent),
            hints_omitted: load(Counter::HintsOmitted),
            hints_received: load(Counter::HintsReceived),
        }
    }

    /// Waits until `done` holds for the counters, and returns them. It is checked now and after
    /// every change, so no change is missed. Bound it with a timeout where it may never hold.
    pub async fn wait_until(&self, mut done: impl FnMut(&StatsSnapshot) -> bool) -> StatsSnapshot {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change after it wakes the wait.
            changed.as_mut().enable();
            let snapshot = self.snapshot();
            if done(&snapshot) {
                return snapshot;
            }
            changed.await;
        }
    }

    /// Adds one to `counter`.
    pub(crate) fn add(&self, counter: Counter) {
        self.add_many(counter, 1);
    }

    /// Adds `count` to `counter`.
    pub(crate) fn add_many(&self, counter: Counter, count: u64) {
        if count == 0 {
            return;
        }
        self.cell(counter).fetch_add(count, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn cell(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Notifies => &self.notifies,
            Counter::Sent => &self.sent,
            Counter::NotifyFailures => &self.notify_failures,
            Counter::Received => &self.received,
            Counter::OwnIgnored => &self.own_ignored,
            Counter::Reconnects => &self.reconnects,
            Counter::ConnectFailures => &self.connect_failures,
            Counter::HintsSent => &self.hints_sent,
            Counter::HintsOmitted => &self.hints_omitted,
            Counter::HintsReceived => &self.hints_received,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wait_until_sees_a_change_made_while_waiting() {
        let stats = Arc::new(WatcherStats::default());
        let waiter = tokio::spawn({
            let stats = Arc::clone(&stats);
            async move { stats.wait_until(|s| s.received >= 2).await }
        });
        stats.add(Counter::Received);
        stats.add(Counter::Received);
        let snapshot = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the wait ends")
            .expect("the waiter does not panic");
        assert_eq!(snapshot.received, 2);
        assert_eq!(snapshot.sent, 0);
    }
}
