//! The reader's metrics and the spans that follow one operation from the host that ran it to
//! the host that replayed it, on two hubs sharing a SQLite file.
//!
//! The recorder and the span collector are installed for the test's thread, on a
//! current-thread runtime (so the readers' tasks run on it too). One test in a binary of its
//! own: `tracing` caches, per call site, whether any subscriber is interested, and a
//! subscriber installed for one thread races with other tests' threads over that cache.
#![cfg(feature = "sqlite")]
// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

// The accounts service and hosts of the log tests (this binary uses a part of them).
#[allow(dead_code, unused_imports)]
#[path = "log/common.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ofx_diesel::{Sqlite, telemetry};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::common::{AccountDeposit, Host, RawSql, fast, sqlite_file};

/// What a recorder held at one snapshot (a snapshot resets the recorder's values).
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

/// A span seen: its name, its fields as `name=value` text, and its parent's (looked up when
/// it was created: span ids are reused once a span closes).
#[derive(Debug, Clone)]
struct SeenSpan {
    name: &'static str,
    fields: String,
    parent: Option<(&'static str, String)>,
}

/// A layer that records every span created.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(tracing::span::Id, SeenSpan)>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = String::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent().map(|parent| parent.id()));
        let mut seen = self.0.lock().unwrap();
        let parent = parent.and_then(|parent| {
            seen.iter()
                .rev()
                .find(|(seen_id, _)| *seen_id == parent)
                .map(|(_, span)| (span.name, span.fields.clone()))
        });
        let span = SeenSpan {
            name: attrs.metadata().name(),
            fields,
            parent,
        };
        seen.push((id.clone(), span));
    }
}

#[tokio::test]
async fn the_reader_reports_its_batches_and_lag_and_spans_follow_an_operation_across_hosts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let spans = Spans::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    let path = sqlite_file().await;
    let a = Host::<Sqlite>::open(&path, fast(), false).await;
    // Host B reads in batches of 2, from the log's start (its reader is started below, once
    // the log has its rows: its reads are known).
    let mut settings = fast();
    settings.read_batch = 2;
    let b = Host::<Sqlite>::open(&path, settings, false).await;

    a.accounts
        .db
        .insert_row(
            &uuid::Uuid::now_v7().to_string(),
            "accounts.unheard_of",
            "{}",
            "{}",
        )
        .await;
    let mut last = None;
    for id in 0..5 {
        let executed = a
            .accounts
            .hub
            .commander()
            .call_committed(AccountDeposit {
                id,
                amount: 1,
                fail: false,
            })
            .await
            .unwrap();
        last = Some(executed);
    }
    let last = last.unwrap();
    let sequence = last.committed.unwrap().sequence.unwrap();
    assert_eq!(sequence, 6, "the bad row, then 5 operations");

    let b_hub = b.accounts.hub.clone();
    let reader = b
        .accounts
        .db
        .start_log_reader_at(&b_hub, Some(0))
        .await
        .unwrap();
    // The reader publishes its metrics after each read, before it tells its progress.
    reader
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    let metrics = Metrics::take(&snapshotter);
    let b_host = b_hub.host_id().to_string();
    let host = [("host", b_host.as_str())];
    assert_eq!(
        metrics.histogram(telemetry::READER_BATCH_ROWS, &host),
        vec![2.0, 2.0, 2.0],
        "three full batches of 2"
    );
    assert_eq!(metrics.counter(telemetry::READER_REPLAYED, &host), 5);
    assert_eq!(metrics.counter(telemetry::READER_BAD_ROWS, &host), 1);
    assert_eq!(metrics.counter(telemetry::READER_FAILURES, &host), 0);
    assert_eq!(metrics.counter(telemetry::READER_COVERAGE_LOSSES, &host), 0);
    assert_eq!(
        metrics.gauge(telemetry::READER_LAG_ROWS, &host),
        0.0,
        "caught up with the head"
    );
    assert_eq!(metrics.gauge(telemetry::READER_LAG_SECONDS, &host), 0.0);
    let delays = metrics.histogram(telemetry::READER_REPLAY_DELAY, &host);
    assert_eq!(delays.len(), 5, "one per operation replayed");
    assert!(delays.iter().all(|seconds| (0.0..60.0).contains(seconds)));
    assert_eq!(
        metrics.counter(
            ofx_core::telemetry::OPERATIONS_REPLAYED,
            &[("command", "accounts.deposit")]
        ),
        5
    );
    assert_eq!(
        metrics.counter(
            ofx_core::telemetry::COMMANDS,
            &[("command", "accounts.deposit"), ("outcome", "ok")]
        ),
        5
    );

    // One operation, followed by its uuid: the command's span on A, the replay on B.
    let uuid = last.operation.to_string();
    let a_host = a.accounts.hub.host_id().to_string();
    let seen: Vec<SeenSpan> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, span)| span.clone())
        .collect();
    let command = seen
        .iter()
        .find(|span| span.name == "command" && span.fields.contains(&uuid))
        .unwrap_or_else(|| panic!("no command span of {uuid}: {seen:#?}"));
    assert!(command.fields.contains(&a_host), "{command:?}");
    let local = seen
        .iter()
        .find(|span| {
            span.name == "invalidation"
                && span.fields.contains(&uuid)
                && span.fields.contains("local=true")
        })
        .unwrap_or_else(|| panic!("no local invalidation span of {uuid}: {seen:#?}"));
    assert_eq!(
        local.parent,
        Some(("command", command.fields.clone())),
        "in the command's span"
    );
    let replay = seen
        .iter()
        .find(|span| {
            span.name == "invalidation"
                && span.fields.contains(&uuid)
                && span.fields.contains("local=false")
        })
        .unwrap_or_else(|| panic!("no replay of {uuid}: {seen:#?}"));
    assert!(replay.fields.contains(&b_host), "{replay:?}");
    let (name, batch) = replay
        .parent
        .clone()
        .unwrap_or_else(|| panic!("the replay of {uuid} has no parent span: {seen:#?}"));
    assert_eq!(name, "replay_batch", "{batch}");
    assert!(batch.contains(&b_host), "{batch}");
    assert!(batch.contains("last=6"), "{batch}");
}
