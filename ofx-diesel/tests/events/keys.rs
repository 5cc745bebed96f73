//! Keys: `Keep` deduplicates, `Fail` refuses, `Replace` takes the new payload and due time (and
//! fences off a run in progress); debounce makes one event per window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ofx_core::operation::event_key_uuid;
use ofx_diesel::EventState;

use crate::common::{Behavior, EventSpec, Host, JobError, JobQueries, Produce, fast, gate};

fn keyed(key: &str, conflict: &str, payload: &str) -> EventSpec {
    EventSpec {
        key: Some(key.to_owned()),
        conflict: Some(conflict.to_owned()),
        payload: payload.to_owned(),
        ..EventSpec::default()
    }
}

fn done(event: &ofx_diesel::EventInfo) -> bool {
    event.state == Some(EventState::Done)
}

const WAIT: Duration = Duration::from_secs(10);

async fn keep_dedupes_a_key_across_and_within_operations<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let job = 3_001;
    let first = host
        .produce(job, 1, keyed("k1", "keep", "first"))
        .await
        .unwrap();
    let second = host
        .produce(job, 1, keyed("k1", "keep", "second"))
        .await
        .unwrap();
    assert_eq!(first, second, "one key, one event");
    assert_eq!(first[0], event_key_uuid("jobs.run", "k1", None));
    // Three events with one key in one operation: one event.
    let within = host
        .produce(job, 3, keyed("k2", "keep", "within"))
        .await
        .unwrap();
    assert_eq!(within.len(), 3);
    assert!(within.iter().all(|uuid| *uuid == within[0]));

    host.drained(WAIT).await;
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 2, 0));
    let effects = host.effect_rows(job).await;
    assert_eq!(effects.len(), 2);
    let payload = |uuid: uuid::Uuid| {
        effects
            .iter()
            .find(|effect| effect.event_uuid == uuid.to_string())
            .map(|effect| effect.payload.clone())
    };
    assert_eq!(
        payload(first[0]).as_deref(),
        Some("first"),
        "Keep keeps the first"
    );
    assert_eq!(payload(within[0]).as_deref(), Some("within"));
}

async fn fail_refuses_a_taken_key_and_commits_nothing<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let job = 3_002;
    let commander = host.hub().commander();
    let first = host
        .produce(job, 1, keyed("f", "fail", "first"))
        .await
        .unwrap()[0];

    // Taken by a stored event: the database refuses, nothing of the command commits.
    let error = commander
        .call(Produce {
            job,
            count: 1,
            spec: keyed("f", "fail", "second"),
            write: Some(1),
            fail: false,
        })
        .await
        .unwrap_err();
    match error.scope_error::<ofx_diesel::Error>() {
        Some(ofx_diesel::Error::EventKeyConflict { event, key }) => {
            assert_eq!(*event, first);
            assert_eq!(key, "f");
        }
        other => panic!("expected EventKeyConflict, got {other:?} ({error})"),
    }
    assert!(
        !host.produced(1).await,
        "the failed command's write committed"
    );

    // Taken within the operation: the second `add_event` fails, the command with it.
    let error = commander
        .call(Produce {
            job,
            count: 2,
            spec: keyed("g", "fail", "within"),
            write: Some(2),
            fail: false,
        })
        .await
        .unwrap_err();
    match error.handler_error::<JobError>() {
        Some(JobError::Core(ofx_core::Error::EventKeyConflict { command, key })) => {
            assert_eq!(command, "jobs.run");
            assert_eq!(key, "g");
        }
        other => panic!("expected ofx_core's EventKeyConflict, got {other:?} ({error})"),
    }
    assert!(
        !host.produced(2).await,
        "the failed command's write committed"
    );
    let within = event_key_uuid("jobs.run", "g", None);
    assert!(host.db.events().get(within).await.unwrap().is_none());

    host.drained(WAIT).await;
    let effects = host.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].payload, "first");
    assert_eq!(host.db.events().counts().await.unwrap().done, 1);
}

async fn replace_gives_the_event_the_new_payload_and_due_time<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let job = 3_003;
    let later = EventSpec {
        delay_ms: Some(60_000),
        ..keyed("r", "replace", "first")
    };
    let uuid = host.produce(job, 1, later).await.unwrap()[0];
    let first = host.event(uuid).await;
    assert_eq!(first.due_at, first.logged_at + Duration::from_secs(60));

    let replaced = host
        .produce(job, 1, keyed("r", "replace", "second"))
        .await
        .unwrap()[0];
    assert_eq!(replaced, uuid);
    let done = host.wait_event(uuid, done, WAIT).await;
    assert!(
        done.due_at < first.due_at,
        "the new due time (now) replaced the old"
    );
    assert!(done.command_json.contains("second"));
    assert_eq!(done.attempts, 1);
    let effects = host.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].payload, "second");
}

