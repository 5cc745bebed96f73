//! Events with guaranteed delivery, on PostgreSQL and SQLite, measured against hand-written
//! code in the same run.
//!
//! Run: `cargo bench -p ofx-tests --bench events` (about 7 minutes on two cores after the
//! build, most of it the burn-down). `OFX_BENCH_ONLY=burn,latency,cost` picks parts;
//! `OFX_BENCH_EVENTS` (default 20000) and `OFX_BENCH_ROUNDS` (default 3) size the burn-down;
//! `OFX_BENCH_PROFILE=1` prints, after each burn-down round, every statement's count and time
//! per event (slower: not for the numbers). PostgreSQL is taken from `OFX_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432`); its database `ofx_bench_<uuid>` is dropped
//! at the end; SQLite runs on a temporary file.
//!
//! Three parts. **Burn-down**: 20,000 pending no-op events (whose handler only returns `Ok`,
//! yet each still runs as an operation with its log row and its completion) are inserted by
//! SQL, then burnt down by two hosts (two hubs with their own `DbHub` on one database, with
//! their watcher and log reader, processors at the default concurrency of 4; and the same
//! without log readers, "processor only"), against a hand-written loop on the same table: two
//! workers, each claiming a batch of 4 with the same claiming `UPDATE … RETURNING` (`FOR UPDATE
//! SKIP LOCKED` on PostgreSQL, prepared once per connection as ofx's), then completing each
//! event in its own transaction (`UPDATE ofx_events SET state = 1 … WHERE uuid = $1 AND
//! lease_token = $2`, `COMMIT`) on connections of the same pool type: the same per-event
//! guarantee without ofx. The variants take turns in rotating order each round; a ratio to the
//! hand-written loop (target ≥ 0.8 for ofx as deployed) is the median of the rounds' ratios.
//! **Add→start latency**: host A runs a command that only adds an event; host B (the only
//! processor running) runs it; timed from just before A's `call` (and from its return) to the
//! start of B's handler, woken by the LISTEN/NOTIFY watcher (PostgreSQL) or the file-system
//! watcher (SQLite), with the polling safety net set to an hour, so that a lost wake-up is a
//! miss (over 2 s); and the same with one host producing and running (its commit wakes its own
//! processor), in alternating blocks. **Production cost**: a command that writes one business
//! row, with and without `ctx.add_event(..)`, in interleaved blocks, no processor running.
//! Statement counts come from a diesel instrumentation counting every statement of every
//! connection (readers, heartbeats and claims included).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use ofx_diesel::{Backend, DbHub, DbSettings, EventProcessor, Postgres, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[path = "support/mod.rs"]
mod support;
use support::{admin_client, postgres_server};

/// Events per burn-down round (`OFX_BENCH_EVENTS`).
const EVENTS: usize = 20_000;
/// Burn-down rounds of each kind (`OFX_BENCH_ROUNDS`).
const ROUNDS: usize = 3;
/// The processors' concurrency (the default), and the hand-written workers'.
const CONCURRENCY: usize = 4;
/// The lease of claims.
const LEASE: Duration = Duration::from_secs(30);
/// Latency samples measured per kind, after [`LATENCY_WARMUP`].
const LATENCY_SAMPLES: usize = 400;
/// Latency samples dropped first.
const LATENCY_WARMUP: usize = 40;
/// Latency samples per block: remote and local blocks alternate.
const LATENCY_BLOCK: usize = 50;
/// A latency sample slower than this is a miss.
const MISS_AFTER: Duration = Duration::from_secs(2);
/// Production-cost rounds (one block with, one without, in alternating order).
const COST_ROUNDS: usize = 30;
/// The watchers' safety-net poll in the latency part: never during a run.
const WATCHER_POLL: Duration = Duration::from_secs(3600);

// ===== statements =====

/// Statements started on any diesel connection.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// With `OFX_BENCH_PROFILE` set: statements counted by their beginning, printed after each
/// burn-down round (formatting each statement takes time: not for measured runs).
static PROFILE: AtomicBool = AtomicBool::new(false);
static PROFILED: Mutex<Option<HashMap<String, (u64, Duration)>>> = Mutex::new(None);

/// Counts statements (all of them) and, while [`PROFILE`], times each by its beginning.
#[derive(Default)]
struct StatementCounter {
    started: Option<(String, Instant)>,
}

