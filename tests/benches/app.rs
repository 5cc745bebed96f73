//! The application-level figure: a small user service read through its compute methods, against
//! the same reads sent to the database every time, under the same concurrent read load with a
//! trickle of writes, on SQLite and PostgreSQL.
//!
//! Run: `cargo bench -p ofx-tests --bench app` (about 80 s on two cores after the build:
//! 3 rounds × 4 variants × 3 s per backend, plus setup and the idle write samples).
//!
//! Knobs: `OFX_BENCH_SECONDS` (default 3, fractions allowed) per variant per round,
//! `OFX_BENCH_ROUNDS` (default 3), `OFX_BENCH_READERS` (default 8 reader tasks),
//! `OFX_BENCH_WRITE_EVERY` (default 1000: one write per 1,000 reads; 0: no writes),
//! `OFX_BENCH_YIELD_EVERY` (default 16: each reader yields to the runtime every 16 reads, see
//! below), `OFX_BENCH_IDLE_WRITES` (default 200 of each kind), `OFX_BENCH_ONLY` picks backends
//! (`sqlite`, `postgres`). PostgreSQL is taken from `OFX_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`); its database `ofx_bench_<uuid>` is created per run and
//! dropped at the end `WITH (FORCE)`. SQLite runs on a temporary file with the framework's
//! defaults (WAL, `synchronous = NORMAL`). Every `DbHub` has the default settings (a pool of 8).
//!
//! **The service.** Tables `users(id, name)` (1,000 users) and `items(id, user_id, title)` (10
//! per user, indexed by `user_id`), created and filled by the bench with plain SQL. The service
//! `Users<B>` has two compute methods, `user(id) -> Option<Arc<User>>` and
//! `items(user_id) -> Arc<[Item]>` (each `Result<_, String>`), each taking a pooled connection
//! (`db.connection()`) and running one Diesel typed query; and one command, `rename_user`, whose
//! main branch updates the row through `db.operation_connection(ctx)` (the operation row is
//! inserted and committed with it) and whose invalidation branch invalidates `user(id)`.
//!
//! **The workload.** One *read* is an application request: `user(id)` then `items(id)` for one
//! user id, picked from a fixed pseudo-random sequence per reader (splitmix64, uniform over the
//! 1,000 users; the same sequences for every variant of a round). `OFX_BENCH_READERS` reader
//! tasks loop on reads on a 2-worker multi-thread tokio runtime; one writer task renames a
//! random user each time the readers' shared count passes a multiple of `OFX_BENCH_WRITE_EVERY`
//! (readers add to it every 16 reads), one write in flight at a time. A cache hit completes
//! without yielding, so each reader also yields every `OFX_BENCH_YIELD_EVERY` reads (otherwise
//! two readers would hold both workers and the writer would never run).
//!
//! **Holding the mix.** A write through either path takes about a millisecond (a commit), in
//! which cached readers do far more than 1,000 reads: left alone, the writer falls behind and
//! the mix thins out (one write per tens of thousands of reads). So in (a) and (b) the readers
//! *hold the mix*: a reader that finds the count a whole period past the next write due waits
//! until the writer finishes a write. The readers' waits and the achieved reads per write are
//! printed beside each variant; (b) never waits (its readers are slower than its writer). The
//! held rate of (a) is then bounded by the writer: about `OFX_BENCH_WRITE_EVERY` ÷ the write's
//! latency, printed as "(a)'s writer bound". (a′) runs the same as (a) without holding, to show
//! the read path with the writes it then gets.
//!
//! **The variants**, measured in the same run, interleaved over the rounds (their order rotates
//! each round), each for `OFX_BENCH_SECONDS`:
//!
//! - **(a) cached**: the reads through the compute methods; the writes through
//!   `commander().call(RenameUser { .. })`; the mix held.
//! - **(a′) cached, free**: the same, the readers never waiting for the writer.
//! - **(b) database**: the same two reads as the compute methods' bodies (same helper
//!   functions: one pooled connection per query from the same pool, the same typed queries);
//!   the same writes as a plain diesel-async transaction on a pooled connection; the mix held.
//!   After each (b) round the users it renamed are invalidated in the cache (written behind the
//!   framework's back), so that the next cached round does not serve their old names.
//! - **floor** (a reference, not a target): the same reader loop over a `HashMap<i64, (user,
//!   items)>` of the same `Arc`'d values built before the rounds, read without a lock, no writer:
//!   what the loop, the runtime and two cores give at most, whatever the cache.
//!
//! Before the rounds, every user's two values are read once through the cache (the cached
//! rounds start warm, as a running service is) and each variant runs 0.5 s untimed. Reported:
//! reads per second of each variant (median, min–max over rounds), the ratio (a) ÷ (b) (median
//! and min–max of the rounds' ratios) against the targets (≥ 1,000× on PostgreSQL,
//! ≥ 100× on SQLite), with (a′) ÷ (b), floor ÷ (b) and (a) ÷ floor beside it, `user()`
//! recomputations in the cached rounds, and the write path's cost: mean and p99 latency of each
//! write during its variant (under that variant's read load, so not the same load), and of
//! `OFX_BENCH_IDLE_WRITES` writes of each kind alternated with no readers. After the rounds the
//! bench asserts, for every user, that the cached `user(id)` equals a direct read (it panics
//! naming the user otherwise); every user renamed during the run is among them.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, Queryable, Selectable,
    SelectableHelper,
};
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeMethod, ComputeService, Hub, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, Postgres, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[path = "support/mod.rs"]
mod support;
use support::{admin, postgres_server};

