//! The state service (`ofx_diesel::state`), on PostgreSQL and SQLite, measured against
//! hand-written code in the same run.
//!
//! Run: `cargo bench -p ofx-tests --bench state` (a few minutes on two cores after the build).
//! `OFX_BENCH_STREAM` (default 1,000,000) sizes the stream, `OFX_BENCH_ROUNDS` (default 3) the
//! rounds, `OFX_BENCH_ONLY=sqlite` or `postgres` picks a backend. PostgreSQL is taken from
//! `OFX_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`); its database
//! `ofx_bench_<uuid>` is dropped at the end; SQLite runs on a temporary file.
//!
//! The stream holds `OFX_BENCH_STREAM` events (inserted by SQL) of a projection that sums
//! amounts over 1,000 keys. Three parts, on each backend:
//!
//! - **Start-up**: a new hub with a state service, timed to `ready()`: from the stream alone
//!   (no snapshot store), and from a snapshot at the head (the table store). Rounds alternate.
//! - **Catch-up throughput**: the start-up from the stream alone is a catch-up of the whole
//!   stream; it is compared with a hand-written loop on one connection of the same kind: a
//!   batched `SELECT position, body … WHERE stream = ? AND position > ? ORDER BY position
//!   LIMIT 1024` (diesel's typed query, prepared once), each body decoded with serde_json and
//!   applied to the state in place. Target: ofx ≥ 0.5× the loop's events per second.
//! - **`current_state()` when caught up**: its latency (p50/p99 over 2,000 calls), against the
//!   one round trip it cannot avoid: the same `SELECT MAX(position)` of the head on a
//!   connection of the pool; and `local_state()` against `Arc::clone` of the state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::Hub;
use ofx_diesel::state::{
    Projection, Rejection, SnapshotStorage, StateService, StateSettings, StateView,
};
use ofx_diesel::{Backend, DbHub, DbSettings, Postgres, Sqlite};
use serde::{Deserialize, Serialize};

/// Events in the stream (`OFX_BENCH_STREAM`).
const STREAM_EVENTS: u64 = 1_000_000;
/// Start-up rounds of each kind (`OFX_BENCH_ROUNDS`).
const ROUNDS: usize = 3;
/// Keys the amounts are summed over.
const KEYS: u64 = 1000;
/// Rows per batched read, the service's default.
const BATCH: i64 = 1024;
/// `current_state()` calls measured, after as many not measured.
const CALLS: usize = 2000;
/// The stream's name (the projection's).
const STREAM: &str = "bench.totals";

/// The stream table, for the hand-written loop's typed queries.
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

// ===== the projection =====

/// An amount added to a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Added {
    key: u64,
    amount: i64,
}

/// Sums by key, and the number of events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Totals {
    sums: HashMap<u64, i64>,
    events: u64,
}

struct TotalsProjection;

impl Projection for TotalsProjection {
    type Event = Added;
    type State = Totals;
    const NAME: &'static str = STREAM;
    const VERSION: u32 = 1;

    fn initial(&self) -> Totals {
        Totals::default()
    }

    fn apply(&self, state: &mut Totals, event: Added, _position: u64) -> Result<(), Rejection> {
        *state.sums.entry(event.key).or_default() += event.amount;
        state.events += 1;
        Ok(())
    }
}

// ===== the backends =====

/// What a backend needs beyond [`Backend`]: filling the stream, and the hand-written loop.
trait Target: Backend {
    const LABEL: &'static str;
    /// Inserts `count` events into the stream, by SQL.
    fn fill(connection: &mut Self::Connection, count: u64) -> impl Future<Output = ()> + Send;
    /// Up to [`BATCH`] rows after `after`.
    fn batch(
        connection: &mut Self::Connection,
        after: i64,
    ) -> impl Future<Output = Vec<(i64, String)>> + Send;
    /// The stream's head.
    fn head(connection: &mut Self::Connection) -> impl Future<Output = i64> + Send;
}

