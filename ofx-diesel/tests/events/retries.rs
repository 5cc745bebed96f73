//! Failed runs: retried with backoff, dead after the last attempt or a permanent error;
//! dead events redriven and purged.

use std::time::Duration;

use ofx_diesel::{DbSettings, EventRetry, EventState};

use crate::common::{Behavior, EventSpec, Host, JobQueries, fast, gate};

const WAIT: Duration = Duration::from_secs(10);

/// Three attempts, 10 ms apart, then 20 ms (at most 50 ms).
fn three_attempts() -> DbSettings {
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(3, Duration::from_millis(10), Duration::from_millis(50));
    settings
}

fn behaving(behavior: Behavior) -> EventSpec {
    EventSpec {
        behavior,
        ..EventSpec::default()
    }
}

fn is(state: EventState) -> impl Fn(&ofx_diesel::EventInfo) -> bool {
    move |event| event.state == Some(state)
}

async fn a_failed_run_is_retried_and_the_next_attempt_succeeds<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, three_attempts()).await;
    let processor = host.processor();
    let job = 4_001;
    let uuid = host
        .produce(job, 1, behaving(Behavior::FailUntil(1)))
        .await
        .unwrap()[0];
    let event = host.wait_event(uuid, is(EventState::Done), WAIT).await;
    assert_eq!(event.attempts, 2);
    assert_eq!(event.last_error, None, "a done event keeps no error");
    let effects = host.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].attempt, 2, "the effect of the second attempt");
    assert!(processor.stats().retried() >= 1);
    assert_eq!(processor.stats().completed(), 1);
    assert_eq!(processor.stats().dead(), 0);
}

async fn an_event_is_dead_after_its_last_attempt_or_a_permanent_error<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, three_attempts()).await;
    let processor = host.processor();
    let job = 4_002;
    let flaky = host
        .produce(job, 1, behaving(Behavior::FailUntil(100)))
        .await
        .unwrap()[0];
    let permanent = host
        .produce(job, 1, behaving(Behavior::Permanent))
        .await
        .unwrap()[0];

    let flaky = host.wait_event(flaky, is(EventState::Dead), WAIT).await;
    assert_eq!(flaky.attempts, 3, "dead after its last attempt");
    assert!(
        flaky
            .last_error
            .as_deref()
            .unwrap()
            .contains("failing on attempt 3"),
        "{:?}",
        flaky.last_error
    );
    assert!(flaky.finished_at.is_some());
    assert_eq!(flaky.lease_owner, None);

    let permanent = host.wait_event(permanent, is(EventState::Dead), WAIT).await;
    assert_eq!(permanent.attempts, 1, "a permanent error is not retried");
    assert!(
        permanent
            .last_error
            .as_deref()
            .unwrap()
            .contains("failing on attempt 1"),
        "{:?}",
        permanent.last_error
    );

    assert_eq!(host.effects(job).await, 0);
    assert_eq!(processor.stats().dead(), 2);
    assert_eq!(
        processor.stats().retried(),
        2,
        "the flaky event's first two attempts"
    );
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 0, 2));
}

async fn redrive_runs_a_dead_event_again_with_its_attempts_reset<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, three_attempts()).await;
    let processor = host.processor();
    let events = host.db.events();
    let (flaky_job, broken_job) = (4_003, 4_004);
    let flaky = host
        .produce(flaky_job, 1, behaving(Behavior::FailUntil(3)))
        .await
        .unwrap()[0];
    let broken = host
        .produce(broken_job, 1, behaving(Behavior::FailUntilOpened))
        .await
        .unwrap()[0];
    host.wait_event(flaky, is(EventState::Dead), WAIT).await;
    host.wait_event(broken, is(EventState::Dead), WAIT).await;
    assert!(processor.wait_until(|stats| stats.dead() == 2, WAIT).await);

    // Redriven, its attempts start again at 1: failing until attempt 3, it dies again at 3.
    events.redrive(flaky).await.unwrap();
    assert!(processor.wait_until(|stats| stats.dead() == 3, WAIT).await);
    let flaky = host.wait_event(flaky, is(EventState::Dead), WAIT).await;
    assert_eq!(flaky.attempts, 3);
    assert!(
        flaky
            .last_error
            .as_deref()
            .unwrap()
            .contains("failing on attempt 3")
    );
    assert_eq!(host.effects(flaky_job).await, 0);

    // The cause fixed, the redriven event succeeds, on its (new) first attempt.
    gate::<B>(broken_job).open();
    events.redrive(broken).await.unwrap();
    let broken = host.wait_event(broken, is(EventState::Done), WAIT).await;
    assert_eq!(broken.attempts, 1);
    let effects = host.effect_rows(broken_job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].attempt, 1);

    // Only a dead event can be redriven.
    match events.redrive(broken.uuid).await {
        Err(ofx_diesel::Error::NoSuchEvent(uuid)) => assert_eq!(uuid, broken.uuid),
        other => panic!("redriving a done event: {other:?}"),
    }
    let unknown = uuid::Uuid::new_v4();
    assert!(matches!(
        events.redrive(unknown).await,
        Err(ofx_diesel::Error::NoSuchEvent(uuid)) if uuid == unknown
    ));
}