/// Users in the table.
const USERS: i64 = 1000;
/// Items per user.
const ITEMS_PER_USER: i64 = 10;
/// Rows per `INSERT` when filling the tables.
const FILL_ROWS: i64 = 500;
/// Seconds per variant per round (`OFX_BENCH_SECONDS`).
const SECONDS: f64 = 3.0;
/// Rounds (`OFX_BENCH_ROUNDS`).
const ROUNDS: usize = 3;
/// Reader tasks (`OFX_BENCH_READERS`).
const READERS: usize = 8;
/// Reads per write (`OFX_BENCH_WRITE_EVERY`).
const WRITE_EVERY: u64 = 1000;
/// Reads between a reader's yields (`OFX_BENCH_YIELD_EVERY`).
const YIELD_EVERY: u64 = 16;
/// Writes of each kind in the idle write measurement (`OFX_BENCH_IDLE_WRITES`).
const IDLE_WRITES: usize = 200;
/// Reads a reader counts on its own before adding them to the shared count.
const COUNT_BATCH: u64 = 16;
/// The untimed run of each variant before the rounds.
const WARMUP: Duration = Duration::from_millis(500);
/// The targets, cached ÷ database reads per second.
const TARGET_POSTGRES: f64 = 1000.0;
const TARGET_SQLITE: f64 = 100.0;

// ===== the schema =====

diesel::table! {
    /// The users.
    users (id) {
        /// The user's id.
        id -> BigInt,
        /// The user's name.
        name -> Text,
    }
}

diesel::table! {
    /// Each user's items.
    items (id) {
        /// The item's id.
        id -> BigInt,
        /// Whose item.
        user_id -> BigInt,
        /// Its title.
        title -> Text,
    }
}

/// The same plain SQL on both backends.
const SCHEMA: &str = "
    CREATE TABLE users (id BIGINT PRIMARY KEY NOT NULL, name TEXT NOT NULL);
    CREATE TABLE items (id BIGINT PRIMARY KEY NOT NULL, user_id BIGINT NOT NULL, title TEXT NOT NULL);
    CREATE INDEX items_user_id ON items (user_id);
";

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = users)]
struct User {
    id: i64,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = items)]
struct Item {
    id: i64,
    user_id: i64,
    title: String,
}

/// The tables' rows, as plain SQL `INSERT`s in one transaction.
fn fill_sql() -> String {
    let mut sql = String::from("BEGIN;\n");
    let users: Vec<i64> = (1..=USERS).collect();
    for chunk in users.chunks(usize::try_from(FILL_ROWS).expect("a chunk size")) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|id| format!("({id}, 'user {id}')"))
            .collect();
        sql.push_str(&format!(
            "INSERT INTO users (id, name) VALUES {};\n",
            rows.join(", ")
        ));
    }
    let items: Vec<i64> = (1..=USERS * ITEMS_PER_USER).collect();
    for chunk in items.chunks(usize::try_from(FILL_ROWS).expect("a chunk size")) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|id| {
                let user = (id - 1) / ITEMS_PER_USER + 1;
                format!("({id}, {user}, 'item {id} of user {user}')")
            })
            .collect();
        sql.push_str(&format!(
            "INSERT INTO items (id, user_id, title) VALUES {};\n",
            rows.join(", ")
        ));
    }
    sql.push_str("COMMIT;\nANALYZE;\n");
    sql
}

