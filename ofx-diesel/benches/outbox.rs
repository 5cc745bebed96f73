//! The cost of the transactional outbox and the speed of the log reader, on SQLite and
//! PostgreSQL, each measured against hand-written diesel-async code in the same run.
//!
//! **outbox/<backend>**: one command that inserts one business row, three ways, every one on a
//! connection taken from the same pool per command (`DbHub::connection`, or the scope's own):
//!
//! | function | what it does |
//! |---|---|
//! | `raw_business` | (a) the business `INSERT` alone, in a diesel-async transaction |
//! | `raw_outbox` | (b) the business `INSERT` plus an equivalent operation row (same JSON sizes) in `ofx_operations`, in one diesel-async transaction |
//! | `framework` | `commander.call(..)` on a hub built with `.filter(db.operation_scope())`: the handler writes through `db.operation_connection(ctx)`, the scope inserts the operation row and commits, the in-memory scope runs the invalidation pass |
//!
//! Around the criterion measurements, each backend prints to stderr:
//!
//! - a **profile** of each variant: the statements one command sends (seen by a diesel
//!   instrumentation installed on every connection, recording only while profiling), and the
//!   median time inside each statement and outside statements before it. A statement is not
//!   always one round trip: on PostgreSQL, a statement that misses diesel's prepared-statement
//!   cache is parsed again, one more round trip counted in its time "inside";
//! - SQLite: the **WAL frames** (pages written) per command of each variant;
//! - an **interleaved** comparison (with 1 client, then with 10 concurrent ones): rounds of one block of commands per variant in a rotating
//!   order, with the median time per command of each variant and the medians of the rounds'
//!   ratios framework / (a) and framework / (b). On a shared machine these ratios are steadier
//!   than ones from criterion's consecutive measurements.
//!
//! **replay/<backend>**: 100,000 operations of this bench's command (whose invalidation branch
//! invalidates a compute method) inserted with multi-row `INSERT`s, then a fresh hub's reader
//! started with `start_log_reader_at(&hub, Some(0))` and timed until `wait_for(max index)`
//! returns; criterion reports the throughput in operations per second.
//!
//! SQLite runs on a temporary file with the framework's defaults (WAL, `synchronous = NORMAL`);
//! PostgreSQL on fresh databases `ofx_bench_<uuid>` on the server of `OFX_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432`), dropped at the end. Every loop runs inside
//! one `block_on` per measurement (`iter_custom`) on a 2-worker tokio runtime.
//!
//! Run: `cargo bench -p ofx-diesel --all-features --bench outbox` (about 1.5 minutes on two
//! cores).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, SamplingMode, Throughput};
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, Commander, ComputeService, Hub, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, Postgres, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

diesel::table! {
    /// The business table.
    bench_entries (id) {
        /// The entry's id.
        id -> BigInt,
        /// Who owns it.
        owner -> BigInt,
        /// Its note.
        note -> Text,
    }
}

diesel::table! {
    /// The operation log, as a hand-written outbox sees it.
    ofx_operations (idx) {
        /// The readers' cursor.
        idx -> BigInt,
        /// The operation's uuid.
        uuid -> Text,
        /// The executing host.
        host_id -> Text,
        /// When it started (µs since the epoch).
        logged_at -> BigInt,
        /// When it was committed (µs since the epoch).
        committed_at -> BigInt,
        /// The command's name.
        command_name -> Text,
        /// The command.
        command_json -> Text,
        /// The items.
        items_json -> Text,
        /// The nested operations.
        nested_json -> Text,
    }
}

/// The business table, on both backends.
const ENTRIES: &str = "CREATE TABLE bench_entries \
                       (id BIGINT PRIMARY KEY NOT NULL, owner BIGINT NOT NULL, note TEXT NOT NULL)";

/// Every entry's note.
const NOTE: &str = "a short note of a benchmark entry";

/// Operations in the replayed log.
const REPLAY_OPERATIONS: i64 = 100_000;

/// Rows per multi-row `INSERT` when filling the log.
const FILL_ROWS_PER_INSERT: i64 = 1_000;

/// `INSERT`s per transaction when filling the log.
const FILL_INSERTS_PER_TRANSACTION: i64 = 10;

/// Business ids: unique across every variant of a run.
static NEXT_ID: AtomicI64 = AtomicI64::new(1);

fn next_id() -> i64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn micros_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_micros()).expect("microseconds fit in an i64")
}

