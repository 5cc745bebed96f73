//! [`StateSettings`]: how a state service follows, answers and saves.

use std::path::PathBuf;
use std::time::Duration;

/// Where a state service keeps its snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SnapshotStorage {
    /// None: every start-up projects the whole stream.
    None,
    /// The `ofx_state_snapshots` table of the service's database, shared by every host (the
    /// default): a new host starts from the newest snapshot any host saved.
    #[default]
    Table,
    /// A directory of this host: one file per projection and version, written atomically
    /// (a temporary file renamed over the old one).
    Directory(PathBuf),
}

/// Settings of a [`StateService`](super::StateService); every field has a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StateSettings {
    /// How long [`current_state`](super::StateService::current_state) waits to catch up
    /// before it fails with [`Error::Unavailable`](crate::Error::Unavailable) (default 5 s).
    pub current_timeout: Duration,
    /// Stream events read per query (default 1024).
    pub read_batch: i64,
    /// How often the follower polls, ±10 % jitter (default: the database's log-reader poll
    /// periods, with or without a watcher).
    pub poll_period: Option<Duration>,
    /// A refresh (one read of the stream) that takes longer than this is abandoned, its
    /// connection closed, and retried (default 30 s): a stalled server does not hold the
    /// follower forever.
    pub refresh_timeout: Duration,
    /// Backoff after a failed refresh or initial load: from this (default 50 ms)...
    pub retry_min: Duration,
    /// ...doubling up to this (default 5 s), ±25 % jitter.
    pub retry_max: Duration,
    /// Where snapshots are kept (default: a table of the database).
    pub snapshots: SnapshotStorage,
    /// A snapshot is saved after readiness, then once the state advanced this many events
    /// (default 10,000)...
    pub snapshot_every: u64,
    /// ...and at most this often (default 1 min).
    pub snapshot_period: Duration,
    /// How many times [`transaction`](super::StateService::transaction) decides and appends
    /// when concurrent appends took its positions (default 8).
    pub max_append_attempts: u32,
    /// Whether appenders to one stream queue instead of conflicting (default true): on
    /// PostgreSQL, [`transaction`](super::StateService::transaction) takes a transaction-scoped
    /// advisory lock on the stream before it reads the head, held until its command commits,
    /// so that concurrent appends wait for each other rather than decide in vain and retry.
    /// Dense positions make every two concurrent appends to a stream conflict: queuing wastes
    /// no decision. `false` is purely optimistic (decide, append, retry on a conflict), for
    /// streams with rare concurrent appends and long transactions. SQLite's operations hold
    /// the database's write lock from their start: they never conflict either way.
    pub queue_appends: bool,
    /// Quarantined events kept in memory for [`quarantined`](super::StateService::quarantined)
    /// (default 1,000; all of them are in the `ofx_state_quarantine` table and counted).
    pub quarantine_memory: usize,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            current_timeout: Duration::from_secs(5),
            read_batch: 1024,
            poll_period: None,
            refresh_timeout: Duration::from_secs(30),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            snapshots: SnapshotStorage::Table,
            snapshot_every: 10_000,
            snapshot_period: Duration::from_secs(60),
            max_append_attempts: 8,
            queue_appends: true,
            quarantine_memory: 1000,
        }
    }
}
