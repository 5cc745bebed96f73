//! Recomputation after a dependency changed, by the number of dependencies the computation
//! records: `sum(n)` reads an `epoch()` value and `n` cached leaves; invalidating `epoch()`
//! invalidates `sum(n)` (not the leaves), and the next call recomputes it, recording `n + 1`
//! dependencies (each a cached hit).
//!
//! The baseline is the same loop without dependency tracking: `n` reads of a
//! `RwLock<HashMap<u64, u64>>`. Each size is measured in 5 interleaved rounds; the table gives
//! the median per round, the spread (min–max) and the cost per recorded edge:
//! `(recompute(n) - recompute(1)) / n`, the fixed cost taken out.
//!
//! Also measured: the write side, `invalidate!` of `epoch()` with `sum(n)` cached (it walks to
//! one dependent), and a computation that reads the same leaf `n` times (one edge).
//!
//! Side by side, in the same rounds: salsa (the incremental-computation crate of rust-analyzer, a
//! dev-dependency). Its `sum(n)` is a tracked function keyed by `(epoch, n)` that reads an
//! `#[salsa::input]` epoch and `n` memoized leaves, `leaf(key)`, a tracked function of a leaf key
//! (an input created once, of high durability: never set again); so it also records `n + 1`
//! dependencies, each leaf a memo hit that salsa verifies by durability in the new revision
//! (checked: setting the epoch re-executes `sum` alone). The write side sets the epoch to a new
//! value (a new revision: salsa walks nothing then; it verifies dependencies at the next read),
//! timed like `invalidate`; then `sum(n)` is called and timed. The salsa columns are computed as
//! ofx's: median and spread, ns/edge with `recompute(1)` taken out, and ofx ÷ salsa (below 1:
//! ofx is faster). Not quite the same: ofx's `epoch()` is a compute method recomputed on each
//! `sum` (a miss), salsa's an input read; ofx's leaves are found by hashing `id`, salsa's by the
//! key's id, read out of a `Vec` the database holds (untracked data, set before any query).
//!
//! Run: `cargo bench -p ofx-core --bench recompute`.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};
use salsa::{Durability, Setter};
use tokio::runtime::Runtime;

const SIZES: [u64; 6] = [1, 10, 100, 1_000, 3_000, 10_000];
const ROUNDS: usize = 5;
/// Edges recorded per measurement (repetitions = this / n, at least 10).
const EDGES_PER_MEASUREMENT: u64 = 200_000;

struct Deps {
    hub: Hub,
}

impl ComputeService for Deps {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Deps {
    #[compute_method]
    async fn epoch(&self) -> u64 {
        1
    }

    #[compute_method]
    async fn leaf(&self, id: u64) -> u64 {
        id
    }

    /// Reads `epoch()` and leaves `0..n`.
    #[compute_method]
    async fn sum(&self, n: u64) -> u64 {
        let mut total = self.epoch().await;
        for id in 0..n {
            total = total.wrapping_add(self.leaf(id).await);
        }
        total
    }