// ===== the queries, per backend =====

/// The service's queries and the plain write of one backend (Diesel's query types are per
/// backend); the service over them is one generic `#[service]`.
trait Queries: Backend + Sized {
    const LABEL: &'static str;
    /// The target for cached ÷ database reads per second.
    const TARGET: f64;

    fn read_user(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = QueryResult<Option<User>>> + Send;

    fn read_items(
        connection: &mut Self::Connection,
        user_id: i64,
    ) -> impl Future<Output = QueryResult<Vec<Item>>> + Send;

    /// Renames a user; the rows updated.
    fn write_name(
        connection: &mut Self::Connection,
        id: i64,
        name: String,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// The database variant's write: the same `UPDATE` in a plain transaction on a pooled
    /// connection.
    fn plain_rename(db: &DbHub<Self>, id: i64, name: String) -> impl Future<Output = ()> + Send;
}

macro_rules! queries {
    ($backend:ty, $label:literal, $target:expr) => {
        impl Queries for $backend {
            const LABEL: &'static str = $label;
            const TARGET: f64 = $target;

            async fn read_user(
                connection: &mut Self::Connection,
                id: i64,
            ) -> QueryResult<Option<User>> {
                // Here only: its `load` would take over `AtomicBool::load` elsewhere.
                use diesel_async::RunQueryDsl;
                users::table
                    .find(id)
                    .select(User::as_select())
                    .first(connection)
                    .await
                    .optional()
            }

            async fn read_items(
                connection: &mut Self::Connection,
                user_id: i64,
            ) -> QueryResult<Vec<Item>> {
                // Here only: its `load` would take over `AtomicBool::load` elsewhere.
                use diesel_async::RunQueryDsl;
                items::table
                    .filter(items::user_id.eq(user_id))
                    .order(items::id)
                    .select(Item::as_select())
                    .load(connection)
                    .await
            }

            async fn write_name(
                connection: &mut Self::Connection,
                id: i64,
                name: String,
            ) -> QueryResult<usize> {
                // Here only: its `load` would take over `AtomicBool::load` elsewhere.
                use diesel_async::RunQueryDsl;
                diesel::update(users::table.find(id))
                    .set(users::name.eq(name))
                    .execute(connection)
                    .await
            }

            async fn plain_rename(db: &DbHub<Self>, id: i64, name: String) {
                let mut pooled = db.connection().await.expect("a pooled connection");
                let connection: &mut <$backend as Backend>::Connection = &mut pooled;
                let updated = connection
                    .transaction::<_, diesel::result::Error, _>(async |connection| {
                        Self::write_name(connection, id, name).await
                    })
                    .await
                    .expect("the plain rename commits");
                assert_eq!(updated, 1, "the plain rename of user {id} updated no row");
            }
        }
    };
}

queries!(Sqlite, "SQLite", TARGET_SQLITE);
queries!(Postgres, "PostgreSQL", TARGET_POSTGRES);

/// `user(id)` read directly: what the compute method's body does.
async fn load_user<B: Queries>(db: &DbHub<B>, id: i64) -> Result<Option<User>, String> {
    let mut connection = db.connection().await.map_err(|error| error.to_string())?;
    B::read_user(&mut connection, id)
        .await
        .map_err(|error| error.to_string())
}

/// `items(user_id)` read directly: what the compute method's body does.
async fn load_items<B: Queries>(db: &DbHub<B>, user_id: i64) -> Result<Vec<Item>, String> {
    let mut connection = db.connection().await.map_err(|error| error.to_string())?;
    B::read_items(&mut connection, user_id)
        .await
        .map_err(|error| error.to_string())
}

// ===== the service =====

/// Renames a user.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "app_bench.rename_user")]
struct RenameUser {
    id: i64,
    name: String,
}

#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error("no user {0}")]
    NotFound(i64),
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

struct Users<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
}

impl<B: Backend> ComputeService for Users<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: Queries> Users<B> {
    /// One user.
    #[compute_method]
    async fn user(&self, id: i64) -> Result<Option<Arc<User>>, String> {
        Ok(load_user(&self.db, id).await?.map(Arc::new))
    }