impl Instrumentation for StatementCounter {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                STATEMENTS.fetch_add(1, Ordering::Relaxed);
                if AtomicBool::load(&PROFILE, Ordering::Relaxed) {
                    let text: String = query.to_string().chars().take(70).collect();
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

/// Prints (and resets) the statements profiled since the last call, per event.
fn print_profile(label: &str, count: usize) {
    let Some(profiled) = PROFILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return;
    };
    let mut rows: Vec<(String, (u64, Duration))> = profiled.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1.1));
    let total: Duration = rows.iter().map(|(_, (_, time))| *time).sum();
    eprintln!(
        "    statements of {label} per event: count, µs inside (all connections; {:.0} µs in all)",
        micros(total) / count as f64
    );
    for (text, (times, time)) in rows {
        eprintln!(
            "    {:>8.3} {:>8.1}  {}",
            times as f64 / count as f64,
            micros(time) / count as f64,
            text.replace('\n', " ")
        );
    }
}

fn statements() -> u64 {
    AtomicU64::load(&STATEMENTS, Ordering::Relaxed)
}

// ===== the service =====

diesel::table! {
    /// The business table of the production-cost part.
    bench_rows (id) {
        /// The row's id.
        id -> BigInt,
        /// Its note.
        note -> Text,
    }
}

diesel::table! {
    /// The events table, as the hand-written loop sees it.
    ofx_events (uuid) {
        /// The event's uuid.
        uuid -> Text,
        /// 0 pending, 1 done.
        state -> Integer,
        /// The fencing number.
        lease_token -> BigInt,
        /// The lease's host.
        lease_owner -> Nullable<Text>,
        /// The lease's end (µs).
        lease_until -> Nullable<BigInt>,
        /// The last failure.
        last_error -> Nullable<Text>,
        /// When done (µs).
        finished_at -> Nullable<BigInt>,
    }
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS bench_rows (id BIGINT PRIMARY KEY NOT NULL, note TEXT NOT NULL)";

const NOTE: &str = "a short note of a benchmark row";

/// The no-op event of the burn-down and the production-cost part.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "events_bench.noop", backend)]
struct Noop {
    n: i64,
}

/// The event of the latency part: its handler reports when it started.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "events_bench.ping", backend)]
struct Ping {
    seq: u64,
}

/// Adds one [`Ping`], writes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "events_bench.emit")]
struct Emit {
    seq: u64,
}

/// Writes one business row, and adds a [`Noop`] event when `event`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "events_bench.write")]
struct WriteRow {
    id: i64,
    event: bool,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
}

/// Where [`Ping`] handlers report `(seq, when the handler started)`.
static PINGS: Mutex<Option<mpsc::UnboundedSender<(u64, Instant)>>> = Mutex::new(None);

struct Sink<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
}

impl<B: Backend> ComputeService for Sink<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// What the bench needs of a backend: the business insert and the hand-written loop's
/// statements.
trait Target: Backend + Sized {
    /// Empties the events table and the log between rounds.
    const CLEAR: &'static str;
    /// After filling the events table (fresh statistics for the planner, the same for both).
    const AFTER_FILL: &'static str;

    fn insert_row(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// The hand-written claim: the same kind of claiming `UPDATE … RETURNING` as ofx's.
    fn claim(
        connection: &mut Self::Connection,
        host: &str,
        now: i64,
        until: i64,
        limit: i64,
    ) -> impl Future<Output = QueryResult<Vec<Claimed>>> + Send;

    /// The hand-written completion, in its own transaction; whether the claim was still the
    /// event's.
    fn complete(
        connection: &mut Self::Connection,
        uuid: &str,
        lease_token: i64,
        now: i64,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Events done.
    fn done(connection: &mut Self::Connection) -> impl Future<Output = QueryResult<i64>> + Send;
}

/// The hand-written claim: the same claiming `UPDATE … RETURNING` as ofx's (`FOR UPDATE SKIP
/// LOCKED` on PostgreSQL), prepared once per connection as ofx's is (a static query id).
struct HandClaim<'a> {
    host: &'a str,
    now: i64,
    until: i64,
    limit: i64,
}

impl QueryId for HandClaim<'_> {
    type QueryId = HandClaim<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for HandClaim<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

/// A claimed event, as the hand-written loop reads it.
#[derive(Debug, QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    uuid: String,
    #[diesel(sql_type = BigInt)]
    lease_token: i64,
    #[diesel(sql_type = Text)]
    #[allow(dead_code)]
    command_json: String,
}

