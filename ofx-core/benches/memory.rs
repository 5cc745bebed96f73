//! Memory cost of cached compute method results: heap bytes per cached entry, counted by a
//! counting global allocator (`cap::Cap` around the system allocator; it counts requested
//! bytes, not the allocator's own rounding and headers).
//!
//! Caches 100,000 results of a method returning `u64` on a fresh hub and divides the heap
//! growth by the count; the same for bare maps, to show where the bytes go. Prints a table on
//! stderr; times nothing.
//!
//! Run: `cargo bench -p ofx-core --bench memory`.

use std::alloc::System;
use std::collections::HashMap;
use std::sync::Arc;

use cap::Cap;
use ofx_core::{ComputeService, Hub, compute_method};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Entries cached per measurement.
const ENTRIES: u64 = 100_000;

struct Svc {
    hub: Hub,
}

impl ComputeService for Svc {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Svc {
    #[compute_method]
    async fn value(&self, id: u64) -> u64 {
        id
    }

    #[compute_method]
    async fn base(&self) -> u64 {
        0
    }

    /// A value with one dependency (`base()`).
    #[compute_method]
    async fn dependent(&self, id: u64) -> u64 {
        self.base().await + id
    }
}

/// Heap growth in bytes per entry while `fill` runs; `fill` returns what it built, which is
/// dropped after the second reading.
fn per_entry<R>(entries: u64, fill: impl FnOnce() -> R) -> f64 {
    let before = ALLOCATOR.allocated();
    let built = std::hint::black_box(fill());
    let after = ALLOCATOR.allocated();
    drop(built);
    // Byte counts of this size are exact in an f64.
    #[allow(clippy::cast_precision_loss)]
    let bytes = after.saturating_sub(before) as f64 / entries as f64;
    bytes
}

/// Bytes per entry of `count` cached results of `Svc::value` (or `Svc::dependent` when
/// `with_dependency`), on a hub whose method table already exists.
fn ofx_per_entry(count: u64, with_dependency: bool) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let svc = Svc {
        // Never evicts.
        hub: Hub::builder().capacity(usize::MAX).build().expect("a hub"),
    };
    // Create the tables (and the root) before counting.
    rt.block_on(async {
        svc.value(u64::MAX).await;
        svc.dependent(u64::MAX).await;
    });
    let before = svc.hub.cached_len();
    let bytes = per_entry(count, || {
        rt.block_on(async {
            for id in 0..count {
                if with_dependency {
                    svc.dependent(id).await;
                } else {
                    svc.value(id).await;
                }
            }
        });
    });
    assert_eq!(svc.hub.cached_len() - before, count as usize);
    bytes
}

#[allow(clippy::print_stderr)] // the report of this benchmark
fn main() {
    let value = std::mem::size_of::<u64>();
    eprintln!("memory: heap bytes per cached entry (value type u64, {value} B)");
    eprintln!("{:<48} {:>10} {:>12}", "what", "B/entry", "B/entry-8");
    let row = |name: &str, bytes: f64| {
        #[allow(clippy::cast_precision_loss)]
        let beyond = bytes - value as f64;
        eprintln!("{name:<48} {bytes:>10.1} {beyond:>12.1}");
    };

    for count in [ENTRIES, 10_000, 1_000_000] {
        row(
            &format!("ofx compute method -> u64, {count} entries"),
            ofx_per_entry(count, false),
        );
    }
    let with_dependency = ofx_per_entry(ENTRIES, true);
    row(
        &format!("ofx, each with 1 dependency, {ENTRIES} entries"),
        with_dependency,
    );
    // The edge: both of its sides (the dependent's list and the dependency's), over the same
    // entries without one (target: at most 48 bytes).
    let without = ofx_per_entry(ENTRIES, false);
    eprintln!(
        "{:<48} {:>10.1}",
        "ofx, per dependency edge (the two rows above)",
        with_dependency - without
    );

    // Baselines, for where the bytes go.
    row(
        "papaya HashMap<(u64,), Arc<u64>> (foldhash)",
        per_entry(ENTRIES, || {
            let map = papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build();
            for id in 0..ENTRIES {
                map.pin().insert((id,), Arc::new(id));
            }
            map
        }),
    );
    row(
        "std HashMap<u64, Arc<u64>>",
        per_entry(ENTRIES, || {
            (0..ENTRIES)
                .map(|id| (id, Arc::new(id)))
                .collect::<HashMap<_, _>>()
        }),
    );
    row(
        "std HashMap<u64, u64>",
        per_entry(ENTRIES, || {
            (0..ENTRIES).map(|id| (id, id)).collect::<HashMap<_, _>>()
        }),
    );
}
