//! Metrics (through the [`metrics`] facade) and tracing spans: see the README's "Metrics and
//! tracing" section for every metric and span of ofx.
//!
//! ofx records its metrics with the `metrics` crate and installs no recorder: the application
//! picks the exporter (Prometheus, StatsD, ...) and installs it; without one, every call is a
//! no-op. The names below are the metrics ofx-core records.
//!
//! The compute-method counters are kept by each method's
//! [descriptor](crate::computed::ComputeMethodDescriptor), which is process-wide (shared by
//! every hub of the process): they are labelled with the method only, and count the calls of
//! every hub. A hub publishes them for the services added to it
//! ([`Hub::add_service`](crate::Hub::add_service)), with absolute values, every
//! [`HubBuilder::metrics_interval`](crate::HubBuilder::metrics_interval) and on
//! [`Hub::record_metrics`](crate::Hub::record_metrics). What is per hub (its cached entries, its
//! capacity) is labelled with `host`, the hub's host id.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::computed::ComputeMethodDescriptor;
use crate::{Error, Hub, WeakHub};

/// Counter `{method}`: calls of a compute method (hits, waits and computations), per process.
pub const COMPUTE_CALLS: &str = "ofx_compute_calls_total";
/// Counter `{method}`: calls served from the cache (calls that neither computed nor waited).
pub const COMPUTE_HITS: &str = "ofx_compute_hits_total";
/// Counter `{method}`: calls that computed the value (the method's body ran).
pub const COMPUTE_MISSES: &str = "ofx_compute_misses_total";
/// Counter `{method}`: calls that waited for the same computation in flight.
pub const COMPUTE_WAITS: &str = "ofx_compute_waits_total";
/// Counter `{method}`: values invalidated (evictions excluded).
pub const COMPUTE_INVALIDATIONS: &str = "ofx_compute_invalidations_total";
/// Counter `{method}`: values evicted to keep a cache within its capacity.
pub const COMPUTE_EVICTIONS: &str = "ofx_compute_evictions_total";
/// Gauge `{host}`: values cached by the hub now (consistent or computing).
pub const COMPUTE_CACHED_ENTRIES: &str = "ofx_compute_cached_entries";
/// Gauge `{host}`: the most values the hub caches.
pub const COMPUTE_CAPACITY: &str = "ofx_compute_capacity";
/// Counter `{command, outcome}`: outermost commands run on this process, by outcome (`ok`,
/// `error`, `in_doubt`; `retried` counts the tries that failed for a transient reason and ran
/// again).
pub const COMMANDS: &str = "ofx_commands_total";
/// Histogram `{command, outcome}`: how long outermost commands took, in seconds, from the call
/// to its return (retries and the local invalidation pass included).
pub const COMMAND_DURATION: &str = "ofx_command_duration_seconds";
/// Counter `{command, outcome}`: nested commands (called from a handler), `ok` or `error`.
pub const NESTED_COMMANDS: &str = "ofx_nested_commands_total";
/// Counter `{command}`: operations of other hosts replayed here (their invalidation pass ran).
pub const OPERATIONS_REPLAYED: &str = "ofx_operations_replayed_total";

/// How often a hub publishes its compute metrics unless told otherwise.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes the compute metrics of `hub`: the counters of `methods` (absolute values) and the
/// hub's gauges.
pub(crate) fn record_hub(hub: &Hub, methods: &[&'static ComputeMethodDescriptor]) {
    for method in methods {
        let name = method.name();
        metrics::counter!(COMPUTE_CALLS, "method" => name).absolute(method.calls());
        metrics::counter!(COMPUTE_HITS, "method" => name).absolute(method.hits());
        metrics::counter!(COMPUTE_MISSES, "method" => name).absolute(method.computations());
        metrics::counter!(COMPUTE_WAITS, "method" => name).absolute(method.waits());
        metrics::counter!(COMPUTE_INVALIDATIONS, "method" => name).absolute(method.invalidations());
        metrics::counter!(COMPUTE_EVICTIONS, "method" => name).absolute(method.evictions());
    }
    let host = hub.host_id().to_string();
    metrics::gauge!(COMPUTE_CACHED_ENTRIES, "host" => host.clone()).set(count(hub.cached_len()));
    metrics::gauge!(COMPUTE_CAPACITY, "host" => host).set(count(hub.capacity()));
}

#[allow(clippy::cast_precision_loss)] // a gauge is an f64: counts past 2^53 are approximate
fn count(value: usize) -> f64 {
    value as f64
}

/// Adds `methods` to the hub's list (each once).
pub(crate) fn remember(
    list: &Mutex<Vec<&'static ComputeMethodDescriptor>>,
    methods: Vec<&'static ComputeMethodDescriptor>,
) {
    let mut list = list.lock().unwrap_or_else(PoisonError::into_inner);
    for method in methods {
        if !list.iter().any(|known| std::ptr::eq(*known, method)) {
            list.push(method);
        }
    }
}

/// Starts the task that publishes the hub's compute metrics every `interval`, if a tokio
/// runtime runs; it stops with the hub.
pub(crate) fn start_publisher(hub: &Hub, interval: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(
            "no tokio runtime: the hub's metrics are published on `record_metrics` only"
        );
        return;
    };
    let weak: WeakHub = hub.downgrade();
    let stop = hub.shutdown_token();
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(hub) = weak.upgrade() else { return };
            hub.record_metrics();
        }
    });
}

/// The outcome label of a command's result.
pub(crate) fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Error::CommitInDoubt { .. }) => "in_doubt",
        Err(_) => "error",
    }
}

/// Records an outermost command that ended with `outcome` after `started`.
pub(crate) fn command_ended(command: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!(COMMANDS, "command" => command, "outcome" => outcome).increment(1);
    metrics::histogram!(COMMAND_DURATION, "command" => command, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Records a try of an outermost command that failed for a transient reason and runs again.
pub(crate) fn command_retried(command: &'static str) {
    metrics::counter!(COMMANDS, "command" => command, "outcome" => "retried").increment(1);
}

/// Records a nested command that ended with `outcome`.
pub(crate) fn nested_command_ended(command: &'static str, outcome: &'static str) {
    metrics::counter!(NESTED_COMMANDS, "command" => command, "outcome" => outcome).increment(1);
}

/// Records an operation of another host replayed here.
pub(crate) fn operation_replayed(command: &str) {
    metrics::counter!(OPERATIONS_REPLAYED, "command" => command.to_owned()).increment(1);
}
