//! The basic life of an event on each backend.

use std::time::Duration;

use ofx_diesel::{Backend, EventState};

use crate::common::{EventSpec, Host, JobQueries, fast};

async fn an_event_runs_once_and_is_done<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let cached = host.jobs.effect_count(1).await.unwrap();
    assert_eq!(cached, 0);
    let uuids = host.produce(1, 3, EventSpec::default()).await.unwrap();
    assert_eq!(uuids.len(), 3);
    host.drained(Duration::from_secs(10)).await;
    assert_eq!(host.effects(1).await, 3);
    assert_eq!(host.jobs.effect_count(1).await.unwrap(), 3);
    for uuid in uuids {
        let event = host.db.events().get(uuid).await.unwrap().unwrap();
        assert_eq!(event.state, Some(EventState::Done));
        assert_eq!(event.attempts, 1);
    }
}

async fn a_failed_command_leaves_no_event<B: JobQueries + Backend>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let result = host
        .hub()
        .commander()
        .call(crate::common::Produce {
            job: 2,
            count: 2,
            spec: EventSpec::default(),
            write: Some(1),
            fail: true,
        })
        .await;
    assert!(result.is_err());
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!(counts.pending + counts.done + counts.dead, 0);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_event_runs_once_and_is_done() {
    let url = crate::common::sqlite_file().await;
    an_event_runs_once_and_is_done::<ofx_diesel::Sqlite>(&url).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_event_runs_once_and_is_done() {
    let url = crate::common::postgres_database().await;
    an_event_runs_once_and_is_done::<ofx_diesel::Postgres>(&url).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_command_leaves_no_event() {
    let url = crate::common::sqlite_file().await;
    a_failed_command_leaves_no_event::<ofx_diesel::Sqlite>(&url).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failed_command_leaves_no_event() {
    let url = crate::common::postgres_database().await;
    a_failed_command_leaves_no_event::<ofx_diesel::Postgres>(&url).await;
}

/// The processor's metrics after three events ran: claimed, completed, their run durations,
/// none running. The recorder is installed for this test's thread, on a current-thread
/// runtime (the processor and its runs run on it too).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_the_processor_publishes_its_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use ofx_diesel::telemetry;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let url = crate::common::sqlite_file().await;
    let host = Host::<ofx_diesel::Sqlite>::open(&url, fast()).await;
    host.produce(3, 3, EventSpec::default()).await.unwrap();
    host.drained(Duration::from_secs(10)).await;
    // A run is done once it left the processor's list (after its metrics were recorded).
    let processor = host.processor();
    tokio::time::timeout(Duration::from_secs(10), async {
        while processor.running() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the runs ended");

    let snapshot = snapshotter.snapshot().into_vec();
    let host_id = host.hub().host_id().to_string();
    let value = |name: &str, command: Option<&str>| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                let mut labels: Vec<(&str, &str)> = key
                    .labels()
                    .map(|label| (label.key(), label.value()))
                    .collect();
                labels.sort_unstable();
                let mut wanted = vec![("host", host_id.as_str())];
                wanted.extend(command.map(|command| ("command", command)));
                wanted.sort_unstable();
                key.name() == name && labels == wanted
            })
            .map(|(_, _, _, value)| value)
    };
    assert_eq!(
        value(telemetry::EVENTS_CLAIMED, None),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(
        value(telemetry::EVENTS_COMPLETED, None),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(value(telemetry::EVENTS_DEAD, None), None, "none died");
    assert_eq!(
        value(telemetry::EVENTS_RUNNING, None),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    match value(telemetry::EVENT_RUN_DURATION, Some("jobs.run")) {
        Some(DebugValue::Histogram(durations)) => assert_eq!(durations.len(), 3),
        other => panic!("no run durations: {other:?}"),
    }
}
