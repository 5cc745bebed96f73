//! The log reader: replays on this hub the operations other hosts committed.
//!
//! See [`LogReader`] for where a reader starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ofx_core::background::{TaskHealth, spawn_supervised};
use ofx_core::{Hub, Operation, ReplayError, WeakHub};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::OperationRow;
use crate::{Error, Result};

/// The most gaps (ranges of missing indexes, however long) a reader waits for at once; past it,
/// the oldest are given up (logged at warn, counted in [`ReaderStats::gaps_expired`]).
pub const MAX_GAPS: usize = 16_384;
/// The most operations a reader retries at once; past it, a failed replay is counted as failed
/// at once (logged).
pub const MAX_RETRIES: usize = 4_096;
/// Gaps re-read per query.
const GAP_CHUNK: usize = 64;

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
    /// Missing indexes given up once every transaction that could still commit a row there had
    /// finished (rolled back, or the index was skipped otherwise): nothing was missed.
    pub gaps_closed: AtomicU64,
    /// Missing indexes given up although a transaction that could commit a row there was still
    /// running: after [`DbSettings::gap_retention`], or past [`MAX_GAPS`] (logged at warn).
    ///
    /// [`DbSettings::gap_retention`]: crate::DbSettings::gap_retention
    pub gaps_expired: AtomicU64,
    /// Operations replayed from a hint another host's wake-up carried, before their rows were
    /// read (counted in `replayed` too; their rows, read afterwards, in `known`).
    pub hinted: AtomicU64,
    /// Hints that were not an operation (logged at debug level, then dropped: the log has
    /// the operation).
    pub bad_hints: AtomicU64,
    /// Rows whose operation differed from the hint replayed for it (logged at error level; the
    /// row's invalidations ran too).
    pub hint_mismatches: AtomicU64,
    /// Whether the reader's task runs, stopped, or ended unexpectedly.
    pub health: Arc<TaskHealth>,
}

/// How far a reader has replayed.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// The last index read (-1: none yet).
    cursor: i64,
    /// The lowest index still awaited in a gap (drawn by a transaction that may still commit,
    /// or not drawn yet).
    first_gap: Option<i64>,
    /// Whether that gap's indexes are not drawn from the sequence yet (a row was written ahead
    /// of it by hand).
    first_gap_undrawn: bool,
    /// The lowest index whose replay is being retried.
    first_retry: Option<i64>,
    /// Transactions in flight when the reader started may still commit rows up to this index.
    start_pending_through: Option<i64>,
}

/// Why a reader has not replayed a sequence yet (see [`Error::ReplayTimeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayBlock {
    /// The reader has not read that far: its cursor is here.
    NotRead {
        /// The last index read.
        cursor: i64,
    },
    /// A transaction that took this index (or a lower one) may still commit.
    Gap {
        /// The lowest index awaited.
        index: i64,
    },
    /// The sequence has not handed this index out yet (a row was written ahead of it, by
    /// hand): whoever takes it may still commit.
    NotDrawn {
        /// The lowest index awaited.
        index: i64,
    },
    /// The replay of this operation failed for a reason that may pass and is being retried.
    Retry {
        /// Its index.
        index: i64,
    },
    /// Transactions in flight when the reader started may still commit rows up to here.
    StartHorizon {
        /// The highest index they may take.
        through: i64,
    },
}

impl std::fmt::Display for ReplayBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRead { cursor } => write!(f, "the reader has read up to {cursor}"),
            Self::Gap { index } => write!(
                f,
                "index {index} was taken by a transaction that may still commit"
            ),
            Self::NotDrawn { index } => write!(
                f,
                "index {index} is not drawn from the sequence yet (a row was written ahead of it)"
            ),
            Self::Retry { index } => write!(f, "the replay of {index} is being retried"),
            Self::StartHorizon { through } => write!(
                f,
                "transactions open when the reader started may still commit up to {through}"
            ),
        }
    }
}