    /// A user's items, in order.
    #[compute_method]
    async fn items(&self, user_id: i64) -> Result<Arc<[Item]>, String> {
        Ok(load_items(&self.db, user_id).await?.into())
    }

    /// Renames a user, through the operation's transaction.
    #[command_handler]
    async fn rename_user(
        &self,
        command: RenameUser,
        ctx: &CommandContext,
    ) -> Result<(), UserError> {
        invalidate! {
            self.user(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        match B::write_name(&mut connection, command.id, command.name).await? {
            0 => Err(UserError::NotFound(command.id)),
            _ => Ok(()),
        }
    }
}

/// What one read returns: the user and its items.
type Read = (Option<Arc<User>>, Arc<[Item]>);

/// One backend's application: the database, the hub, the service, and the floor's map.
struct App<B: Queries> {
    db: DbHub<B>,
    hub: Hub,
    users: Arc<Users<B>>,
    floor: HashMap<i64, Read>,
}

impl<B: Queries> App<B> {
    /// Opens the database at `url` (default settings), creates and fills the tables, starts the
    /// hub and adds the service, then reads every user once through the cache and builds the
    /// floor's map.
    async fn start(url: &str) -> Self {
        let db = DbHub::<B>::open(url, DbSettings::default())
            .await
            .expect("the database opens");
        {
            let mut connection = db.connection().await.expect("a connection");
            connection
                .batch_execute(SCHEMA)
                .await
                .expect("the tables are created");
            connection
                .batch_execute(&fill_sql())
                .await
                .expect("the tables are filled");
        }
        let hub = Hub::builder()
            .with(db.clone())
            .start()
            .await
            .expect("the hub starts");
        let users = Arc::new(Users {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&users).expect("the service is added");
        let mut floor = HashMap::new();
        for id in 1..=USERS {
            let user = users.user(id).await.expect("a user is read");
            let items = users.items(id).await.expect("items are read");
            assert!(user.is_some(), "user {id} is missing after the fill");
            assert_eq!(items.len() as i64, ITEMS_PER_USER, "user {id}'s items");
            floor.insert(id, (user, items));
        }
        Self {
            db,
            hub,
            users,
            floor,
        }
    }

    fn stop(&self) {
        self.hub.shutdown_token().cancel();
    }
}

// ===== the workload =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// (a) Through the compute methods and the command; the mix held.
    Cached,
    /// (a) with the readers never waiting for the writer: the mix thins out.
    CachedFree,
    /// (b) The same queries each time and a plain transaction; the mix held.
    Database,
    /// The same loop over a `HashMap`, no writes: the loop's ceiling.
    Floor,
}

impl Variant {
    const ALL: [Self; 4] = [Self::Cached, Self::CachedFree, Self::Database, Self::Floor];

    fn label(self) -> &'static str {
        match self {
            Self::Cached => "(a) cached: compute methods, rename_user command",
            Self::CachedFree => "(a′) cached, readers never wait for the writer",
            Self::Database => "(b) database: same queries each time, plain transaction",
            Self::Floor => "floor: same loop over a HashMap, no writes",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::CachedFree => "cached-free",
            Self::Database => "database",
            Self::Floor => "floor",
        }
    }

    /// Whether the readers wait for the writer when they are a period ahead of it.
    fn holds_mix(self) -> bool {
        matches!(self, Self::Cached | Self::Database)
    }

    fn writes(self) -> bool {
        self != Self::Floor
    }

    fn through_ofx(self) -> bool {
        matches!(self, Self::Cached | Self::CachedFree)
    }
}

#[derive(Debug, Clone, Copy)]
struct Config {
    seconds: f64,
    rounds: usize,
    readers: usize,
    write_every: u64,
    yield_every: u64,
    idle_writes: usize,
}

/// What the readers share with the writer.
struct Shared {
    reads: AtomicU64,
    stop: AtomicBool,
    /// Wakes the writer: a period of reads passed.
    wake: Notify,
    write_every: u64,
    /// Writes done.
    written: AtomicU64,
    /// Wakes readers waiting for the writer: a write is done.
    resume: Notify,
    /// Whether readers wait when they are a period ahead of the writes done.
    hold: bool,
    /// Times a reader waited for the writer.
    waits: AtomicU64,
}

impl Shared {
    /// Counts `reads` more; wakes the writer when the count passes a multiple of its period.
    fn add(&self, reads: u64) {
        let before = self.reads.fetch_add(reads, Ordering::Relaxed);
        if self.write_every > 0 && before / self.write_every != (before + reads) / self.write_every
        {
            self.wake.notify_one();
        }
    }

