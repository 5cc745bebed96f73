//! `hosts` (and its alias `lag`): the running hubs' rows, with their positions.

use std::time::Duration;

use serde_json::Value;

use crate::common::{AddNote, Host, NoteQueries, eventually, ofx};

backend_tests! {
    hosts_show_their_positions => sqlite_hosts_show_their_positions, postgres_hosts_show_their_positions;
}

/// The row of `host` in `ofx hosts --json`, once it satisfies `ready`.
async fn row_of(url: &str, host: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), "the host's row", || async {
        let json = ofx(url, &["hosts", "--json"]).await.json();
        json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["host"] == host && ready(row))
            .cloned()
    })
    .await
}

async fn hosts_show_their_positions<B: NoteQueries>(url: &str) {
    let writer = Host::<B>::open(url).await;
    let reader = Host::<B>::open(url).await;
    let mut last = 0;
    for id in 1..=3 {
        let (_, _, index) = writer
            .call(AddNote {
                id,
                body: "x".to_owned(),
            })
            .await;
        last = index;
    }
    reader
        .db
        .wait_replayed(reader.hub(), last, Duration::from_secs(20))
        .await
        .unwrap();

    // The reader's row reaches the head: it replayed the writer's three operations.
    let row = row_of(url, &reader.host_id(), |row| row["cursor"] == last).await;
    assert_eq!(row["status"], "live", "{row}");
    assert_eq!(row["stale"], false);
    assert_eq!(row["behind"], 0);
    assert_eq!(row["pid"], std::process::id());
    assert!(row["replayed"].as_u64().unwrap() >= 3, "{row}");
    assert!(row["heartbeat_age_secs"].as_f64().unwrap() < 10.0, "{row}");
    assert!(row["stopped_at"].is_null());
    let row = row_of(url, &reader.host_id(), |row| {
        row["replayed_through"] == last
    })
    .await;
    assert_eq!(row["cursor"], last);
    // The writer's too (it skips its own operations, and reads past them).
    row_of(url, &writer.host_id(), |row| row["cursor"] == last).await;
    let json = ofx(url, &["hosts", "--json"]).await.json();
    assert_eq!(json["head"], last);

    // The table, and `lag`, its alias.
    for command in ["hosts", "lag"] {
        let table = ofx(url, &[command]).await.ok();
        assert!(table.starts_with(&format!("log head: {last}")), "{table}");
        assert!(
            table.contains("HOST") && table.contains("BEHIND"),
            "{table}"
        );
        let line = table
            .lines()
            .find(|line| line.starts_with(&reader.host_id()))
            .unwrap_or_else(|| panic!("no row for the reader: {table}"));
        assert!(line.contains("live"), "{line}");
    }

    // A hub that shuts down says so.
    let id = reader.host_id();
    drop(reader);
    let row = row_of(url, &id, |row| row["status"] == "stopped").await;
    assert!(row["stopped_at"].is_string(), "{row}");
    drop(writer);
}