impl Progress {
    /// What keeps `sequence` from counting as replayed.
    fn blocked_by(&self, sequence: i64) -> ReplayBlock {
        if let Some(index) = self.first_retry.filter(|index| *index <= sequence) {
            return ReplayBlock::Retry { index };
        }
        if let Some(index) = self.first_gap.filter(|index| *index <= sequence) {
            return if self.first_gap_undrawn {
                ReplayBlock::NotDrawn { index }
            } else {
                ReplayBlock::Gap { index }
            };
        }
        if let Some(through) = self
            .start_pending_through
            .filter(|through| *through >= sequence)
        {
            return ReplayBlock::StartHorizon { through };
        }
        ReplayBlock::NotRead {
            cursor: self.cursor,
        }
    }

    /// The highest index at or below which everything is replayed (`None`: not known yet, or
    /// transactions in flight at the reader's start may still fill indexes below its start).
    fn replayed_through(&self) -> Option<i64> {
        if self.start_pending_through.is_some() {
            return None;
        }
        let mut through = self.cursor;
        if let Some(gap) = self.first_gap {
            through = through.min(gap - 1);
        }
        if let Some(retry) = self.first_retry {
            through = through.min(retry - 1);
        }
        (through >= 0).then_some(through)
    }

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
///
/// # Gaps
///
/// On PostgreSQL a reader may read index `n + 1` before the row at `n` commits. It records the
/// indexes it skipped over as **gaps** (ranges, so a jump of any length is one gap) with the
/// transactions that may still fill them: the log writers running just after the read (each
/// operation's transaction records its id and marks itself a log writer, with a shared
/// advisory lock held until it ends, before its index is drawn, so whoever drew a missing index
/// is in that list, or has finished). Each poll it re-reads the gaps, replaying the rows found there,
/// and asks which of those transactions still run; once all of a gap's have finished, a last
/// re-read settles it, and what is still missing is given up ([`ReaderStats::gaps_closed`]):
/// rolled back, nothing missed. Indexes above the sequence's position (below a row written there
/// by hand) are not drawn yet; they stay gaps until the sequence hands them out, never given up
/// by age. So [`wait_replayed`](Self::wait_replayed) is exact: a sequence counts as replayed once
/// the reader read past it and no gap, retry or transaction in flight at the start can still
/// bring a row at or below it.
///
/// A transaction that never wrote to the log (a long report, a session idle in its
/// transaction) is not in that list and holds no gap open; a log writer whose transaction stays
/// open (a handler that waits inside its transaction) holds open the gaps found while it runs.
/// [`DbSettings::gap_retention`](crate::DbSettings::gap_retention) is the safety net: a gap
/// older than it is given up ([`ReaderStats::gaps_expired`], logged), as are the oldest past
/// [`MAX_GAPS`]. This relies on rows being written through the framework's insert (or
/// otherwise recording their transaction id and taking the log-writer lock before their index
/// is drawn) and on the sequence's default `CACHE 1`.
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
    /// from it. That reader is a new handle (returned by `start_log_reader`, or
    /// [`DbHub::log_reader`]); this one stays stopped, and its waits end with
    /// [`Error::NoReader`].
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
                blocked_by: self.shared.progress.borrow().blocked_by(sequence),
            }),
        }
    }

    /// Waits, without a time limit, until the reader has replayed every operation up to index
    /// `index`: as [`wait_replayed`](Self::wait_replayed), so it also waits for gaps below
    /// `index` to fill or close (up to [`gap_retention`](crate::DbSettings)); returns if the
    /// reader stops. Prefer `wait_replayed`, which takes a timeout and says what it waited for.
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
    /// Indexes skipped over and not seen yet, as disjoint ranges by their first index (all
    /// below the cursor).
    gaps: BTreeMap<i64, Gap>,
    /// The transactions that may still commit rows in the gaps: one list per read that noted
    /// gaps (shared by them and by the pieces they split into), emptied as they finish.
    owners: BTreeMap<u64, Vec<i64>>,
    /// The key of the next owners list.
    next_owners: u64,
    /// Operations whose replay failed for a reason that may pass, by index.
    retries: BTreeMap<i64, Retry>,
    /// Transactions in flight when the first reader started (PostgreSQL).
    start: Option<StartHorizon>,
}

/// Missing indexes `from..to` (`from` is the key in [`ReaderState::gaps`]).
#[derive(Debug, Clone, Copy)]
struct Gap {
    to: i64,
    owners: Owners,
    /// When these indexes were first seen missing (or drawn, for indexes not drawn when seen).
    seen: Instant,
}

