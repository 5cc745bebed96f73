//! Transactional maps (`ofx_diesel::maps`), on SQLite and PostgreSQL: how fast a host delivers
//! change notifications it has to catch up on, and how long a change takes from a commit on one
//! host to an observer on another, each against hand-written code or the raw transport measured
//! in the same run.
//!
//! Run: `cargo bench -p ofx-tests --bench maps` (about 2.5 minutes on two cores after the build,
//! most of it host A's writes on PostgreSQL).
//! `OFX_BENCH_TRANSACTIONS` (default 2000) and `OFX_BENCH_CHANGES` (default 10 per transaction)
//! size each replay round, `OFX_BENCH_ROUNDS` (default 3) the replay rounds,
//! `OFX_BENCH_SAMPLES` (default 400) the latency samples; `OFX_BENCH_ONLY` picks backends
//! (`sqlite`, `postgres`) and parts (`replay`, `latency`), e.g. `OFX_BENCH_ONLY=postgres,replay`;
//! `OFX_BENCH_PROFILE=1` prints, after the first replay round's writes, every statement's count
//! and time per write transaction (slower: not for the numbers).
//! PostgreSQL is taken from `OFX_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`);
//! its database `ofx_bench_<uuid>` is dropped at the end; SQLite runs on a temporary file.
//!
//! Every host is a hub with a `DbHub`, a `MapManager` and a service whose command `set`s
//! `count` entries of the map `bench` (`String` → `i64`) in one transaction.
//!
//! - **Replay throughput**: host B starts first, its follower deaf (no watcher,
//!   `MapSettings::poll_period` and the log reader's poll one hour), with a map observer and a
//!   manager observer that count. Host A then commits `OFX_BENCH_TRANSACTIONS` transactions of
//!   `OFX_BENCH_CHANGES` `set`s each (over 5,000 keys: adds first, then updates). Timed: from
//!   `b.sync()` to B's `transaction_committed` of A's last transaction (every change counted
//!   before it). A's write rate and its statements per transaction (a Diesel instrumentation
//!   counting every statement of every connection) are reported too. Baseline: a hand-written loop on one pooled connection of the same kind,
//!   reading the same rows of `ofx_stream_events` (stream `ofx.maps`) with the follower's query
//!   shape (`position > ? AND position <= ? ORDER BY position LIMIT 1024`, Diesel's typed
//!   query), decoding each body with serde_json into a struct of the stored shape (`{map,
//!   action, key, old, new}`, typed: the floor, where ofx goes through `serde_json::Value`) and
//!   counting changes and transactions. In each round the loop reads the same new rows just
//!   before and just after ofx does, and the mean of its two times is the baseline; the ratio
//!   (ofx changes/s ÷ loop changes/s) is the median of the rounds' ratios.
//! - **Commit → notification latency**: hosts A and B on one database, each with the watcher
//!   (SQLite: `FsWatcher` on a temporary directory; PostgreSQL: `PgWatcher`, LISTEN/NOTIFY) and
//!   every poll at one hour, so that a missed wake-up shows as a miss (over 2 s). A runs a
//!   command with one `set`; timed from just before A's `call` (and from just before A's
//!   `COMMIT`, seen by a commit hook) to B's observer's `changed`, and to A's own observer's
//!   `changed` (A's `call` returns once its own follower delivered). In interleaved rounds the
//!   raw transport is timed the way `latency.rs` does: `pg_notify` on one tokio-postgres
//!   connection → the notification on another that `LISTEN`s; or a file written and renamed
//!   over a watched one (what `FsWatcher` does) → the first `notify`-crate event for it. To
//!   split B's latency, a third watcher of the same log (another host id, on no hub) timestamps
//!   when A's wake-up reaches another host.
//!
//! Everything runs on one multi-thread tokio runtime with 2 workers.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::{ExpressionMethods, QueryDsl};
use ofx_core::{
    Command, CommandContext, ComputeService, HostId, Hub, LogWatcherFactory, command_handler,
    service,
};
use ofx_diesel::maps::{
    ManagerObserver, MapChange, MapManager, MapObserver, MapSettings, Rebuild, ReliableMap,
    TransactionCommitted,
};
use ofx_diesel::{Backend, CommitFaultHook, DbHub, DbSettings, Postgres, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Transactions host A commits per replay round (`OFX_BENCH_TRANSACTIONS`).
const TRANSACTIONS: u64 = 2000;
/// `set`s per transaction (`OFX_BENCH_CHANGES`).
const CHANGES: u64 = 10;
/// Replay rounds (`OFX_BENCH_ROUNDS`).
const ROUNDS: usize = 3;
/// Distinct keys the replay writes cycle over.
const KEYS: u64 = 5000;
/// Rows per read, the follower's default.
const BATCH: i64 = 1024;
/// Latency samples measured of each kind (`OFX_BENCH_SAMPLES`).
const SAMPLES: usize = 400;
/// Latency samples dropped first, of each kind.
const WARMUP: usize = 40;
/// Latency samples per round: ofx and raw rounds alternate.
const PER_ROUND: usize = 100;
/// A latency sample slower than this is a missed wake-up.
const MISS_AFTER: Duration = Duration::from_secs(2);
/// Every poll: never during a run.
const QUIET: Duration = Duration::from_secs(3600);
/// The map.
const MAP: &str = "bench";
/// The maps' change log in `ofx_stream_events`.
const STREAM: &str = ofx_diesel::maps::MAPS_STREAM;

/// The stream table, for the hand-written loop's typed query.
mod schema {
    #![allow(missing_docs)]
    diesel::table! {
        ofx_stream_events (stream, position) {
            stream -> Text,
            position -> BigInt,
            body -> Text,
            operation_uuid -> Text,
            appended_at -> BigInt,
        }
    }
}
use schema::ofx_stream_events;

#[path = "support/mod.rs"]
mod support;
use support::{admin, postgres_server};

// ===== statements =====

/// Statements started on any Diesel connection.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// With `OFX_BENCH_PROFILE` set: statements timed by their text, printed after the first replay
/// round's writes (formatting each statement takes time: not for measured runs).
static PROFILE: AtomicBool = AtomicBool::new(false);
static PROFILED: Mutex<Option<HashMap<String, (u64, Duration)>>> = Mutex::new(None);

/// Counts statements and, while [`PROFILE`], times each by its text.
#[derive(Default)]
struct StatementCounter {
    started: Option<(String, Instant)>,
}

impl Instrumentation for StatementCounter {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                STATEMENTS.fetch_add(1, Ordering::Relaxed);
                if PROFILE.load(Ordering::Relaxed) {
                    let text: String = query.to_string().chars().take(80).collect();
                    self.started = Some((text, Instant::now()));
                }
            }
            InstrumentationEvent::FinishQuery { .. } => {
                if let Some((text, started)) = self.started.take() {
                    let mut profiled = PROFILED.lock().unwrap_or_else(PoisonError::into_inner);
                    let entry = profiled
                        .get_or_insert_with(HashMap::new)
                        .entry(text)
                        .or_default();
                    entry.0 += 1;
                    entry.1 += started.elapsed();
                }
            }
            _ => {}
        }
    }
}