/// Whether the instrumentation records events (only while profiling, never while timing).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Whether it records the statements' text too (for one command: formatting takes time).
static WITH_TEXT: AtomicBool = AtomicBool::new(false);

/// One statement starting or finishing.
struct Event {
    at: Instant,
    finish: bool,
    text: String,
}

/// The events recorded while [`RECORDING`].
static EVENTS: Mutex<Vec<Event>> = Mutex::new(Vec::new());

/// Installed on every connection: records when each statement starts and finishes while
/// [`RECORDING`].
fn statement_recorder() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if !AtomicBool::load(&RECORDING, Ordering::Relaxed) {
            return;
        }
        let at = Instant::now();
        let (finish, text) = match event {
            InstrumentationEvent::StartQuery { query, .. } => (
                false,
                if AtomicBool::load(&WITH_TEXT, Ordering::Relaxed) {
                    query.to_string()
                } else {
                    String::new()
                },
            ),
            InstrumentationEvent::FinishQuery { .. } => (true, String::new()),
            _ => return,
        };
        EVENTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Event { at, finish, text });
    }))
}

/// The events of `work`, with when it began and ended.
async fn record(work: impl AsyncFnOnce(), text: bool) -> (Instant, Vec<Event>, Instant) {
    EVENTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    WITH_TEXT.store(text, Ordering::Relaxed);
    RECORDING.store(true, Ordering::Relaxed);
    let begin = Instant::now();
    work().await;
    let end = Instant::now();
    RECORDING.store(false, Ordering::Relaxed);
    let events = std::mem::take(&mut *EVENTS.lock().unwrap_or_else(PoisonError::into_inner));
    (begin, events, end)
}

/// The handler's error.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// The command creating entry `id`.
fn create(id: i64) -> CreateEntry {
    CreateEntry {
        id,
        owner: id % 64,
        note: NOTE.to_owned(),
    }
}

/// The entries service of one backend.
struct Entries<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
}

impl<B: Backend> ComputeService for Entries<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// What the benchmarks need of a backend: its command, and the hand-written baselines.
trait Target: Backend + Sized {
    /// For benchmark names.
    const LABEL: &'static str;
    /// An entry's note.
    fn read_note(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = diesel::QueryResult<Option<String>>> + Send;

    /// Inserts an entry.
    fn insert_entry(
        connection: &mut Self::Connection,
        command: &CreateEntry,
    ) -> impl Future<Output = diesel::QueryResult<()>> + Send;

    /// (a): the business insert alone, in a transaction.
    async fn raw_business(db: &DbHub<Self>, id: i64);

    /// (b): the business insert and an equivalent operation row, in a transaction.
    async fn raw_outbox(db: &DbHub<Self>, id: i64, host_id: &str);

    /// The highest index in the log.
    async fn max_index(db: &DbHub<Self>) -> i64;
}

/// Creates an entry.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "bench.create_entry")]
struct CreateEntry {
    id: i64,
    owner: i64,
    note: String,
}

/// One entries service for every backend; the queries are the backend's (see [`Target`]).
#[service]
impl<B: Target> Entries<B> {
    /// An entry's note.
    #[compute_method]
    async fn entry(&self, id: i64) -> Result<Option<String>, String> {
        let mut connection = self
            .db
            .connection()
            .await
            .map_err(|error| error.to_string())?;
        B::read_note(&mut connection, id)
            .await
            .map_err(|error| error.to_string())
    }

