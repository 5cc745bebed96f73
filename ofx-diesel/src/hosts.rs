//! Hosts report their position: every hub whose database runs a log reader upserts its row of
//! `ofx_hosts` on a heartbeat ([`DbSettings::host_heartbeat`](crate::DbSettings)), so that an
//! operator sees each host's reader position and lag ([`DbHub::hosts`], `ofx hosts`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ofx_core::Hub;
use ofx_core::background::{TaskHealth, spawn_supervised};

use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::following::Backoff;
use crate::inspect::queries::{HostRow, InspectQueries as _};
use crate::reader::{LogReader, jitter};
use crate::row::{micros, time};
use crate::{Error, ReplayBlock, Result};

/// The first and the largest pause after a heartbeat failed.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));
/// How often a heartbeat deletes the rows of hosts silent longer than the retention.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long a stopping host tries to mark its row stopped.
const STOP_WRITE: Duration = Duration::from_secs(2);

/// A host's row of `ofx_hosts`, as its heartbeat last wrote it (see [`DbHub::hosts`]). Times
/// are on the host's own clock.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostInfo {
    /// The host's id (`HostId`: machine, process id, a unique suffix).
    pub host_id: String,
    /// The machine's name.
    pub host_name: String,
    /// The process id.
    pub pid: u32,
    /// When its heartbeat started (about when its hub started).
    pub started_at: SystemTime,
    /// Its last heartbeat.
    pub heartbeat_at: SystemTime,
    /// How often it beats.
    pub heartbeat_period: Duration,
    /// When it stopped cleanly (its hub shut down), if it did.
    pub stopped_at: Option<SystemTime>,
    /// The last index its log reader read (-1 before the first read).
    pub cursor: i64,
    /// Every operation up to this index is replayed there (`None`: not known, such as while
    /// transactions in flight at its reader's start may still commit).
    pub replayed_through: Option<i64>,
    /// Operations its reader replayed.
    pub replayed: u64,
}

impl HostInfo {
    /// Whether its heartbeat is overdue at `now`: it did not stop cleanly and its last beat is
    /// older than three of its periods (at least 15 s). Its clock and `now`'s may differ.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        let overdue = (self.heartbeat_period * 3).max(Duration::from_secs(15));
        self.stopped_at.is_none()
            && now
                .duration_since(self.heartbeat_at)
                .is_ok_and(|silent| silent > overdue)
    }
}

impl From<HostRow> for HostInfo {
    fn from(row: HostRow) -> Self {
        Self {
            host_id: row.host_id,
            host_name: row.host_name,
            pid: u32::try_from(row.pid).unwrap_or(0),
            started_at: time(row.started_at),
            heartbeat_at: time(row.heartbeat_at),
            heartbeat_period: Duration::from_micros(
                u64::try_from(row.heartbeat_period).unwrap_or(0),
            ),
            stopped_at: row.stopped_at.map(time),
            cursor: row.read_cursor,
            replayed_through: row.replayed_through,
            replayed: u64::try_from(row.replayed).unwrap_or(0),
        }
    }
}

/// A hub's heartbeat: what it did, for tests and monitoring ([`DbHub::heartbeat`]). It stops
/// with its hub.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Rows written.
    pub beats: AtomicU64,
    /// Writes that failed (each logged at warn, then retried with backoff).
    pub failures: AtomicU64,
    /// Whether the heartbeat's task runs, stopped, or ended unexpectedly (logged at error level).
    pub health: Arc<TaskHealth>,
}

impl<B: Backend> DbHub<B> {
    /// Every host's row of `ofx_hosts`, by host id: the hosts whose readers beat (see
    /// [`DbSettings::host_heartbeat`](crate::DbSettings)), live or silent, until their rows
    /// are older than [`host_retention`](crate::DbSettings).
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn hosts(&self) -> Result<Vec<HostInfo>> {
        let mut connection = self.connection().await?;
        let rows = B::Inspect::list_hosts(&mut connection).await?;
        Ok(rows.into_iter().map(HostInfo::from).collect())
    }

    /// Deletes the rows of hosts silent longer than
    /// [`host_retention`](crate::DbSettings); returns how many. Heartbeats call it hourly.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn trim_hosts(&self) -> Result<u64> {
        let before = micros(
            SystemTime::now()
                .checked_sub(self.settings().host_retention)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let mut connection = self.connection().await?;
        Ok(B::Inspect::delete_hosts_before(&mut connection, before).await? as u64)
    }

    /// The heartbeat running for this database on `hub`, if any.
    pub fn heartbeat(&self, hub: &Hub) -> Option<Arc<Heartbeat>> {
        hub.existing_attachment(&self.heartbeat_key())
    }

    fn heartbeat_key(&self) -> String {
        format!("ofx-diesel/{}/heartbeat", self.inner.id)
    }