/// Who may still commit rows at a gap's indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    /// The indexes were drawn from the sequence: only the transactions in this list of
    /// [`ReaderState::owners`] may still commit rows there.
    Drawn(u64),
    /// The sequence has not drawn these indexes yet (a row was written above it other than
    /// through the sequence): any transaction may still take them.
    Undrawn,
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
    /// The start snapshot's horizon, until the rows of the transactions at or above it that
    /// ended while the start was read are read (once, on the first pass).
    horizon: Option<i64>,
}

impl ReaderState {
    /// Records the missing `ranges` (`[from, to)`, in order, above every gap) seen when the
    /// sequence had drawn indexes up to `drawn` and, after that, `in_flight` were running.
    fn note_gaps(&mut self, ranges: &[(i64, i64)], drawn: i64, in_flight: Vec<i64>, now: Instant) {
        let owners = self.add_owners(in_flight);
        for &(from, to) in ranges {
            self.insert_split(from, to, drawn, owners, now);
        }
        self.forget_unused_owners();
    }

    /// Inserts `[from, to)`: what lies up to `drawn` owned by `owners`, the rest undrawn.
    fn insert_split(&mut self, from: i64, to: i64, drawn: i64, owners: u64, now: Instant) {
        let split = to.min(drawn.saturating_add(1)).max(from);
        if from < split {
            self.gaps.insert(
                from,
                Gap {
                    to: split,
                    owners: Owners::Drawn(owners),
                    seen: now,
                },
            );
        }
        if split < to {
            self.gaps.insert(
                split,
                Gap {
                    to,
                    owners: Owners::Undrawn,
                    seen: now,
                },
            );
        }
    }

    fn add_owners(&mut self, in_flight: Vec<i64>) -> u64 {
        let key = self.next_owners;
        self.next_owners += 1;
        self.owners.insert(key, in_flight);
        key
    }

    /// The lowest index of a gap the sequence had not drawn when last asked.
    fn first_undrawn(&self) -> Option<i64> {
        self.gaps
            .iter()
            .find(|(_, gap)| gap.owners == Owners::Undrawn)
            .map(|(from, _)| *from)
    }

    /// The sequence has drawn indexes up to `drawn`, and then `in_flight` were running: the
    /// undrawn indexes up to `drawn` become theirs.
    fn drawn(&mut self, drawn: i64, in_flight: Vec<i64>, now: Instant) {
        let undrawn: Vec<(i64, i64)> = self
            .gaps
            .range(..=drawn)
            .filter(|(_, gap)| gap.owners == Owners::Undrawn)
            .map(|(from, gap)| (*from, gap.to))
            .collect();
        if undrawn.is_empty() {
            return;
        }
        let owners = self.add_owners(in_flight);
        for (from, to) in undrawn {
            self.gaps.remove(&from);
            self.insert_split(from, to, drawn, owners, now);
        }
    }

    /// Every transaction in an owners list, once.
    fn all_owners(&self) -> Vec<i64> {
        let all: BTreeSet<i64> = self.owners.values().flatten().copied().collect();
        all.into_iter().collect()
    }

    /// Keeps in the owners lists only the transactions still `running`.
    fn keep_running(&mut self, running: &[i64]) {
        let running: BTreeSet<i64> = running.iter().copied().collect();
        for list in self.owners.values_mut() {
            list.retain(|transaction| running.contains(transaction));
        }
    }

    /// Removes `index` from the gap that holds it (its row was found).
    fn fill(&mut self, index: i64) {
        let Some((&from, &gap)) = self.gaps.range(..=index).next_back() else {
            return;
        };
        if index >= gap.to {
            return;
        }
        self.gaps.remove(&from);
        if from < index {
            self.gaps.insert(from, Gap { to: index, ..gap });
        }
        if index + 1 < gap.to {
            self.gaps.insert(index + 1, gap);
        }
    }

    /// Removes the gaps read through `scanned_through` whose owners have all finished: what
    /// is still missing there will never commit. Returns how many indexes it gave up.
    fn close_settled(&mut self, scanned_through: i64) -> u64 {
        let owners = &self.owners;
        let settled = |gap: &Gap| match gap.owners {
            Owners::Drawn(key) => owners.get(&key).is_none_or(Vec::is_empty),
            Owners::Undrawn => false,
        };
        let mut closed = 0;
        self.gaps.retain(|from, gap| {
            if gap.to - 1 <= scanned_through && settled(gap) {
                closed += (gap.to - from).unsigned_abs();
                false
            } else {
                true
            }
        });
        closed
    }