    /// Inserts the entry through the operation's connection.
    #[command_handler]
    async fn create_entry(
        &self,
        command: CreateEntry,
        ctx: &CommandContext,
    ) -> Result<(), BenchError> {
        invalidate! {
            self.entry(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        B::insert_entry(&mut connection, &command).await?;
        Ok(())
    }
}

/// The baselines and queries of backend `$backend`, with the same code on each (Diesel's query
/// types are per backend).
macro_rules! target {
    ($backend:ty, $label:literal) => {
        impl Target for $backend {
            const LABEL: &'static str = $label;

            async fn read_note(
                connection: &mut Self::Connection,
                id: i64,
            ) -> diesel::QueryResult<Option<String>> {
                bench_entries::table
                    .find(id)
                    .select(bench_entries::note)
                    .first(connection)
                    .await
                    .optional()
            }

            async fn insert_entry(
                connection: &mut Self::Connection,
                command: &CreateEntry,
            ) -> diesel::QueryResult<()> {
                diesel::insert_into(bench_entries::table)
                    .values((
                        bench_entries::id.eq(command.id),
                        bench_entries::owner.eq(command.owner),
                        bench_entries::note.eq(&command.note),
                    ))
                    .execute(connection)
                    .await?;
                Ok(())
            }

            async fn raw_business(db: &DbHub<Self>, id: i64) {
                let mut pooled = db.connection().await.expect("a pooled connection");
                let connection: &mut <$backend as Backend>::Connection = &mut pooled;
                connection
                    .transaction::<_, diesel::result::Error, _>(async |connection| {
                        diesel::insert_into(bench_entries::table)
                            .values((
                                bench_entries::id.eq(id),
                                bench_entries::owner.eq(id % 64),
                                bench_entries::note.eq(NOTE),
                            ))
                            .execute(connection)
                            .await?;
                        Ok(())
                    })
                    .await
                    .expect("the business transaction commits");
            }

            async fn raw_outbox(db: &DbHub<Self>, id: i64, host_id: &str) {
                let command = create(id);
                let command_json = serde_json::to_string(&command).expect("the command serializes");
                let uuid = uuid::Uuid::now_v7().to_string();
                let logged_at = micros_now();
                let mut pooled = db.connection().await.expect("a pooled connection");
                let connection: &mut <$backend as Backend>::Connection = &mut pooled;
                connection
                    .transaction::<_, diesel::result::Error, _>(async |connection| {
                        diesel::insert_into(bench_entries::table)
                            .values((
                                bench_entries::id.eq(command.id),
                                bench_entries::owner.eq(command.owner),
                                bench_entries::note.eq(&command.note),
                            ))
                            .execute(connection)
                            .await?;
                        diesel::insert_into(ofx_operations::table)
                            .values((
                                ofx_operations::uuid.eq(&uuid),
                                ofx_operations::host_id.eq(host_id),
                                ofx_operations::logged_at.eq(logged_at),
                                ofx_operations::committed_at.eq(micros_now()),
                                ofx_operations::command_name.eq(<CreateEntry as Command>::NAME),
                                ofx_operations::command_json.eq(&command_json),
                                ofx_operations::items_json.eq("{}"),
                                ofx_operations::nested_json.eq("[]"),
                            ))
                            .execute(connection)
                            .await?;
                        Ok(())
                    })
                    .await
                    .expect("the outbox transaction commits");
            }

            async fn max_index(db: &DbHub<Self>) -> i64 {
                let mut pooled = db.connection().await.expect("a pooled connection");
                let connection: &mut <$backend as Backend>::Connection = &mut pooled;
                ofx_operations::table
                    .select(diesel::dsl::max(ofx_operations::idx))
                    .first::<Option<i64>>(connection)
                    .await
                    .expect("the log is readable")
                    .expect("the log has rows")
            }
        }
    };
}

target!(Sqlite, "sqlite");
target!(Postgres, "postgres");

/// A hub with the database scope and the entries service (kept alive by the returned `Arc`).
async fn host<B: Target>(db: &DbHub<B>) -> (Hub, Arc<Entries<B>>) {
    let hub = Hub::builder()
        .with(db.clone())
        .start()
        .await
        .expect("a hub");
    let entries = Arc::new(Entries {
        hub: hub.clone(),
        db: db.clone(),
    });
    hub.add_service(&entries).expect("the service is added");
    (hub, entries)
}

/// The three ways of running one command, in the order of the tables.
const VARIANTS: [&str; 3] = ["raw_business (a)", "raw_outbox (b)", "framework"];

/// Runs one command the way `variant` (an index in [`VARIANTS`]) says.
async fn run_variant<B: Target>(
    variant: usize,
    db: &DbHub<B>,
    commander: &Commander,
    host_id: &str,
) {
    match variant {
        0 => B::raw_business(db, next_id()).await,
        1 => B::raw_outbox(db, next_id(), host_id).await,
        _ => commander
            .call(create(next_id()))
            .await
            .expect("the command succeeds"),
    }
}

/// The median (NaN for none).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Where one command's time goes, for each variant: the statements it sends (from the first
/// of `commands` commands), then the median over the others of the time in each statement
/// (from start to finish as diesel reports them) and the time outside statements before it.
fn print_profile<B: Target>(runtime: &Runtime, db: &DbHub<B>, commands: usize) {
    let (hub, _entries) = runtime.block_on(host(db));
    let commander = hub.commander();
    let host_id = hub.host_id().to_string();
    runtime.block_on(async {
        // Warm up first: the pool's connections open (their set-up statements) and the hub's
        // background tasks send their first queries, which would otherwise be taken for the
        // statements of the first variant's first command.
        for variant in 0..VARIANTS.len() {
            for _ in 0..5 {
                run_variant(variant, db, &commander, &host_id).await;
            }
        }
        for (variant, name) in VARIANTS.iter().enumerate() {
            let work = async || run_variant(variant, db, &commander, &host_id).await;
            let (_, first, _) = record(work, true).await;
            let texts: Vec<String> = first
                .into_iter()
                .filter(|event| !event.finish)
                .map(|event| event.text.replace('\n', " ").chars().take(60).collect())
                .collect();
            // before[i]: outside statements before statement i (texts.len(): before returning);
            // inside[i]: in statement i; total: the whole command.
            let mut before = vec![Vec::new(); texts.len() + 1];
            let mut inside = vec![Vec::new(); texts.len()];
            let mut total = Vec::new();
            for _ in 0..commands {
                let (begin, events, end) = record(work, false).await;
                if events.len() != 2 * texts.len() {
                    continue; // a connection was opened or replaced meanwhile
                }
                let mut previous = begin;
                for (index, pair) in events.chunks(2).enumerate() {
                    before[index].push(micros_between(previous, pair[0].at));
                    inside[index].push(micros_between(pair[0].at, pair[1].at));
                    previous = pair[1].at;
                }
                before[texts.len()].push(micros_between(previous, end));
                total.push(micros_between(begin, end));
            }
            eprintln!(
                "{}/{name}: {} statements per command; median µs over {} commands:",
                B::LABEL,
                texts.len(),
                total.len()
            );
            eprintln!("    {:>9} {:>9}  statement", "before", "inside");
            for (index, text) in texts.iter().enumerate() {
                eprintln!(
                    "    {:>9.1} {:>9.1}  {text}",
                    median(&mut before[index]),
                    median(&mut inside[index])
                );
            }
            eprintln!(
                "    {:>9.1} {:>9}  (returning)",
                median(&mut before[texts.len()]),
                ""
            );
            eprintln!("    total {:.1}", median(&mut total));
        }
    });
}

fn micros_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e6
}

/// The three variants interleaved: rounds of one block of `block` commands per variant, in a
/// rotating order, so that a slower period of a shared machine weighs on all three. Prints the
/// median time per command of each variant and the median of the rounds' ratios.
fn print_interleaved<B: Target>(
    runtime: &Runtime,
    db: &DbHub<B>,
    rounds: usize,
    block: u32,
    clients: u32,
) {
    let (hub, _entries) = runtime.block_on(host(db));
    let commander = hub.commander();
    let host_id = hub.host_id().to_string();
    let mut per_command: [Vec<f64>; 3] = Default::default();
    runtime.block_on(async {
        for round in 0..rounds {
            for offset in 0..VARIANTS.len() {
                let variant = (round + offset) % VARIANTS.len();
                let start = Instant::now();
                // `clients` tasks at once, each running its share of the block in a row (local
                // tasks of this thread: the variants' futures are not all `Send`).
                let local = tokio::task::LocalSet::new();
                local
                    .run_until(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for _ in 0..clients {
                            let (db, commander, host_id) =
                                (db.clone(), commander.clone(), host_id.clone());
                            tasks.spawn_local(async move {
                                for _ in 0..block / clients {
                                    run_variant(variant, &db, &commander, &host_id).await;
                                }
                            });
                        }
                        while let Some(done) = tasks.join_next().await {
                            done.expect("a client task");
                        }
                    })
                    .await;
                per_command[variant].push(start.elapsed().as_secs_f64() * 1e9 / f64::from(block));
            }
        }
    });
    let mut versus_a: Vec<f64> = (0..rounds)
        .map(|round| per_command[2][round] / per_command[0][round])
        .collect();
    let mut versus_b: Vec<f64> = (0..rounds)
        .map(|round| per_command[2][round] / per_command[1][round])
        .collect();
    eprintln!(
        "{}: interleaved, {clients} client(s), {rounds} rounds of {block} commands per variant \
         (median ns/command, wall time ÷ commands):",
        B::LABEL
    );
    for (variant, times) in VARIANTS.iter().zip(per_command.iter_mut()) {
        eprintln!("    {variant:<17} {:>10.0}", median(times));
    }
    eprintln!(
        "    framework / (a) {:.3}, framework / (b) {:.3} (medians of the rounds' ratios)",
        median(&mut versus_a),
        median(&mut versus_b)
    );
}

#[derive(diesel::QueryableByName)]
struct WalCheckpoint {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
}

/// SQLite: the WAL frames (pages written) per command of each variant. The WAL is emptied
/// (`wal_checkpoint(TRUNCATE)`), `commands` commands run, and `wal_checkpoint(PASSIVE)` says
/// how many frames the WAL then holds (fewer than the auto-checkpoint's 1,000 pages: nothing
/// was checkpointed meanwhile).
fn print_wal_frames(runtime: &Runtime, db: &DbHub<Sqlite>, commands: u32) {
    let (hub, _entries) = runtime.block_on(host(db));
    let commander = hub.commander();
    let host_id = hub.host_id().to_string();
    eprintln!("sqlite: WAL frames (pages written) per command, {commands} commands per variant:");
    runtime.block_on(async {
        for (variant, name) in VARIANTS.iter().enumerate() {
            let mut pooled = db.connection().await.expect("a pooled connection");
            diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut *pooled)
                .await
                .expect("the WAL is emptied");
            drop(pooled);
            for _ in 0..commands {
                run_variant(variant, db, &commander, &host_id).await;
            }
            let mut pooled = db.connection().await.expect("a pooled connection");
            let frames = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
                .get_result::<WalCheckpoint>(&mut *pooled)
                .await
                .expect("the WAL is checkpointed")
                .log;
            eprintln!(
                "    {name:<17} {:>6.2}",
                f64::from(frames) / f64::from(commands)
            );
        }
    });
}

