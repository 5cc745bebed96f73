//! Nested commands: their events go with their writes: stored when they succeed, dropped when
//! they fail (even when the outer handler swallows the failure and commits).

use std::time::Duration;

use ofx_diesel::EventState;

use crate::common::{EventSpec, Host, JobQueries, Nest, fast};

const WAIT: Duration = Duration::from_secs(10);

fn payload(payload: &str) -> EventSpec {
    EventSpec {
        payload: payload.to_owned(),
        ..EventSpec::default()
    }
}

fn keyed(key: &str, payload: &str) -> EventSpec {
    EventSpec {
        key: Some(key.to_owned()),
        conflict: Some("replace".to_owned()),
        payload: payload.to_owned(),
        ..EventSpec::default()
    }
}

/// The payloads of the effects of `job`, sorted.
async fn payloads<B: JobQueries>(host: &Host<B>, job: i64) -> Vec<String> {
    let mut payloads: Vec<String> = host
        .effect_rows(job)
        .await
        .into_iter()
        .map(|effect| effect.payload)
        .collect();
    payloads.sort();
    payloads
}

async fn events_of_a_nested_command_are_stored<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let job = 7_001;
    host.hub()
        .commander()
        .call(Nest {
            job,
            outer: payload("outer"),
            inner: payload("inner"),
            inner_count: 2,
            inner_write: Some(1),
            inner_fails: false,
        })
        .await
        .unwrap();
    assert!(host.produced(1).await);
    host.drained(WAIT).await;
    assert_eq!(payloads(&host, job).await, ["inner", "inner", "outer"]);
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 3, 0));
}

async fn a_failed_nested_command_leaves_none_of_its_events<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let job = 7_002;
    host.hub()
        .commander()
        .call(Nest {
            job,
            outer: payload("outer"),
            inner: payload("inner"),
            inner_count: 2,
            inner_write: Some(2),
            inner_fails: true,
        })
        .await
        .unwrap();
    assert!(
        !host.produced(2).await,
        "the failed nested command's write committed"
    );
    let stored = host.db.events().list(None, 10).await.unwrap();
    assert_eq!(
        stored.len(),
        1,
        "only the outer command's event: {stored:?}"
    );
    assert!(stored[0].command_json.contains("outer"));
    host.drained(WAIT).await;
    assert_eq!(payloads(&host, job).await, ["outer"]);
}

async fn a_failed_nested_command_that_replaced_an_event_leaves_the_outer_one<B: JobQueries>(
    url: &str,
) {
    let host = Host::<B>::open(url, fast()).await;
    let (kept, replaced) = (7_003, 7_004);
    for (job, inner_fails) in [(kept, true), (replaced, false)] {
        host.hub()
            .commander()
            .call(Nest {
                job,
                outer: keyed(&format!("n{job}"), "outer"),
                inner: keyed(&format!("n{job}"), "inner"),
                inner_count: 1,
                inner_write: None,
                inner_fails,
            })
            .await
            .unwrap();
    }
    host.drained(WAIT).await;
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 2, 0));
    assert_eq!(
        payloads(&host, kept).await,
        ["outer"],
        "the failed nested command's replacement is undone, the outer event stays"
    );
    assert_eq!(payloads(&host, replaced).await, ["inner"]);
    for event in host.db.events().list(None, 10).await.unwrap() {
        assert_eq!(event.state, Some(EventState::Done));
    }
}

backend_tests! {
    events_of_a_nested_command_are_stored =>
        sqlite_events_of_a_nested_command_are_stored,
        postgres_events_of_a_nested_command_are_stored;
    a_failed_nested_command_leaves_none_of_its_events =>
        sqlite_a_failed_nested_command_leaves_none_of_its_events,
        postgres_a_failed_nested_command_leaves_none_of_its_events;
    a_failed_nested_command_that_replaced_an_event_leaves_the_outer_one =>
        sqlite_a_failed_nested_command_that_replaced_an_event_leaves_the_outer_one,
        postgres_a_failed_nested_command_that_replaced_an_event_leaves_the_outer_one;
}
