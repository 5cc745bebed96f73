//! Benchmarks of compute methods: the cached hit (against a `RwLock<HashMap>`, `quick_cache`,
//! `moka` and a bare `papaya` map, on one and two threads, and salsa's tracked functions on one;
//! the two-thread group also has a never-written `HashMap` read without a lock, the most this
//! machine gives two threads),
//! invalidation (one leaf, a root with 10,000 dependents, a chain of 1,000, trees of branching
//! 2, 3 and 4) and the miss path (without eviction, with one dependency, and at a full hub).
//!
//! The `hit` group also measures salsa (the incremental-computation crate of rust-analyzer, a
//! dev-dependency) on the same loop: a memoized tracked function returning the same `Value`,
//! every key computed beforehand in the database's one revision, so every read is a hit (salsa
//! checks the memo was verified in the current revision and clones the value out, as ofx checks
//! its entry is valid and clones it). salsa cannot key a tracked function by a bare `u64`: a
//! function of one argument takes a salsa struct, and one of several arguments has its argument
//! tuple interned on every call. So `salsa_u64` is `salsa_get(db, table, id)`, a `u64` beside a
//! `#[salsa::input]` handle (the closest idiom: the pair is interned, a hash lookup behind a
//! shard lock, then the memo is found by the interned id), and `salsa_interned` is
//! `salsa_get_interned(db, key)` with a `#[salsa::interned]` key interned before the loop (the
//! caller holds the id, as salsa code does; the memo is found by id, no hashing; the loop reads
//! the id out of a `Vec`). Both are one database handle on one thread (a handle is `Send`, not
//! `Sync`: salsa shares a database across threads by cloning handles), so neither is in the
//! two-thread group.
//!
//! Two-thread figures: `hit_threads/NAME/1` and `hit_threads/NAME/2` report elements per second
//! (one read per thread per iteration); their ratio is the scaling.
//!
//! Hit-path loops run many calls inside one `block_on` per measurement (`iter_custom`), so the
//! cost of entering the runtime is not measured; every baseline runs in the same loop shape.
//! Compare figures of one run with each other (ratios), not across runs: the machine is noisy.
//!
//! Run: `cargo bench -p ofx-core --bench computed` (add a filter such as `hit/` to run part).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ofx_core::{ComputeService, Hub, compute_method, invalidate};
use tokio::runtime::Runtime;

/// The value the hit benchmarks cache.
type Value = Arc<[u8; 64]>;

/// How many keys the hit benchmarks spread over.
const KEYS: usize = 10_000;

/// A capacity no benchmark reaches: the hub never evicts.
const UNBOUNDED: usize = usize::MAX;

/// Invalidations per untimed setup in the leaf benchmark (below the hub's capacity).
const LEAF_CHUNK: u64 = 10_000;

/// A hub caching at most `capacity` values.
fn hub(capacity: usize) -> Hub {
    Hub::builder().capacity(capacity).build().expect("a hub")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

/// `0..n` in a pseudo-random order fixed by `seed` (splitmix64 + Fisher-Yates).
fn shuffled(n: usize, seed: u64) -> Vec<u64> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut keys: Vec<u64> = (0..n as u64).collect();
    for i in (1..n).rev() {
        let j = usize::try_from(next() % (i as u64 + 1)).expect("an index fits usize");
        keys.swap(i, j);
    }
    keys
}

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

/// One-argument methods: the hit and miss paths.
struct Flat {
    hub: Hub,
}

impl ComputeService for Flat {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Flat {
    fn new(capacity: usize) -> Self {
        Self { hub: hub(capacity) }
    }

    #[compute_method]
    async fn get(&self, id: u64) -> Value {
        let _ = id;
        Arc::new([0; 64])
    }

    /// A hit whose value is copied (no reference count to write).
    #[compute_method]
    async fn small(&self, id: u64) -> u64 {
        id
    }

    /// The empty body of the miss benchmarks.
    #[compute_method]
    async fn constant(&self, id: u64) -> u64 {
        let _ = id;
        7
    }

    /// A dependency for `with_dependency`.
    #[compute_method]
    async fn base(&self) -> u64 {
        7
    }

