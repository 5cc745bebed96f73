//! The log reader: replays on this hub the operations other hosts committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ofx_core::{Hub, WeakHub};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::{OperationRow, micros};

/// The most gaps a reader waits for at once; past it, new gaps are given up at once (logged).
pub const MAX_GAPS: usize = 16_384;
/// Gaps re-checked per query.
const GAP_CHUNK: usize = 256;

/// The first and the largest pause between attempts after the database failed.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// What a log reader did, for tests and monitoring.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// The index of the last row read (-1 before the first read).
    pub cursor: AtomicI64,
    /// Operations replayed.
    pub replayed: AtomicU64,
    /// Rows skipped because this hub completed them already.
    pub known: AtomicU64,
    /// Rows that could not be replayed (logged with their uuid, then skipped).
    pub bad_rows: AtomicU64,
    /// Times the database failed and the reader backed off.
    pub failures: AtomicU64,
    /// Times the reader found rows trimmed before it read them, and invalidated everything.
    pub coverage_losses: AtomicU64,
    /// Rows found in a gap: committed after rows with higher indexes were read.
    pub late_rows: AtomicU64,
    /// Gaps given up (rolled-back transactions, or older than the retention).
    pub gaps_expired: AtomicU64,
}

/// A running log reader. Dropping it stops the reader; so does dropping its hub.
#[derive(Debug)]
pub struct LogReader {
    wake: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<ReaderStats>,
    cursor: watch::Receiver<i64>,
}

impl LogReader {
    /// Makes the reader read now instead of at its next poll (what a watcher calls).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// What the reader did so far.
    pub fn stats(&self) -> &ReaderStats {
        &self.stats
    }

    /// Waits until the reader has read past the row of index `index`.
    pub async fn wait_for(&self, index: i64) {
        let mut cursor = self.cursor.clone();
        // An error means the reader stopped: nothing more to wait for.
        let _ = cursor.wait_for(|cursor| *cursor >= index).await;
    }

    /// A handle to wake the reader from elsewhere.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<B: Backend> DbHub<B> {
    /// Starts the reader that replays, on `hub`, the operations other hosts commit to this
    /// database. It starts at the rows logged [`start_offset`](crate::DbSettings) before now,
    /// polls every [`poll_period`](crate::DbSettings) (jittered) or when woken, and survives
    /// database failures by retrying with capped, jittered backoff.
    ///
    /// A row is skipped when this hub completed its operation already (by uuid, never by host
    /// id); a row that cannot be decoded or replayed is logged with its uuid, counted and
    /// skipped. A reader whose cursor falls below the trimmed part of the log invalidates every
    /// value cached on the hub, since it cannot know what it missed.
    pub fn start_log_reader(&self, hub: &Hub) -> LogReader {
        self.start_log_reader_at(hub, None)
    }

    /// Like [`start_log_reader`](Self::start_log_reader), starting after the row of index
    /// `after` (`Some(0)`: the whole log).
    pub fn start_log_reader_at(&self, hub: &Hub, after: Option<i64>) -> LogReader {
        let wake = Arc::new(Notify::new());
        let stop = hub.shutdown_token();
        let stats = Arc::new(ReaderStats::default());
        stats.cursor.store(-1, Ordering::Relaxed);
        let (cursor_tx, cursor) = watch::channel(-1);
        let task = Reader {
            db: self.clone(),
            hub: hub.downgrade(),
            wake: Arc::clone(&wake),
            stop: stop.clone(),
            stats: Arc::clone(&stats),
            cursor: after,
            cursor_tx,
            gaps: BTreeMap::new(),
        };
        tokio::spawn(task.run());
        LogReader {
            wake,
            stop,
            stats,
            cursor,
        }
    }
}

struct Reader<B: Backend> {
    db: DbHub<B>,
    /// Weak: the reader must not keep its hub alive (it stops when the hub is dropped).
    hub: WeakHub,
    wake: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<ReaderStats>,
    cursor: Option<i64>,
    cursor_tx: watch::Sender<i64>,
    /// Indexes skipped over, not yet seen: rows of transactions still in flight, or of ones
    /// that rolled back. With when each was first seen missing.
    gaps: BTreeMap<i64, Instant>,
}

