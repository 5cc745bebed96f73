//! A transient error in an event's run is retried inline, by reprocessing, within the claim:
//! the event completes on its first attempt, its effect once.

use std::time::Duration;

use ofx_diesel::EventState;

use crate::common::{Behavior, EventSpec, Host, JobQueries, fast, runs_of};

async fn a_transient_error_in_an_events_run_is_retried_in_the_same_claim<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let spec = EventSpec {
        behavior: Behavior::TransientRuns(2),
        ..EventSpec::default()
    };
    let uuids = host.produce(7, 1, spec).await.unwrap();
    host.drained(Duration::from_secs(10)).await;
    let event = host.db.events().get(uuids[0]).await.unwrap().unwrap();
    assert_eq!(event.state, Some(EventState::Done));
    assert_eq!(event.attempts, 1, "completed on its first claim");
    assert_eq!(event.lease_token, 1, "claimed once");
    assert_eq!(
        runs_of(uuids[0]),
        3,
        "two transient failures, then the run that committed"
    );
    assert_eq!(
        host.effects(7).await,
        1,
        "the failed runs' effects were rolled back"
    );
    let processor = host.processor();
    let stats = processor.stats();
    assert_eq!(stats.claimed(), 1);
    assert_eq!(stats.completed(), 1);
    assert_eq!(stats.retried(), 0, "no failed run gave the event back");
    assert_eq!(stats.dead(), 0);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_transient_error_in_an_events_run_is_retried_in_the_same_claim() {
    let url = crate::common::sqlite_file().await;
    a_transient_error_in_an_events_run_is_retried_in_the_same_claim::<ofx_diesel::Sqlite>(&url)
        .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_transient_error_in_an_events_run_is_retried_in_the_same_claim() {
    let url = crate::common::postgres_database().await;
    a_transient_error_in_an_events_run_is_retried_in_the_same_claim::<ofx_diesel::Postgres>(&url)
        .await;
}