    /// A miss that registers one dependency (a hit on `base`).
    #[compute_method]
    async fn with_dependency(&self, id: u64) -> u64 {
        let _ = id;
        self.base().await
    }
}

/// Dependency graphs for the invalidation benchmarks.
struct Graph {
    hub: Hub,
    branching: u64,
}

impl ComputeService for Graph {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Graph {
    /// On a hub of the default capacity (above every graph built here).
    fn new(branching: u64) -> Self {
        Self {
            hub: hub(ofx_core::DEFAULT_CAPACITY),
            branching,
        }
    }

    #[compute_method]
    async fn leaf(&self, id: u64) -> u64 {
        id
    }

    #[compute_method]
    async fn root(&self) -> u64 {
        1
    }

    /// One of the root's direct dependents.
    #[compute_method]
    async fn dependent(&self, id: u64) -> u64 {
        self.root().await + id
    }

    /// `chain(i)` is computed from `chain(i - 1)`; `chain(0)` is the chain's root.
    #[compute_method]
    async fn chain(&self, i: u64) -> u64 {
        if i == 0 {
            0
        } else {
            Box::pin(self.chain(i - 1)).await + 1
        }
    }

    /// A node of a tree whose root `node(0, 0)` everything is computed from: `node(level, i)`
    /// is computed from its parent `node(level - 1, i / branching)`, so invalidating the root
    /// invalidates the whole tree.
    #[compute_method]
    async fn node(&self, level: u32, index: u64) -> u64 {
        if level == 0 {
            0
        } else {
            Box::pin(self.node(level - 1, index / self.branching)).await + 1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hit path
// ---------------------------------------------------------------------------------------------

/// Something the hit loop reads from: the compute method or a baseline. (Not `Send + Sync`
/// itself: a salsa database handle is `Send` but not `Sync`; the two-thread group requires both.)
trait Target {
    /// What a read returns: a [`Value`] (an `Arc`, whose clone writes its count) or a `u64`.
    type Out;
    async fn read(&self, key: u64) -> Option<Self::Out>;
}

impl Target for Flat {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        Some(self.get(key).await)
    }
}

/// The compute method `Flat::small`, whose `u64` value is copied, not reference-counted.
struct OfxU64(Flat);

impl Target for OfxU64 {
    type Out = u64;
    #[inline]
    async fn read(&self, key: u64) -> Option<u64> {
        Some(self.0.small(key).await)
    }
}

/// A `HashMap` read without any lock (it is never written): the most two threads can get out
/// of this machine for a read plus an `Arc` clone.
struct Unlocked(HashMap<u64, Value>);

impl Unlocked {
    fn new() -> Self {
        Self(
            (0..KEYS as u64)
                .map(|key| (key, Arc::new([0; 64])))
                .collect(),
        )
    }
}

impl Target for Unlocked {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        self.0.get(&key).cloned()
    }
}

/// The baseline of the targets: a `HashMap` behind a `RwLock`, read-locked for each get.
struct RwLockMap<H>(RwLock<HashMap<u64, Value, H>>);

impl<H: BuildHasher + Default + Sync + Send> RwLockMap<H> {
    fn new() -> Self {
        let map = (0..KEYS as u64)
            .map(|key| (key, Arc::new([0; 64])))
            .collect::<HashMap<_, _, H>>();
        Self(RwLock::new(map))
    }
}

impl<H: BuildHasher + Sync + Send> Target for RwLockMap<H> {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        self.0.read().expect("not poisoned").get(&key).cloned()
    }
}

struct QuickCache(quick_cache::sync::Cache<u64, Value>);

impl QuickCache {
    fn new() -> Self {
        let cache = quick_cache::sync::Cache::new(2 * KEYS);
        for key in 0..KEYS as u64 {
            cache.insert(key, Arc::new([0; 64]));
        }
        Self(cache)
    }
}

impl Target for QuickCache {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        self.0.get(&key)
    }
}

struct Moka(moka::sync::Cache<u64, Value>);

impl Moka {
    fn new() -> Self {
        let cache = moka::sync::Cache::new(2 * KEYS as u64);
        for key in 0..KEYS as u64 {
            cache.insert(key, Arc::new([0; 64]));
        }
        cache.run_pending_tasks();
        Self(cache)
    }
}

impl Target for Moka {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        self.0.get(&key)
    }
}

