//! The log reader: replays on this hub the operations other hosts committed.
//!
//! See [`LogReader`] for where a reader starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ofx_core::background::{TaskHealth, spawn_supervised};
use ofx_core::{Hub, Operation, ReplayError, WeakHub};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::OperationRow;
use crate::{Error, Result};

/// The most gaps a reader waits for at once; past it, new gaps are given up at once (logged).
pub const MAX_GAPS: usize = 16_384;
/// The most operations a reader retries at once; past it, a failed replay is counted as failed
/// at once (logged).
pub const MAX_RETRIES: usize = 4_096;
/// Gaps re-checked per query.
const GAP_CHUNK: usize = 256;

/// The first and the largest pause between attempts after the database failed.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));
/// The first and the largest pause between attempts to replay an operation.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// What a log reader did, for tests and monitoring.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// The index of the last row read (-1 before the first read).
    pub cursor: AtomicI64,
    /// Operations replayed.
    pub replayed: AtomicU64,
    /// Rows skipped because this hub completed them already.
    pub known: AtomicU64,
    /// Rows that could not be read or decoded (logged with their uuid, then skipped).
    pub bad_rows: AtomicU64,
    /// Replays that failed for a reason that may pass (a service not attached yet), each
    /// retried with backoff.
    pub replay_retries: AtomicU64,
    /// Operations whose replay still failed after [`DbSettings::replay_retry_window`]
    /// (logged at error level, then given up).
    ///
    /// [`DbSettings::replay_retry_window`]: crate::DbSettings::replay_retry_window
    pub replay_failures: AtomicU64,
    /// Times the database failed and the reader backed off.
    pub failures: AtomicU64,
    /// Times the reader found rows trimmed before it read them, and invalidated everything.
    pub coverage_losses: AtomicU64,
    /// Times a fresh reader found values cached on its hub, and invalidated everything.
    pub start_invalidations: AtomicU64,
    /// Rows found in a gap: committed after rows with higher indexes were read.
    pub late_rows: AtomicU64,
    /// Gaps given up (rolled-back transactions, or older than the retention).
    pub gaps_expired: AtomicU64,
    /// Whether the reader's task runs, stopped, or ended unexpectedly.
    pub health: Arc<TaskHealth>,
}

/// How far a reader has replayed.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// The last index read (-1: none yet).
    cursor: i64,
    /// The lowest index still awaited in a gap.
    first_gap: Option<i64>,
    /// The lowest index whose replay is being retried.
    first_retry: Option<i64>,
    /// Transactions in flight when the reader started may still commit rows up to this index.
    start_pending_through: Option<i64>,
}

impl Progress {
    fn replayed(&self, sequence: i64) -> bool {
        sequence <= self.cursor
            && self.first_gap.is_none_or(|gap| gap > sequence)
            && self.first_retry.is_none_or(|retry| retry > sequence)
            && self
                .start_pending_through
                .is_none_or(|through| through < sequence)
    }
}

