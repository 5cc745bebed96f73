//! Metrics: what a hub publishes through the `metrics` facade after a known sequence of calls,
//! commands and invalidations (the spans are tested in `spans.rs`).
//!
//! Each test records into a recorder of its own, installed for its thread
//! (`metrics::set_default_local_recorder`) on a current-thread runtime, so that the tests of this
//! binary, which run in parallel, do not see each other's metrics; each uses service and
//! command types of its own, since a compute method's counters are per process.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ofx_core::{
    Command, CommandContext, ComputeMethod, ComputeService, EventCounter, Hub, command_handler,
    compute_method, invalidate, service, telemetry,
};
use serde::{Deserialize, Serialize};

/// What a recorder held at one snapshot (a snapshot resets the recorder's values: take one,
/// then read it).
struct Metrics(Vec<(CompositeKey, DebugValue)>);

impl Metrics {
    fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    /// The value of the metric `name` with exactly these labels, if recorded.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(key, _)| {
                let key = key.key();
                let mut recorded: Vec<(&str, &str)> = key
                    .labels()
                    .map(|label| (label.key(), label.value()))
                    .collect();
                recorded.sort_unstable();
                let mut wanted = labels.to_vec();
                wanted.sort_unstable();
                key.name() == name && recorded == wanted
            })
            .map(|(_, value)| value)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(value)) => *value,
            other => panic!("{name} {labels:?} is no counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            Some(DebugValue::Gauge(value)) => value.into_inner(),
            other => panic!("{name} {labels:?} is no gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.value(name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            other => panic!("{name} {labels:?} is no histogram: {other:?}"),
        }
    }
}

// ===== compute methods =====

struct Prices {
    hub: Hub,
}

impl ComputeService for Prices {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Prices {
    #[compute_method]
    async fn base(&self, id: u64) -> u64 {
        id * 10
    }

    #[compute_method]
    async fn total(&self, id: u64) -> u64 {
        self.base(id).await + 1
    }
}

#[tokio::test]
async fn compute_counters_and_gauges_after_a_known_sequence() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let events = EventCounter::new();
    let hub = Hub::builder()
        .metrics_interval(None)
        .event_listener(events.clone())
        .build()
        .unwrap();
    let prices = Arc::new(Prices { hub: hub.clone() });
    hub.add_service(&prices).unwrap();

    prices.total(1).await; // total(1) and base(1) computed
    prices.total(1).await; // a hit
    prices.base(1).await; // a hit
    prices.base(2).await; // computed
    invalidate! { prices.base(1); } // base(1) and total(1) invalidated
    prices.total(1).await; // both computed again
    hub.record_metrics();
    let metrics = Metrics::take(&snapshotter);

    let base = [("method", Prices::base_method().descriptor().name())];
    let total = [("method", Prices::total_method().descriptor().name())];
    assert!(base[0].1.ends_with("Prices::base"), "{base:?}");
    // base(1) for total(1), base(1) (a hit), base(2), base(1) for total(1) again.
    assert_eq!(metrics.counter(telemetry::COMPUTE_CALLS, &base), 4);
    assert_eq!(metrics.counter(telemetry::COMPUTE_MISSES, &base), 3);
    assert_eq!(metrics.counter(telemetry::COMPUTE_HITS, &base), 1);
    assert_eq!(metrics.counter(telemetry::COMPUTE_INVALIDATIONS, &base), 1);
    assert_eq!(metrics.counter(telemetry::COMPUTE_EVICTIONS, &base), 0);
    assert_eq!(metrics.counter(telemetry::COMPUTE_CALLS, &total), 3);
    assert_eq!(metrics.counter(telemetry::COMPUTE_MISSES, &total), 2);
    assert_eq!(metrics.counter(telemetry::COMPUTE_HITS, &total), 1);
    assert_eq!(metrics.counter(telemetry::COMPUTE_INVALIDATIONS, &total), 1);
    assert_eq!(
        events.invalidated("Prices::total"),
        1,
        "as the hub's events say"
    );

    let host = hub.host_id().to_string();
    let host = [("host", host.as_str())];
    // base(1), base(2), total(1).
    assert_eq!(metrics.gauge(telemetry::COMPUTE_CACHED_ENTRIES, &host), 3.0);
    assert_eq!(
        metrics.gauge(telemetry::COMPUTE_CAPACITY, &host),
        ofx_core::DEFAULT_CAPACITY as f64
    );
}

struct Cold {
    hub: Hub,
}

