//! Claiming ahead: while runs are short, a processor claims a batch for its busy slots; the
//! events of that batch are given back, unrun and their attempt not counted, when it stops.

use std::time::Duration;

use ofx_diesel::EventState;

use crate::common::{Behavior, EventSpec, Host, JobQueries, fast, gate};

async fn events_claimed_ahead_are_given_back_when_stopped<B: JobQueries>(url: &str, job: i64) {
    let mut settings = fast();
    settings.events.concurrency = 2;
    let host = Host::<B>::open(url, settings).await;
    let spec = EventSpec {
        behavior: Behavior::Gated,
        ..EventSpec::default()
    };
    host.produce(job, 6, spec).await.unwrap();
    // Two run (held at the gate); two more are claimed ahead for the busy slots.
    gate::<B>(job).arrivals(2).await;
    let leased = async {
        loop {
            let events = host.db.events().list(None, 100).await.unwrap();
            if events.iter().filter(|e| e.lease_owner.is_some()).count() == 4 {
                return events;
            }
            host.next_change().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), leased)
        .await
        .expect("a batch was claimed ahead");
    let processor = host.processor();
    processor.stop();
    assert!(
        processor
            .wait_until(|stats| stats.given_back() == 2, Duration::from_secs(10))
            .await,
        "the events claimed ahead are given back"
    );
    assert_eq!(processor.stats().claimed(), 2, "only two runs started");
    let events = host.db.events().list(None, 100).await.unwrap();
    let unleased: Vec<_> = events.iter().filter(|e| e.lease_owner.is_none()).collect();
    assert_eq!(unleased.len(), 4);
    for event in unleased {
        assert_eq!(event.state, Some(EventState::Pending));
        assert_eq!(event.attempts, 0, "a claim given back is not an attempt");
        assert!(event.lease_until.is_none());
    }
    gate::<B>(job).open();
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_claimed_ahead_are_given_back_when_stopped() {
    let url = crate::common::sqlite_file().await;
    events_claimed_ahead_are_given_back_when_stopped::<ofx_diesel::Sqlite>(&url, 301).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_claimed_ahead_are_given_back_when_stopped() {
    let url = crate::common::postgres_database().await;
    events_claimed_ahead_are_given_back_when_stopped::<ofx_diesel::Postgres>(&url, 302).await;
}
