//! A host without an event processor: its events are run by another host's.

use std::time::Duration;

use ofx_diesel::EventState;

use crate::common::{EventSpec, Host, JobQueries, fast};

async fn events_of_a_host_without_a_processor_are_run_by_another<B: JobQueries>(url: &str) {
    let mut settings = fast();
    settings.events.process = false;
    let a = Host::<B>::open(url, settings).await;
    assert!(
        a.db.event_processor(a.hub()).is_none(),
        "A runs no processor"
    );
    let job = 9_001;
    let uuids = a.produce(job, 5, EventSpec::default()).await.unwrap();

    let b = Host::<B>::open(url, fast()).await;
    b.drained(Duration::from_secs(10)).await;
    assert_eq!(b.processor().stats().completed(), 5);
    let b_id = b.hub().host_id().to_string();
    let effects = a.effect_rows(job).await;
    assert_eq!(effects.len(), 5);
    assert!(
        effects.iter().all(|effect| effect.host == b_id),
        "{effects:?}"
    );
    for uuid in uuids {
        let event = a.event(uuid).await;
        assert_eq!(event.state, Some(EventState::Done));
        assert_eq!(
            event.host_id,
            a.hub().host_id().to_string(),
            "produced by A"
        );
    }
}

backend_tests! {
    events_of_a_host_without_a_processor_are_run_by_another =>
        sqlite_events_of_a_host_without_a_processor_are_run_by_another,
        postgres_events_of_a_host_without_a_processor_are_run_by_another;
}

/// A host whose processor starts (when the database attaches) before its services are added,
/// with a backlog: the events it claims in between are given back without counting an attempt,
/// then run once the service is there.
async fn a_backlog_claimed_before_the_service_is_added_costs_no_attempt<B: JobQueries>(url: &str) {
    let mut settings = fast();
    settings.events.process = false;
    let producer = Host::<B>::open(url, settings).await;
    let job = 9_002;
    let uuids = producer
        .produce(job, 5, EventSpec::default())
        .await
        .unwrap();

    // The processor starts with the hub, before any service is added.
    let db = ofx_diesel::DbHub::<B>::open(url, fast()).await.unwrap();
    let hub = ofx_core::Hub::builder()
        .with(db.clone())
        .start()
        .await
        .unwrap();
    let processor = db.event_processor(&hub).unwrap();
    assert!(
        processor
            .wait_until(|stats| stats.claimed() >= 1, Duration::from_secs(10))
            .await,
        "the processor claimed the backlog before the service was added"
    );
    let jobs = std::sync::Arc::new(crate::common::Jobs {
        hub: hub.clone(),
        db: db.clone(),
    });
    hub.add_service(&jobs).unwrap();
    assert!(
        processor
            .wait_until(|stats| stats.completed() == 5, Duration::from_secs(20))
            .await,
        "the backlog ran once the service was added"
    );
    assert_eq!(processor.stats().retried(), 0, "no failed attempt counted");
    assert_eq!(processor.stats().dead(), 0);
    for uuid in uuids {
        let event = producer.event(uuid).await;
        assert_eq!(event.state, Some(EventState::Done));
        assert_eq!(
            event.attempts, 1,
            "the claims without the service were not attempts"
        );
    }
    assert_eq!(producer.effects(job).await, 5);
}

backend_tests! {
    a_backlog_claimed_before_the_service_is_added_costs_no_attempt =>
        sqlite_a_backlog_claimed_before_the_service_is_added_costs_no_attempt,
        postgres_a_backlog_claimed_before_the_service_is_added_costs_no_attempt;
}