impl ComputeService for Cold {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Cold {
    #[compute_method]
    async fn value(&self, id: u64) -> u64 {
        id
    }
}

#[tokio::test]
async fn evictions_are_counted_and_the_background_task_publishes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let events = EventCounter::new();
    let hub = Hub::builder()
        .capacity(16)
        .event_listener(events.clone())
        .metrics_interval(std::time::Duration::from_millis(10))
        .build()
        .unwrap();
    let cold = Arc::new(Cold { hub: hub.clone() });
    hub.add_service(&cold).unwrap();
    for id in 0..40 {
        cold.value(id).await;
    }
    let descriptor = Cold::value_method().descriptor();
    let method = [("method", descriptor.name())];
    let cached = hub.cached_len() as u64;
    assert!(cached <= 16);
    // Nothing invalidated them: each value computed is cached or was evicted.
    let evicted = 40 - cached;
    assert_eq!(descriptor.evictions(), evicted);
    assert_eq!(events.evicted("Cold::value"), evicted);
    assert_eq!(descriptor.invalidations(), 0);

    // The hub's task publishes them (polling with a deadline: it runs every 10 ms).
    let host = hub.host_id().to_string();
    let host = [("host", host.as_str())];
    let metrics = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let metrics = Metrics::take(&snapshotter);
            if metrics
                .value(telemetry::COMPUTE_EVICTIONS, &method)
                .is_some()
                && metrics
                    .value(telemetry::COMPUTE_CACHED_ENTRIES, &host)
                    .is_some()
            {
                break metrics;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the hub's task published the compute metrics");
    assert_eq!(
        metrics.counter(telemetry::COMPUTE_EVICTIONS, &method),
        evicted
    );
    assert_eq!(
        metrics.gauge(telemetry::COMPUTE_CACHED_ENTRIES, &host),
        cached as f64
    );
    assert_eq!(metrics.counter(telemetry::COMPUTE_MISSES, &method), 40);
    assert_eq!(metrics.counter(telemetry::COMPUTE_HITS, &method), 0);
}

// ===== commands =====

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "telemetry_test.bump")]
struct Bump {
    fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "telemetry_test.outer")]
struct Outer;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

struct Bumps {
    hub: Hub,
    value: AtomicU64,
}

impl ComputeService for Bumps {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Bumps {
    #[compute_method]
    async fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    #[command_handler]
    async fn bump(&self, command: Bump, _ctx: &CommandContext) -> Result<u64, Refused> {
        invalidate! {
            self.get();
        }
        if command.fail {
            return Err(Refused);
        }
        Ok(self.value.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[command_handler]
    async fn outer(&self, _command: Outer, _ctx: &CommandContext) -> Result<(), ofx_core::Error> {
        self.hub.commander().call(Bump { fail: false }).await?;
        Ok(())
    }
}

#[tokio::test]
async fn commands_are_counted_and_timed_by_name_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let hub = Hub::builder().metrics_interval(None).build().unwrap();
    let bumps = Arc::new(Bumps {
        hub: hub.clone(),
        value: AtomicU64::new(0),
    });
    hub.add_service(&bumps).unwrap();
    let commander = hub.commander();
    commander.call(Bump { fail: false }).await.unwrap();
    commander.call(Bump { fail: false }).await.unwrap();
    commander.call(Bump { fail: true }).await.unwrap_err();
    commander.call(Outer).await.unwrap();
    let metrics = Metrics::take(&snapshotter);

    let ok = [("command", "telemetry_test.bump"), ("outcome", "ok")];
    let error = [("command", "telemetry_test.bump"), ("outcome", "error")];
    assert_eq!(metrics.counter(telemetry::COMMANDS, &ok), 2);
    assert_eq!(metrics.counter(telemetry::COMMANDS, &error), 1);
    let durations = metrics.histogram(telemetry::COMMAND_DURATION, &ok);
    assert_eq!(durations.len(), 2);
    assert!(
        durations
            .iter()
            .all(|seconds| *seconds >= 0.0 && *seconds < 60.0)
    );
    assert_eq!(
        metrics.histogram(telemetry::COMMAND_DURATION, &error).len(),
        1
    );
    let outer = [("command", "telemetry_test.outer"), ("outcome", "ok")];
    assert_eq!(metrics.counter(telemetry::COMMANDS, &outer), 1);
    assert_eq!(
        metrics.counter(telemetry::NESTED_COMMANDS, &ok),
        1,
        "the bump nested in the outer command is counted apart"
    );
}