fn statement_counter() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(StatementCounter::default()))
}

fn statements() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

/// Prints (and resets) the statements profiled, per transaction.
fn print_profile(label: &str, transactions: u64) {
    let Some(profiled) = PROFILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return;
    };
    let mut rows: Vec<(String, (u64, Duration))> = profiled.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1.1));
    let per = transactions.max(1) as f64;
    let total: Duration = rows.iter().map(|(_, (_, time))| *time).sum();
    eprintln!(
        "    {label}: statements per write transaction: count, µs inside (all connections; {:.0} µs in all)",
        micros(total) / per
    );
    for (text, (times, time)) in rows {
        eprintln!(
            "    {:>8.2} {:>8.1}  {}",
            times as f64 / per,
            micros(time) / per,
            text.replace('\n', " ")
        );
    }
}

// ===== the writer service =====

/// Sets the entries `first .. first + count` (keys modulo `keys`) to `value`, in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "maps_bench.write")]
struct Write {
    first: u64,
    count: u64,
    keys: u64,
    value: i64,
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
}

struct Writer<B: Backend> {
    hub: Hub,
    map: ReliableMap<String, i64, B>,
}

impl<B: Backend> ComputeService for Writer<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: Backend> Writer<B> {
    #[command_handler]
    async fn write(&self, command: Write, ctx: &CommandContext) -> Result<(), WriteError> {
        for n in command.first..command.first + command.count {
            let key = format!("key-{}", n % command.keys.max(1));
            self.map.set(ctx, &key, &command.value).await?;
        }
        Ok(())
    }
}

// ===== observers =====

/// Counts changes and transactions, and keeps the last transaction's sequence and arrival.
#[derive(Clone, Default)]
struct Counter {
    changes: Arc<AtomicU64>,
    last: Arc<Mutex<Option<(u64, Instant)>>>,
}

impl Counter {
    fn last(&self) -> Option<(u64, Instant)> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MapObserver<String, i64> for Counter {
    fn changed(&self, change: &MapChange<String, i64>) {
        std::hint::black_box(&change.action);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn rebuild(&self, mut entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move { while entries.next().await.is_some() {} })
    }
}

impl ManagerObserver for Counter {
    fn transaction_committed(&self, committed: &TransactionCommitted) {
        let now = Instant::now();
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((committed.sequence, now));
    }
}

/// Sends when each change arrived, with its new value (the sample's number).
#[derive(Clone)]
struct Stamper(mpsc::UnboundedSender<(Instant, i64)>);

impl MapObserver<String, i64> for Stamper {
    fn changed(&self, change: &MapChange<String, i64>) {
        let now = Instant::now();
        if let ofx_diesel::maps::MapAction::Add { value, .. }
        | ofx_diesel::maps::MapAction::Update { new: value, .. } = &change.action
        {
            let _ = self.0.send((now, *value));
        }
    }

    fn rebuild(&self, mut entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move { while entries.next().await.is_some() {} })
    }
}

// ===== hosts =====

/// How the hosts of a latency run wake each other.
#[derive(Debug, Clone)]
enum Wakeup {
    Fs(PathBuf),
    Postgres(String),
}

