//! Taken over: a run whose claim is no longer the event's (taken over meanwhile) does not commit,
//! neither its effect nor its operation.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;

use crate::common::{Behavior, EventSpec, Host, JobQueries, fast, gate};

async fn a_run_whose_claim_was_taken_over_commits_nothing<B: JobQueries>(url: &str, job: i64) {
    let host = Host::<B>::open(url, fast()).await;
    let spec = EventSpec {
        behavior: Behavior::Gated,
        ..EventSpec::default()
    };
    host.produce(job, 1, spec).await.unwrap();
    gate::<B>(job).arrivals(1).await;
    // Another host takes the event over while the handler runs: a new fencing number.
    host.db
        .connection()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE ofx_events SET lease_token = lease_token + 1, lease_owner = 'another host'",
        )
        .await
        .unwrap();
    gate::<B>(job).open();
    let processor = host.processor();
    assert!(
        processor
            .wait_until(|stats| stats.fenced() == 1, Duration::from_secs(10))
            .await,
        "the run is fenced off"
    );
    assert_eq!(processor.stats().completed(), 0);
    assert_eq!(
        host.effects(job).await,
        0,
        "the fenced run's effect is rolled back"
    );
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!((counts.pending, counts.done), (1, 0));
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_run_whose_claim_was_taken_over_commits_nothing() {
    let url = crate::common::sqlite_file().await;
    a_run_whose_claim_was_taken_over_commits_nothing::<ofx_diesel::Sqlite>(&url, 401).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_whose_claim_was_taken_over_commits_nothing() {
    let url = crate::common::postgres_database().await;
    a_run_whose_claim_was_taken_over_commits_nothing::<ofx_diesel::Postgres>(&url, 402).await;
}