macro_rules! target_impl {
    ($backend:ty, $name:literal, $fill:expr) => {
        impl Target for $backend {
            const LABEL: &'static str = $name;

            async fn fill(connection: &mut Self::Connection, count: u64) {
                connection
                    .batch_execute(&format!($fill, stream = STREAM, count = count, keys = KEYS))
                    .await
                    .expect("the stream is filled");
            }

            async fn batch(connection: &mut Self::Connection, after: i64) -> Vec<(i64, String)> {
                use ofx_stream_events::dsl as st;
                st::ofx_stream_events
                    .filter(st::stream.eq(STREAM))
                    .filter(st::position.gt(after))
                    .order(st::position.asc())
                    .limit(BATCH)
                    .select((st::position, st::body))
                    .load(connection)
                    .await
                    .expect("a batch is read")
            }

            async fn head(connection: &mut Self::Connection) -> i64 {
                use ofx_stream_events::dsl as st;
                st::ofx_stream_events
                    .filter(st::stream.eq(STREAM))
                    .select(diesel::dsl::max(st::position))
                    .first::<Option<i64>>(connection)
                    .await
                    .expect("the head is read")
                    .unwrap_or(0)
            }
        }
    };
}

target_impl!(
    Sqlite,
    "SQLite",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) \
     INSERT INTO ofx_stream_events (stream, position, body, operation_uuid, appended_at) \
     SELECT '{stream}', i, '{{\"key\":' || (i % {keys}) || ',\"amount\":' || (i % 7) || '}}', \
     'bench', 0 FROM n"
);
target_impl!(
    Postgres,
    "PostgreSQL",
    "INSERT INTO ofx_stream_events (stream, position, body, operation_uuid, appended_at) \
     SELECT '{stream}', i, '{{\"key\":' || (i % {keys}) || ',\"amount\":' || (i % 7) || '}}', \
     'bench', 0 FROM generate_series(1, {count}) AS i; ANALYZE ofx_stream_events"
);

fn quiet() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_secs(3600);
    settings
}

fn state_settings(snapshots: SnapshotStorage) -> StateSettings {
    let mut settings = StateSettings::default();
    settings.snapshots = snapshots;
    // No periodic snapshot during a measurement.
    settings.snapshot_every = u64::MAX;
    settings.snapshot_period = Duration::from_secs(3600);
    settings.poll_period = Some(Duration::from_secs(3600));
    settings
}

/// A started hub with a state service.
struct Host<B: Target> {
    hub: Hub,
    state: StateService<TotalsProjection, B>,
}

impl<B: Target> Host<B> {
    async fn start(db: &DbHub<B>, snapshots: SnapshotStorage) -> Self {
        let state = StateService::with_settings(db, TotalsProjection, state_settings(snapshots));
        let hub = Hub::builder()
            .with(db.clone())
            .with(state.clone())
            .start()
            .await
            .expect("the hub starts");
        Self { hub, state }
    }

    fn stop(self) {
        self.hub.shutdown_token().cancel();
    }
}

// ===== the parts =====

#[derive(Debug, Default)]
struct Report {
    events: u64,
    /// Seconds to ready, from the stream alone, per round.
    from_stream: Vec<f64>,
    /// Seconds to ready, from a snapshot at the head, per round.
    from_snapshot: Vec<f64>,
    /// Seconds of the hand-written loop over the whole stream, per round.
    raw: Vec<f64>,
    current: Percentiles,
    head_query: Percentiles,
    local: Percentiles,
    arc_clone: Percentiles,
}

#[derive(Debug, Default, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
}