/// The concurrent map ofx's method tables are made of, keyed like them, read bare.
struct Papaya(papaya::HashMap<(u64,), Value, foldhash::fast::RandomState>);

impl Papaya {
    fn new() -> Self {
        let map = papaya::HashMap::builder()
            .hasher(foldhash::fast::RandomState::default())
            .build();
        for key in 0..KEYS as u64 {
            map.pin().insert((key,), Arc::new([0; 64]));
        }
        Self(map)
    }
}

impl Target for Papaya {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        self.0.pin().get(&(key,)).cloned()
    }
}

/// The salsa database's key space for [`salsa_get`]: salsa tracked functions are keyed by salsa
/// structs (inputs, interned or tracked structs), so a `u64` key needs a second argument; a
/// tracked function with more than one argument has its argument tuple interned on each call.
#[salsa::input]
struct SalsaTable {
    #[returns(copy)]
    name: u64,
}

/// The salsa equivalent of `Flat::get` called with a `u64`: a tracked function of
/// `(SalsaTable, u64)` (salsa interns the pair, then looks up the memo under the interned id).
#[salsa::tracked(returns(clone))]
fn salsa_get(_db: &dyn salsa::Database, table: SalsaTable, id: u64) -> Value {
    let _ = (table, id);
    Arc::new([0; 64])
}

/// An interned key: the id salsa code passes around instead of a raw `u64`.
#[salsa::interned]
struct SalsaKey<'db> {
    #[returns(copy)]
    id: u64,
}

/// The salsa equivalent of `Flat::get` keyed by an interned id: a tracked function of one salsa
/// struct, whose memo salsa finds by the struct's id (no hashing).
#[salsa::tracked(returns(clone))]
fn salsa_get_interned<'db>(_db: &'db dyn salsa::Database, key: SalsaKey<'db>) -> Value {
    let _ = key;
    Arc::new([0; 64])
}

/// salsa's tracked function [`salsa_get`], called with the `u64` key (the pair interned per call).
struct SalsaU64 {
    db: salsa::DatabaseImpl,
    table: SalsaTable,
}

impl SalsaU64 {
    /// With every key computed (all in the database's first revision: every read is a hit).
    fn new() -> Self {
        let db = salsa::DatabaseImpl::new();
        let table = SalsaTable::new(&db, 0);
        for key in 0..KEYS as u64 {
            salsa_get(&db, table, key);
        }
        Self { db, table }
    }
}

impl Target for SalsaU64 {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        Some(salsa_get(&self.db, self.table, key))
    }
}

/// salsa's tracked function [`salsa_get_interned`], called with ids interned beforehand (the
/// caller holds them: reading one out of this `Vec` is part of the loop).
struct SalsaInterned<'db> {
    db: &'db salsa::DatabaseImpl,
    keys: Vec<SalsaKey<'db>>,
}

impl<'db> SalsaInterned<'db> {
    /// With every key interned and computed (in the database's first revision).
    fn new(db: &'db salsa::DatabaseImpl) -> Self {
        let keys: Vec<SalsaKey<'db>> = (0..KEYS as u64).map(|id| SalsaKey::new(db, id)).collect();
        for &key in &keys {
            salsa_get_interned(db, key);
        }
        Self { db, keys }
    }
}

impl Target for SalsaInterned<'_> {
    type Out = Value;
    #[inline]
    async fn read(&self, key: u64) -> Option<Value> {
        let key = *self.keys.get(usize::try_from(key).ok()?)?;
        Some(salsa_get_interned(self.db, key))
    }
}

/// `iters` reads of `target`, cycling through `keys`: the loop every hit benchmark times.
async fn hit_loop<T: Target>(target: &T, keys: &[u64], iters: u64) -> Duration {
    let mut at = 0;
    let start = Instant::now();
    for _ in 0..iters {
        let key = keys[at];
        at += 1;
        if at == keys.len() {
            at = 0;
        }
        black_box(target.read(black_box(key)).await);
    }
    start.elapsed()
}

/// Checks that every key hits, so the loop measures hits only.
fn check_all_hit<T: Target>(rt: &Runtime, target: &T) {
    rt.block_on(async {
        for key in 0..KEYS as u64 {
            assert!(target.read(key).await.is_some(), "key {key} is not cached");
        }
    });
}

