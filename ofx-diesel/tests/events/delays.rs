//! Delays: an event runs not before its due time, and soon after it.

use std::time::{Duration, Instant};

use ofx_diesel::EventState;

use crate::common::{EventSpec, Host, JobQueries, fast};

const DELAY: Duration = Duration::from_millis(1_500);

async fn a_delayed_event_runs_at_its_due_time_not_before<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let processor = host.processor();
    let job = 2_001;
    let spec = EventSpec {
        delay_ms: Some(DELAY.as_millis() as u64),
        payload: "later".to_owned(),
        ..EventSpec::default()
    };
    let produced_at = Instant::now();
    let uuid = host.produce(job, 1, spec).await.unwrap()[0];
    let stored = host.event(uuid).await;
    assert_eq!(stored.due_at, stored.logged_at + DELAY);

    // The one sleep of this test: being at a point in time before the due time is what is
    // tested (nothing happens then that could be awaited).
    tokio::time::sleep_until((produced_at + DELAY / 3).into()).await;
    let early = host.event(uuid).await;
    assert_eq!(early.state, Some(EventState::Pending));
    assert_eq!(early.attempts, 0, "not claimed before its due time");
    assert_eq!(host.effects(job).await, 0);
    assert_eq!(processor.stats().claimed(), 0);

    let done = host
        .wait_event(
            uuid,
            |event| event.state == Some(EventState::Done),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(host.effects(job).await, 1);
    assert_eq!(done.attempts, 1);
    let finished = done.finished_at.unwrap();
    assert!(finished >= done.due_at, "it ran before its due time");
    // The processor sleeps until the next due time (at most its poll period, 20 ms): the rest is
    // this loaded machine's scheduling.
    let late = finished.duration_since(done.due_at).unwrap();
    assert!(
        late < Duration::from_secs(1),
        "ran {late:?} after its due time"
    );
}

backend_tests! {
    a_delayed_event_runs_at_its_due_time_not_before =>
        sqlite_a_delayed_event_runs_at_its_due_time_not_before,
        postgres_a_delayed_event_runs_at_its_due_time_not_before;
}