    /// Removes the drawn gaps first seen `retention` ago or more; returns how many indexes it
    /// gave up. The indexes not drawn yet stay: they are the log's future.
    fn expire(&mut self, retention: Duration) -> u64 {
        let mut expired = 0;
        self.gaps.retain(|from, gap| {
            if gap.owners != Owners::Undrawn && gap.seen.elapsed() >= retention {
                tracing::warn!(
                    from = *from,
                    to = gap.to,
                    "a gap in the operation log outlived the gap retention while a transaction that could fill it still ran: giving it up"
                );
                expired += (gap.to - from).unsigned_abs();
                false
            } else {
                true
            }
        });
        expired
    }

    /// Past [`MAX_GAPS`], gives up the oldest gaps (drawn ones first); returns how many
    /// indexes it gave up.
    fn bound(&mut self) -> u64 {
        let Some(excess) = self.gaps.len().checked_sub(MAX_GAPS).filter(|n| *n > 0) else {
            return 0;
        };
        let mut by_age: Vec<(bool, Instant, i64)> = self
            .gaps
            .iter()
            .map(|(from, gap)| (gap.owners == Owners::Undrawn, gap.seen, *from))
            .collect();
        by_age.sort_unstable();
        let mut given_up = 0;
        for (_, _, from) in by_age.into_iter().take(excess) {
            if let Some(gap) = self.gaps.remove(&from) {
                tracing::warn!(
                    from,
                    to = gap.to,
                    max = MAX_GAPS,
                    "too many gaps in the operation log: giving up the oldest"
                );
                given_up += (gap.to - from).unsigned_abs();
            }
        }
        given_up
    }

    /// Forgets the gaps up to `trimmed` (their rows may be gone: the reader invalidated
    /// everything instead).
    fn forget_gaps_through(&mut self, trimmed: i64) {
        let below: Vec<(i64, Gap)> = self
            .gaps
            .range(..=trimmed)
            .map(|(from, gap)| (*from, *gap))
            .collect();
        for (from, gap) in below {
            self.gaps.remove(&from);
            if gap.to > trimmed + 1 {
                self.gaps.insert(trimmed + 1, gap);
            }
        }
    }

    /// Drops the owners lists no gap refers to.
    fn forget_unused_owners(&mut self) {
        let used: BTreeSet<u64> = self
            .gaps
            .values()
            .filter_map(|gap| match gap.owners {
                Owners::Drawn(key) => Some(key),
                Owners::Undrawn => None,
            })
            .collect();
        self.owners.retain(|key, _| used.contains(key));
    }