/// A service with `get` and `small` cached for every key.
fn warm_flat(rt: &Runtime) -> Flat {
    let svc = Flat::new(1_000_000);
    rt.block_on(async {
        for key in 0..KEYS as u64 {
            svc.get(key).await;
        }
        for key in 0..KEYS as u64 {
            svc.small(key).await;
        }
    });
    assert_eq!(svc.hub.cached_len(), 2 * KEYS);
    svc
}

fn bench_hit_one<T: Target>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &Runtime,
    target: &T,
    keys: &[u64],
) {
    check_all_hit(rt, target);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(hit_loop(target, keys, iters)));
    });
}

fn hit(c: &mut Criterion) {
    let rt = runtime();
    let keys = shuffled(KEYS, 1);
    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let ofx = warm_flat(&rt);
    bench_hit_one(&mut group, "ofx", &rt, &ofx, &keys);
    bench_hit_one(&mut group, "ofx_u64", &rt, &OfxU64(ofx), &keys);
    bench_hit_one(&mut group, "salsa_u64", &rt, &SalsaU64::new(), &keys);
    let salsa_db = salsa::DatabaseImpl::new();
    let salsa_interned = SalsaInterned::new(&salsa_db);
    bench_hit_one(&mut group, "salsa_interned", &rt, &salsa_interned, &keys);
    bench_hit_one(
        &mut group,
        "rwlock_hashmap_std",
        &rt,
        &RwLockMap::<std::hash::RandomState>::new(),
        &keys,
    );
    bench_hit_one(
        &mut group,
        "rwlock_hashmap_foldhash",
        &rt,
        &RwLockMap::<foldhash::fast::RandomState>::new(),
        &keys,
    );
    bench_hit_one(&mut group, "papaya", &rt, &Papaya::new(), &keys);
    bench_hit_one(&mut group, "quick_cache", &rt, &QuickCache::new(), &keys);
    bench_hit_one(&mut group, "moka", &rt, &Moka::new(), &keys);
    group.finish();
}

/// `threads` OS threads, each with its own current-thread runtime and key order, each doing
/// `iters` reads of `target` at once. Returns the wall time of the slowest; thread start and
/// runtime creation are not timed.
fn run_threads<T: Target + Send + Sync>(
    target: &Arc<T>,
    keys: &[Vec<u64>],
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys[..threads]
            .iter()
            .map(|keys| {
                let target = Arc::clone(target);
                let barrier = &barrier;
                scope.spawn(move || {
                    let rt = runtime();
                    barrier.wait();
                    rt.block_on(hit_loop(target.as_ref(), keys, iters))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a reader thread"))
            .max()
            .unwrap_or_default()
    })
}

fn bench_threads_one<T: Target + Send + Sync>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    target: &Arc<T>,
    keys: &[Vec<u64>],
) {
    for threads in [1, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("{name}/{threads}"), |b| {
            b.iter_custom(|iters| run_threads(target, keys, threads, iters));
        });
    }
}

fn hit_threads(c: &mut Criterion) {
    let rt = runtime();
    let keys = [shuffled(KEYS, 2), shuffled(KEYS, 3)];
    let mut group = c.benchmark_group("hit_threads");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    bench_threads_one(&mut group, "ofx", &Arc::new(warm_flat(&rt)), &keys);
    let ofx_u64 = Arc::new(OfxU64(warm_flat(&rt)));
    drop(rt);
    bench_threads_one(&mut group, "ofx_u64", &ofx_u64, &keys);
    let std_map = Arc::new(RwLockMap::<std::hash::RandomState>::new());
    bench_threads_one(&mut group, "rwlock_hashmap_std", &std_map, &keys);
    bench_threads_one(&mut group, "papaya", &Arc::new(Papaya::new()), &keys);
    bench_threads_one(
        &mut group,
        "hashmap_unlocked",
        &Arc::new(Unlocked::new()),
        &keys,
    );
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Invalidation
// ---------------------------------------------------------------------------------------------

fn invalidate_leaf(c: &mut Criterion) {
    let rt = runtime();
    let svc = Graph::new(2);
    let mut group = c.benchmark_group("invalidate");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("leaf", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(LEAF_CHUNK);
                left -= n;
                rt.block_on(async {
                    for id in 0..n {
                        svc.leaf(id).await;
                    }
                });
                let start = Instant::now();
                for id in 0..n {
                    invalidate! { svc.leaf(black_box(id)); }
                }
                total += start.elapsed();
                debug_assert_eq!(svc.hub.cached_len(), 0);
            }
            total
        });
    });
    group.finish();
}