async fn redrive_dead_and_purge_act_on_dead_events_only<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, three_attempts()).await;
    let processor = host.processor();
    let events = host.db.events();
    let (permanent_job, broken_job, good_job) = (4_005, 4_006, 4_007);
    let permanent = host
        .produce(permanent_job, 2, behaving(Behavior::Permanent))
        .await
        .unwrap();
    let broken = host
        .produce(broken_job, 2, behaving(Behavior::FailUntilOpened))
        .await
        .unwrap();
    let good = host
        .produce(good_job, 1, EventSpec::default())
        .await
        .unwrap()[0];
    assert!(
        processor
            .wait_until(|stats| stats.dead() == 4 && stats.completed() == 1, WAIT)
            .await
    );

    events.purge(permanent[0]).await.unwrap();
    assert!(events.get(permanent[0]).await.unwrap().is_none());
    assert!(matches!(
        events.purge(permanent[0]).await,
        Err(ofx_diesel::Error::NoSuchEvent(_))
    ));
    match events.purge(good).await {
        Err(ofx_diesel::Error::NoSuchEvent(uuid)) => assert_eq!(uuid, good),
        other => panic!("purging a done event: {other:?}"),
    }
    assert_eq!(host.event(good).await.state, Some(EventState::Done));

    // Every dead event again: the broken ones (fixed now) succeed, the permanent one dies again.
    gate::<B>(broken_job).open();
    assert_eq!(events.redrive_dead().await.unwrap(), 3);
    assert!(
        processor
            .wait_until(|stats| stats.dead() == 5 && stats.completed() == 3, WAIT)
            .await
    );
    for uuid in &broken {
        assert_eq!(host.event(*uuid).await.state, Some(EventState::Done));
    }
    assert_eq!(host.event(permanent[1]).await.state, Some(EventState::Dead));
    assert_eq!(host.effects(broken_job).await, 2);

    assert_eq!(events.purge_dead().await.unwrap(), 1);
    assert!(events.get(permanent[1]).await.unwrap().is_none());
    let counts = events.counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 3, 0));
    assert_eq!(events.purge_dead().await.unwrap(), 0);
    assert_eq!(events.redrive_dead().await.unwrap(), 0);
}

backend_tests! {
    a_failed_run_is_retried_and_the_next_attempt_succeeds =>
        sqlite_a_failed_run_is_retried_and_the_next_attempt_succeeds,
        postgres_a_failed_run_is_retried_and_the_next_attempt_succeeds;
    an_event_is_dead_after_its_last_attempt_or_a_permanent_error =>
        sqlite_an_event_is_dead_after_its_last_attempt_or_a_permanent_error,
        postgres_an_event_is_dead_after_its_last_attempt_or_a_permanent_error;
    redrive_runs_a_dead_event_again_with_its_attempts_reset =>
        sqlite_redrive_runs_a_dead_event_again_with_its_attempts_reset,
        postgres_redrive_runs_a_dead_event_again_with_its_attempts_reset;
    redrive_dead_and_purge_act_on_dead_events_only =>
        sqlite_redrive_dead_and_purge_act_on_dead_events_only,
        postgres_redrive_dead_and_purge_act_on_dead_events_only;
}