macro_rules! target {
    ($backend:ty, $diesel:ty, $clear:literal, $after_fill:literal, $lock:literal) => {
        impl QueryFragment<$diesel> for HandClaim<'_> {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, $diesel>) -> QueryResult<()> {
                out.push_sql("UPDATE ofx_events SET lease_token = lease_token + 1, lease_owner = ");
                out.push_bind_param::<Text, _>(self.host)?;
                out.push_sql(", lease_until = ");
                out.push_bind_param::<BigInt, _>(&self.until)?;
                out.push_sql(
                    ", attempts = attempts + 1 WHERE uuid IN (SELECT uuid FROM ofx_events \
                     WHERE state = 0 AND due_at <= ",
                );
                out.push_bind_param::<BigInt, _>(&self.now)?;
                out.push_sql(" AND (lease_until IS NULL OR lease_until < ");
                out.push_bind_param::<BigInt, _>(&self.now)?;
                out.push_sql(") ORDER BY due_at LIMIT ");
                out.push_bind_param::<BigInt, _>(&self.limit)?;
                out.push_sql($lock);
                out.push_sql(") RETURNING uuid, lease_token, command_json");
                Ok(())
            }
        }

        impl Target for $backend {
            const CLEAR: &'static str = $clear;
            const AFTER_FILL: &'static str = $after_fill;

            async fn insert_row(connection: &mut Self::Connection, id: i64) -> QueryResult<usize> {
                diesel::insert_into(bench_rows::table)
                    .values((bench_rows::id.eq(id), bench_rows::note.eq(NOTE)))
                    .execute(connection)
                    .await
            }

            async fn claim(
                connection: &mut Self::Connection,
                host: &str,
                now: i64,
                until: i64,
                limit: i64,
            ) -> QueryResult<Vec<Claimed>> {
                HandClaim {
                    host,
                    now,
                    until,
                    limit,
                }
                .load(connection)
                .await
            }

            async fn complete(
                connection: &mut Self::Connection,
                uuid: &str,
                lease_token: i64,
                now: i64,
            ) -> QueryResult<bool> {
                connection
                    .transaction::<_, diesel::result::Error, _>(async |connection| {
                        let updated = diesel::update(
                            ofx_events::table
                                .filter(ofx_events::uuid.eq(uuid))
                                .filter(ofx_events::lease_token.eq(lease_token))
                                .filter(ofx_events::state.eq(0))
                                .filter(ofx_events::lease_until.ge(now)),
                        )
                        .set((
                            ofx_events::state.eq(1),
                            ofx_events::finished_at.eq(Some(now)),
                            ofx_events::lease_owner.eq(None::<String>),
                            ofx_events::lease_until.eq(None::<i64>),
                            ofx_events::last_error.eq(None::<String>),
                        ))
                        .execute(connection)
                        .await?;
                        Ok(updated == 1)
                    })
                    .await
            }

            async fn done(connection: &mut Self::Connection) -> QueryResult<i64> {
                ofx_events::table
                    .filter(ofx_events::state.eq(1))
                    .count()
                    .get_result(connection)
                    .await
            }
        }
    };
}

target!(
    Postgres,
    diesel::pg::Pg,
    "TRUNCATE ofx_events, ofx_operations",
    "ANALYZE ofx_events",
    " FOR UPDATE SKIP LOCKED"
);
target!(
    Sqlite,
    diesel::sqlite::Sqlite,
    "DELETE FROM ofx_events; DELETE FROM ofx_operations",
    "ANALYZE",
    ""
);

#[service]
impl<B: Target> Sink<B> {
    /// The no-op event.
    #[command_handler]
    async fn noop(&self, _command: Noop, _ctx: &CommandContext) -> Result<(), BenchError> {
        Ok(())
    }

    /// The latency event: reports when it started.
    #[command_handler]
    async fn ping(&self, command: Ping, _ctx: &CommandContext) -> Result<(), BenchError> {
        let started = Instant::now();
        if let Some(pings) = PINGS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = pings.send((command.seq, started));
        }
        Ok(())
    }

    #[command_handler]
    async fn emit(&self, command: Emit, ctx: &CommandContext) -> Result<(), BenchError> {
        ctx.add_event(Ping { seq: command.seq })?;
        Ok(())
    }

    #[command_handler]
    async fn write_row(&self, command: WriteRow, ctx: &CommandContext) -> Result<(), BenchError> {
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::insert_row(&mut connection, command.id).await?;
        }
        if command.event {
            ctx.add_event(Noop { n: command.id })?;
        }
        Ok(())
    }
}

// ===== hosts =====