/// Times invalidating what `invalidate` names after `build` computed the `nodes` values that
/// depend on it (setup not timed). Checks that everything was invalidated.
fn bench_cascade(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: &Graph,
    nodes: u64,
    build: impl AsyncFn(&Graph),
    invalidate: impl Fn(&Graph),
) {
    let rt = runtime();
    rt.block_on(build(svc));
    assert_eq!(svc.hub.cached_len() as u64, nodes, "{name}: nodes computed");
    invalidate(svc);
    assert_eq!(
        svc.hub.cached_len(),
        0,
        "{name}: nodes left after invalidation"
    );

    group.throughput(Throughput::Elements(nodes));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(build(svc));
                let start = Instant::now();
                invalidate(svc);
                total += start.elapsed();
            }
            total
        });
    });
}

/// Nodes in a tree of `levels` levels (the root is level 0) and this branching.
fn tree_nodes(branching: u64, levels: u32) -> u64 {
    (0..levels).map(|level| branching.pow(level)).sum()
}

fn invalidate_graphs(c: &mut Criterion) {
    let mut group = c.benchmark_group("invalidate");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(1));

    const DEPENDENTS: u64 = 10_000;
    bench_cascade(
        &mut group,
        "root_10000_dependents",
        &Graph::new(2),
        DEPENDENTS + 1,
        async |svc: &Graph| {
            for id in 0..DEPENDENTS {
                svc.dependent(id).await;
            }
        },
        |svc: &Graph| invalidate! { svc.root(); },
    );

    const CHAIN: u64 = 1_000;
    bench_cascade(
        &mut group,
        "chain_1000",
        &Graph::new(2),
        CHAIN,
        // Bottom up: each link finds the one below it cached, so polls do not nest deeply.
        async |svc: &Graph| {
            for i in 0..CHAIN {
                svc.chain(i).await;
            }
        },
        |svc: &Graph| invalidate! { svc.chain(0); },
    );

    for (branching, levels) in [(2, 13), (3, 9), (4, 7)] {
        let nodes = tree_nodes(branching, levels);
        bench_cascade(
            &mut group,
            &format!("tree_b{branching}_{nodes}"),
            &Graph::new(branching),
            nodes,
            async |svc: &Graph| {
                for level in 0..levels {
                    for index in 0..svc.branching.pow(level) {
                        svc.node(level, index).await;
                    }
                }
            },
            |svc: &Graph| invalidate! { svc.node(0, 0); },
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Miss path
// ---------------------------------------------------------------------------------------------

fn miss(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("miss");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    // A new hub per measurement, big enough never to evict: compute + insert (table growth
    // included); the hub is dropped outside the timing.
    group.bench_function("empty_body_no_eviction", |b| {
        b.iter_custom(|iters| {
            let svc = Flat::new(UNBOUNDED);
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for id in 0..iters {
                    black_box(svc.constant(black_box(id)).await);
                }
                start.elapsed()
            });
            drop(svc);
            elapsed
        });
    });

    // The same with one dependency registered per miss (a hit on `base()` in the body).
    group.bench_function("one_dependency_no_eviction", |b| {
        b.iter_custom(|iters| {
            let svc = Flat::new(UNBOUNDED);
            let elapsed = rt.block_on(async {
                svc.base().await;
                let start = Instant::now();
                for id in 0..iters {
                    black_box(svc.with_dependency(black_box(id)).await);
                }
                start.elapsed()
            });
            drop(svc);
            elapsed
        });
    });

    // Steady state at a full 10,000-entry hub: every miss is paid for by an eviction (the
    // evictor runs once per 1/8 of the capacity and evicts 1/8 of it).
    let svc = Flat::new(KEYS);
    let mut next = 0_u64;
    group.bench_function("empty_body_evicting_10000", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(svc.constant(black_box(next)).await);
                    next += 1;
                }
                start.elapsed()
            })
        });
    });
    assert!(svc.hub.cached_len() <= KEYS);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = hit, hit_threads, invalidate_leaf, invalidate_graphs, miss
}
criterion_main!(benches);