/// The outbox group of one backend: the three variants one after the other, then interleaved.
fn bench_outbox<B: Target>(criterion: &mut Criterion, runtime: &Runtime, db: &DbHub<B>) {
    print_profile(runtime, db, 300);
    let (hub, _entries) = runtime.block_on(host(db));
    let commander = hub.commander();
    let host_id = hub.host_id().to_string();

    let mut group = criterion.benchmark_group(format!("outbox/{}", B::LABEL));
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (variant, name) in ["raw_business", "raw_outbox", "framework"]
        .into_iter()
        .enumerate()
    {
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        run_variant(variant, db, &commander, &host_id).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

/// Fills the log with [`REPLAY_OPERATIONS`] rows of `B`'s command, as other hosts would have;
/// returns the highest index.
async fn fill_log<B: Target>(db: &DbHub<B>) -> i64 {
    let mut pooled = db.connection().await.expect("a pooled connection");
    let connection: &mut B::Connection = &mut pooled;
    let logged_at = micros_now();
    let mut id = 0;
    let mut sql = String::new();
    let per_transaction = FILL_ROWS_PER_INSERT * FILL_INSERTS_PER_TRANSACTION;
    for _ in 0..REPLAY_OPERATIONS / per_transaction {
        sql.clear();
        sql.push_str("BEGIN;");
        for _ in 0..FILL_INSERTS_PER_TRANSACTION {
            sql.push_str(
                "INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, \
                 command_name, command_json, items_json, nested_json) VALUES ",
            );
            for row in 0..FILL_ROWS_PER_INSERT {
                id += 1;
                let command = serde_json::to_string(&create(id)).expect("the command serializes");
                let separator = if row == 0 { "" } else { "," };
                sql.push_str(&format!(
                    "{separator}('{}', 'elsewhere', {logged_at}, {logged_at}, '{}', '{command}', '{{}}', '[]')",
                    uuid::Uuid::now_v7(),
                    <CreateEntry as Command>::NAME,
                ));
            }
            sql.push(';');
        }
        sql.push_str("COMMIT;");
        connection
            .batch_execute(&sql)
            .await
            .expect("the log is filled");
    }
    assert_eq!(id, REPLAY_OPERATIONS, "the batches cover the log");
    B::max_index(db).await
}

/// The replay group of one backend: how fast a fresh hub's reader replays the whole log.
fn bench_replay<B: Target>(
    criterion: &mut Criterion,
    runtime: &Runtime,
    db: &DbHub<B>,
    expected_seconds: u64,
) {
    let filling = Instant::now();
    let max_index = runtime.block_on(fill_log(db));
    eprintln!(
        "{}: {REPLAY_OPERATIONS} operations logged in {:.2?} (max index {max_index})",
        B::LABEL,
        filling.elapsed()
    );

    let mut group = criterion.benchmark_group(format!("replay/{}", B::LABEL));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(10 * expected_seconds));
    group.throughput(Throughput::Elements(
        u64::try_from(REPLAY_OPERATIONS).expect("a positive count"),
    ));
    group.bench_function("fresh_reader", |bencher| {
        bencher.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let (hub, _entries) = host(db).await;
                    let start = Instant::now();
                    let reader = db
                        .start_log_reader_at(&hub, Some(0))
                        .await
                        .expect("the reader starts");
                    reader.wait_for(max_index).await;
                    let elapsed = start.elapsed();
                    total += elapsed;
                    let stats = reader.stats();
                    let replayed = AtomicU64::load(&stats.replayed, Ordering::Relaxed);
                    let bad = AtomicU64::load(&stats.bad_rows, Ordering::Relaxed);
                    assert_eq!(
                        (replayed, bad),
                        (REPLAY_OPERATIONS.unsigned_abs(), 0),
                        "every operation is replayed"
                    );
                }
                total
            })
        });
    });
    group.finish();
}

