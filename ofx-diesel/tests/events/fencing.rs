//! Fencing, in one process: host A's run of an event is held while its lease ends (expired by
//! the test), host B takes the event over; A's run, let go, cannot complete it.

use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_diesel::{DbSettings, EventState};

use crate::common::{Behavior, EventSpec, Gate, Host, JobQueries, fast, gate};

const WAIT: Duration = Duration::from_secs(10);

/// Host A, whose heartbeat (every third of a 5 min lease) never renews the lease the test ends.
fn long_lease() -> DbSettings {
    let mut settings = fast();
    settings.events.lease = Duration::from_secs(300);
    settings
}

/// A holds the event's run (ticket 1 of the job's gate), its lease expired; B takes the event
/// over, its run held too (ticket 2). Returns A, B and the event.
async fn take_over<B: JobQueries>(
    url: &str,
    job: i64,
    gate: &Gate,
) -> (Host<B>, Host<B>, uuid::Uuid) {
    let a = Host::<B>::open(url, long_lease()).await;
    let spec = EventSpec {
        behavior: Behavior::Gated,
        payload: "run".to_owned(),
        ..EventSpec::default()
    };
    let uuid = a.produce(job, 1, spec).await.unwrap()[0];
    gate.arrivals(1).await;
    // A claims nothing more (the event must go to B), as a paused host would not.
    let a_processor = a.processor();
    a_processor.stop();
    assert_eq!(a_processor.health().ended().await, TaskState::Stopped);
    let held = a.event(uuid).await;
    assert_eq!(held.lease_owner, Some(a.hub().host_id().to_string()));
    assert_eq!(held.lease_token, 1);

    a.sql(&format!(
        "UPDATE ofx_events SET lease_until = 0 WHERE uuid = '{uuid}'"
    ))
    .await;
    let b = Host::<B>::open(url, fast()).await;
    gate.arrivals(2).await;
    let taken = a.event(uuid).await;
    assert_eq!(taken.lease_owner, Some(b.hub().host_id().to_string()));
    assert_eq!(taken.lease_token, 2, "B's claim is the event's now");
    assert_eq!(taken.attempts, 2);
    (a, b, uuid)
}

async fn a_run_whose_lease_was_taken_over_cannot_commit<B: JobQueries>(url: &str) {
    let job = 6_001;
    let gate = gate::<B>(job);
    let (a, b, uuid) = take_over::<B>(url, job, &gate).await;
    let (a_processor, b_processor) = (a.processor(), b.processor());

    gate.release(1); // A's run writes its effect, then its commit is refused
    assert!(
        a_processor
            .wait_until(|stats| stats.fenced() == 1, WAIT)
            .await
    );
    assert_eq!(a_processor.stats().completed(), 0);
    assert_eq!(a.effects(job).await, 0, "the fenced run's effect committed");
    let pending = a.event(uuid).await;
    assert_eq!(pending.state, Some(EventState::Pending), "B still holds it");
    assert_eq!(pending.lease_token, 2);

    gate.release(2);
    assert!(
        b_processor
            .wait_until(|stats| stats.completed() == 1, WAIT)
            .await
    );
    let event = a.event(uuid).await;
    assert_eq!(event.state, Some(EventState::Done));
    assert_eq!(event.lease_token, 2, "done under B's claim");
    let effects = a.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].host, b.hub().host_id().to_string());
    assert_eq!(effects[0].attempt, 2);
    assert_eq!(a_processor.stats().fenced(), 1);
    assert_eq!(b_processor.stats().fenced(), 0);
}

async fn a_stale_run_let_go_after_the_takeover_completed_changes_nothing<B: JobQueries>(url: &str) {
    let job = 6_002;
    let gate = gate::<B>(job);
    let (a, b, uuid) = take_over::<B>(url, job, &gate).await;
    let (a_processor, b_processor) = (a.processor(), b.processor());

    gate.release(2);
    assert!(
        b_processor
            .wait_until(|stats| stats.completed() == 1, WAIT)
            .await
    );
    let done = a.event(uuid).await;
    assert_eq!(done.state, Some(EventState::Done));

    // A's run fails now (its effect's key is taken by B's): giving the event back is refused
    // as well, the event stays done.
    gate.release(1);
    assert!(
        a_processor
            .wait_until(|stats| stats.fenced() == 1, WAIT)
            .await
    );
    assert_eq!(a_processor.stats().completed(), 0);
    assert_eq!(
        a_processor.stats().retried() + a_processor.stats().dead(),
        0
    );
    let event = a.event(uuid).await;
    assert_eq!(event.state, Some(EventState::Done));
    assert_eq!(event.lease_token, 2);
    assert_eq!(event.last_error, None);
    assert_eq!(event.finished_at, done.finished_at);
    let effects = a.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].host, b.hub().host_id().to_string());
}

backend_tests! {
    a_run_whose_lease_was_taken_over_cannot_commit =>
        sqlite_a_run_whose_lease_was_taken_over_cannot_commit,
        postgres_a_run_whose_lease_was_taken_over_cannot_commit;
    a_stale_run_let_go_after_the_takeover_completed_changes_nothing =>
        sqlite_a_stale_run_let_go_after_the_takeover_completed_changes_nothing,
        postgres_a_stale_run_let_go_after_the_takeover_completed_changes_nothing;
}