    /// Reads `epoch()` and leaf 0, `n` times.
    #[compute_method]
    async fn same(&self, n: u64) -> u64 {
        let mut total = self.epoch().await;
        for _ in 0..n {
            total = total.wrapping_add(self.leaf(0).await);
        }
        total
    }
}

/// salsa's epoch: an input, set to a new value before each recomputation.
#[salsa::input]
struct Epoch {
    #[returns(copy)]
    value: u64,
}

/// The key of one salsa leaf: a high-durability input that is never set again, so a leaf's memo
/// is verified by its durability alone when the (low-durability) epoch changes.
#[salsa::input]
struct LeafKey {
    #[returns(copy)]
    id: u64,
}

/// What salsa's `sum` needs besides tracked reads: the leaf keys, created once (untracked data
/// of the database, as ofx's `sum` computes `leaf(id)`'s key from `id` without a tracked read).
#[salsa::db]
trait LeafDb: salsa::Database {
    fn leaf_key(&self, id: u64) -> LeafKey;
}

#[salsa::db]
#[derive(Clone, Default)]
struct SalsaDb {
    storage: salsa::Storage<Self>,
    leaves: Vec<LeafKey>,
}

#[salsa::db]
impl salsa::Database for SalsaDb {}

#[salsa::db]
impl LeafDb for SalsaDb {
    fn leaf_key(&self, id: u64) -> LeafKey {
        self.leaves[usize::try_from(id).expect("an index fits usize")]
    }
}

/// salsa's `leaf(id)`: a tracked function of its key.
#[salsa::tracked(returns(copy))]
fn salsa_leaf(db: &dyn LeafDb, key: LeafKey) -> u64 {
    key.id(db)
}

/// salsa's `sum(n)`: reads the epoch and leaves `0..n` (`n + 1` dependencies). Keyed by
/// `(epoch, n)`, which salsa interns at the call (outside the query: no dependency).
#[salsa::tracked(returns(copy))]
fn salsa_sum(db: &dyn LeafDb, epoch: Epoch, n: u64) -> u64 {
    let mut total = epoch.value(db);
    for id in 0..n {
        total = total.wrapping_add(salsa_leaf(db, db.leaf_key(id)));
    }
    total
}

/// A salsa database with `largest` leaf keys, the epoch, and the last value it was set to.
struct Salsa {
    db: SalsaDb,
    epoch: Epoch,
    value: u64,
}

impl Salsa {
    fn new(largest: u64) -> Self {
        let mut db = SalsaDb::default();
        db.leaves = (0..largest)
            .map(|id| LeafKey::builder(id).durability(Durability::HIGH).new(&db))
            .collect();
        let epoch = Epoch::new(&db, 1);
        Self {
            db,
            epoch,
            value: 1,
        }
    }

    /// Sets the epoch to a new value: a new revision, in which every `sum` is out of date.
    fn set_epoch(&mut self) {
        self.value += 1;
        self.epoch.set_value(&mut self.db).to(self.value);
    }