/// A temporary SQLite file, removed (with its WAL) when dropped.
struct SqliteFile {
    path: String,
}

impl SqliteFile {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("ofx-bench-{}.db", uuid::Uuid::new_v4().simple()));
        Self {
            path: path.to_string_lossy().into_owned(),
        }
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path));
        }
    }
}

/// A fresh PostgreSQL database `ofx_bench_<uuid>`, dropped when this is dropped (outside the
/// runtime).
struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    async fn create(server: &str) -> Self {
        let name = format!("ofx_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot reach PostgreSQL at {server} ({error}); set OFX_TEST_POSTGRES to \
                     another server"
                )
            });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("the bench database is created");
        Self {
            server: server.to_owned(),
            name,
        }
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("cannot drop database {}: no runtime", self.name);
            return;
        };
        runtime.block_on(async {
            let admin =
                diesel_async::AsyncPgConnection::establish(&format!("{}/postgres", self.server))
                    .await;
            let dropped = match admin {
                Ok(mut admin) => admin
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ))
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = dropped {
                eprintln!("cannot drop database {}: {error}", self.name);
            }
        });
    }
}

/// Opens `url` with the framework's defaults and creates the business table.
async fn open<B: Target>(url: &str) -> DbHub<B> {
    // The hosts of the benchmark only write: the replay benchmark starts its readers itself.
    let mut settings = DbSettings::default();
    settings.read_log = false;
    settings.trim = false;
    let db = DbHub::<B>::open(url, settings)
        .await
        .expect("the database opens");
    let mut pooled = db.connection().await.expect("a pooled connection");
    let connection: &mut B::Connection = &mut pooled;
    connection
        .batch_execute(ENTRIES)
        .await
        .expect("the business table is created");
    drop(pooled);
    db
}