    /// Holding the mix: waits while the reads are a whole period past the next write due (the
    /// writer has one write in flight and fell behind).
    async fn wait_for_writer(&self) {
        if !self.hold || self.write_every == 0 {
            return;
        }
        loop {
            let resumed = self.resume.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            let limit = (self.written.load(Ordering::Relaxed) + 2) * self.write_every;
            if self.stop.load(Ordering::Relaxed) || self.reads.load(Ordering::Relaxed) < limit {
                return;
            }
            self.waits.fetch_add(1, Ordering::Relaxed);
            resumed.await;
        }
    }
}

/// splitmix64: the readers' and the writer's fixed pseudo-random sequences.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_user(state: &mut u64) -> i64 {
    1 + i64::try_from(next_random(state) % USERS.unsigned_abs()).expect("a user id")
}

/// One reader: reads until told to stop; the reads it made.
async fn reader<B: Queries>(
    app: Arc<App<B>>,
    variant: Variant,
    shared: Arc<Shared>,
    seed: u64,
    yield_every: u64,
) -> u64 {
    let mut state = seed;
    let mut reads = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let id = random_user(&mut state);
        match variant {
            Variant::Cached | Variant::CachedFree => {
                let user = app.users.user(id).await.expect("user() succeeds");
                let items = app.users.items(id).await.expect("items() succeeds");
                black_box((user, items));
            }
            Variant::Database => {
                let user = load_user(&app.db, id).await.expect("a user is read");
                let items = load_items(&app.db, id).await.expect("items are read");
                black_box((user, items));
            }
            Variant::Floor => {
                let (user, items) = app.floor.get(&id).expect("every user is in the map");
                black_box((user.clone(), items.clone()));
            }
        }
        reads += 1;
        if reads.is_multiple_of(COUNT_BATCH) {
            shared.add(COUNT_BATCH);
            shared.wait_for_writer().await;
        }
        if yield_every > 0 && reads.is_multiple_of(yield_every) {
            tokio::task::yield_now().await;
        }
    }
    shared.add(reads % COUNT_BATCH);
    reads
}

/// Names unique over the run, so that a stale read cannot pass for a fresh one.
static NEXT_NAME: AtomicU64 = AtomicU64::new(1);

/// What one writer did.
#[derive(Debug, Default)]
struct Writes {
    /// Each write's latency, µs.
    latencies: Vec<f64>,
    /// The users renamed.
    users: Vec<i64>,
}

/// Renames user `id` the way `variant` writes.
async fn rename<B: Queries>(app: &App<B>, variant: Variant, id: i64) {
    let name = format!(
        "user {id} renamed {}",
        NEXT_NAME.fetch_add(1, Ordering::Relaxed)
    );
    if variant.through_ofx() {
        app.hub
            .commander()
            .call(RenameUser { id, name })
            .await
            .expect("rename_user commits");
    } else {
        B::plain_rename(&app.db, id, name).await;
    }
}

/// The writer: one rename each time the readers' count passes a multiple of `write_every`,
/// one at a time.
async fn writer<B: Queries>(
    app: Arc<App<B>>,
    variant: Variant,
    shared: Arc<Shared>,
    seed: u64,
) -> Writes {
    let mut state = seed;
    let mut writes = Writes::default();
    let mut due = shared.write_every;
    loop {
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return writes;
            }
            if shared.reads.load(Ordering::Relaxed) >= due {
                break;
            }
            // `notify_one` keeps a permit when nobody waits: no wake-up is lost between the
            // check and the wait.
            shared.wake.notified().await;
        }
        let id = random_user(&mut state);
        let started = Instant::now();
        rename(&app, variant, id).await;
        writes.latencies.push(micros(started.elapsed()));
        writes.users.push(id);
        shared.written.fetch_add(1, Ordering::Relaxed);
        shared.resume.notify_waiters();
        due += shared.write_every;
    }
}