impl Wakeup {
    fn set_watcher<B: Backend>(&self, db: &DbHub<B>, log: &str) {
        match self {
            Self::Fs(dir) => db.set_watcher(ofx_watchers::FsWatcher::factory(dir, log)),
            Self::Postgres(url) => db.set_watcher(ofx_watchers::PgWatcher::factory(url, log)),
        }
        .expect("the watcher is set before the hub starts");
    }

    /// A watcher of `log` for a third host id, on no hub: when it is woken.
    async fn observer(
        &self,
        log: &str,
        stop: CancellationToken,
    ) -> mpsc::UnboundedReceiver<Instant> {
        let started = match self {
            Self::Fs(dir) => {
                ofx_watchers::FsWatcher::factory(dir, log)
                    .start(HostId::new(), stop.clone())
                    .await
            }
            Self::Postgres(url) => {
                ofx_watchers::PgWatcher::factory(url, log)
                    .start(HostId::new(), stop.clone())
                    .await
            }
        };
        let watcher = started.expect("the observing watcher starts");
        let wakes = watcher.wakes();
        let (sender, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = wakes.notified() => {
                        if sender.send(Instant::now()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        received
    }
}

/// One host: a hub with its own `DbHub`, a map manager and the writer service.
struct Host<B: Backend> {
    db: DbHub<B>,
    maps: MapManager<B>,
    writer: Arc<Writer<B>>,
}

impl<B: Backend> Host<B> {
    /// A host on `url`, woken by `wakeup`'s watcher on the log `log` if any, every poll at an
    /// hour; `prepare` subscribes observers before the hub starts.
    async fn start(
        url: &str,
        wakeup: Option<(&Wakeup, &str)>,
        prepare: impl FnOnce(&MapManager<B>, &ReliableMap<String, i64, B>),
    ) -> Self {
        let mut settings = DbSettings::default();
        settings.poll_period = QUIET;
        settings.poll_period_with_watcher = QUIET;
        settings.trim = false;
        let db = DbHub::<B>::open(url, settings)
            .await
            .expect("the database opens");
        if let Some((wakeup, log)) = wakeup {
            wakeup.set_watcher(&db, log);
        }
        let mut map_settings = MapSettings::default();
        map_settings.poll_period = Some(QUIET);
        map_settings.sync_timeout = Duration::from_secs(300);
        let maps = MapManager::with_settings(&db, map_settings);
        let map = maps.map::<String, i64>(MAP).expect("the map is added");
        prepare(&maps, &map);
        let hub = Hub::builder()
            .with(db.clone())
            .with(maps.clone())
            .start()
            .await
            .expect("the hub starts");
        let writer = Arc::new(Writer {
            hub: hub.clone(),
            map,
        });
        hub.add_service(&writer).expect("the service is added");
        tokio::time::timeout(Duration::from_secs(30), maps.ready())
            .await
            .expect("the manager is ready within 30 s")
            .expect("the manager is ready");
        Self { db, maps, writer }
    }

    async fn write(&self, first: u64, count: u64, keys: u64, value: i64) {
        self.writer
            .hub
            .commander()
            .call(Write {
                first,
                count,
                keys,
                value,
            })
            .await
            .expect("the command commits");
    }

    fn stop(&self) {
        self.writer.hub.shutdown_token().cancel();
    }
}

// ===== the backends =====

/// The stored shape of a change (`ofx_diesel::maps`' `StoredChange`), with this map's types.
#[derive(Debug, Deserialize)]
struct StoredChange {
    map: String,
    action: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    old: Option<i64>,
    #[serde(default)]
    new: Option<i64>,
}

/// What the hand-written loop needs of a backend: one batch of the change log.
trait Target: Backend {
    const LABEL: &'static str;
    /// Up to [`BATCH`] rows in `(after, through]`: position, body, operation.
    fn batch(
        connection: &mut Self::Connection,
        after: i64,
        through: i64,
    ) -> impl Future<Output = Vec<(i64, String, String)>> + Send;
}

macro_rules! target_impl {
    ($backend:ty, $name:literal) => {
        impl Target for $backend {
            const LABEL: &'static str = $name;

            async fn batch(
                connection: &mut Self::Connection,
                after: i64,
                through: i64,
            ) -> Vec<(i64, String, String)> {
                use diesel_async::RunQueryDsl;
                use ofx_stream_events::dsl as st;
                st::ofx_stream_events
                    .filter(st::stream.eq(STREAM))
                    .filter(st::position.gt(after))
                    .filter(st::position.le(through))
                    .order(st::position.asc())
                    .limit(BATCH)
                    .select((st::position, st::body, st::operation_uuid))
                    .load(connection)
                    .await
                    .expect("a batch is read")
            }
        }
    };
}

target_impl!(Sqlite, "SQLite");
target_impl!(Postgres, "PostgreSQL");

// ===== replay throughput =====

/// What the replay part measured on one backend.
#[derive(Debug, Default)]
struct ReplayReport {
    changes: u64,
    transactions: u64,
    /// Seconds A took to commit a round's transactions.
    write: Vec<f64>,
    /// Statements run (on any connection) per transaction while A wrote.
    statements: Vec<f64>,
    /// Seconds from `b.sync()` to B's last `transaction_committed`, per round.
    ofx: Vec<f64>,
    /// Seconds until `b.sync()` returned, per round.
    ofx_sync: Vec<f64>,
    /// Seconds of the hand-written loop, per round.
    raw: Vec<f64>,
}

/// The hand-written loop over the rows `(from, through]`: its seconds.
async fn raw_loop<B: Target>(db: &DbHub<B>, from: u64, through: u64, expected: u64) -> f64 {
    let mut connection = db.connection().await.expect("a connection");
    let through = i64::try_from(through).expect("a position");
    let start = Instant::now();
    let mut after = i64::try_from(from).expect("a position");
    let mut changes = 0u64;
    let mut transactions = 0u64;
    let mut operation = String::new();
    let mut values = 0i64;
    loop {
        let rows = B::batch(&mut connection, after, through).await;
        let Some(last) = rows.last().map(|row| row.0) else {
            break;
        };
        for (_, body, row_operation) in &rows {
            let change: StoredChange = serde_json::from_str(body).expect("the body decodes");
            if change.map == MAP && change.action != "clear" {
                values = values.wrapping_add(change.new.unwrap_or(0) - change.old.unwrap_or(0));
                std::hint::black_box(&change.key);
            }
            changes += 1;
            if *row_operation != operation {
                transactions += 1;
                operation.clone_from(row_operation);
            }
        }
        after = last;
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(values);
    assert_eq!(changes, expected, "the loop read every change");
    assert!(transactions > 0);
    seconds
}

async fn replay<B: Target>(
    url: &str,
    transactions: u64,
    changes: u64,
    rounds: usize,
) -> ReplayReport {
    let counter = Counter::default();
    // B first, deaf: it reads nothing until its `sync`.
    let b = Host::<B>::start(url, None, |maps, map| {
        maps.subscribe(counter.clone());
        map.subscribe(counter.clone());
    })
    .await;
    let a = Host::<B>::start(url, None, |_, _| {}).await;
    let mut report = ReplayReport {
        changes: transactions * changes,
        transactions,
        ..ReplayReport::default()
    };
    for round in 0..rounds {
        let from = b.maps.status().position;
        let profile = round == 0 && std::env::var_os("OFX_BENCH_PROFILE").is_some();
        PROFILE.store(profile, Ordering::Relaxed);
        let statements_before = statements();
        let start = Instant::now();
        let base = round as u64 * transactions * changes;
        for transaction in 0..transactions {
            a.write(
                base + transaction * changes,
                changes,
                KEYS,
                i64::try_from(transaction).expect("few transactions"),
            )
            .await;
        }
        report.write.push(start.elapsed().as_secs_f64());
        report
            .statements
            .push((statements() - statements_before) as f64 / transactions as f64);
        if profile {
            PROFILE.store(false, Ordering::Relaxed);
            print_profile(B::LABEL, transactions);
        }
        let head = a.maps.status().position;
        assert_eq!(
            head,
            from + transactions * changes,
            "A delivered its own changes before its calls returned"
        );
        assert_eq!(
            b.maps.status().position,
            from,
            "B's follower stayed deaf while A wrote"
        );
        // The loop reads the rows before and after ofx does: its mean is the baseline, so that
        // neither always reads after the other.
        let expected = transactions * changes;
        let before = raw_loop(&b.db, from, head, expected).await;
        let counted = counter.changes.load(Ordering::Relaxed);
        let start = Instant::now();
        let reached = b
            .maps
            .sync_within(Duration::from_secs(300))
            .await
            .expect("B catches up");
        let returned = start.elapsed().as_secs_f64();
        assert_eq!(reached, head, "B reached A's head");
        let (sequence, at) = counter.last().expect("B delivered transactions");
        assert_eq!(sequence, head, "B's last transaction is A's last");
        assert_eq!(
            counter.changes.load(Ordering::Relaxed) - counted,
            transactions * changes,
            "B's observer saw every change"
        );
        report.ofx.push((at - start).as_secs_f64());
        report.ofx_sync.push(returned);
        let after = raw_loop(&b.db, from, head, expected).await;
        report.raw.push(f64::midpoint(before, after));
        let status = b.maps.status();
        assert_eq!(status.skipped, 0, "no change skipped");
        eprintln!(
            "{} replay round {}: A wrote {} changes in {:.2} s ({:.1} statements per transaction); B delivered them in {:.3} s (sync returned at {:.3} s); hand-written loop {:.3} s ({:.3} s before, {:.3} s after)",
            B::LABEL,
            round + 1,
            transactions * changes,
            report.write[round],
            report.statements[round],
            report.ofx[round],
            report.ofx_sync[round],
            report.raw[round],
            before,
            after,
        );
    }
    a.stop();
    b.stop();
    report
}

// ===== commit → notification latency =====

/// One ofx sample, in µs.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// A's call start → B's observer.
    b_from_call: f64,
    /// A's commit start → B's observer.
    b_from_commit: f64,
    /// A's call returned → B's observer (negative when B was first).
    b_from_return: f64,
    /// A's commit start → A's own observer.
    a_from_commit: f64,
    /// A's call start → A's own observer.
    a_from_call: f64,
    /// A's commit start → the wake-up reaching a third host's watcher.
    woken_from_commit: f64,
    /// A's call.
    call: f64,
}

/// Hosts A and B with watchers, their observers' arrivals, and when A's last commit started.
struct Pair<B: Backend> {
    a: Host<B>,
    b: Host<B>,
    a_changes: mpsc::UnboundedReceiver<(Instant, i64)>,
    b_changes: mpsc::UnboundedReceiver<(Instant, i64)>,
    commit_started: Arc<Mutex<Option<Instant>>>,
    /// When a third host's watcher (no hub, another host id) was woken.
    wakes: mpsc::UnboundedReceiver<Instant>,
    stop_observer: CancellationToken,
    sequence: i64,
}

impl<B: Backend> Pair<B> {
    async fn start(url: &str, wakeup: &Wakeup) -> Self {
        let log = format!("maps-bench-{}", uuid::Uuid::new_v4().simple());
        let (a_stamps, a_changes) = mpsc::unbounded_channel();
        let (b_stamps, b_changes) = mpsc::unbounded_channel();
        let a = Host::<B>::start(url, Some((wakeup, &log)), |_, map| {
            map.subscribe(Stamper(a_stamps));
        })
        .await;
        let b = Host::<B>::start(url, Some((wakeup, &log)), |_, map| {
            map.subscribe(Stamper(b_stamps));
        })
        .await;
        let commit_started = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&commit_started);
        let hook: CommitFaultHook<B> = Arc::new(move |_connection: &mut B::Connection| {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            Box::pin(std::future::ready(())) as Pin<Box<dyn Future<Output = ()> + Send>>
        });
        a.db.set_commit_fault(Some(hook));
        let stop_observer = CancellationToken::new();
        let wakes = wakeup.observer(&log, stop_observer.clone()).await;
        Self {
            a,
            b,
            a_changes,
            b_changes,
            commit_started,
            wakes,
            stop_observer,
            sequence: 0,
        }
    }

    /// A sets one entry; until B's observer has it. `None`: B missed it.
    async fn sample(&mut self) -> Option<Sample> {
        self.sequence += 1;
        let value = self.sequence;
        let key = u64::try_from(value).expect("positive") % 16;
        while self.wakes.try_recv().is_ok() {} // a previous sample's
        let call_start = Instant::now();
        self.a.write(key, 1, 16, value).await;
        let returned = Instant::now();
        let commit_start = self
            .commit_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the commit hook ran");
        let a_changed = arrival(&mut self.a_changes, value)
            .await
            .expect("A's own observer has its change");
        let b_changed = arrival(&mut self.b_changes, value).await?;
        let woken = woken(&mut self.wakes, commit_start).await?;
        let signed = |later: Instant, earlier: Instant| {
            if later >= earlier {
                micros(later - earlier)
            } else {
                -micros(earlier - later)
            }
        };
        Some(Sample {
            b_from_call: micros(b_changed - call_start),
            b_from_commit: micros(b_changed - commit_start),
            b_from_return: signed(b_changed, returned),
            a_from_commit: micros(a_changed - commit_start),
            a_from_call: micros(a_changed - call_start),
            woken_from_commit: signed(woken, commit_start),
            call: micros(returned - call_start),
        })
    }

    fn stop(&self) {
        self.a.stop();
        self.b.stop();
        self.stop_observer.cancel();
    }
}

/// When the change with `value` arrived (earlier ones, of missed samples, are skipped).
async fn arrival(
    changes: &mut mpsc::UnboundedReceiver<(Instant, i64)>,
    value: i64,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + MISS_AFTER;
    loop {
        let (at, got) = tokio::time::timeout_at(deadline, changes.recv())
            .await
            .ok()??;
        if got == value {
            return Some(at);
        }
    }
}

/// The first wake-up at or after `since`.
async fn woken(wakes: &mut mpsc::UnboundedReceiver<Instant>, since: Instant) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + MISS_AFTER;
    loop {
        let at = tokio::time::timeout_at(deadline, wakes.recv())
            .await
            .ok()??;
        if at >= since {
            return Some(at);
        }
    }
}

/// A raw transport: one message from a sender to a receiver, timed.
enum Raw {
    Fs(FsRaw),
    Postgres(Box<PgRaw>),
}

impl Raw {
    fn label(&self) -> &'static str {
        match self {
            Self::Fs(_) => "fs tmp+rename → inotify",
            Self::Postgres(_) => "pg NOTIFY → LISTEN",
        }
    }

