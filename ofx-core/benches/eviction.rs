//! Hit rates under eviction: how well a bounded hub keeps the values in use while a stream of
//! values read once goes through it. Counts with an `EventCounter`; prints a table on stderr;
//! times nothing, and every figure is deterministic (a fixed-seed generator, one thread).
//!
//! Each workload reads *dependents*, each computed from its own *dependencies* (which are only
//! read by their dependent's body), and after each read computes one *cold* value, never read
//! again. The hit rate is that of the dependent reads; recomputations are body runs of
//! dependents and dependencies past their first.
//!
//! - `hot_10x3_cap100`: 10 dependents over 3 dependencies each, all read after every cold
//!   value; capacity 100; 10,000 cold values.
//! - `zipf_50x10_cap1000`: 50 dependents over 10 dependencies each (550 values in use), one
//!   read per step chosen by a Zipf law (s = 1); capacity 1,000; 200,000 steps.
//! - `zipf_200x10_cap1000`: the same with 200 dependents (2,200 values: more than the
//!   capacity, so some in use must go).
//!
//! Run: `cargo bench -p ofx-core --bench eviction`.

use ofx_core::{ComputeService, EventCounter, Hub, compute_method};

/// Dependencies per dependent.
struct Catalog {
    hub: Hub,
    fan_in: u64,
}

impl ComputeService for Catalog {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Catalog {
    /// A dependency: read only by `dependent(id)`.
    #[compute_method]
    async fn dependency(&self, id: u64, part: u64) -> u64 {
        id * 31 + part
    }

    /// Computed from its `fan_in` dependencies.
    #[compute_method]
    async fn dependent(&self, id: u64) -> u64 {
        let mut sum = 0;
        for part in 0..self.fan_in {
            sum += self.dependency(id, part).await;
        }
        sum
    }

    /// A value read once.
    #[compute_method]
    async fn cold(&self, id: u64) -> u64 {
        id
    }
}

/// A workload and what it measured.
struct Workload {
    name: &'static str,
    capacity: usize,
    dependents: u64,
    fan_in: u64,
    steps: u64,
    /// Which dependents a step reads: every one, or one drawn by a Zipf law.
    all_each_step: bool,
}

struct Figures {
    reads: u64,
    hits: u64,
    recomputed_dependents: u64,
    recomputed_dependencies: u64,
    evicted: u64,
    final_len: usize,
}

/// splitmix64: a fixed, portable sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// The cumulative distribution of a Zipf law of exponent 1 over `n` ranks.
#[allow(clippy::cast_precision_loss)]
fn zipf_cdf(n: u64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|weight| {
            acc += weight / total;
            acc
        })
        .collect()
}

fn run(workload: &Workload) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let events = EventCounter::new();
    let catalog = Catalog {
        hub: Hub::builder()
            .capacity(workload.capacity)
            .event_listener(events.clone())
            .build()
            .expect("a hub"),
        fan_in: workload.fan_in,
    };
    let cdf = zipf_cdf(workload.dependents);
    let mut rng = Rng(7);
    let mut reads = 0;
    rt.block_on(async {
        // Warm: every dependent computed once (not counted as reads).
        for id in 0..workload.dependents {
            catalog.dependent(id).await;
        }
        for step in 0..workload.steps {
            if workload.all_each_step {
                for id in 0..workload.dependents {
                    catalog.dependent(id).await;
                    reads += 1;
                }
            } else {
                let draw = rng.unit();
                let id = cdf.partition_point(|&acc| acc < draw) as u64;
                catalog.dependent(id.min(workload.dependents - 1)).await;
                reads += 1;
            }
            catalog.cold(step).await;
        }
    });
    Figures {
        reads,
        hits: events.cache_hits("Catalog::dependent"),
        recomputed_dependents: events.computed("Catalog::dependent") - workload.dependents,
        recomputed_dependencies: events.computed("Catalog::dependency")
            - workload.dependents * workload.fan_in,
        evicted: events.count(ofx_core::HubEventKind::Evicted),
        final_len: catalog.hub.cached_len(),
    }
}

#[allow(clippy::print_stderr, clippy::cast_precision_loss)] // the report of this benchmark
fn main() {
    let workloads = [
        Workload {
            name: "hot_10x3_cap100",
            capacity: 100,
            dependents: 10,
            fan_in: 3,
            steps: 10_000,
            all_each_step: true,
        },
        Workload {
            name: "zipf_50x10_cap1000",
            capacity: 1_000,
            dependents: 50,
            fan_in: 10,
            steps: 200_000,
            all_each_step: false,
        },
        Workload {
            name: "zipf_200x10_cap1000",
            capacity: 1_000,
            dependents: 200,
            fan_in: 10,
            steps: 200_000,
            all_each_step: false,
        },
    ];
    eprintln!(
        "{:<22} {:>9} {:>9} {:>13} {:>15} {:>9} {:>6}",
        "workload", "reads", "hit rate", "dependents", "dependencies", "evicted", "len"
    );
    eprintln!(
        "{:<22} {:>9} {:>9} {:>13} {:>15} {:>9} {:>6}",
        "", "", "", "recomputed", "recomputed", "", ""
    );
    for workload in &workloads {
        let figures = run(workload);
        assert!(figures.final_len <= workload.capacity);
        eprintln!(
            "{:<22} {:>9} {:>8.2}% {:>13} {:>15} {:>9} {:>6}",
            workload.name,
            figures.reads,
            100.0 * figures.hits as f64 / figures.reads as f64,
            figures.recomputed_dependents,
            figures.recomputed_dependencies,
            figures.evicted,
            figures.final_len,
        );
    }
}
