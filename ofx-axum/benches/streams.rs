//! What 10,000 open live streams cost a commit that does not concern them.
//!
//! Two hosts, each on its own SQLite file with the same counter service: host `streams` has
//! 10,000 live streams open (`Ofx::live_stream` on `value(key)` for keys 0..10,000, each
//! response body read by a task of its own, as a served connection would be), host `bare` has
//! none. In interleaved rounds, each host runs commands that bump an **unrelated** counter
//! (whose cached value is read before each command, so every commit invalidates one cached
//! value), and the same invalidation is timed alone (`invalidate!` of one cached value, what
//! the invalidation branch does).
//!
//! Reported: the medians per host and their difference, per cached value touched; and the
//! frames the 10,000 streams sent after their first (must be 0: nothing they show changed).
//! The target: the difference stays within 1 µs per cached value touched.
//!
//! Run: `cargo bench -p ofx-axum --bench streams`.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use ofx_axum::Ofx;
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use ofx_diesel::{DbHub, DbSettings, Sqlite};
use serde::{Deserialize, Serialize};

const STREAMS: i64 = 10_000;
const UNRELATED: i64 = 1_000_000;
const ROUNDS: usize = 5;
const COMMANDS_PER_ROUND: usize = 200;
const INVALIDATIONS_PER_ROUND: usize = 2_000;

diesel::table! {
    counters (key) {
        key -> BigInt,
        value -> BigInt,
    }
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "bench.streams.bump")]
struct Bump {
    key: i64,
}

struct Counters {
    hub: Hub,
    db: DbHub<Sqlite>,
}

impl ComputeService for Counters {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Counters {
    #[compute_method]
    async fn value(&self, key: i64) -> i64 {
        let mut connection = self.db.connection().await.unwrap();
        counters::table
            .find(key)
            .select(counters::value)
            .first(&mut *connection)
            .await
            .optional()
            .unwrap()
            .unwrap_or(0)
    }