/// A running log reader: a cheap handle. The reader stops with its hub, or when
/// [`stop`](Self::stop) is called, or when every handle (the hub keeps one) is dropped.
///
/// # Where a reader starts
///
/// A reader keeps its position on its hub, so a reader stopped and started again on the same
/// hub **resumes** where its predecessor stopped (missing nothing in between; if the log was
/// trimmed past it meanwhile, it invalidates everything, as on any coverage loss).
///
/// A reader with no position (the first on its hub) starts **at the log's end**, exactly:
/// every operation that commits after [`DbHub::start_log_reader`] returned is replayed,
/// however long its transaction was open. On PostgreSQL, where a transaction that took an
/// index before the start may commit after it, the start records the transactions in flight
/// (`pg_current_snapshot()`), and the reader waits for each to finish, replaying its rows, before
/// it counts what lies below its start as replayed; the operation row stores its transaction id
/// for this. Values this hub cached before the start cannot be checked against what committed
/// before it: if the hub caches anything when its first reader starts, the reader invalidates
/// everything and says so (start the reader before serving, as `HubBuilder::start` does).
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    wake: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<ReaderStats>,
    progress: watch::Receiver<Progress>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LogReader {
    /// Makes the reader read now instead of at its next poll (what a watcher calls).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// What the reader did so far.
    pub fn stats(&self) -> &ReaderStats {
        &self.shared.stats
    }

    /// Stops the reader. Its position stays on the hub: a reader started again there resumes
    /// from it.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Whether the reader was stopped (or its hub dropped).
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Waits until the reader has replayed every operation up to the log sequence `sequence`
    /// (what `Commander::call_committed` returns as `Committed::sequence` on the committing host):
    /// read-your-writes across hosts. Returns at once when it has.
    ///
    /// # Errors
    /// [`Error::ReplayTimeout`] after `timeout`; [`Error::NoReader`] if the reader stopped.
    pub async fn wait_replayed(&self, sequence: i64, timeout: Duration) -> Result<()> {
        let mut progress = self.shared.progress.clone();
        match tokio::time::timeout(timeout, progress.wait_for(|p| p.replayed(sequence))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::NoReader),
            Err(_) => Err(Error::ReplayTimeout {
                sequence,
                waited: timeout,
            }),
        }
    }

    /// Waits (without a time limit) until the reader has replayed every operation up to the
    /// row of index `index`; returns if the reader stops.
    pub async fn wait_for(&self, index: i64) {
        let mut progress = self.shared.progress.clone();
        // An error means the reader stopped: nothing more to wait for.
        let _ = progress.wait_for(|p| p.replayed(index)).await;
    }

    /// A handle to wake the reader from elsewhere.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wake)
    }
}

/// A reader's position, kept on its hub between readers.
#[derive(Debug, Default)]
pub(crate) struct ReaderState {
    cursor: Option<i64>,
    /// Indexes skipped over, not yet seen: rows of transactions still in flight, or of ones
    /// that rolled back. With when each was first seen missing.
    gaps: BTreeMap<i64, Instant>,
    /// Operations whose replay failed for a reason that may pass, by index.
    retries: BTreeMap<i64, Retry>,
    /// Transactions in flight when the first reader started (PostgreSQL).
    start: Option<StartHorizon>,
}

#[derive(Debug)]
struct Retry {
    operation: Operation,
    attempts: u32,
    first: Instant,
    next: Instant,
}

/// Transactions that were in flight when a fresh reader started: their rows may commit with
/// indexes up to `through`, below the reader's cursor.
#[derive(Debug)]
struct StartHorizon {
    through: i64,
    transactions: Vec<i64>,
}

impl ReaderState {
    fn progress(&self) -> Progress {
        Progress {
            cursor: self.cursor.unwrap_or(-1),
            first_gap: self.gaps.keys().next().copied(),
            first_retry: self.retries.keys().next().copied(),
            start_pending_through: self.start.as_ref().map(|start| start.through),
        }
    }
}

impl<B: Backend> DbHub<B> {
    /// Starts the reader that replays, on `hub`, the operations other hosts commit to this
    /// database (what attaching the database to a hub does). A reader already running for
    /// this database on `hub` is returned instead of a second one. See the [`LogReader`
    /// documentation](LogReader) for where it starts: when this returns, the start is established,
    /// and every operation that commits afterwards will be replayed. It polls every
    /// [`poll_period`](crate::DbSettings) (jittered) or when woken, and survives database
    /// failures by retrying with capped, jittered backoff.
    ///
    /// A row is skipped when this hub completed its operation already (by uuid, never by host
    /// id); a row that cannot be decoded is logged with its uuid, counted and skipped; an
    /// operation whose replay fails for a reason that may pass (its service not attached yet)
    /// is retried with backoff for [`replay_retry_window`](crate::DbSettings), without holding
    /// up the rows after it. A reader whose cursor falls below the trimmed part of the log
    /// invalidates every value cached on the hub, since it cannot know what it missed.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Database`] when a fresh reader cannot read where the log
    /// ends.
    pub async fn start_log_reader(&self, hub: &Hub) -> Result<LogReader> {
        self.spawn_reader(hub, None).await
    }