    fn sum(&self, n: u64) -> u64 {
        salsa_sum(&self.db, self.epoch, n)
    }
}

/// Nanoseconds per salsa recomputation of `sum(n)` after the epoch was set.
fn salsa_recompute(salsa: &mut Salsa, n: u64) -> f64 {
    let reps = repetitions(n);
    let mut total = Duration::ZERO;
    for _ in 0..reps {
        salsa.set_epoch();
        let start = Instant::now();
        black_box(salsa.sum(black_box(n)));
        total += start.elapsed();
    }
    total.as_nanos() as f64 / reps as f64
}

/// Nanoseconds per setting of salsa's epoch with `sum(n)` computed in the current revision.
fn salsa_write(salsa: &mut Salsa, n: u64) -> f64 {
    let reps = repetitions(n).min(2_000);
    let mut total = Duration::ZERO;
    for _ in 0..reps {
        black_box(salsa.sum(n));
        let start = Instant::now();
        salsa.set_epoch();
        total += start.elapsed();
    }
    total.as_nanos() as f64 / reps as f64
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

fn repetitions(n: u64) -> u64 {
    (EDGES_PER_MEASUREMENT / n).max(10)
}

/// Nanoseconds per recomputation of `sum(n)` (or `same(n)`).
fn recompute(rt: &Runtime, deps: &Deps, n: u64, same: bool) -> f64 {
    rt.block_on(async {
        let reps = repetitions(n);
        let mut total = Duration::ZERO;
        for _ in 0..reps {
            invalidate! { deps.epoch(); }
            let start = Instant::now();
            if same {
                black_box(deps.same(black_box(n)).await);
            } else {
                black_box(deps.sum(black_box(n)).await);
            }
            total += start.elapsed();
        }
        total.as_nanos() as f64 / reps as f64
    })
}

/// Nanoseconds per `invalidate!` of `epoch()` with `sum(n)` cached.
fn invalidation(rt: &Runtime, deps: &Deps, n: u64) -> f64 {
    rt.block_on(async {
        let reps = repetitions(n).min(2_000);
        let mut total = Duration::ZERO;
        for _ in 0..reps {
            black_box(deps.sum(n).await);
            let start = Instant::now();
            invalidate! { deps.epoch(); }
            total += start.elapsed();
        }
        total.as_nanos() as f64 / reps as f64
    })
}

/// Nanoseconds per loop of `n` reads of the baseline map.
fn baseline(map: &RwLock<HashMap<u64, u64>>, n: u64) -> f64 {
    let reps = repetitions(n);
    let start = Instant::now();
    for _ in 0..reps {
        let mut total = 1_u64;
        for id in 0..n {
            let guard = map.read().expect("not poisoned");
            total = total.wrapping_add(*guard.get(&black_box(id)).expect("filled"));
        }
        black_box(total);
    }
    start.elapsed().as_nanos() as f64 / reps as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let rt = runtime();
    let deps = Deps {
        hub: Hub::builder().capacity(1_000_000).build().expect("a hub"),
    };
    let largest = *SIZES.last().expect("sizes");
    let map: RwLock<HashMap<u64, u64>> = RwLock::new((0..largest).map(|id| (id, id)).collect());
    rt.block_on(async {
        for n in SIZES {
            black_box(deps.sum(n).await);
            black_box(deps.same(n).await);
        }
    });
    let mut salsa = Salsa::new(largest);
    for n in SIZES {
        let expected = rt.block_on(deps.sum(n));
        assert_eq!(salsa.sum(n), expected, "salsa's sum({n}) is ofx's");
    }

    let mut ofx: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut same: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut base: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut write: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut salsa_sums: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut salsa_writes: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    for _ in 0..ROUNDS {
        for (i, n) in SIZES.into_iter().enumerate() {
            ofx[i].push(recompute(&rt, &deps, n, false));
            same[i].push(recompute(&rt, &deps, n, true));
            base[i].push(baseline(&map, n));
            write[i].push(invalidation(&rt, &deps, n));
            salsa_sums[i].push(salsa_recompute(&mut salsa, n));
            salsa_writes[i].push(salsa_write(&mut salsa, n));
        }
    }

    let fixed = median(&mut ofx[0].clone());
    let salsa_fixed = median(&mut salsa_sums[0].clone());
    let per_edge = |recompute: f64, fixed: f64, n: u64| {
        if n > 1 {
            (recompute - fixed) / (n - 1) as f64
        } else {
            f64::NAN
        }
    };
    println!("recompute after a dependency changed ({ROUNDS} rounds; median, min–max in ns)");
    println!(
        "{:>7} {:>12} {:>15} {:>9} {:>12} {:>9} {:>12} {:>11} {:>12} {:>15} {:>9} {:>10} {:>11}",
        "deps",
        "recompute",
        "spread",
        "ns/edge",
        "map reads",
        "ratio",
        "same leaf",
        "invalidate",
        "salsa",
        "salsa spread",
        "ns/edge",
        "ofx÷salsa",
        "salsa set"
    );
    for (i, n) in SIZES.into_iter().enumerate() {
        let spread_ofx = spread(&ofx[i]);
        let recompute = median(&mut ofx[i]);
        let map_reads = median(&mut base[i]);
        let spread_salsa = spread(&salsa_sums[i]);
        let salsa_recompute = median(&mut salsa_sums[i]);
        println!(
            "{:>7} {:>12.0} {:>15} {:>9.1} {:>12.0} {:>8.1}× {:>12.0} {:>11.0} {:>12.0} {:>15} {:>9.1} {:>9.2}× {:>11.0}",
            n + 1,
            recompute,
            spread_ofx,
            per_edge(recompute, fixed, n),
            map_reads,
            recompute / map_reads,
            median(&mut same[i]),
            median(&mut write[i]),
            salsa_recompute,
            spread_salsa,
            per_edge(salsa_recompute, salsa_fixed, n),
            recompute / salsa_recompute,
            median(&mut salsa_writes[i]),
        );
    }
}