fn percentiles(mut micros: Vec<f64>) -> Percentiles {
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The hand-written loop: batched reads, serde_json, apply in place. Its seconds.
async fn raw_loop<B: Target>(db: &DbHub<B>, events: u64) -> f64 {
    let mut connection = db.connection().await.expect("a connection");
    let start = Instant::now();
    let projection = TotalsProjection;
    let mut state = projection.initial();
    let mut after = 0;
    loop {
        let rows = B::batch(&mut connection, after).await;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        for (position, body) in &rows {
            let event: Added = serde_json::from_str(body).expect("the body decodes");
            projection
                .apply(&mut state, event, *position as u64)
                .expect("the event applies");
        }
        after = last;
    }
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(state.events, events, "the loop read the whole stream");
    seconds
}

/// A start-up to readiness: its seconds, and the view it got.
async fn start_up<B: Target>(
    db: &DbHub<B>,
    snapshots: SnapshotStorage,
) -> (f64, Host<B>, StateView<Totals>) {
    let start = Instant::now();
    let host = Host::start(db, snapshots).await;
    host.state.ready().await.expect("the service is ready");
    let seconds = start.elapsed().as_secs_f64();
    let view = host.state.local_state().await.expect("ready");
    (seconds, host, view)
}

async fn measure<B: Target>(url: &str, events: u64, rounds: usize) -> Report {
    let db = DbHub::<B>::open(url, quiet())
        .await
        .expect("the database opens");
    let fill = Instant::now();
    B::fill(&mut *db.connection().await.expect("a connection"), events).await;
    eprintln!(
        "{}: {events} events inserted in {:.1} s",
        B::LABEL,
        fill.elapsed().as_secs_f64()
    );
    // A snapshot at the head, for the start-ups from a snapshot.
    let (_, host, view) = start_up(&db, SnapshotStorage::Table).await;
    assert_eq!(view.position, events);
    assert_eq!(
        host.state
            .save_snapshot()
            .await
            .expect("the snapshot is saved"),
        Some(events)
    );
    host.stop();

    let mut report = Report {
        events,
        ..Report::default()
    };
    for round in 0..rounds {
        // Rotate the order, so that no variant always runs on a warmer cache.
        for variant in 0..3 {
            match (variant + round) % 3 {
                0 => {
                    let (seconds, host, view) = start_up(&db, SnapshotStorage::None).await;
                    assert_eq!(view.events, events, "the whole stream was applied");
                    host.stop();
                    report.from_stream.push(seconds);
                }
                1 => {
                    let (seconds, host, view) = start_up(&db, SnapshotStorage::Table).await;
                    assert_eq!(view.events, events, "the snapshot holds the whole stream");
                    host.stop();
                    report.from_snapshot.push(seconds);
                }
                _ => report.raw.push(raw_loop(&db, events).await),
            }
        }
        eprintln!(
            "{} round {}: from the stream {:.2} s, from a snapshot {:.3} s, hand-written loop {:.2} s",
            B::LABEL,
            round + 1,
            report.from_stream[round],
            report.from_snapshot[round],
            report.raw[round],
        );
    }

    // current_state() when caught up, against the head query it needs.
    let (_, host, _) = start_up(&db, SnapshotStorage::Table).await;
    let mut connection = db.connection().await.expect("a connection");
    let mut current = Vec::with_capacity(CALLS);
    let mut head = Vec::with_capacity(CALLS);
    let mut local = Vec::with_capacity(CALLS);
    let mut arc_clone = Vec::with_capacity(CALLS);
    let shared = Arc::new(Totals::default());
    for call in 0..CALLS * 2 {
        let start = Instant::now();
        let view = host.state.current_state().await.expect("current");
        let current_micros = start.elapsed().as_secs_f64() * 1e6;
        assert_eq!(view.position, events);
        let start = Instant::now();
        let at = B::head(&mut connection).await;
        let head_micros = start.elapsed().as_secs_f64() * 1e6;
        assert_eq!(at as u64, events);
        let start = Instant::now();
        let view = host.state.local_state().await.expect("local");
        let local_micros = start.elapsed().as_secs_f64() * 1e6;
        std::hint::black_box(&view);
        let start = Instant::now();
        let copy = std::hint::black_box(Arc::clone(&shared));
        let arc_micros = start.elapsed().as_secs_f64() * 1e6;
        drop(copy);
        if call >= CALLS {
            current.push(current_micros);
            head.push(head_micros);
            local.push(local_micros);
            arc_clone.push(arc_micros);
        }
    }
    drop(connection);
    host.stop();
    report.current = percentiles(current);
    report.head_query = percentiles(head);
    report.local = percentiles(local);
    report.arc_clone = percentiles(arc_clone);
    report
}

// ===== databases =====

/// A temporary SQLite file, removed at the end.
struct SqliteFile(PathBuf);

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

// ===== the report =====

fn print(reports: &[(&'static str, Report)]) {
    eprintln!();
    let events = reports.first().map_or(0, |(_, report)| report.events);
    eprintln!("## Start-up over {events} events (medians over rounds)");
    eprintln!();
    eprintln!(
        "| backend | from the stream | from a snapshot | stream / snapshot | catch-up events/s | hand-written loop events/s | ofx / loop | target ≥ 0.5× |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    for (name, report) in reports {
        let stream = median(&report.from_stream);
        let snapshot = median(&report.from_snapshot);
        let raw = median(&report.raw);
        let ratios: Vec<f64> = report
            .raw
            .iter()
            .zip(&report.from_stream)
            .map(|(raw, ofx)| raw / ofx)
            .collect();
        let ratio = median(&ratios);
        eprintln!(
            "| {name} | {stream:.2} s | {snapshot:.3} s | {:.0}× | {:.0} | {:.0} | {ratio:.2}× ({}) | {} |",
            stream / snapshot,
            report.events as f64 / stream,
            report.events as f64 / raw,
            ratios
                .iter()
                .map(|ratio| format!("{ratio:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            if ratio >= 0.5 { "yes" } else { "no" },
        );
    }
    eprintln!();
    eprintln!("## Reads when caught up ({CALLS} calls each, µs p50 / p99)");
    eprintln!();
    eprintln!(
        "| backend | current_state() | head query (floor) | current / floor | local_state() | Arc::clone | local / Arc::clone |"
    );
    eprintln!("|---|---|---|---|---|---|---|");
    for (name, report) in reports {
        eprintln!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2}× | {:.2} / {:.2} | {:.3} / {:.3} | {:.0}× |",
            report.current.p50,
            report.current.p99,
            report.head_query.p50,
            report.head_query.p99,
            report.current.p50 / report.head_query.p50,
            report.local.p50,
            report.local.p99,
            report.arc_clone.p50,
            report.arc_clone.p99,
            report.local.p50 / report.arc_clone.p50.max(0.001),
        );
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(default)
}

async fn run() {
    let events = env_number("OFX_BENCH_STREAM", STREAM_EVENTS);
    let rounds = env_number("OFX_BENCH_ROUNDS", ROUNDS as u64).max(1) as usize;
    let only = std::env::var("OFX_BENCH_ONLY").unwrap_or_default();
    let started = Instant::now();
    let mut reports = Vec::new();
    if only.is_empty() || only.contains("sqlite") {
        let file = SqliteFile(std::env::temp_dir().join(format!(
            "ofx-state-bench-{}.db",
            uuid::Uuid::new_v4().simple()
        )));
        let url = file.0.to_string_lossy().into_owned();
        reports.push(("SQLite", measure::<Sqlite>(&url, events, rounds).await));
    }
    if only.is_empty() || only.contains("postgres") {
        let name = format!("ofx_bench_{}", uuid::Uuid::new_v4().simple());
        admin(&format!("CREATE DATABASE {name}")).await;
        let url = format!("{}/{name}", postgres_server());
        reports.push((
            "PostgreSQL",
            measure::<Postgres>(&url, events, rounds).await,
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    print(&reports);
    eprintln!("total: {:.1} s", started.elapsed().as_secs_f64());
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run());
}