/// What one variant measured in one round.
#[derive(Debug)]
struct Run {
    reads: u64,
    seconds: f64,
    writes: Writes,
    /// `user()` computations during the run (cache misses of `user`).
    user_computations: u64,
    /// Times a reader waited for the writer.
    waits: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.reads as f64 / self.seconds
    }
}

/// Runs `variant` for `duration` with the readers and (but for the floor) the writer.
async fn run_variant<B: Queries>(
    app: &Arc<App<B>>,
    variant: Variant,
    config: &Config,
    duration: Duration,
    round: u64,
) -> Run {
    let descriptor = Users::<B>::user_method().descriptor();
    let computed_before = descriptor.computations();
    let shared = Arc::new(Shared {
        reads: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        wake: Notify::new(),
        write_every: config.write_every,
        written: AtomicU64::new(0),
        resume: Notify::new(),
        hold: variant.holds_mix(),
        waits: AtomicU64::new(0),
    });
    let started = Instant::now();
    let readers: Vec<_> = (0..config.readers as u64)
        .map(|reader_index| {
            tokio::spawn(reader(
                Arc::clone(app),
                variant,
                Arc::clone(&shared),
                round * 1_000 + reader_index,
                config.yield_every,
            ))
        })
        .collect();
    let writer = (variant.writes() && config.write_every > 0).then(|| {
        tokio::spawn(writer(
            Arc::clone(app),
            variant,
            Arc::clone(&shared),
            round * 1_000 + 999,
        ))
    });
    tokio::time::sleep(duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    shared.wake.notify_one();
    shared.resume.notify_waiters();
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.expect("a reader ends");
    }
    let seconds = started.elapsed().as_secs_f64();
    let writes = match writer {
        Some(writer) => writer.await.expect("the writer ends"),
        None => Writes::default(),
    };
    if variant == Variant::Database {
        // Written behind the framework's back: what the cache holds of them is stale.
        for &id in &writes.users {
            invalidate! {
                app.users.user(id);
            }
        }
    }
    Run {
        reads,
        seconds,
        writes,
        user_computations: descriptor.computations() - computed_before,
        waits: shared.waits.load(Ordering::Relaxed),
    }
}

/// Every variant, interleaved over the rounds; then the idle writes and the check.
#[derive(Debug)]
struct Report {
    label: &'static str,
    target: f64,
    /// Per variant (in [`Variant::ALL`]'s order), per round.
    runs: [Vec<Run>; 4],
    idle_cached: Vec<f64>,
    idle_plain: Vec<f64>,
    checked: usize,
    renamed: usize,
}

async fn bench<B: Queries>(url: &str, config: &Config) -> Report {
    let setup = Instant::now();
    let app = Arc::new(App::<B>::start(url).await);
    eprintln!(
        "{}: tables filled, cache warm in {:.2} s",
        B::LABEL,
        setup.elapsed().as_secs_f64()
    );
    let mut renamed = BTreeSet::new();
    for variant in Variant::ALL {
        let run = run_variant(&app, variant, config, WARMUP, 99).await;
        renamed.extend(run.writes.users);
    }
    let duration = Duration::from_secs_f64(config.seconds);
    let mut runs: [Vec<Run>; 4] = Default::default();
    for round in 0..config.rounds {
        for offset in 0..Variant::ALL.len() {
            let index = (round + offset) % Variant::ALL.len();
            let variant = Variant::ALL[index];
            let run = run_variant(&app, variant, config, duration, round as u64).await;
            eprintln!(
                "{} round {}: {:<10} {:>12.0} reads/s, {} writes",
                B::LABEL,
                round + 1,
                variant.short(),
                run.rate(),
                run.writes.latencies.len()
            );
            renamed.extend(run.writes.users.iter().copied());
            runs[index].push(run);
        }
    }
    // The write path with no readers: the two kinds alternated.
    let mut state = 0xA11CE;
    let mut idle_cached = Vec::with_capacity(config.idle_writes);
    let mut idle_plain = Vec::with_capacity(config.idle_writes);
    for _ in 0..config.idle_writes {
        for (variant, samples) in [
            (Variant::Cached, &mut idle_cached),
            (Variant::Database, &mut idle_plain),
        ] {
            let id = random_user(&mut state);
            let started = Instant::now();
            rename(&app, variant, id).await;
            samples.push(micros(started.elapsed()));
            if variant == Variant::Database {
                invalidate! {
                    app.users.user(id);
                }
            }
            renamed.insert(id);
        }
    }
    // After the last write: the cache agrees with the database on every user.
    for id in 1..=USERS {
        let cached = app.users.user(id).await.expect("user() succeeds");
        let direct = load_user(&app.db, id).await.expect("a user is read");
        if cached.as_deref() != direct.as_ref() {
            panic!(
                "{}: the cached user({id}) is {cached:?} but the database has {direct:?} \
                 (renamed during the run: {})",
                B::LABEL,
                renamed.contains(&id)
            );
        }
    }
    app.stop();
    Report {
        label: B::LABEL,
        target: B::TARGET,
        runs,
        idle_cached,
        idle_plain,
        checked: usize::try_from(USERS).expect("a count"),
        renamed: renamed.len(),
    }
}

