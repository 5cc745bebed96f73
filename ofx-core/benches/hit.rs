//! The cached hit, in interleaved rounds: every target is timed once per round, in the same
//! order, and each round's times are divided by the baseline's of the same round, so that the
//! machine's drift (this is a shared 2-core machine) moves both sides of each ratio. The table
//! gives the median ratio over the rounds and its spread (min–max).
//!
//! - **Plain hits** (one `u64` argument, 10,000 keys read in a shuffled order, as `computed.rs`'
//!   `hit` group): `Flat::get` returning an `Arc<[u8; 64]>` (the clone writes its count) and
//!   `Flat::small` returning a `u64`. Baseline: `RwLock<HashMap<u64, Arc<[u8; 64]>>>` with std's
//!   hasher, read-locked per get, the `Arc` cloned. Beside it: the same map with foldhash, a
//!   bare `papaya` map and salsa's tracked-function hits (`u64` argument beside an input, and an
//!   interned id).
//! - **Hits inside a computation** (they register a dependency): `Reads::same(n)` calls
//!   `leaf(0)` `n` times (one dependency, read again), `Reads::spread(n)` calls `leaf(i % 64)`
//!   (64 dependencies, each read again). Timed: the computation with `n = 100,000`, minus the
//!   same with `n = 0`, per read; shown with the plain hit of `leaf` measured the same way
//!   from outside any computation (the difference is what registering costs).
//! - **Two threads**: `Flat::get` on 1 and on 2 threads, each with its own key order: the
//!   scaling is 2 × (1-thread time per read) ÷ (2-thread time per read); beside it a `HashMap`
//!   never written and read without a lock, the most this machine gives two threads reading
//!   and cloning shared `Arc`s.
//!
//! Run: `cargo bench -p ofx-core --bench hit` (about a minute). `OFX_BENCH_ROUNDS` (default 7)
//! sets the rounds.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};
use tokio::runtime::Runtime;

type Value = Arc<[u8; 64]>;

const KEYS: u64 = 10_000;
/// Reads per timed loop.
const READS: u64 = 2_000_000;
/// Reads per computation in the inside-a-computation rows.
const INSIDE: u64 = 100_000;

struct Flat {
    hub: Hub,
}

impl ComputeService for Flat {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Flat {
    #[compute_method]
    async fn get(&self, id: u64) -> Value {
        let _ = id;
        Arc::new([0; 64])
    }

    #[compute_method]
    async fn small(&self, id: u64) -> u64 {
        id
    }
}

struct Reads {
    hub: Hub,
}

impl ComputeService for Reads {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Reads {
    #[compute_method]
    async fn leaf(&self, id: u64) -> u64 {
        id
    }

    /// `leaf(0)`, `n` times.
    #[compute_method]
    async fn same(&self, n: u64) -> u64 {
        let mut sum = 0;
        for _ in 0..n {
            sum += black_box(self.leaf(black_box(0)).await);
        }
        sum
    }

    /// `leaf(i % 64)` for `i` in `0..n`.
    #[compute_method]
    async fn spread(&self, n: u64) -> u64 {
        let mut sum = 0;
        for i in 0..n {
            sum += black_box(self.leaf(black_box(i % 64)).await);
        }
        sum
    }
}

#[salsa::input]
struct SalsaTable {
    #[returns(copy)]
    name: u64,
}

#[salsa::tracked(returns(clone))]
fn salsa_get(_db: &dyn salsa::Database, table: SalsaTable, id: u64) -> Value {
    let _ = (table, id);
    Arc::new([0; 64])
}

#[salsa::interned]
struct SalsaKey<'db> {
    #[returns(copy)]
    id: u64,
}

#[salsa::tracked(returns(clone))]
fn salsa_get_interned<'db>(_db: &'db dyn salsa::Database, key: SalsaKey<'db>) -> Value {
    let _ = key;
    Arc::new([0; 64])
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

/// `0..n` in a pseudo-random order fixed by `seed`.
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut state = seed;
    let mut keys: Vec<u64> = (0..n).collect();
    for i in (1..keys.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from((state >> 33) % (i as u64 + 1)).expect("an index");
        keys.swap(i, j);
    }
    keys
}

/// Nanoseconds per read of `READS` reads through `read`, cycling through `keys`.
async fn per_read<F, Fut, O>(keys: &[u64], read: F) -> f64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = O>,
{
    nanos(per_read_timed(keys, &read).await) / READS as f64
}

