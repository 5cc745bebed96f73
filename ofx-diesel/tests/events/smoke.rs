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