    /// Starts `hub`'s heartbeat (once per hub): its row now, then every `period`, until the hub
    /// shuts down, when the row is marked stopped.
    pub(crate) fn start_heartbeat(&self, hub: &Hub, period: Duration) {
        let key = self.heartbeat_key();
        if hub.existing_attachment::<Heartbeat>(&key).is_some() {
            return;
        }
        let stats = hub.attachment(&key, Heartbeat::default);
        let db = self.clone();
        let weak = hub.downgrade();
        let stop = hub.shutdown_token();
        let host_id = hub.host_id().as_str().to_owned();
        let health = Arc::clone(&stats.health);
        spawn_supervised("ofx-diesel heartbeat", health, async move {
            let mut row = HostRow {
                host_id,
                host_name: gethostname::gethostname().to_string_lossy().into_owned(),
                pid: i64::from(std::process::id()),
                started_at: micros(db.now()),
                heartbeat_at: 0,
                heartbeat_period: i64::try_from(period.as_micros()).unwrap_or(i64::MAX),
                stopped_at: None,
                read_cursor: -1,
                replayed_through: None,
                replayed: 0,
            };
            let mut backoff = Backoff::new(BACKOFF.0, BACKOFF.1);
            let mut last_sweep: Option<Instant> = None;
            loop {
                let Some(hub) = weak.upgrade() else { break };
                if let Some(reader) = db.log_reader(&hub) {
                    position(&reader, &mut row).await;
                }
                drop(hub);
                row.heartbeat_at = micros(db.now());
                // Cancellable: a beat waiting for a connection must not outlive the hub.
                let outcome = tokio::select! {
                    () = stop.cancelled() => break,
                    outcome = db.beat(&row, &mut last_sweep) => outcome,
                };
                let pause = match outcome {
                    Ok(()) => {
                        stats.beats.fetch_add(1, Ordering::Relaxed);
                        backoff.reset();
                        jitter(period, 0.1)
                    }
                    Err(error) => {
                        let failures = stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(%error, failures, "writing this host's heartbeat failed");
                        backoff.step()
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            // A clean stop: say so, briefly (the hub is going away).
            let stopped = async {
                let mut connection = db.connection().await?;
                B::Inspect::host_stopped(&mut connection, &row.host_id, micros(SystemTime::now()))
                    .await
            };
            match tokio::time::timeout(STOP_WRITE, stopped).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "marking this host stopped failed"),
                Err(_) => tracing::debug!("marking this host stopped timed out"),
            }
        });
    }

    /// Writes the host's row, and deletes old rows of silent hosts when the last sweep is an
    /// hour old.
    async fn beat(&self, row: &HostRow, last_sweep: &mut Option<Instant>) -> Result<()> {
        // The database server's clock, measured again: hosts stamp leases and due times with it.
        self.measure_clock().await?;
        {
            let mut connection = self.connection().await?;
            B::Inspect::upsert_host(&mut connection, row).await?;
        }
        if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            *last_sweep = Some(Instant::now());
            let deleted = self.trim_hosts().await?;
            if deleted > 0 {
                tracing::debug!(
                    deleted,
                    "deleted the rows of hosts silent past the retention"
                );
            }
        }
        Ok(())
    }
}

/// Copies the reader's position into the row: its cursor, its count of replayed operations,
/// and the index through which everything is replayed (from what
/// [`LogReader::wait_replayed`] says blocks an index, asked without waiting).
async fn position(reader: &LogReader, row: &mut HostRow) {
    let stats = reader.stats();
    let cursor = stats.cursor.load(Ordering::Relaxed);
    row.read_cursor = cursor;
    row.replayed = i64::try_from(stats.replayed.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    row.replayed_through = replayed_through(reader, cursor).await;
}

/// The highest index up to which `reader` replayed everything, at most `cursor`: each answer
/// names the lowest index still awaited below the one asked, so this steps down to it (a few
/// steps at most: a retry, then a gap).
async fn replayed_through(reader: &LogReader, cursor: i64) -> Option<i64> {
    let mut sequence = cursor;
    for _ in 0..8 {
        if sequence < 0 {
            return None;
        }
        // A zero timeout still checks once: the wait is polled before its deadline.
        match reader.wait_replayed(sequence, Duration::ZERO).await {
            Ok(()) => return Some(sequence),
            Err(Error::ReplayTimeout { blocked_by, .. }) => match blocked_by {
                ReplayBlock::Gap { index }
                | ReplayBlock::NotDrawn { index }
                | ReplayBlock::Retry { index }
                    if index <= sequence =>
                {
                    sequence = index - 1;
                }
                ReplayBlock::NotRead { cursor } if cursor < sequence => sequence = cursor,
                _ => return None,
            },
            Err(_) => return None,
        }
    }
    None
}