/// How a run's hosts wake each other.
#[derive(Debug, Clone)]
enum Wakeup {
    None,
    Fs(PathBuf),
    Postgres(String),
}

/// One host: a hub with its own `DbHub` and the service.
struct Host<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
    _sink: Arc<Sink<B>>,
}

impl<B: Target> Host<B> {
    async fn start(url: &str, settings: DbSettings, wakeup: &Wakeup, log: &str) -> Self {
        let db = DbHub::<B>::open(url, settings)
            .await
            .expect("the database opens");
        match wakeup {
            Wakeup::None => Ok(()),
            Wakeup::Fs(dir) => db.set_watcher(ofx_watchers::FsWatcher::factory(dir, log)),
            Wakeup::Postgres(url) => db.set_watcher(ofx_watchers::PgWatcher::factory(url, log)),
        }
        .expect("the watcher is set before the hub starts");
        let hub = Hub::builder()
            .with(db.clone())
            .start()
            .await
            .expect("the hub starts");
        let sink = Arc::new(Sink {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&sink).expect("the service is added");
        Self {
            hub,
            db,
            _sink: sink,
        }
    }

    fn processor(&self) -> EventProcessor {
        self.db
            .start_event_processor(&self.hub)
            .expect("the processor starts")
    }

    fn stop(&self) {
        self.hub.shutdown_token().cancel();
    }
}

fn micros_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_micros()).expect("microseconds fit in an i64")
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Settings of a host that only writes: no reader, trimmer or processor.
fn quiet() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.read_log = false;
    settings.trim = false;
    settings.events.process = false;
    settings
}

// ===== burn-down =====

/// Empties the events table and the log, then inserts `count` due no-op events.
async fn fill<B: Target>(db: &DbHub<B>, count: usize) {
    let mut pooled = db.connection().await.expect("a pooled connection");
    let connection: &mut B::Connection = &mut pooled;
    connection
        .batch_execute(B::CLEAR)
        .await
        .expect("the tables are emptied");
    let due = micros_now() - 1_000_000;
    let mut sql = String::from("BEGIN;");
    let mut n = 0;
    while n < count {
        sql.push_str(
            "INSERT INTO ofx_events (uuid, operation_uuid, host_id, command_name, command_json, \
             logged_at, due_at) VALUES ",
        );
        let end = (n + 1000).min(count);
        for (row, index) in (n..end).enumerate() {
            let separator = if row == 0 { "" } else { "," };
            sql.push_str(&format!(
                "{separator}('{}', 'bench-fill', 'bench', '{}', '{{\"n\":{index}}}', {due}, {due})",
                uuid::Uuid::now_v7(),
                <Noop as Command>::NAME,
            ));
        }
        sql.push(';');
        n = end;
    }
    sql.push_str("COMMIT;");
    connection
        .batch_execute(&sql)
        .await
        .expect("the events are inserted");
    connection
        .batch_execute(B::AFTER_FILL)
        .await
        .expect("the statistics are updated");
}

/// One burn-down round's result.
#[derive(Debug, Clone, Copy)]
struct Burn {
    per_second: f64,
    statements_per_event: f64,
}

/// One round of ofx: two hosts (processors started after the fill) until every event is done;
/// with their log readers unless `processor_only`.
async fn burn_ofx<B: Target>(
    url: &str,
    wakeup: &Wakeup,
    count: usize,
    processor_only: bool,
) -> Burn {
    let log = format!("events-{}", uuid::Uuid::new_v4().simple());
    let mut settings = DbSettings::default();
    settings.read_log = !processor_only;
    settings.events.process = false; // started below, once the events are in
    settings.events.concurrency = CONCURRENCY;
    settings.events.lease = LEASE;
    let hosts = [
        Host::<B>::start(url, settings.clone(), wakeup, &log).await,
        Host::<B>::start(url, settings, wakeup, &log).await,
    ];
    fill(&hosts[0].db, count).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    PROFILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let before = statements();
    let start = Instant::now();
    let processors = [hosts[0].processor(), hosts[1].processor()];
    let total = || -> u64 {
        processors
            .iter()
            .map(|processor| processor.stats().completed())
            .sum()
    };
    let deadline = start + Duration::from_secs(600);
    while total() < count as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let spent = statements() - before;
    for (index, processor) in processors.iter().enumerate() {
        let stats = processor.stats();
        let odd = stats.fenced()
            + stats.dead()
            + stats.retried()
            + stats.in_doubt()
            + stats.claim_failures();
        if odd > 0 {
            eprintln!(
                "  ofx host {index}: fenced {}, dead {}, retried {}, in doubt {}, claim failures {}",
                stats.fenced(),
                stats.dead(),
                stats.retried(),
                stats.in_doubt(),
                stats.claim_failures()
            );
        }
    }
    for host in &hosts {
        host.stop();
    }
    assert_eq!(total(), count as u64, "ofx burnt every event down");
    check_done::<B>(&hosts[0].db, count).await;
    drop(hosts);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Burn {
        per_second: count as f64 / elapsed.as_secs_f64(),
        statements_per_event: spent as f64 / count as f64,
    }
}