async fn replace_fences_off_a_run_in_progress<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let processor = host.processor();
    let job = 3_004;
    let gate = gate::<B>(job);
    let gated = |payload: &str| EventSpec {
        behavior: Behavior::Gated,
        ..keyed("p", "replace", payload)
    };
    let uuid = host.produce(job, 1, gated("first")).await.unwrap()[0];
    gate.arrivals(1).await; // the first run is in progress, held

    let replaced = host.produce(job, 1, gated("second")).await.unwrap()[0];
    assert_eq!(replaced, uuid);
    // The replaced event is pending again, unleased: claimed again (here), its run held too.
    gate.arrivals(2).await;
    assert_eq!(processor.running(), 1);

    gate.release(1); // the first run writes its effect; its commit is refused
    assert!(
        processor
            .wait_until(|stats| stats.fenced() == 1, WAIT)
            .await
    );
    assert_eq!(
        host.effects(job).await,
        0,
        "the fenced run's effect committed"
    );
    assert_eq!(processor.stats().completed(), 0);
    assert_eq!(
        processor.running(),
        1,
        "the second run is still running (and its lease renewed)"
    );

    gate.release(2);
    let event = host.wait_event(uuid, done, WAIT).await;
    assert_eq!(event.attempts, 1, "the replacement's attempts start anew");
    assert_eq!(processor.stats().completed(), 1);
    let effects = host.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].payload, "second");
}

/// The time since the Unix epoch.
fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap()
}

async fn debounce_makes_one_event_per_window<B: JobQueries>(url: &str) {
    const WINDOW: Duration = Duration::from_secs(2);
    let host = Host::<B>::open(url, fast()).await;
    let job = 3_005;
    let debounced = |payload: &str| EventSpec {
        debounce_ms: Some(WINDOW.as_millis() as u64),
        ..keyed("d", "replace", payload)
    };
    // Windows are fixed (multiples of the window since the epoch): with less than a second of
    // this one left, start at the next one. The sleep reaches a point in time: that is what
    // this test is about.
    let into = Duration::from_nanos(
        (since_epoch(SystemTime::now()).as_nanos() % WINDOW.as_nanos()) as u64,
    );
    if WINDOW - into < Duration::from_secs(1) {
        tokio::time::sleep(WINDOW - into + Duration::from_millis(20)).await;
    }

    let mut uuids = Vec::new();
    for payload in ["p1", "p2", "p3"] {
        uuids.extend(host.produce(job, 1, debounced(payload)).await.unwrap());
    }
    assert!(
        uuids.iter().all(|uuid| *uuid == uuids[0]),
        "one event per window"
    );
    let first = host.event(uuids[0]).await;
    assert_eq!(first.state, Some(EventState::Pending));
    assert_eq!(
        since_epoch(first.due_at).as_nanos() % WINDOW.as_nanos(),
        0,
        "due at a window's end"
    );
    assert!(first.due_at > first.logged_at);
    assert!(first.due_at <= first.logged_at + WINDOW);

    let first = host.wait_event(uuids[0], done, WAIT).await;
    assert!(first.finished_at.unwrap() >= first.due_at);
    let effects = host.effect_rows(job).await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].payload, "p3", "Replace: the last payload");

    // Its window ended (it ran): this one is in the next one.
    let next = host.produce(job, 1, debounced("p4")).await.unwrap()[0];
    assert_ne!(next, uuids[0]);
    let next = host.wait_event(next, done, WAIT).await;
    assert!(next.due_at > first.due_at);
    assert_eq!(since_epoch(next.due_at).as_nanos() % WINDOW.as_nanos(), 0);
    assert_eq!(host.effects(job).await, 2);
}

backend_tests! {
    keep_dedupes_a_key_across_and_within_operations =>
        sqlite_keep_dedupes_a_key_across_and_within_operations,
        postgres_keep_dedupes_a_key_across_and_within_operations;
    fail_refuses_a_taken_key_and_commits_nothing =>
        sqlite_fail_refuses_a_taken_key_and_commits_nothing,
        postgres_fail_refuses_a_taken_key_and_commits_nothing;
    replace_gives_the_event_the_new_payload_and_due_time =>
        sqlite_replace_gives_the_event_the_new_payload_and_due_time,
        postgres_replace_gives_the_event_the_new_payload_and_due_time;
    replace_fences_off_a_run_in_progress =>
        sqlite_replace_fences_off_a_run_in_progress,
        postgres_replace_fences_off_a_run_in_progress;
    debounce_makes_one_event_per_window =>
        sqlite_debounce_makes_one_event_per_window,
        postgres_debounce_makes_one_event_per_window;
}