// ===== statistics =====

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &value| {
            (low.min(value), high.max(value))
        })
}

/// Mean and p99 (nearest rank) of samples in µs.
fn mean_p99(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "–".to_owned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (0.99 * sorted.len() as f64).ceil() as usize;
    let p99 = sorted[rank.clamp(1, sorted.len()) - 1];
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    format!("{} / {}", us(mean), us(p99))
}

/// µs, readable.
fn us(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1} ms", value / 1000.0)
    } else {
        format!("{value:.0} µs")
    }
}

/// A count with thousands separators.
fn count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

// ===== databases =====

/// A temporary SQLite file, removed at the end.
struct SqliteFile(PathBuf);

impl SqliteFile {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple();
        Self(std::env::temp_dir().join(format!("ofx-app-bench-{id}.db")))
    }

    fn url(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

// ===== the report =====

fn print(reports: &[Report], config: &Config) {
    eprintln!();
    eprintln!(
        "## Reads per second: {USERS} users × {ITEMS_PER_USER} items; {} readers; one read = \
         user(id) + items(id); one write per {} reads; {} s per variant, {} rounds interleaved",
        config.readers, config.write_every, config.seconds, config.rounds
    );
    eprintln!();
    eprintln!(
        "| backend | variant | reads/s (median) | min–max over rounds | writes | reads per write | \
         readers waited for the writer | write mean / p99 (under its load) | user() computed |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for report in reports {
        for (variant, runs) in Variant::ALL.iter().zip(&report.runs) {
            let rates: Vec<f64> = runs.iter().map(Run::rate).collect();
            let (low, high) = min_max(&rates);
            let writes: usize = runs.iter().map(|run| run.writes.latencies.len()).sum();
            let reads: u64 = runs.iter().map(|run| run.reads).sum();
            let latencies: Vec<f64> = runs
                .iter()
                .flat_map(|run| run.writes.latencies.iter().copied())
                .collect();
            let dash = || "–".to_owned();
            let per_write = if writes == 0 {
                dash()
            } else {
                count(reads as f64 / writes as f64)
            };
            let waits = if variant.holds_mix() {
                count(runs.iter().map(|run| run.waits).sum::<u64>() as f64)
            } else {
                dash()
            };
            let computed = if variant.through_ofx() {
                count(runs.iter().map(|run| run.user_computations).sum::<u64>() as f64)
            } else {
                dash()
            };
            eprintln!(
                "| {} | {} | {} | {} – {} | {writes} | {per_write} | {waits} | {} | {computed} |",
                report.label,
                variant.label(),
                count(median(&rates)),
                count(low),
                count(high),
                mean_p99(&latencies),
            );
        }
    }
    eprintln!();
    eprintln!("## Cached ÷ database (the rounds' ratios), against the issue's targets");
    eprintln!();
    eprintln!(
        "| backend | (a) ÷ (b): median | min–max | target | met | (a′) ÷ (b) (mix thinned) | floor ÷ (b) | (a) ÷ floor |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    let index = |variant: Variant| {
        Variant::ALL
            .iter()
            .position(|other| *other == variant)
            .expect("a variant")
    };
    for report in reports {
        let ratios = |over: Variant, under: Variant| -> Vec<f64> {
            report.runs[index(over)]
                .iter()
                .zip(&report.runs[index(under)])
                .map(|(a, b)| a.rate() / b.rate())
                .collect()
        };
        let headline = ratios(Variant::Cached, Variant::Database);
        let (low, high) = min_max(&headline);
        eprintln!(
            "| {} | {:.0}× | {:.0}× – {:.0}× | ≥ {}× | {} | {:.0}× | {:.0}× | {:.2} |",
            report.label,
            median(&headline),
            low,
            high,
            count(report.target),
            if median(&headline) >= report.target {
                "yes"
            } else {
                "no"
            },
            median(&ratios(Variant::CachedFree, Variant::Database)),
            median(&ratios(Variant::Floor, Variant::Database)),
            median(&ratios(Variant::Cached, Variant::Floor)),
        );
    }
    if config.write_every > 0 {
        eprintln!();
        for report in reports {
            let runs = &report.runs[index(Variant::Cached)];
            let latencies: Vec<f64> = runs
                .iter()
                .flat_map(|run| run.writes.latencies.iter().copied())
                .collect();
            let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
            let rates: Vec<f64> = runs.iter().map(Run::rate).collect();
            eprintln!(
                "{}: (a)'s writer bound: {} reads per write ÷ its mean write latency under load \
                 ({}) = {} reads/s; (a) measured {} reads/s",
                report.label,
                config.write_every,
                us(mean),
                count(config.write_every as f64 / (mean / 1e6)),
                count(median(&rates)),
            );
        }
    }
    eprintln!();
    eprintln!(
        "## The write path with no readers ({} writes of each kind, alternated; mean / p99)",
        config.idle_writes
    );
    eprintln!();
    eprintln!("| backend | rename_user (ofx command) | plain transaction | ofx ÷ plain (mean) |");
    eprintln!("|---|---|---|---|");
    for report in reports {
        let mean = |samples: &[f64]| samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        eprintln!(
            "| {} | {} | {} | {:.2}× |",
            report.label,
            mean_p99(&report.idle_cached),
            mean_p99(&report.idle_plain),
            mean(&report.idle_cached) / mean(&report.idle_plain)
        );
    }
    eprintln!();
    for report in reports {
        eprintln!(
            "{}: checked after the last write: cached user(id) = direct read for all {} users \
             ({} of them renamed during the run)",
            report.label, report.checked, report.renamed
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
    let config = Config {
        seconds: std::env::var("OFX_BENCH_SECONDS")
            .ok()
            .and_then(|value| value.parse::<f64>().ok())
            .filter(|seconds| *seconds > 0.0)
            .unwrap_or(SECONDS),
        rounds: usize::try_from(env_number("OFX_BENCH_ROUNDS", ROUNDS as u64).max(1))
            .expect("a round count"),
        readers: usize::try_from(env_number("OFX_BENCH_READERS", READERS as u64).max(1))
            .expect("a reader count"),
        write_every: env_number("OFX_BENCH_WRITE_EVERY", WRITE_EVERY),
        yield_every: env_number("OFX_BENCH_YIELD_EVERY", YIELD_EVERY),
        idle_writes: usize::try_from(env_number("OFX_BENCH_IDLE_WRITES", IDLE_WRITES as u64))
            .expect("a write count"),
    };
    let only = std::env::var("OFX_BENCH_ONLY").unwrap_or_default();
    let words: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .collect();
    let backend = |name: &str| words.is_empty() || words.contains(&name);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "app bench: {} CPUs, 2 tokio workers, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    let mut reports = Vec::new();
    if backend("sqlite") {
        let file = SqliteFile::new();
        reports.push(bench::<Sqlite>(&file.url(), &config).await);
        // Let the stopped hub's tasks end before the file goes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if backend("postgres") {
        let name = format!("ofx_bench_{}", uuid::Uuid::new_v4().simple());
        admin(&format!("CREATE DATABASE {name}")).await;
        let url = format!("{}/{name}", postgres_server());
        reports.push(bench::<Postgres>(&url, &config).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    print(&reports, &config);
    eprintln!();
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