async fn check_done<B: Target>(db: &DbHub<B>, count: usize) {
    let mut pooled = db.connection().await.expect("a pooled connection");
    let done = B::done(&mut pooled).await.expect("the done events count");
    assert_eq!(done, count as i64, "every event is done, once");
}

/// The hand-written worker: claims a batch, completes each event in its own transaction
/// (concurrently), until a claim finds nothing.
async fn hand_written_worker<B: Target>(db: DbHub<B>, host: String) -> u64 {
    let mut completed = 0;
    loop {
        let now = micros_now();
        let claimed = {
            let mut pooled = db.connection().await.expect("a pooled connection");
            B::claim(
                &mut pooled,
                &host,
                now,
                now + i64::try_from(LEASE.as_micros()).expect("a short lease"),
                CONCURRENCY as i64,
            )
            .await
            .expect("the claim succeeds")
        };
        if claimed.is_empty() {
            return completed;
        }
        let mut runs = JoinSet::new();
        for event in claimed {
            let db = db.clone();
            runs.spawn(async move {
                let mut pooled = db.connection().await.expect("a pooled connection");
                B::complete(&mut pooled, &event.uuid, event.lease_token, micros_now())
                    .await
                    .expect("the completion commits")
            });
        }
        while let Some(done) = runs.join_next().await {
            if done.expect("the completion task ends") {
                completed += 1;
            }
        }
    }
}

/// One round of the hand-written loop: two workers on their own pools.
async fn burn_hand_written<B: Target>(pools: &[DbHub<B>; 2], count: usize) -> Burn {
    fill(&pools[0], count).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    PROFILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let before = statements();
    let start = Instant::now();
    let workers: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(index, db)| tokio::spawn(hand_written_worker(db.clone(), format!("worker-{index}"))))
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("the worker ends");
    }
    let elapsed = start.elapsed();
    let spent = statements() - before;
    assert_eq!(total, count as u64, "the workers burnt every event down");
    check_done::<B>(&pools[0], count).await;
    Burn {
        per_second: count as f64 / elapsed.as_secs_f64(),
        statements_per_event: spent as f64 / count as f64,
    }
}

/// The burn-down variants, in the order of [`BurnReport::rounds`].
const VARIANTS: [&str; 3] = ["hand-written", "ofx", "ofx, processor only"];

/// The burn-down of one backend: each variant's rounds.
#[derive(Debug, Default)]
struct BurnReport {
    rounds: [Vec<Burn>; 3],
}

impl BurnReport {
    /// Variant `variant` / the hand-written loop, round by round.
    fn ratios(&self, variant: usize) -> Vec<f64> {
        self.rounds[variant]
            .iter()
            .zip(&self.rounds[0])
            .map(|(ofx, hand)| ofx.per_second / hand.per_second)
            .collect()
    }
}

async fn burn_down<B: Target>(
    url: &str,
    wakeup: &Wakeup,
    count: usize,
    rounds: usize,
) -> BurnReport {
    let pools = [
        DbHub::<B>::open(url, quiet()).await.expect("a pool"),
        DbHub::<B>::open(url, quiet()).await.expect("a pool"),
    ];
    let mut report = BurnReport::default();
    for round in 0..rounds {
        // A rotating order: a slower period of the machine weighs on every variant.
        for offset in 0..VARIANTS.len() {
            let variant = (round + offset) % VARIANTS.len();
            let burn = match variant {
                0 => burn_hand_written(&pools, count).await,
                1 => burn_ofx::<B>(url, wakeup, count, false).await,
                _ => burn_ofx::<B>(url, wakeup, count, true).await,
            };
            eprintln!(
                "  {} round {round}: {} {:.0} events/s, {:.2} statements/event",
                B::NAME,
                VARIANTS[variant],
                burn.per_second,
                burn.statements_per_event
            );
            print_profile(VARIANTS[variant], count);
            report.rounds[variant].push(burn);
        }
    }
    report
}