    /// Like [`start_log_reader`](Self::start_log_reader), starting after the row of index
    /// `after` (`Some(0)`: the whole log) unless the hub has a position already.
    ///
    /// # Errors
    /// As [`start_log_reader`](Self::start_log_reader).
    pub async fn start_log_reader_at(&self, hub: &Hub, after: Option<i64>) -> Result<LogReader> {
        self.spawn_reader(hub, after).await
    }

    /// The reader running for this database on `hub`, if any.
    pub fn log_reader(&self, hub: &Hub) -> Option<LogReader> {
        self.existing_link(hub)?.reader()
    }

    /// Waits until `hub`'s reader has replayed the operation at log sequence `sequence`.
    ///
    /// # Errors
    /// As [`LogReader::wait_replayed`]; [`Error::NoReader`] if no reader runs there.
    pub async fn wait_replayed(&self, hub: &Hub, sequence: i64, timeout: Duration) -> Result<()> {
        self.log_reader(hub)
            .ok_or(Error::NoReader)?
            .wait_replayed(sequence, timeout)
            .await
    }

    async fn spawn_reader(&self, hub: &Hub, after: Option<i64>) -> Result<LogReader> {
        let link = self.link(hub);
        // One start at a time per database and hub, and one running reader.
        let _starting = link.starting.lock().await;
        if let Some(reader) = link.reader() {
            return Ok(reader);
        }
        let stats = Arc::new(ReaderStats::default());
        stats.cursor.store(-1, Ordering::Relaxed);
        // A predecessor that is stopping hands the position back when its task ends.
        let mut state = Arc::clone(&link.state).lock_owned().await;
        if state.cursor.is_none() {
            let mut connection = self.connection().await?;
            start::<B>(hub, &mut connection, &mut state, &stats, after).await?;
        }
        let wake = Arc::new(Notify::new());
        let stop = hub.shutdown_token();
        let (progress_tx, progress) = watch::channel(state.progress());
        stats
            .cursor
            .store(state.cursor.unwrap_or(-1), Ordering::Relaxed);
        let task = Reader {
            db: self.clone(),
            hub: hub.downgrade(),
            wake: Arc::clone(&wake),
            stop: stop.clone(),
            stats: Arc::clone(&stats),
            progress: progress_tx,
            watcher: link.watcher(),
        };
        spawn_supervised(
            "ofx-diesel log reader",
            Arc::clone(&stats.health),
            task.run(state),
        );
        let reader = LogReader {
            shared: Arc::new(Shared {
                wake,
                stop,
                stats,
                progress,
            }),
        };
        link.set_reader(reader.clone());
        Ok(reader)
    }
}

/// Where a reader with no position starts (see the module documentation): after `after` if
/// given, else at the log's end, noting the transactions in flight.
async fn start<B: Backend>(
    hub: &Hub,
    connection: &mut B::Pooled,
    state: &mut ReaderState,
    stats: &ReaderStats,
    after: Option<i64>,
) -> Result<()> {
    if let Some(after) = after {
        state.cursor = Some(after.max(0));
        return Ok(());
    }
    let trimmed = B::trimmed_through(connection).await?;
    let start = B::start_position(connection).await?;
    let cursor = start.cursor.max(trimmed);
    if hub.cached_len() > 0 {
        stats.start_invalidations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            cached = hub.cached_len(),
            "a log reader starts on a hub that caches values it cannot check against what committed before: invalidating every cached value"
        );
        hub.invalidate_everything();
    }
    if !start.in_flight.is_empty() {
        state.start = Some(StartHorizon {
            through: cursor,
            transactions: start.in_flight,
        });
    }
    state.cursor = Some(cursor);
    Ok(())
}

struct Reader<B: Backend> {
    db: DbHub<B>,
    /// Weak: the reader must not keep its hub alive (it stops when the hub is dropped).
    hub: WeakHub,
    wake: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<ReaderStats>,
    progress: watch::Sender<Progress>,
    watcher: Option<Arc<dyn ofx_core::LogWatcher>>,
}