fn main() {
    diesel::connection::set_default_instrumentation(statement_recorder)
        .expect("the instrumentation is installed");
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());

    // Dropped last: after the pools on them.
    let sqlite_files = [SqliteFile::new(), SqliteFile::new()];
    let pg_databases = runtime.block_on(async {
        [
            PgDatabase::create(&server).await,
            PgDatabase::create(&server).await,
        ]
    });

    {
        let sqlite = runtime.block_on(open::<Sqlite>(&sqlite_files[0].path));
        bench_outbox(&mut criterion, &runtime, &sqlite);
        print_interleaved(&runtime, &sqlite, 30, 200, 1);
        print_interleaved(&runtime, &sqlite, 10, 200, 10);
        print_wal_frames(&runtime, &sqlite, 100);
        let postgres = runtime.block_on(open::<Postgres>(&pg_databases[0].url()));
        bench_outbox(&mut criterion, &runtime, &postgres);
        print_interleaved(&runtime, &postgres, 30, 40, 1);
        print_interleaved(&runtime, &postgres, 10, 200, 10);
    }
    {
        let sqlite = runtime.block_on(open::<Sqlite>(&sqlite_files[1].path));
        bench_replay(&mut criterion, &runtime, &sqlite, 1);
        let postgres = runtime.block_on(open::<Postgres>(&pg_databases[1].url()));
        bench_replay(&mut criterion, &runtime, &postgres, 1);
    }

    drop(runtime);
    drop(pg_databases);
    drop(sqlite_files);
    criterion.final_summary();
}
