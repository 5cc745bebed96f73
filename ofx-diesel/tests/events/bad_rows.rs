//! Rows that cannot run (written by hand, by another program, or corrupted): each is dead at
//! once with the reason, the processor goes on, and the events behind them run.

use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_diesel::{EventState, MAX_PAYLOAD_BYTES};

use crate::common::{EventSpec, Host, JobQueries, fast};

async fn bad_rows_are_dead_with_a_reason_and_block_nothing<B: JobQueries>(url: &str) {
    let host = Host::<B>::open(url, fast()).await;
    let processor = host.processor();
    let job = 5_001;
    let oversized = format!("\"{}\"", "x".repeat(MAX_PAYLOAD_BYTES + 1));
    // (command name, command JSON, what `last_error` says)
    let bad = [
        ("jobs.run", "{not json".to_owned(), "malformed command_json"),
        ("jobs.run", oversized, "exceeds the limit"),
        (
            "jobs.nope",
            format!(r#"{{"job":{job},"behavior":"Succeed","payload":""}}"#),
            "no command is registered under the name `jobs.nope`",
        ),
        (
            "jobs.run",
            r#"{"job":"not a number"}"#.to_owned(),
            "could not be (de)serialized",
        ),
    ];
    let mut rows = Vec::new();
    let mut statements = String::new();
    for (name, json, reason) in &bad {
        let uuid = uuid::Uuid::new_v4();
        // Due at the epoch: before every event produced below.
        statements.push_str(&format!(
            "INSERT INTO ofx_events (uuid, operation_uuid, host_id, command_name, command_json, \
             logged_at, due_at) VALUES ('{uuid}', '{}', 'by hand', '{name}', '{json}', 0, 0);",
            uuid::Uuid::new_v4()
        ));
        rows.push((uuid, *reason));
    }
    host.sql(&statements).await;
    let good = host.produce(job, 1, EventSpec::default()).await.unwrap()[0];

    for (uuid, reason) in rows {
        let event = host
            .wait_event(
                uuid,
                |event| event.state == Some(EventState::Dead),
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(event.attempts, 1, "dead at once: {reason}");
        let error = event.last_error.unwrap();
        assert!(error.contains(reason), "expected `{reason}` in `{error}`");
    }
    let good = host
        .wait_event(
            good,
            |event| event.state == Some(EventState::Done),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(good.attempts, 1);
    assert_eq!(host.effects(job).await, 1);
    assert_eq!(processor.stats().dead(), 4);
    assert_eq!(processor.stats().completed(), 1);
    assert_eq!(processor.health().state(), TaskState::Running);
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 1, 4));
}

backend_tests! {
    bad_rows_are_dead_with_a_reason_and_block_nothing =>
        sqlite_bad_rows_are_dead_with_a_reason_and_block_nothing,
        postgres_bad_rows_are_dead_with_a_reason_and_block_nothing;
}