impl<B: Backend> Reader<B> {
    async fn run(self, mut state: tokio::sync::OwnedMutexGuard<ReaderState>) {
        let mut backoff = BACKOFF.0;
        let watcher_wakes = self.watcher.as_ref().map(|watcher| watcher.wakes());
        loop {
            let pause = match self.read(&mut state).await {
                Ok(true) => Duration::ZERO, // a full batch: more may be waiting
                Ok(false) => {
                    backoff = BACKOFF.0;
                    let settings = self.db.settings();
                    let period = if self.watcher.is_some() {
                        settings.poll_period_with_watcher
                    } else {
                        settings.poll_period
                    };
                    let period = jitter(period, 0.1);
                    // Wake for the next retry due, if it comes first.
                    match state.retries.values().map(|retry| retry.next).min() {
                        Some(next) => period.min(next.saturating_duration_since(Instant::now())),
                        None => period,
                    }
                }
                Err(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, backend = B::NAME, "log reader failed; retrying");
                    let pause = jitter(backoff, 0.25);
                    backoff = (backoff * 2).min(BACKOFF.1);
                    pause
                }
            };
            self.progress.send_replace(state.progress());
            if self.stop.is_cancelled() {
                return;
            }
            if pause.is_zero() {
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

    /// Reads one batch (and the gaps, the start horizon, the retries); returns whether the
    /// batch was full.
    async fn read(&self, state: &mut ReaderState) -> Result<bool> {
        let Some(hub) = self.hub.upgrade() else {
            self.stop.cancel(); // the hub is gone
            return Ok(false);
        };
        let mut connection = self.db.connection().await?;
        let settings = self.db.settings().clone();
        let cursor = state.cursor.unwrap_or(0);
        let cursor = self
            .check_coverage(&hub, &mut connection, state, cursor)
            .await?;
        let mut late =
            Self::read_gaps(&mut connection, state, &self.stats, settings.gap_retention).await?;
        late.extend(Self::read_start_horizon(&mut connection, state).await?);
        let rows = B::read_after(&mut connection, cursor, settings.read_batch).await?;
        drop(connection);
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= settings.read_batch;
        for row in late {
            self.stats.late_rows.fetch_add(1, Ordering::Relaxed);
            self.process(&hub, state, &row).await;
        }
        let mut expected = cursor + 1;
        for row in rows {
            if B::HAS_GAPS {
                self.note_gaps(state, expected, row.idx);
            }
            expected = row.idx + 1;
            state.cursor = Some(row.idx);
            self.process(&hub, state, &row).await;
        }
        if let Some(cursor) = state.cursor {
            self.stats.cursor.store(cursor, Ordering::Relaxed);
        }
        self.retry_due(&hub, state).await;
        Ok(full)
    }

    /// Replays one row, or logs and counts why it cannot be.
    async fn process(&self, hub: &Hub, state: &mut ReaderState, row: &OperationRow) {
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
        match hub.notifier().complete_remote(hub, operation.clone()).await {
            Ok(_) => {
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            }
            Err(ReplayError::Undecodable(error)) => {
                self.stats.bad_rows.fetch_add(1, Ordering::Relaxed);
                tracing::error!(uuid = %operation.uuid, index = row.idx, %error, "skipping an operation that cannot be decoded");
            }
            Err(error) => {
                self.stats.replay_retries.fetch_add(1, Ordering::Relaxed);
                if state.retries.len() >= MAX_RETRIES {
                    self.stats.replay_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(uuid = %operation.uuid, index = row.idx, %error, "too many operations to retry: giving this one up");
                    return;
                }
                tracing::warn!(uuid = %operation.uuid, index = row.idx, %error, "replay failed; retrying");
                let now = Instant::now();
                state.retries.insert(
                    row.idx,
                    Retry {
                        operation,
                        attempts: 1,
                        first: now,
                        next: now + RETRY_BACKOFF.0,
                    },
                );
            }
        }
    }

    /// Retries the replays that are due; gives up those older than the retry window.
    async fn retry_due(&self, hub: &Hub, state: &mut ReaderState) {
        let now = Instant::now();
        let due: Vec<i64> = state
            .retries
            .iter()
            .filter(|(_, retry)| retry.next <= now)
            .map(|(index, _)| *index)
            .collect();
        let window = self.db.settings().replay_retry_window;
        for index in due {
            let Some(mut retry) = state.retries.remove(&index) else {
                continue;
            };
            match hub
                .notifier()
                .complete_remote(hub, retry.operation.clone())
                .await
            {
                Ok(_) => {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.stats.replay_retries.fetch_add(1, Ordering::Relaxed);
                    if retry.first.elapsed() >= window
                        || matches!(error, ReplayError::Undecodable(_))
                    {
                        self.stats.replay_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(uuid = %retry.operation.uuid, index, attempts = retry.attempts, %error, "replay still failing: giving it up");
                        continue;
                    }
                    retry.attempts += 1;
                    let pause = RETRY_BACKOFF
                        .0
                        .saturating_mul(1 << retry.attempts.min(16))
                        .min(RETRY_BACKOFF.1);
                    retry.next = Instant::now() + jitter(pause, 0.25);
                    state.retries.insert(index, retry);
                }
            }
        }
    }

    /// Records the indexes between `from` and `to` (exclusive) as gaps.
    fn note_gaps(&self, state: &mut ReaderState, from: i64, to: i64) {
        if from >= to {
            return;
        }
        let room = MAX_GAPS.saturating_sub(state.gaps.len());
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
            state.gaps.insert(index, now);
        }
    }

    /// Expires old gaps, then reads the rows that filled the others.
    async fn read_gaps(
        connection: &mut B::Pooled,
        state: &mut ReaderState,
        stats: &ReaderStats,
        retention: Duration,
    ) -> Result<Vec<OperationRow>> {
        if state.gaps.is_empty() {
            return Ok(Vec::new());
        }
        let before = state.gaps.len();
        state.gaps.retain(|_, seen| seen.elapsed() < retention);
        stats
            .gaps_expired
            .fetch_add((before - state.gaps.len()) as u64, Ordering::Relaxed);
        let indexes: Vec<i64> = state.gaps.keys().copied().collect();
        let mut found = Vec::new();
        for chunk in indexes.chunks(GAP_CHUNK) {
            found.extend(B::read_indexes(connection, chunk).await?);
        }
        for row in &found {
            state.gaps.remove(&row.idx);
        }
        Ok(found)
    }

    /// Reads the rows of the transactions that were in flight at the start and have finished
    /// since; forgets the start horizon once none is left.
    async fn read_start_horizon(
        connection: &mut B::Pooled,
        state: &mut ReaderState,
    ) -> Result<Vec<OperationRow>> {
        let Some(start) = &mut state.start else {
            return Ok(Vec::new());
        };
        let running = B::running_transactions(connection, &start.transactions).await?;
        let finished: Vec<i64> = start
            .transactions
            .iter()
            .copied()
            .filter(|transaction| !running.contains(transaction))
            .collect();
        let rows = if finished.is_empty() {
            Vec::new()
        } else {
            B::rows_of_transactions(connection, start.through, &finished).await?
        };
        start.transactions = running;
        if start.transactions.is_empty() {
            state.start = None;
        }
        Ok(rows)
    }

    /// A cursor below what the trimmer deleted means rows may have been trimmed before this
    /// reader saw them: it cannot know what it missed, so it invalidates everything.
    async fn check_coverage(
        &self,
        hub: &Hub,
        connection: &mut B::Pooled,
        state: &mut ReaderState,
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
        state.gaps.retain(|index, _| *index > trimmed);
        state.cursor = Some(trimmed);
        Ok(trimmed)
    }
}

/// `period` ± `spread` (a fraction), at random.
pub(crate) fn jitter(period: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    period.mul_f64(factor.max(0.0))
}