    fn progress(&self) -> Progress {
        Progress {
            cursor: self.cursor.unwrap_or(-1),
            first_gap: self.gaps.keys().next().copied(),
            first_gap_undrawn: self
                .gaps
                .values()
                .next()
                .is_some_and(|gap| gap.owners == Owners::Undrawn),
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
        // Known as soon as the start is established, before the reader's first pass.
        if let Some(through) = state.progress().replayed_through() {
            hub.advance_log_position(through);
        }
        let (progress_tx, progress) = watch::channel(state.progress());
        stats
            .cursor
            .store(state.cursor.unwrap_or(-1), Ordering::Relaxed);
        let task = Reader {
            db: self.clone(),
            host: hub.host_id().to_string(),
            hub: hub.downgrade(),
            wake: Arc::clone(&wake),
            stop: stop.clone(),
            stats: Arc::clone(&stats),
            progress: progress_tx,
            hints: link.watcher().and_then(|watcher| watcher.hints()),
            ledger: Arc::default(),
            watcher: link.watcher(),
        };
        let replayer = task.hints.as_ref().map(|hints| {
            let replayer = crate::hints::hint_replayer(
                hub,
                &stats,
                &task.ledger,
                tokio::runtime::Handle::current(),
            );
            hints.set_replayer(Arc::clone(&replayer));
            replayer
        });
        spawn_supervised(
            "ofx-diesel log reader",
            Arc::clone(&stats.health),
            task.run(state, replayer),
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
    if !start.in_flight.is_empty() || start.horizon.is_some() {
        state.start = Some(StartHorizon {
            through: cursor,
            transactions: start.in_flight,
            horizon: start.horizon,
        });
    }
    state.cursor = Some(cursor);
    Ok(())
}

struct Reader<B: Backend> {
    db: DbHub<B>,
    /// The hub's host id: the `host` label of the reader's metrics.
    host: String,
    /// Weak: the reader must not keep its hub alive (it stops when the hub is dropped).
    hub: WeakHub,
    wake: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<ReaderStats>,
    progress: watch::Sender<Progress>,
    watcher: Option<Arc<dyn ofx_core::LogWatcher>>,
    /// The hints the watcher receives, replayed before each read.
    hints: Option<Arc<ofx_core::watcher::WakeHints>>,
    /// The operations replayed from hints, to check against their rows.
    ledger: Arc<crate::hints::HintLedger>,
}

impl<B: Backend> Reader<B> {
    async fn run(
        self,
        state: tokio::sync::OwnedMutexGuard<ReaderState>,
        replayer: Option<ofx_core::watcher::HintReplayer>,
    ) {
        let hints = self.hints.clone();
        self.run_until_stopped(state).await;
        // Hints go back to the queue for the next reader.
        if let (Some(hints), Some(replayer)) = (hints, replayer) {
            hints.remove_replayer(&replayer);
        }
    }

    async fn run_until_stopped(self, mut state: tokio::sync::OwnedMutexGuard<ReaderState>) {
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
            crate::telemetry::record_reader_stats(&self.host, &self.stats);
            let progress = state.progress();
            if let Some(through) = progress.replayed_through()
                && let Some(hub) = self.hub.upgrade()
            {
                hub.advance_log_position(through);
            }
            self.progress.send_replace(progress);
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

    /// Reads one batch (and the gaps, the start horizon, the retries); returns whether more
    /// may be waiting (a full batch).
    async fn read(&self, state: &mut ReaderState) -> Result<bool> {
        let Some(hub) = self.hub.upgrade() else {
            self.stop.cancel(); // the hub is gone
            return Ok(false);
        };
        self.replay_hints(&hub);
        // A hint noted before this read that the read does not reach was no committed
        // operation's (see below).
        let hinted = hub.hinted_position();
        let mut connection = self.db.connection().await?;
        // Rows found late are replayed even when a later query fails: the gaps and the start
        // horizon no longer wait for them.
        let mut late = Vec::new();
        let fetched = self.fetch(&hub, &mut connection, state, &mut late).await;
        drop(connection);
        let batch = fetched
            .as_ref()
            .map_or(&[][..], |(rows, _, _)| rows.as_slice());
        let count = late.len() + batch.len();
        if count > 0 {
            crate::telemetry::record_reader_batch(&self.host, count);
            let span = tracing::info_span!(
                "replay_batch",
                host = %self.host,
                rows = count,
                late = late.len(),
                first = batch.first().map(|row| row.idx),
                last = batch.last().map(|row| row.idx),
            );
            self.process_batch(&hub, state, late, batch)
                .instrument(span)
                .await;
        }
        let (rows, full, head) = fetched?;
        // The lag: none when the read reached the log's end; after a full batch, up to the
        // head the database saw then, the newest row replayed committed first.
        let behind = match (full, head, state.cursor) {
            (false, _, _) => 0,
            (true, Some(head), Some(cursor)) => (head - cursor).max(0),
            // Behind by at least one row, it seems, but the head is unknown.
            (true, _, _) => 1,
        };
        crate::telemetry::record_reader_lag(
            &self.host,
            behind,
            rows.last().map(|row| row.committed_at),
        );
        if let Some(cursor) = state.cursor {
            self.stats.cursor.store(cursor, Ordering::Relaxed);
            // The read reached the log's end: every operation committed before it started is at
            // or below the cursor, and a hint is sent after its commit.
            if let Some(hinted) = hinted
                && !full
                && hinted > cursor
                && state.gaps.is_empty()
            {
                tracing::warn!(
                    hinted,
                    cursor,
                    "a wake-up's hint named a log position the log does not reach"
                );
                hub.retract_hinted_position(hinted, cursor);
            }
        }
        self.retry_due(&hub, state).await;
        Ok(full)
    }

    /// Replays the hints that waited for this reader (received before it installed its
    /// replayer).
    fn replay_hints(&self, hub: &Hub) {
        if let Some(hints) = &self.hints {
            crate::hints::replay_waiting(hub, &self.stats, &self.ledger, &self.host, hints);
        }
    }

    /// Replays the rows found late in gaps, then the batch read after the cursor (moving the
    /// cursor past each).
    async fn process_batch(
        &self,
        hub: &Hub,
        state: &mut ReaderState,
        late: Vec<OperationRow>,
        batch: &[OperationRow],
    ) {
        for row in late {
            self.stats.late_rows.fetch_add(1, Ordering::Relaxed);
            self.process(hub, state, &row).await;
        }
        for row in batch {
            state.cursor = Some(row.idx);
            self.process(hub, state, row).await;
        }
    }

    /// The database's part of a read: checks the coverage, re-reads the gaps and the start
    /// horizon (their rows into `late`), reads the next batch and notes the gaps it skips
    /// over. Returns the batch, and whether more may be waiting.
    async fn fetch(
        &self,
        hub: &Hub,
        connection: &mut B::Pooled,
        state: &mut ReaderState,
        late: &mut Vec<OperationRow>,
    ) -> Result<(Vec<OperationRow>, bool, Option<i64>)> {
        let settings = self.db.settings().clone();
        let cursor = state.cursor.unwrap_or(0);
        // Nothing else to look at (no gaps, no start horizon): the coverage check and the read
        // in one round trip. Rows read past a cursor the trimmer overtook are dropped, and the
        // read starts again from what it left.
        if state.gaps.is_empty() && state.start.is_none() {
            let (trimmed, rows) =
                B::read_after_covered(connection, cursor, settings.read_batch).await?;
            if cursor >= trimmed {
                return self.finish_fetch(connection, state, cursor, rows).await;
            }
        }
        let cursor = self.check_coverage(hub, connection, state, cursor).await?;
        let gaps_full = self.read_gaps(connection, state, &settings, late).await?;
        late.extend(Self::read_start_horizon(connection, state).await?);
        let rows = B::read_after(connection, cursor, settings.read_batch).await?;
        let (rows, full, head) = self.finish_fetch(connection, state, cursor, rows).await?;
        Ok((rows, full || gaps_full, head))
    }

    /// The rest of [`fetch`](Self::fetch) once the rows after `cursor` are read: notes the
    /// gaps they show, and where the log ends after a full batch.
    async fn finish_fetch(
        &self,
        connection: &mut B::Pooled,
        state: &mut ReaderState,
        cursor: i64,
        rows: Vec<OperationRow>,
    ) -> Result<(Vec<OperationRow>, bool, Option<i64>)> {
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= self.db.settings().read_batch;
        if B::HAS_GAPS {
            self.note_gaps(connection, state, cursor, &rows).await?;
        }
        // Behind: where the log ends, for the lag metric (one query, only after a full batch;
        // its failure is no failure of the read).
        let head = if full {
            B::head_index(connection).await.ok().flatten()
        } else {
            None
        };
        Ok((rows, full, head))
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
        let hinted = self.ledger.take(operation.uuid);
        let check = |operation: &ofx_core::Operation| {
            if let Some(hinted) = hinted {
                crate::hints::HintLedger::check_row(hub, &self.stats, operation, hinted);
            }
        };
        if hinted.is_some_and(|hinted| hinted.done) || hub.notifier().is_known(operation.uuid) {
            self.stats.known.fetch_add(1, Ordering::Relaxed);
            check(&operation);
            return;
        }
        match hub.notifier().complete_remote(hub, operation.clone()).await {
            Ok(replayed) => {
                if replayed {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    crate::telemetry::record_replay_delay(&self.host, row.committed_at);
                } else {
                    // Completed by another path meanwhile (a hint's replay, running then).
                    self.stats.known.fetch_add(1, Ordering::Relaxed);
                }
                check(&operation);
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

    /// Records as gaps the indexes missing between `cursor` and the rows read, with the
    /// transactions that may still commit rows there.
    ///
    /// A missing index below a row read was drawn before that row's index (the sequence hands
    /// out values in order), by a transaction whose id was assigned before it drew it: once the
    /// read is done, that transaction is either running, or committed (its row is visible to
    /// every later statement) or rolled back. So the transactions running after the read are
    /// the only ones that can still fill these gaps. An index above the sequence's position
    /// (below a row written there other than through the sequence) is not drawn yet: any
    /// transaction may still take it, and it waits to be drawn.
    async fn note_gaps(
        &self,
        connection: &mut B::Pooled,
        state: &mut ReaderState,
        cursor: i64,
        rows: &[OperationRow],
    ) -> Result<()> {
        let mut missing = Vec::new();
        let mut expected = cursor + 1;
        for row in rows {
            if expected < row.idx {
                missing.push((expected, row.idx));
            }
            expected = expected.max(row.idx + 1);
        }
        let Some(&(first, _)) = missing.first() else {
            return Ok(());
        };
        // The sequence first, then the transactions: one that draws after the first query
        // is not listed, and its index is above `drawn`.
        let drawn = B::drawn_through(connection).await?;
        let in_flight = if first <= drawn {
            B::in_flight(connection).await?
        } else {
            Vec::new()
        };
        state.note_gaps(&missing, drawn, in_flight, Instant::now());
        self.give_up_excess(state);
        Ok(())
    }

    fn give_up_excess(&self, state: &mut ReaderState) {
        let given_up = state.bound();
        if given_up > 0 {
            self.stats
                .gaps_expired
                .fetch_add(given_up, Ordering::Relaxed);
            state.forget_unused_owners();
        }
    }

    /// Brings the gaps up to date, reading into `late` the rows that filled them; returns
    /// whether it stopped at the read batch (more may be waiting).
    ///
    /// In order: the indexes the sequence has drawn since they were seen get the transactions
    /// running now as owners; the owners that finished are dropped; the gaps are re-read, then
    /// those whose owners had all finished before the re-read are closed (the re-read was their
    /// last), and those older than the retention expire.
    async fn read_gaps(
        &self,
        connection: &mut B::Pooled,
        state: &mut ReaderState,
        settings: &crate::DbSettings,
        late: &mut Vec<OperationRow>,
    ) -> Result<bool> {
        if state.gaps.is_empty() {
            return Ok(false);
        }
        if let Some(first_undrawn) = state.first_undrawn() {
            let drawn = B::drawn_through(connection).await?;
            if first_undrawn <= drawn {
                let in_flight = B::in_flight(connection).await?;
                state.drawn(drawn, in_flight, Instant::now());
            }
        }
        let owners = state.all_owners();
        if !owners.is_empty() {
            let running = B::running_transactions(connection, &owners).await?;
            state.keep_running(&running);
        }
        // Re-read in index order, at most a batch of rows per poll: everything up to
        // `scanned_through` was read.
        let ranges: Vec<(i64, i64)> = state
            .gaps
            .iter()
            .map(|(from, gap)| (*from, gap.to))
            .collect();
        let mut budget = settings.read_batch.max(1);
        let mut scanned_through = i64::MAX;
        for chunk in ranges.chunks(GAP_CHUNK) {
            let rows = B::read_ranges(connection, chunk, budget).await?;
            for row in &rows {
                state.fill(row.idx);
            }
            let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
            let last = rows.last().map(|row| row.idx);
            late.extend(rows);
            if count >= budget {
                scanned_through = last.unwrap_or(i64::MIN);
                break;
            }
            budget -= count;
        }
        let closed = state.close_settled(scanned_through);
        if closed > 0 {
            self.stats.gaps_closed.fetch_add(closed, Ordering::Relaxed);
            tracing::debug!(
                indexes = closed,
                "gaps in the operation log closed: their transactions finished without filling them"
            );
        }
        let expired = state.expire(settings.gap_retention);
        self.stats
            .gaps_expired
            .fetch_add(expired, Ordering::Relaxed);
        state.forget_unused_owners();
        // Rows found split gaps in two.
        self.give_up_excess(state);
        Ok(scanned_through != i64::MAX)
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
        // Once, first: the rows of the transactions above the start snapshot's horizon that
        // ended while the start was read (listed nowhere, visible now).
        let mut rows = match start.horizon {
            Some(horizon) => B::rows_at_or_above(connection, start.through, horizon).await?,
            None => Vec::new(),
        };
        let running = B::running_transactions(connection, &start.transactions).await?;
        let finished: Vec<i64> = start
            .transactions
            .iter()
            .copied()
            .filter(|transaction| !running.contains(transaction))
            .collect();
        if !finished.is_empty() {
            rows.extend(B::rows_of_transactions(connection, start.through, &finished).await?);
        }
        // Read: not again (a failed query above leaves it for the next pass).
        start.horizon = None;
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
        state.forget_gaps_through(trimmed);
        state.forget_unused_owners();
        state.cursor = Some(trimmed);
        Ok(trimmed)
    }
}

/// `period` ± `spread` (a fraction), at random.
pub(crate) fn jitter(period: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    // Saturating: a period near `Duration::MAX` times the jitter would overflow.
    Duration::try_from_secs_f64(period.as_secs_f64() * factor.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(state: &ReaderState) -> Vec<(i64, i64)> {
        state
            .gaps
            .iter()
            .map(|(from, gap)| (*from, gap.to))
            .collect()
    }

    #[test]
    fn a_found_row_splits_its_gap_and_a_gap_closes_once_its_owners_finished() {
        let mut state = ReaderState::default();
        let now = Instant::now();
        state.note_gaps(&[(1, 10), (12, 13)], 100, vec![7, 8], now);
        assert_eq!(gaps(&state), vec![(1, 10), (12, 13)]);
        assert_eq!(
            state.owners.len(),
            1,
            "one owners list for the gaps of one read"
        );

        state.fill(1);
        state.fill(5);
        state.fill(9);
        state.fill(11); // in no gap
        assert_eq!(gaps(&state), vec![(2, 5), (6, 9), (12, 13)]);
        assert_eq!(state.all_owners(), vec![7, 8]);

        assert_eq!(state.close_settled(i64::MAX), 0, "its owners still run");
        state.keep_running(&[8]);
        assert_eq!(state.close_settled(i64::MAX), 0, "one still runs");
        state.keep_running(&[]);
        assert_eq!(
            state.close_settled(6),
            3,
            "only what the last read went through"
        );
        assert_eq!(gaps(&state), vec![(6, 9), (12, 13)]);
        assert_eq!(state.close_settled(i64::MAX), 4);
        assert!(state.gaps.is_empty());
        state.forget_unused_owners();
        assert!(state.owners.is_empty());
    }

    #[test]
    fn indexes_not_drawn_yet_wait_for_the_sequence_and_never_expire() {
        let mut state = ReaderState::default();
        let now = Instant::now();
        // A row at 1,000,000 read while the sequence had drawn through 3.
        state.note_gaps(&[(2, 1_000_000)], 3, vec![7], now);
        assert_eq!(gaps(&state), vec![(2, 4), (4, 1_000_000)]);
        assert_eq!(state.first_undrawn(), Some(4));
        state.keep_running(&[]);
        assert_eq!(state.close_settled(i64::MAX), 2, "the drawn part closes");
        assert_eq!(state.expire(Duration::ZERO), 0, "the undrawn part stays");
        assert_eq!(state.progress().first_gap, Some(4));

        state.drawn(5, vec![9], now);
        assert_eq!(gaps(&state), vec![(4, 6), (6, 1_000_000)]);
        assert_eq!(
            state.close_settled(i64::MAX),
            0,
            "transaction 9 may still commit"
        );
        assert_eq!(state.expire(Duration::ZERO), 2, "the safety net");
        assert_eq!(gaps(&state), vec![(6, 1_000_000)]);
    }

    #[test]
    fn past_the_bound_the_oldest_drawn_gaps_are_given_up_first() {
        let mut state = ReaderState::default();
        let now = Instant::now();
        state.note_gaps(&[(1, 2)], 0, Vec::new(), now);
        let ranges: Vec<(i64, i64)> = (0..MAX_GAPS as i64)
            .map(|n| (10 + 2 * n, 11 + 2 * n))
            .collect();
        state.note_gaps(&ranges, i64::MAX, Vec::new(), now + Duration::from_secs(1));
        assert_eq!(state.gaps.len(), MAX_GAPS + 1);
        assert_eq!(state.bound(), 1);
        assert_eq!(state.gaps.len(), MAX_GAPS);
        assert_eq!(
            state.first_undrawn(),
            Some(1),
            "the undrawn gap, though oldest, stays"
        );
    }
}
