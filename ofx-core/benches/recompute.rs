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
//! Run: `cargo bench -p ofx-core --bench recompute`.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};
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

    let mut ofx: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut same: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut base: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut write: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    for _ in 0..ROUNDS {
        for (i, n) in SIZES.into_iter().enumerate() {
            ofx[i].push(recompute(&rt, &deps, n, false));
            same[i].push(recompute(&rt, &deps, n, true));
            base[i].push(baseline(&map, n));
            write[i].push(invalidation(&rt, &deps, n));
        }
    }

    let fixed = median(&mut ofx[0].clone());
    println!("recompute after a dependency changed ({ROUNDS} rounds; median, min–max in ns)");
    println!(
        "{:>7} {:>12} {:>15} {:>9} {:>12} {:>9} {:>12} {:>11}",
        "deps", "recompute", "spread", "ns/edge", "map reads", "ratio", "same leaf", "invalidate"
    );
    for (i, n) in SIZES.into_iter().enumerate() {
        let spread_ofx = spread(&ofx[i]);
        let recompute = median(&mut ofx[i]);
        let per_edge = if n > 1 {
            (recompute - fixed) / (n - 1) as f64
        } else {
            f64::NAN
        };
        let map_reads = median(&mut base[i]);
        println!(
            "{:>7} {:>12.0} {:>15} {:>9.1} {:>12.0} {:>8.1}× {:>12.0} {:>11.0}",
            n + 1,
            recompute,
            spread_ofx,
            per_edge,
            map_reads,
            recompute / map_reads,
            median(&mut same[i]),
            median(&mut write[i]),
        );
    }
}