/// The time of `READS` reads through `read`, cycling through `keys`.
async fn per_read_timed<F, Fut, O>(keys: &[u64], read: &F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = O>,
{
    let mut at = 0;
    let start = Instant::now();
    for _ in 0..READS {
        let key = keys[at];
        at += 1;
        if at == keys.len() {
            at = 0;
        }
        black_box(read(black_box(key)).await);
    }
    start.elapsed()
}

fn nanos(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

/// One timed computation of `Reads::same(n)` (or `spread`), invalidated first.
fn inside(rt: &Runtime, reads: &Reads, spread: bool, n: u64) -> f64 {
    rt.block_on(async {
        if spread {
            invalidate! { reads.spread(n); }
            let start = Instant::now();
            black_box(reads.spread(n).await);
            nanos(start.elapsed())
        } else {
            invalidate! { reads.same(n); }
            let start = Instant::now();
            black_box(reads.same(n).await);
            nanos(start.elapsed())
        }
    })
}

/// Nanoseconds per read through `read` on each of `threads` threads at once, each thread
/// with its own current-thread runtime and key order (the loop of `per_read`).
fn threaded<F, Fut, O>(threads: usize, read: F) -> f64
where
    F: Fn(u64) -> Fut + Sync,
    Fut: Future<Output = O>,
{
    let barrier = Barrier::new(threads);
    let slowest = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (barrier, read) = (&barrier, &read);
                scope.spawn(move || {
                    let rt = runtime();
                    let keys = shuffled(KEYS, 11 + thread as u64);
                    barrier.wait();
                    rt.block_on(per_read_timed(&keys, read))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a reader thread"))
            .max()
            .unwrap_or_default()
    });
    nanos(slowest) / READS as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn row(name: &str, values: &[f64], unit: &str) {
    let mut sorted = values.to_vec();
    let mid = median(&mut sorted);
    let (low, high) = (sorted[0], sorted[sorted.len() - 1]);
    println!("{name:<56} {mid:>8.2}{unit:<3} {low:>8.2}–{high:<8.2}");
}

fn main() {
    let rounds = std::env::var("OFX_BENCH_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(7_usize)
        .max(1);
    let rt = runtime();
    let keys = shuffled(KEYS, 1);

    let flat = Flat {
        hub: Hub::builder().capacity(1_000_000).build().expect("a hub"),
    };
    let reads = Reads {
        hub: Hub::builder().capacity(1_000_000).build().expect("a hub"),
    };
    rt.block_on(async {
        for key in 0..KEYS {
            flat.get(key).await;
            flat.small(key).await;
        }
        // Read twice: the first hit after a computation goes through the node.
        for key in 0..KEYS {
            flat.get(key).await;
            flat.small(key).await;
        }
        reads.leaf(0).await;
        reads.leaf(0).await;
    });
    let std_map: RwLock<HashMap<u64, Value>> =
        RwLock::new((0..KEYS).map(|key| (key, Arc::new([0; 64]))).collect());
    let fold_map: RwLock<HashMap<u64, Value, foldhash::fast::RandomState>> =
        RwLock::new((0..KEYS).map(|key| (key, Arc::new([0; 64]))).collect());
    let papaya = papaya::HashMap::builder()
        .hasher(foldhash::fast::RandomState::default())
        .build();
    for key in 0..KEYS {
        papaya.pin().insert((key,), Arc::new([0_u8; 64]));
    }
    let unlocked: HashMap<u64, Value> = (0..KEYS).map(|key| (key, Arc::new([0; 64]))).collect();
    let salsa_db = salsa::DatabaseImpl::new();
    let salsa_table = SalsaTable::new(&salsa_db, 0);
    let salsa_keys: Vec<SalsaKey<'_>> = (0..KEYS).map(|id| SalsaKey::new(&salsa_db, id)).collect();
    for key in 0..KEYS {
        salsa_get(&salsa_db, salsa_table, key);
        salsa_get_interned(
            &salsa_db,
            salsa_keys[usize::try_from(key).expect("an index")],
        );
    }

    let names = [
        "ofx hit, Arc value (Flat::get)",
        "ofx hit, u64 value (Flat::small)",
        "RwLock<HashMap> std hasher + Arc clone (baseline)",
        "RwLock<HashMap> foldhash + Arc clone",
        "papaya HashMap + Arc clone",
        "salsa tracked fn, (input, u64) argument",
        "salsa tracked fn, interned id",
    ];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut outside = Vec::new();
    let mut same = Vec::new();
    let mut spread = Vec::new();
    let mut scaling_ofx = Vec::new();
    let mut scaling_unlocked = Vec::new();
    let mut two_threads_ratio = Vec::new();

    for _ in 0..rounds {
        let round = rt.block_on(async {
            [
                per_read(&keys, |key| flat.get(key)).await,
                per_read(&keys, |key| flat.small(key)).await,
                per_read(&keys, |key| {
                    let map = &std_map;
                    async move { map.read().expect("not poisoned").get(&key).cloned() }
                })
                .await,
                per_read(&keys, |key| {
                    let map = &fold_map;
                    async move { map.read().expect("not poisoned").get(&key).cloned() }
                })
                .await,
                per_read(&keys, |key| {
                    let papaya = &papaya;
                    async move { papaya.pin().get(&(key,)).cloned() }
                })
                .await,
                per_read(&keys, |key| {
                    let db = &salsa_db;
                    async move { salsa_get(db, salsa_table, key) }
                })
                .await,
                per_read(&keys, |key| {
                    let (db, ids) = (&salsa_db, &salsa_keys);
                    async move {
                        salsa_get_interned(db, ids[usize::try_from(key).expect("an index")])
                    }
                })
                .await,
            ]
        });
        let baseline = round[2];
        for (index, time) in round.iter().enumerate() {
            times[index].push(*time);
            ratios[index].push(time / baseline);
        }

        // Inside a computation: per read, the empty computation's cost taken out.
        let plain = rt.block_on(per_read(&[0], |key| reads.leaf(key)));
        let empty_same = inside(&rt, &reads, false, 0);
        let empty_spread = inside(&rt, &reads, true, 0);
        outside.push(plain);
        same.push((inside(&rt, &reads, false, INSIDE) - empty_same) / INSIDE as f64);
        spread.push((inside(&rt, &reads, true, INSIDE) - empty_spread) / INSIDE as f64);

        // Two threads.
        let ofx_read = |key| flat.get(key);
        let unlocked_read = |key| {
            let map = &unlocked;
            async move { map.get(&key).cloned() }
        };
        let std_read = |key| {
            let map = &std_map;
            async move { map.read().expect("not poisoned").get(&key).cloned() }
        };
        let ofx_one = threaded(1, ofx_read);
        let ofx_two = threaded(2, ofx_read);
        let unlocked_one = threaded(1, unlocked_read);
        let unlocked_two = threaded(2, unlocked_read);
        let std_two = threaded(2, std_read);
        scaling_ofx.push(2.0 * ofx_one / ofx_two);
        scaling_unlocked.push(2.0 * unlocked_one / unlocked_two);
        two_threads_ratio.push(ofx_two / std_two);
    }

    println!("hit: {rounds} interleaved rounds; median, min–max");
    println!("{:<56} {:>11} {:>17}", "per read (ns)", "median", "spread");
    for (name, values) in names.iter().zip(&times) {
        row(name, values, " ns");
    }
    println!();
    println!(
        "{:<56} {:>11} {:>17}",
        "÷ the baseline, same round", "median", "spread"
    );
    for (name, values) in names.iter().zip(&ratios) {
        row(name, values, " ×");
    }
    println!();
    println!(
        "{:<56} {:>11} {:>17}",
        "inside a computation (ns per read)", "median", "spread"
    );
    row(
        "plain hit of Reads::leaf(0), outside any computation",
        &outside,
        " ns",
    );
    row("the same dependency read again (Reads::same)", &same, " ns");
    row(
        "64 dependencies read again in turn (Reads::spread)",
        &spread,
        " ns",
    );
    let extra: Vec<f64> = same.iter().zip(&outside).map(|(a, b)| a - b).collect();
    row("  same − plain: what registering costs", &extra, " ns");
    let extra: Vec<f64> = spread.iter().zip(&outside).map(|(a, b)| a - b).collect();
    row("  spread − plain", &extra, " ns");
    println!();
    println!("{:<56} {:>11} {:>17}", "two threads", "median", "spread");
    row("ofx: 2 threads' reads/s ÷ 1 thread's", &scaling_ofx, " ×");
    row(
        "HashMap read without a lock: the same (the ceiling)",
        &scaling_unlocked,
        " ×",
    );
    row(
        "ofx ÷ RwLock<HashMap> std, both on 2 threads",
        &two_threads_ratio,
        " ×",
    );
}