// ===== latency =====

/// Percentiles of samples in µs.
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    count: usize,
}

impl Percentiles {
    fn of(samples: &mut [f64]) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or(f64::NAN),
            count: samples.len(),
        }
    }
}

/// The latency of one backend: remote (A produces, B runs) and local (B both).
#[derive(Debug, Default)]
struct LatencyReport {
    remote: Percentiles,
    remote_after_return: Percentiles,
    local: Percentiles,
    local_after_return: Percentiles,
    misses: usize,
}

/// One sample: `producer` adds ping `seq`; the time from just before its call, and from its
/// return, to the start of the handler. `None`: missed.
async fn ping_sample<B: Target>(
    producer: &Host<B>,
    pings: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    seq: u64,
) -> Option<(f64, f64)> {
    let call = Instant::now();
    producer
        .hub
        .commander()
        .call(Emit { seq })
        .await
        .expect("the event is added");
    let returned = Instant::now();
    let started = tokio::time::timeout(MISS_AFTER, async {
        while let Some((got, started)) = pings.recv().await {
            if got == seq {
                return Some(started);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()?;
    Some((
        micros(started.saturating_duration_since(call)),
        micros(started.saturating_duration_since(returned)),
    ))
}

async fn latency<B: Target>(url: &str, wakeup: &Wakeup) -> LatencyReport {
    let log = format!("events-latency-{}", uuid::Uuid::new_v4().simple());
    let mut settings = DbSettings::default();
    settings.poll_period_with_watcher = WATCHER_POLL;
    settings.events.process = false;
    let a = Host::<B>::start(url, settings.clone(), wakeup, &log).await;
    settings.events.process = true;
    let b = Host::<B>::start(url, settings, wakeup, &log).await;
    let processor = b.processor();
    let (sender, mut pings) = mpsc::unbounded_channel();
    *PINGS.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    let mut remote = (Vec::new(), Vec::new());
    let mut local = (Vec::new(), Vec::new());
    let mut misses = 0;
    let mut seq = 0;
    let total = LATENCY_WARMUP + LATENCY_SAMPLES;
    let mut taken = [0, 0];
    while taken[0] < total || taken[1] < total {
        for (kind, producer) in [&a, &b].into_iter().enumerate() {
            for _ in 0..LATENCY_BLOCK.min(total - taken[kind]) {
                seq += 1;
                let sample = ping_sample(producer, &mut pings, seq).await;
                // The run's own commit finishes before the next sample starts, then a random
                // 1–5 ms: producers are not in step with the processor's commits (with the
                // file-system watcher, a commit landing in the same instant as another host's
                // may lose its wake-up; see `FsWatcher`).
                processor
                    .wait_until(|stats| stats.completed() >= seq, MISS_AFTER)
                    .await;
                let gap = rand::random_range(1_000..5_000);
                tokio::time::sleep(Duration::from_micros(gap)).await;
                taken[kind] += 1;
                let Some((from_call, from_return)) = sample else {
                    misses += 1;
                    continue;
                };
                if taken[kind] > LATENCY_WARMUP {
                    let into = if kind == 0 { &mut remote } else { &mut local };
                    into.0.push(from_call);
                    into.1.push(from_return);
                }
            }
        }
    }
    *PINGS.lock().unwrap_or_else(PoisonError::into_inner) = None;
    a.stop();
    b.stop();
    LatencyReport {
        remote: Percentiles::of(&mut remote.0),
        remote_after_return: Percentiles::of(&mut remote.1),
        local: Percentiles::of(&mut local.0),
        local_after_return: Percentiles::of(&mut local.1),
        misses,
    }
}

// ===== production cost =====

/// The production cost of one backend: µs per command without and with an event.
#[derive(Debug, Default)]
struct CostReport {
    without: f64,
    with: f64,
    ratio: f64,
    statements_without: f64,
    statements_with: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn production_cost<B: Target>(url: &str, block: usize) -> CostReport {
    let host = Host::<B>::start(url, quiet(), &Wakeup::None, "unused").await;
    let commander = host.hub.commander();
    let mut next_id = 0_i64;
    let mut per_command = [Vec::new(), Vec::new()];
    let mut per_statements = [Vec::new(), Vec::new()];
    // A first block each, not counted.
    for round in 0..=COST_ROUNDS {
        for event in [round % 2 == 0, round % 2 != 0] {
            let before = statements();
            let start = Instant::now();
            for _ in 0..block {
                next_id += 1;
                commander
                    .call(WriteRow { id: next_id, event })
                    .await
                    .expect("the command commits");
            }
            let elapsed = start.elapsed();
            let spent = statements() - before;
            if round > 0 {
                per_command[usize::from(event)].push(micros(elapsed) / block as f64);
                per_statements[usize::from(event)].push(spent as f64 / block as f64);
            }
        }
    }
    host.stop();
    let mut ratios: Vec<f64> = per_command[1]
        .iter()
        .zip(&per_command[0])
        .map(|(with, without)| with / without)
        .collect();
    let [mut without, mut with] = per_command;
    let [mut statements_without, mut statements_with] = per_statements;
    CostReport {
        without: median(&mut without),
        with: median(&mut with),
        ratio: median(&mut ratios),
        statements_without: median(&mut statements_without),
        statements_with: median(&mut statements_with),
    }
}

// ===== databases =====

/// A fresh database `ofx_bench_<uuid>` with the business table: its URL and name.
async fn create_database() -> (String, String) {
    let name = format!("ofx_bench_{}", uuid::Uuid::new_v4().simple());
    admin_client()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    let url = format!("{}/{name}", postgres_server());
    create_schema::<Postgres>(&url).await;
    (url, name)
}

async fn drop_database(name: &str) {
    let result = admin_client()
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Err(error) = result {
        eprintln!("could not drop {name}: {error}");
    }
}

/// Migrates the database and creates the business table.
async fn create_schema<B: Target>(url: &str) {
    let db = DbHub::<B>::open(url, quiet())
        .await
        .expect("the database opens");
    db.connection()
        .await
        .expect("a connection")
        .batch_execute(SCHEMA)
        .await
        .expect("the business table is created");
}

/// A temporary SQLite file and watcher directory, removed at the end.
struct SqliteFiles {
    path: PathBuf,
    watch: PathBuf,
}

impl SqliteFiles {
    async fn create() -> Self {
        let id = uuid::Uuid::new_v4().simple();
        let dir = std::env::temp_dir();
        let files = Self {
            path: dir.join(format!("ofx-events-bench-{id}.db")),
            watch: dir.join(format!("ofx-events-bench-{id}.watch")),
        };
        std::fs::create_dir_all(&files.watch).expect("the watch directory is created");
        create_schema::<Sqlite>(&files.url()).await;
        files
    }

    fn url(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for SqliteFiles {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
        let _ = std::fs::remove_dir_all(&self.watch);
    }
}

// ===== the report =====

fn pair(stats: &Percentiles) -> String {
    format!("{:.2} / {:.2} ms", stats.p50 / 1000.0, stats.p99 / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

struct Reports {
    count: usize,
    burn: Vec<(&'static str, BurnReport)>,
    latency: Vec<(&'static str, LatencyReport)>,
    cost: Vec<(&'static str, CostReport)>,
}

fn print(reports: &Reports) {
    eprintln!();
    if !reports.burn.is_empty() {
        eprintln!(
            "## Burn-down: {} no-op events, 2 hosts × concurrency {CONCURRENCY} (medians over rounds)",
            reports.count
        );
        eprintln!();
        eprintln!(
            "| backend | variant | events/s | / hand-written (rounds) | statements/event | target ≥ 0.8× |"
        );
        eprintln!("|---|---|---|---|---|---|");
        for (name, report) in &reports.burn {
            for (variant, label) in VARIANTS.iter().enumerate() {
                let burns = &report.rounds[variant];
                let mut per_second: Vec<f64> = burns.iter().map(|burn| burn.per_second).collect();
                let mut statements: Vec<f64> =
                    burns.iter().map(|burn| burn.statements_per_event).collect();
                let (ratio_text, target) = if variant == 0 {
                    ("1".to_owned(), "")
                } else {
                    let ratios = report.ratios(variant);
                    let mut sorted = ratios.clone();
                    let ratio = median(&mut sorted);
                    let rounds = ratios
                        .iter()
                        .map(|ratio| format!("{ratio:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    (
                        format!("{ratio:.2}× ({rounds})"),
                        if variant == 1 {
                            verdict(ratio >= 0.8)
                        } else {
                            ""
                        },
                    )
                };
                eprintln!(
                    "| {name} | {label} | {:.0} | {ratio_text} | {:.2} | {target} |",
                    median(&mut per_second),
                    median(&mut statements),
                );
            }
        }
        eprintln!();
        eprintln!(
            "(ofx: two hosts with their watcher and log reader, as deployed; processor only: \
             the same without log readers)"
        );
        eprintln!();
    }
    if !reports.latency.is_empty() {
        eprintln!(
            "## Add → handler start ({LATENCY_SAMPLES} samples each after {LATENCY_WARMUP}; p50 / p99)"
        );
        eprintln!();
        eprintln!(
            "| backend, wake-up | A adds, B runs: from A's call | from A's return | p90 / max | local (one host): from the call | from the return | misses | target p50 ≤ 4 ms, p99 ≤ 12 ms (remote) |"
        );
        eprintln!("|---|---|---|---|---|---|---|---|");
        for (name, report) in &reports.latency {
            eprintln!(
                "| {name} | {} | {} | {:.2} / {:.2} ms | {} | {} | {} | {} |",
                pair(&report.remote),
                pair(&report.remote_after_return),
                report.remote.p90 / 1000.0,
                report.remote.max / 1000.0,
                pair(&report.local),
                pair(&report.local_after_return),
                report.misses,
                verdict(
                    report.remote.p50 <= 4000.0
                        && report.remote.p99 <= 12000.0
                        && report.misses == 0
                ),
            );
        }
        eprintln!(
            "\n(samples: {})",
            reports
                .latency
                .iter()
                .map(|(name, report)| format!(
                    "{name} {} remote, {} local",
                    report.remote.count, report.local.count
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        eprintln!();
    }
    if !reports.cost.is_empty() {
        eprintln!(
            "## Producing one event: a command writing one row, with and without `add_event` (medians of {COST_ROUNDS} interleaved rounds)"
        );
        eprintln!();
        eprintln!(
            "| backend | without: µs/command | with one event | with / without | added µs | statements without / with |"
        );
        eprintln!("|---|---|---|---|---|---|");
        for (name, report) in &reports.cost {
            eprintln!(
                "| {name} | {:.0} | {:.0} | {:.2}× | {:+.0} | {:.1} / {:.1} |",
                report.without,
                report.with,
                report.ratio,
                report.with - report.without,
                report.statements_without,
                report.statements_with,
            );
        }
        eprintln!();
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn run() {
    let only = std::env::var("OFX_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|part| part.trim() == name);
    let count = env_number("OFX_BENCH_EVENTS", EVENTS);
    PROFILE.store(
        std::env::var_os("OFX_BENCH_PROFILE").is_some(),
        Ordering::Relaxed,
    );
    let rounds = env_number("OFX_BENCH_ROUNDS", ROUNDS);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "events bench: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    let (pg_url, pg_name) = create_database().await;
    let sqlite = SqliteFiles::create().await;
    let pg_wakeup = Wakeup::Postgres(pg_url.clone());
    let fs_wakeup = Wakeup::Fs(sqlite.watch.clone());
    let mut reports = Reports {
        count,
        burn: Vec::new(),
        latency: Vec::new(),
        cost: Vec::new(),
    };
    if wanted("burn") {
        eprintln!("burn-down: PostgreSQL");
        let report = burn_down::<Postgres>(&pg_url, &pg_wakeup, count, rounds).await;
        reports.burn.push(("PostgreSQL", report));
        eprintln!("burn-down: SQLite");
        let report = burn_down::<Sqlite>(&sqlite.url(), &fs_wakeup, count, rounds).await;
        reports.burn.push(("SQLite", report));
    }
    if wanted("latency") {
        eprintln!("latency: PostgreSQL");
        let report = latency::<Postgres>(&pg_url, &pg_wakeup).await;
        reports.latency.push(("PostgreSQL, LISTEN/NOTIFY", report));
        eprintln!("latency: SQLite");
        let report = latency::<Sqlite>(&sqlite.url(), &fs_wakeup).await;
        reports.latency.push(("SQLite, file system", report));
    }
    if wanted("cost") {
        eprintln!("production cost: PostgreSQL");
        let report = production_cost::<Postgres>(&pg_url, 50).await;
        reports.cost.push(("PostgreSQL", report));
        eprintln!("production cost: SQLite");
        let report = production_cost::<Sqlite>(&sqlite.url(), 100).await;
        reports.cost.push(("SQLite", report));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop_database(&pg_name).await;
    drop(sqlite);
    print(&reports);
    eprintln!("total: {:.1} s", started.elapsed().as_secs_f64());
}

fn main() {
    diesel::connection::set_default_instrumentation(statement_counter)
        .expect("the instrumentation is installed");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run());
}