    /// One message's latency in µs; `None` when it did not arrive within 2 s.
    async fn sample(&mut self) -> Option<f64> {
        match self {
            Self::Fs(raw) => raw.sample().await,
            Self::Postgres(raw) => raw.sample().await,
        }
    }
}

/// A file replaced by a rename (what `FsWatcher` does), watched with the `notify` crate.
struct FsRaw {
    path: PathBuf,
    temporary: PathBuf,
    events: mpsc::UnboundedReceiver<Instant>,
    /// Kept: dropping it ends the watch.
    _watcher: notify::RecommendedWatcher,
    sequence: u64,
}

impl FsRaw {
    fn start(dir: &Path) -> Self {
        use notify::Watcher;
        std::fs::create_dir_all(dir).expect("the raw directory is created");
        let name = "renamed.log";
        let path = dir.join(name);
        let temporary = dir.join(format!(".{name}.tmp"));
        std::fs::write(&path, "initial").expect("the raw file is written");
        let (sender, events) = mpsc::unbounded_channel();
        let target = std::ffi::OsString::from(name);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let now = Instant::now();
                if let Ok(event) = event
                    && writes(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|path| path.file_name() == Some(&target))
                {
                    let _ = sender.send(now);
                }
            })
            .expect("the raw watcher starts");
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .expect("the raw directory is watched");
        Self {
            path,
            temporary,
            events,
            _watcher: watcher,
            sequence: 0,
        }
    }

    async fn sample(&mut self) -> Option<f64> {
        while self.events.try_recv().is_ok() {} // the rest of the previous write's events
        self.sequence += 1;
        let payload = format!("host-{:032}", self.sequence);
        let start = Instant::now();
        std::fs::write(&self.temporary, &payload).expect("the temporary file is written");
        std::fs::rename(&self.temporary, &self.path).expect("the file is replaced");
        let event = tokio::time::timeout(MISS_AFTER, self.events.recv())
            .await
            .ok()??;
        // Let this write's later events arrive; the next sample drains them.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some(micros(event.saturating_duration_since(start)))
    }
}

