//! The cost of the command pipeline: an in-memory command through every filter, its operation
//! and its invalidation pass, against the same work done by a direct call, in the same run.
//!
//! Both loops run inside one `block_on` per measurement (`iter_custom`). The direct call does
//! what the handler does (update a counter, set an operation item) and invalidates the same
//! compute method; the difference is what the pipeline adds per command.
//!
//! Run: `cargo bench -p ofx-core --bench commands`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, OperationItem, OperationItems, command_handler,
    compute_method, invalidate, service,
};
use serde::{Deserialize, Serialize};

/// Adds to a counter.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "bench.add")]
struct Add {
    key: u64,
    amount: u64,
}

/// The counter's previous value, for the invalidation branch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Previous(u64);

impl OperationItem for Previous {
    const KEY: &'static str = "bench.previous";
}

/// The error type of the handler.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct BenchError(#[from] ofx_core::Error);

struct Counters {
    hub: Hub,
    total: AtomicU64,
}

impl ComputeService for Counters {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Counters {
    #[compute_method]
    async fn value(&self, key: u64) -> u64 {
        key + self.total.load(Ordering::Relaxed)
    }

    #[command_handler]
    async fn add(&self, command: Add, ctx: &CommandContext) -> Result<u64, BenchError> {
        invalidate! {
            self.value(command.key);
        }
        let previous = self.total.fetch_add(command.amount, Ordering::Relaxed);
        ctx.items().set(Previous(previous))?;
        Ok(previous + command.amount)
    }

    /// The handler's work without the pipeline: the baseline.
    async fn add_directly(&self, command: Add, items: &OperationItems) -> Result<u64, BenchError> {
        let previous = self.total.fetch_add(command.amount, Ordering::Relaxed);
        items.set(Previous(previous))?;
        invalidate! {
            self.value(command.key);
        }
        Ok(previous + command.amount)
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let hub = Hub::new().expect("a hub");
    let counters = Arc::new(Counters {
        hub: hub.clone(),
        total: AtomicU64::new(0),
    });
    hub.add_service(&counters).expect("the service is added");
    let commander = hub.commander();

    let mut group = c.benchmark_group("command");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("direct_call", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for key in 0..iterations {
                    let items = OperationItems::new();
                    let output = counters
                        .add_directly(
                            Add {
                                key: key % 64,
                                amount: 1,
                            },
                            &items,
                        )
                        .await;
                    black_box(output.expect("the command succeeds"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("pipeline", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for key in 0..iterations {
                    let output = commander
                        .call(Add {
                            key: key % 64,
                            amount: 1,
                        })
                        .await;
                    black_box(output.expect("the command succeeds"));
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