impl<B: Backend> Reader<B> {
    async fn run(mut self) {
        let mut backoff = BACKOFF.0;
        let watcher = self.db.watcher();
        let watcher_wakes = watcher.as_ref().map(|watcher| watcher.wakes());
        loop {
            let pause = match self.read().await {
                Ok(true) => Duration::ZERO, // a full batch: more may be waiting
                Ok(false) => {
                    backoff = BACKOFF.0;
                    let settings = self.db.settings();
                    let period = if watcher.is_some() {
                        settings.poll_period_with_watcher
                    } else {
                        settings.poll_period
                    };
                    jitter(period, 0.1)
                }
                Err(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, backend = B::NAME, "log reader failed; retrying");
                    let pause = jitter(backoff, 0.25);
                    backoff = (backoff * 2).min(BACKOFF.1);
                    pause
                }
            };
            if pause.is_zero() {
                if self.stop.is_cancelled() {
                    return;
                }
                continue;
            }
            let watcher_woke = async {
                match &watcher_wakes {
                    Some(wakes) => wakes.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = watcher_woke => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads one batch (and the gaps); returns whether the batch was full.
    async fn read(&mut self) -> Result<bool> {
        let Some(hub) = self.hub.upgrade() else {
            self.stop.cancel(); // the hub is gone
            return Ok(false);
        };
        let mut connection = self.db.connection().await?;
        let settings = self.db.settings().clone();
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => {
                let start = micros(
                    SystemTime::now()
                        .checked_sub(settings.start_offset)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                );
                // Not below what was trimmed: a fresh reader has nothing cached to lose.
                let recent = B::max_index_before(&mut connection, start)
                    .await?
                    .unwrap_or(0);
                let cursor = recent.max(B::trimmed_through(&mut connection).await?);
                self.cursor = Some(cursor);
                cursor
            }
        };
        let cursor = self.check_coverage(&hub, &mut connection, cursor).await?;
        let late = self
            .read_gaps(&mut connection, settings.gap_retention)
            .await?;
        let rows = B::read_after(&mut connection, cursor, settings.read_batch).await?;
        drop(connection);
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= settings.read_batch;
        for row in late {
            self.stats.late_rows.fetch_add(1, Ordering::Relaxed);
            self.process(&hub, &row).await;
        }
        let mut expected = cursor + 1;
        for row in rows {
            if B::HAS_GAPS {
                self.note_gaps(expected, row.idx);
            }
            expected = row.idx + 1;
            self.cursor = Some(row.idx);
            self.process(&hub, &row).await;
        }
        if let Some(cursor) = self.cursor {
            self.stats.cursor.store(cursor, Ordering::Relaxed);
            self.cursor_tx.send_replace(cursor);
        }
        Ok(full)
    }

    /// Replays one row, or logs and counts why it cannot be.
    async fn process(&self, hub: &Hub, row: &OperationRow) {
        let operation = match row.to_operation() {
            Ok(operation) => operation,
            Err(error) => {
                self.stats.bad_rows.fetch_add(1, Ordering::Relaxed);
                tracing::error!(uuid = %row.uuid, index = row.idx, %error, "skipping an unreadable operation");
                return;
            }
        };
        if hub.notifier().is_known(operation.uuid) {
            self.stats.known.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match hub.commander().replay(&operation).await {
            Ok(_) => {
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.bad_rows.fetch_add(1, Ordering::Relaxed);
                tracing::error!(uuid = %operation.uuid, index = row.idx, %error, "skipping an operation that cannot be replayed");
            }
        }
    }

    /// Records the indexes between `from` and `to` (exclusive) as gaps.
    fn note_gaps(&mut self, from: i64, to: i64) {
        if from >= to {
            return;
        }
        let room = MAX_GAPS.saturating_sub(self.gaps.len());
        let missing = usize::try_from(to - from).unwrap_or(usize::MAX);
        if missing > room {
            self.stats
                .gaps_expired
                .fetch_add(missing as u64, Ordering::Relaxed);
            tracing::warn!(
                from,
                to,
                "too many gaps in the operation log: giving up on these"
            );
            return;
        }
        let now = Instant::now();
        for index in from..to {
            self.gaps.insert(index, now);
        }
    }

    /// Expires old gaps, then reads the rows that filled the others.
    async fn read_gaps(
        &mut self,
        connection: &mut B::Pooled,
        retention: Duration,
    ) -> Result<Vec<OperationRow>> {
        if self.gaps.is_empty() {
            return Ok(Vec::new());
        }
        let before = self.gaps.len();
        self.gaps.retain(|_, seen| seen.elapsed() < retention);
        self.stats
            .gaps_expired
            .fetch_add((before - self.gaps.len()) as u64, Ordering::Relaxed);
        let indexes: Vec<i64> = self.gaps.keys().copied().collect();
        let mut found = Vec::new();
        for chunk in indexes.chunks(GAP_CHUNK) {
            found.extend(B::read_indexes(connection, chunk).await?);
        }
        for row in &found {
            self.gaps.remove(&row.idx);
        }
        Ok(found)
    }

    /// A cursor below what the trimmer deleted means rows may have been trimmed before this
    /// reader saw them: it cannot know what it missed, so it invalidates everything.
    async fn check_coverage(
        &mut self,
        hub: &Hub,
        connection: &mut B::Pooled,
        cursor: i64,
    ) -> Result<i64> {
        let trimmed = B::trimmed_through(connection).await?;
        if cursor >= trimmed {
            return Ok(cursor);
        }
        self.stats.coverage_losses.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            cursor,
            trimmed,
            "the operation log was trimmed past this reader: invalidating every cached value"
        );
        hub.invalidate_everything();
        self.gaps.retain(|index, _| *index > trimmed);
        self.cursor = Some(trimmed);
        Ok(trimmed)
    }
}

/// `period` ± `spread` (a fraction), at random.
pub(crate) fn jitter(period: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    period.mul_f64(factor.max(0.0))
}