/// What `FsWatcher` counts as a write (its filter, as `latency.rs` copies it): not reads, not
/// metadata, not the "from" half of a rename.
fn writes(kind: &notify::EventKind) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    !matches!(
        kind,
        notify::EventKind::Access(_)
            | notify::EventKind::Modify(
                ModifyKind::Metadata(_) | ModifyKind::Name(RenameMode::From)
            )
    )
}

/// `pg_notify` on one connection, `LISTEN` on another.
struct PgRaw {
    sender: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
    /// Kept: dropping it ends the listening connection.
    _listener: tokio_postgres::Client,
    received: mpsc::UnboundedReceiver<(Instant, String)>,
    sequence: u64,
}

/// The channel of the raw NOTIFY baseline.
const RAW_CHANNEL: &str = "ofx_bench_maps_raw";

impl PgRaw {
    async fn start(url: &str) -> Self {
        let (listener, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the raw listener connects");
        let (forward, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                let now = Instant::now();
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                        let _ = forward.send((now, notification.payload().to_owned()));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        listener
            .batch_execute(&format!("LISTEN {RAW_CHANNEL}"))
            .await
            .expect("LISTEN");
        let (sender, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the raw sender connects");
        tokio::spawn(connection);
        let statement = sender
            .prepare("SELECT pg_notify($1, $2)")
            .await
            .expect("pg_notify is prepared");
        Self {
            sender,
            statement,
            _listener: listener,
            received,
            sequence: 0,
        }
    }

    async fn sample(&mut self) -> Option<f64> {
        self.sequence += 1;
        let payload = self.sequence.to_string();
        let start = Instant::now();
        tokio_postgres::Client::execute(&self.sender, &self.statement, &[&RAW_CHANNEL, &payload])
            .await
            .expect("pg_notify");
        loop {
            let (at, received) = tokio::time::timeout(MISS_AFTER, self.received.recv())
                .await
                .ok()??;
            if received == payload {
                return Some(micros(at.saturating_duration_since(start)));
            }
        }
    }
}

/// What the latency part measured on one backend.
#[derive(Debug)]
struct LatencyReport {
    raw_label: &'static str,
    raw: Stats,
    raw_misses: usize,
    b_from_call: Stats,
    b_from_commit: Stats,
    b_from_return: Stats,
    a_from_commit: Stats,
    a_from_call: Stats,
    woken_from_commit: Stats,
    /// Per sample: B changed − the third host's watcher woken.
    b_after_wake: Stats,
    /// Per sample: the third host's watcher woken − A's own observer.
    wake_after_a: Stats,
    /// Samples in which the third host's watcher was woken before A's own observer had the
    /// change.
    woken_before_a: usize,
    call: Stats,
    misses: usize,
}

async fn latency<B: Backend>(
    url: &str,
    wakeup: &Wakeup,
    mut raw: Raw,
    samples: usize,
) -> LatencyReport {
    let mut pair = Pair::<B>::start(url, wakeup).await;
    let raw_label = raw.label();
    let mut raw_samples = Vec::new();
    let mut raw_misses = 0;
    let mut ofx: Vec<Sample> = Vec::new();
    let mut misses = 0;
    let rounds = samples.div_ceil(PER_ROUND);
    for round in 0..=rounds {
        let (count, keep) = if round == 0 {
            (WARMUP, false)
        } else {
            (PER_ROUND.min(samples - (round - 1) * PER_ROUND), true)
        };
        // Alternate which side goes first, so that neither always follows the other.
        for side in 0..2 {
            if (side + round) % 2 == 0 {
                for _ in 0..count {
                    match raw.sample().await {
                        Some(sample) if keep => raw_samples.push(sample),
                        Some(_) => {}
                        None => raw_misses += 1,
                    }
                }
            } else {
                for _ in 0..count {
                    match pair.sample().await {
                        Some(sample) if keep => ofx.push(sample),
                        Some(_) => {}
                        None => misses += 1,
                    }
                }
            }
        }
    }
    pair.stop();
    let stats = |field: fn(&Sample) -> f64| Stats::of(&ofx.iter().map(field).collect::<Vec<_>>());
    LatencyReport {
        raw_label,
        raw: Stats::of(&raw_samples),
        raw_misses,
        b_from_call: stats(|sample| sample.b_from_call),
        b_from_commit: stats(|sample| sample.b_from_commit),
        b_from_return: stats(|sample| sample.b_from_return),
        a_from_commit: stats(|sample| sample.a_from_commit),
        a_from_call: stats(|sample| sample.a_from_call),
        woken_from_commit: stats(|sample| sample.woken_from_commit),
        b_after_wake: stats(|sample| sample.b_from_commit - sample.woken_from_commit),
        wake_after_a: stats(|sample| sample.woken_from_commit - sample.a_from_commit),
        woken_before_a: ofx
            .iter()
            .filter(|sample| sample.woken_from_commit < sample.a_from_commit)
            .count(),
        call: stats(|sample| sample.call),
        misses,
    }
}

// ===== statistics =====

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Percentiles of samples in µs.
#[derive(Debug, Clone, Copy)]
struct Stats {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if sorted.is_empty() {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Self {
            count: sorted.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn pair(&self) -> String {
        format!("{} / {}", us(self.p50), us(self.p99))
    }
}

/// µs, readable.
fn us(value: f64) -> String {
    if value.is_nan() {
        "–".to_owned()
    } else if value.abs() >= 10_000.0 {
        format!("{:.1} ms", value / 1000.0)
    } else {
        format!("{value:.0} µs")
    }
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

// ===== databases =====

/// A temporary SQLite file (and a directory for the watcher's files), removed at the end.
struct SqliteFile {
    path: PathBuf,
    dir: PathBuf,
}

impl SqliteFile {
    fn new(part: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple();
        let temp = std::env::temp_dir();
        Self {
            path: temp.join(format!("ofx-maps-bench-{part}-{id}.db")),
            dir: temp.join(format!("ofx-maps-bench-{part}-{id}")),
        }
    }

    fn url(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ===== the report =====

fn print(
    replays: &[(&'static str, ReplayReport)],
    latencies: &[(&'static str, LatencyReport)],
    samples: usize,
) {
    if let Some((_, first)) = replays.first() {
        eprintln!();
        eprintln!(
            "## Replay on host B: {} transactions × {} changes per round (medians over {} rounds)",
            first.transactions,
            first.changes / first.transactions.max(1),
            first.ofx.len()
        );
        eprintln!();
        eprintln!(
            "| backend | A wrote (changes/s) | statements per write transaction | ofx: B delivered (changes/s) | sync returned | hand-written loop (changes/s) | ofx / loop (per round) |"
        );
        eprintln!("|---|---|---|---|---|---|---|");
        for (name, report) in replays {
            let changes = report.changes as f64;
            let ratios: Vec<f64> = report
                .raw
                .iter()
                .zip(&report.ofx)
                .map(|(raw, ofx)| raw / ofx)
                .collect();
            eprintln!(
                "| {name} | {:.0} | {:.1} | {:.0} ({:.3} s) | {:.3} s | {:.0} ({:.3} s) | {:.2}× ({}) |",
                changes / median(&report.write),
                median(&report.statements),
                changes / median(&report.ofx),
                median(&report.ofx),
                median(&report.ofx_sync),
                changes / median(&report.raw),
                median(&report.raw),
                median(&ratios),
                ratios
                    .iter()
                    .map(|ratio| format!("{ratio:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }
    if !latencies.is_empty() {
        eprintln!();
        eprintln!(
            "## Commit on host A → B's observer `changed` ({samples} samples each after {WARMUP} warm-up; p50 / p99)"
        );
        eprintln!();
        eprintln!(
            "| backend | raw transport | A call start → B changed | ÷ raw (p50) | A commit start → B changed | ÷ raw (p50) | A call returned → B changed | max (from call) | misses |"
        );
        eprintln!("|---|---|---|---|---|---|---|---|---|");
        for (name, report) in latencies {
            let lost = if report.raw_misses > 0 {
                format!(" ({} lost)", report.raw_misses)
            } else {
                String::new()
            };
            eprintln!(
                "| {name} | {}: {}{lost} | {} | {:.1}× | {} | {:.1}× | {} | {} | {} |",
                report.raw_label,
                report.raw.pair(),
                report.b_from_call.pair(),
                report.b_from_call.p50 / report.raw.p50,
                report.b_from_commit.pair(),
                report.b_from_commit.p50 / report.raw.p50,
                report.b_from_return.pair(),
                us(report.b_from_call.max),
                report.misses,
            );
        }
        eprintln!();
        eprintln!("## Where B's time goes (same samples; from A's commit start; p50 / p99)");
        eprintln!();
        eprintln!(
            "| backend | A changed (its own observer) | a third host's watcher woken | B changed | third watcher woken − A changed (per sample) | samples woken before A changed | B changed − third watcher woken (per sample) |"
        );
        eprintln!("|---|---|---|---|---|---|---|");
        for (name, report) in latencies {
            eprintln!(
                "| {name} | {} | {} | {} | {} | {} of {} | {} |",
                report.a_from_commit.pair(),
                report.woken_from_commit.pair(),
                report.b_from_commit.pair(),
                report.wake_after_a.pair(),
                report.woken_before_a,
                report.b_from_call.count,
                report.b_after_wake.pair(),
            );
        }
        eprintln!();
        eprintln!("## The writer host's own observer (same samples; p50 / p99)");
        eprintln!();
        eprintln!(
            "| backend | A's call (start → returned) | A commit start → A changed | A call start → A changed |"
        );
        eprintln!("|---|---|---|---|");
        for (name, report) in latencies {
            eprintln!(
                "| {name} | {} | {} | {} |",
                report.call.pair(),
                report.a_from_commit.pair(),
                report.a_from_call.pair(),
            );
        }
    }
    eprintln!();
    eprintln!("## Summary");
    eprintln!();
    eprintln!(
        "| backend | replay: ofx changes/s | replay: loop changes/s | ofx / loop | B changed after A's commit start, p50 / p99 | raw transport p50 | ÷ raw | A's own observer after its commit start, p50 |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    for name in ["SQLite", "PostgreSQL"] {
        let replay = replays.iter().find(|(label, _)| *label == name);
        let latency = latencies.iter().find(|(label, _)| *label == name);
        if replay.is_none() && latency.is_none() {
            continue;
        }
        let (ofx, raw, ratio) = replay.map_or(
            ("–".to_owned(), "–".to_owned(), "–".to_owned()),
            |(_, report)| {
                let changes = report.changes as f64;
                let ratios: Vec<f64> = report
                    .raw
                    .iter()
                    .zip(&report.ofx)
                    .map(|(raw, ofx)| raw / ofx)
                    .collect();
                (
                    format!("{:.0}", changes / median(&report.ofx)),
                    format!("{:.0}", changes / median(&report.raw)),
                    format!("{:.2}×", median(&ratios)),
                )
            },
        );
        let (b, raw_p50, over, own) = latency.map_or(
            (
                "–".to_owned(),
                "–".to_owned(),
                "–".to_owned(),
                "–".to_owned(),
            ),
            |(_, report)| {
                (
                    report.b_from_commit.pair(),
                    us(report.raw.p50),
                    format!("{:.1}×", report.b_from_commit.p50 / report.raw.p50),
                    us(report.a_from_commit.p50),
                )
            },
        );
        eprintln!("| {name} | {ofx} | {raw} | {ratio} | {b} | {raw_p50} | {over} | {own} |");
    }
    let counts: Vec<String> = latencies
        .iter()
        .map(|(name, report)| {
            format!(
                "{name}: {} ofx, {} raw",
                report.b_from_call.count, report.raw.count
            )
        })
        .collect();
    if !counts.is_empty() {
        eprintln!();
        eprintln!("latency samples kept: {}", counts.join("; "));
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(default)
}

async fn run() {
    let transactions = env_number("OFX_BENCH_TRANSACTIONS", TRANSACTIONS).max(1);
    let changes = env_number("OFX_BENCH_CHANGES", CHANGES).max(1);
    let rounds = usize::try_from(env_number("OFX_BENCH_ROUNDS", ROUNDS as u64).max(1))
        .expect("a round count");
    let samples = usize::try_from(env_number("OFX_BENCH_SAMPLES", SAMPLES as u64).max(1))
        .expect("a sample count");
    let only = std::env::var("OFX_BENCH_ONLY").unwrap_or_default();
    let words: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let pick = |group: &[&str], name: &str| {
        !words.iter().any(|word| group.contains(word)) || words.contains(&name)
    };
    let backend = |name: &str| pick(&["sqlite", "postgres"], name);
    let part = |name: &str| pick(&["replay", "latency"], name);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "maps bench: {} workers, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    let mut replays = Vec::new();
    let mut latencies = Vec::new();
    if backend("sqlite") {
        if part("replay") {
            let file = SqliteFile::new("replay");
            replays.push((
                Sqlite::LABEL,
                replay::<Sqlite>(&file.url(), transactions, changes, rounds).await,
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if part("latency") {
            let file = SqliteFile::new("latency");
            let raw = Raw::Fs(FsRaw::start(&file.dir.join("raw")));
            let wakeup = Wakeup::Fs(file.dir.join("watch"));
            let report = latency::<Sqlite>(&file.url(), &wakeup, raw, samples).await;
            eprintln!("{} latency: done", Sqlite::LABEL);
            latencies.push((Sqlite::LABEL, report));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if backend("postgres") {
        let name = format!("ofx_bench_{}", uuid::Uuid::new_v4().simple());
        admin(&format!("CREATE DATABASE {name}")).await;
        let url = format!("{}/{name}", postgres_server());
        if part("replay") {
            replays.push((
                Postgres::LABEL,
                replay::<Postgres>(&url, transactions, changes, rounds).await,
            ));
        }
        if part("latency") {
            let raw = Raw::Postgres(Box::new(PgRaw::start(&url).await));
            let wakeup = Wakeup::Postgres(url.clone());
            let report = latency::<Postgres>(&url, &wakeup, raw, samples).await;
            eprintln!("{} latency: done", Postgres::LABEL);
            latencies.push((Postgres::LABEL, report));
        }
        // Let the stopped hosts' tasks close their connections, then drop what is left.
        tokio::time::sleep(Duration::from_millis(200)).await;
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    print(&replays, &latencies, samples);
    eprintln!();
    eprintln!("total: {:.1} s", started.elapsed().as_secs_f64());
}

fn main() {
    diesel::connection::set_default_instrumentation(statement_counter)
        .expect("the statement counter is installed");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run());
}
