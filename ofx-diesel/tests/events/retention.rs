//! Retention: the trimmer deletes done events after `done_max_age`, dead ones after
//! `dead_max_age`; it keeps pending events and younger ones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ofx_diesel::{EventRetry, EventState};

use crate::common::{Behavior, EventSpec, Host, JobQueries, fast};

const HOUR: Duration = Duration::from_secs(3_600);

/// Microseconds since the Unix epoch, `ago` before now.
fn micros_ago(ago: Duration) -> i64 {
    let at = SystemTime::now() - ago;
    i64::try_from(at.duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

async fn trim_deletes_finished_events_older_than_their_max_age<B: JobQueries>(url: &str) {
    // The default ages: done events 24 h, dead ones 7 days.
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(1, Duration::from_millis(10), Duration::from_millis(10));
    assert_eq!(settings.events.done_max_age, 24 * HOUR);
    assert_eq!(settings.events.dead_max_age, 7 * 24 * HOUR);
    let host = Host::<B>::open(url, settings.clone()).await;
    let processor = host.processor();
    let events = host.db.events();
    let job = 8_001;
    let done = host.produce(job, 2, EventSpec::default()).await.unwrap();
    let permanent = EventSpec {
        behavior: Behavior::Permanent,
        ..EventSpec::default()
    };
    let dead = host.produce(job, 3, permanent).await.unwrap();
    let later = EventSpec {
        delay_ms: Some(HOUR.as_millis() as u64),
        ..EventSpec::default()
    };
    let pending = host.produce(job, 1, later).await.unwrap()[0];
    assert!(
        processor
            .wait_until(
                |stats| stats.completed() == 2 && stats.dead() == 3,
                Duration::from_secs(10)
            )
            .await
    );

    // Finished long ago, by SQL: a done event older than its age, a dead one older than its,
    // and a dead one older than a done event's age but not a dead one's.
    let backdate = |uuid: uuid::Uuid, ago: Duration| {
        format!(
            "UPDATE ofx_events SET finished_at = {} WHERE uuid = '{uuid}';",
            micros_ago(ago)
        )
    };
    host.sql(
        &[
            backdate(done[0], 25 * HOUR),
            backdate(dead[0], 8 * 24 * HOUR),
            backdate(dead[1], 25 * HOUR),
        ]
        .concat(),
    )
    .await;

    assert_eq!(events.trim().await.unwrap(), 2);
    assert!(events.get(done[0]).await.unwrap().is_none());
    assert!(events.get(dead[0]).await.unwrap().is_none());
    assert_eq!(host.event(done[1]).await.state, Some(EventState::Done));
    assert_eq!(host.event(dead[1]).await.state, Some(EventState::Dead));
    assert_eq!(host.event(dead[2]).await.state, Some(EventState::Dead));
    assert_eq!(host.event(pending).await.state, Some(EventState::Pending));
    assert_eq!(events.trim().await.unwrap(), 0);

    // Ages of zero: every finished event goes, the pending one stays.
    settings.events.done_max_age = Duration::ZERO;
    settings.events.dead_max_age = Duration::ZERO;
    let eager = Host::<B>::open(url, settings).await;
    assert_eq!(eager.db.events().trim().await.unwrap(), 3);
    let counts = events.counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (1, 0, 0));
    assert_eq!(host.event(pending).await.state, Some(EventState::Pending));
}

backend_tests! {
    trim_deletes_finished_events_older_than_their_max_age =>
        sqlite_trim_deletes_finished_events_older_than_their_max_age,
        postgres_trim_deletes_finished_events_older_than_their_max_age;
}