    #[command_handler]
    async fn bump(&self, command: Bump, ctx: &CommandContext) -> Result<(), BenchError> {
        invalidate! {
            self.value(command.key);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::insert_into(counters::table)
            .values((counters::key.eq(command.key), counters::value.eq(1)))
            .on_conflict(counters::key)
            .do_update()
            .set(counters::value.eq(counters::value + 1))
            .execute(&mut *connection)
            .await?;
        Ok(())
    }
}

struct BenchHost {
    counters: Arc<Counters>,
    _ofx: Ofx,
}

async fn host(name: &str) -> BenchHost {
    let path = std::env::temp_dir().join(format!(
        "ofx-bench-streams-{name}-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let mut settings = DbSettings::default();
    settings.read_log = false;
    let db = DbHub::<Sqlite>::open(path.to_str().unwrap(), settings)
        .await
        .unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS counters (key BIGINT PRIMARY KEY NOT NULL, value BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    let hub = Hub::builder()
        .capacity(100_000)
        .with(db.clone())
        .start()
        .await
        .unwrap();
    let counters = Arc::new(Counters {
        hub: hub.clone(),
        db,
    });
    hub.add_service(&counters).unwrap();
    let ofx = Ofx::builder(&hub).service(counters.clone()).build();
    BenchHost {
        counters,
        _ofx: ofx,
    }
}

/// Opens `STREAMS` live streams on `host`, each body read by a task that counts frames; waits
/// for every first frame.
async fn open_streams(host: &BenchHost, frames: &Arc<AtomicU64>) {
    use axum::response::IntoResponse;
    for key in 0..STREAMS {
        let response = host
            ._ofx
            .live_stream(
                Arc::clone(&host.counters),
                Counters::value_method(),
                (key,),
                None,
            )
            .into_response();
        let mut body = response.into_body().into_data_stream();
        let frames = Arc::clone(frames);
        tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap();
                // Keep-alive comments start with ':'; frames with "event:".
                if chunk.starts_with(b"event:") {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while AtomicU64::load(frames, Ordering::Relaxed) < STREAMS as u64 {
        assert!(Instant::now() < deadline, "the streams did not all start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One round of commands on the unrelated key: the median call, in µs.
async fn commands(host: &BenchHost) -> f64 {
    let commander = host.counters.hub.commander();
    let mut samples = Vec::with_capacity(COMMANDS_PER_ROUND);
    for _ in 0..COMMANDS_PER_ROUND {
        host.counters.value(UNRELATED).await; // cached: the commit invalidates it
        let start = Instant::now();
        commander.call(Bump { key: UNRELATED }).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    median(samples)
}

/// One round of invalidations of the unrelated cached value: the median, in ns.
async fn invalidations(host: &BenchHost) -> f64 {
    let counters = &host.counters;
    let mut samples = Vec::with_capacity(INVALIDATIONS_PER_ROUND);
    for _ in 0..INVALIDATIONS_PER_ROUND {
        counters.value(UNRELATED).await;
        let start = Instant::now();
        invalidate! {
            counters.value(UNRELATED);
        }
        samples.push(start.elapsed().as_secs_f64() * 1e9);
    }
    median(samples)
}

async fn run() {
    let streams = host("streams").await;
    let bare = host("bare").await;
    let cached = host("cached").await;
    for key in 0..STREAMS {
        cached.counters.value(key).await;
    }
    let frames = Arc::new(AtomicU64::new(0));
    let opening = Instant::now();
    open_streams(&streams, &frames).await;
    println!(
        "{STREAMS} live streams open in {:.2} s ({} cached values on that host)",
        opening.elapsed().as_secs_f64(),
        streams.counters.hub.cached_len()
    );
    // Warm both.
    commands(&streams).await;
    commands(&bare).await;
    let mut command_medians = (Vec::new(), Vec::new());
    let mut invalidation_medians = (Vec::new(), Vec::new());
    let mut cached_medians = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        command_medians.0.push(commands(&streams).await);
        command_medians.1.push(commands(&bare).await);
        cached_medians.0.push(commands(&cached).await);
        invalidation_medians.0.push(invalidations(&streams).await);
        invalidation_medians.1.push(invalidations(&bare).await);
        cached_medians.1.push(invalidations(&cached).await);
    }
    // Let any frame that was (wrongly) produced arrive before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra_frames = AtomicU64::load(&frames, Ordering::Relaxed) - STREAMS as u64;
    let with = median(command_medians.0.clone());
    let without = median(command_medians.1.clone());
    let inv_with = median(invalidation_medians.0.clone());
    let inv_without = median(invalidation_medians.1.clone());
    println!();
    println!(
        "unrelated commit, median of {ROUNDS} interleaved rounds × {COMMANDS_PER_ROUND} (µs):"
    );
    println!(
        "  with {STREAMS} streams: {with:.1}   without: {without:.1}   difference: {:+.2} µs (rounds: {:?} / {:?})",
        with - without,
        rounded(&command_medians.0),
        rounded(&command_medians.1)
    );
    println!(
        "unrelated invalidation of 1 cached value, median of {ROUNDS} rounds × {INVALIDATIONS_PER_ROUND} (ns):"
    );
    println!(
        "  with {STREAMS} streams: {inv_with:.0}   without: {inv_without:.0}   difference: {:+.0} ns per value touched (target ≤ 1,000)",
        inv_with - inv_without
    );
    println!(
        "the same with {STREAMS} cached values and no stream: commit {:.1} µs, invalidation {:.0} ns",
        median(cached_medians.0.clone()),
        median(cached_medians.1.clone())
    );
    println!("frames sent by the {STREAMS} streams after their first: {extra_frames} (must be 0)");
    assert_eq!(
        extra_frames, 0,
        "a stream sent a frame for an unrelated change"
    );
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 10.0).round() / 10.0).collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}
