//! `events list`, `dead`, `redrive` and `purge` on a dead event.

use std::time::Duration;

use ofx_diesel::{DbHub, EventState};

use crate::common::{Host, NoteQueries, ScheduleDoomed, eventually, fast, ofx};

backend_tests! {
    dead_events_are_listed_redriven_and_purged => sqlite_dead_events, postgres_dead_events;
}

/// Waits until the event is dead (its run failed permanently).
async fn dead<B: NoteQueries>(url: &str, event: uuid::Uuid) {
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    eventually(Duration::from_secs(30), "the event to die", || async {
        let found = db.events().get(event).await.unwrap()?;
        (found.state == Some(EventState::Dead)).then_some(())
    })
    .await;
}

async fn dead_events_are_listed_redriven_and_purged<B: NoteQueries>(url: &str) {
    let host = Host::<B>::open(url).await;
    let (event, _, _) = host.call(ScheduleDoomed { id: 7 }).await;
    dead::<B>(url, event).await;
    // No host runs events while the command line changes them.
    drop(host);
    let uuid = event.to_string();

    let table = ofx(url, &["events", "list"]).await.ok();
    assert!(
        table.lines().next().unwrap().contains("LAST ERROR"),
        "{table}"
    );
    let line = table.lines().find(|line| line.starts_with(&uuid)).unwrap();
    assert!(
        line.contains("dead") && line.contains("notes.doomed"),
        "{line}"
    );
    assert!(line.contains("the doomed event fails"), "{line}");
    assert_eq!(
        ofx(url, &["events", "list", "--state", "pending"])
            .await
            .ok()
            .trim(),
        "(no events)"
    );
    let json = ofx(url, &["events", "dead", "--json"]).await.json();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 1, "{json}");
    assert_eq!(list[0]["uuid"], uuid);
    assert_eq!(list[0]["state"], "dead");
    assert_eq!(list[0]["command_name"], "notes.doomed");
    assert_eq!(list[0]["command"]["id"], 7);
    assert!(
        list[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("the doomed event fails"),
        "{json}"
    );
    assert!(list[0]["finished_at"].is_string());

    // Redriven: pending again, due now, attempts reset.
    let text = ofx(url, &["events", "redrive", &uuid]).await.ok();
    assert!(text.contains("redrove 1 dead event"), "{text}");
    let json = ofx(url, &["events", "list", "--state", "pending", "--json"])
        .await
        .json();
    assert_eq!(json[0]["uuid"], uuid, "{json}");
    assert_eq!(json[0]["attempts"], 0);
    assert_eq!(
        ofx(url, &["events", "dead", "--json"]).await.json(),
        serde_json::json!([])
    );
    // Only dead events can be redriven or purged.
    ofx(url, &["events", "purge", &uuid])
        .await
        .fails(1, &format!("no dead event {uuid}"));
    ofx(url, &["events", "redrive", &uuid])
        .await
        .fails(1, "no dead event");
    ofx(url, &["events", "purge"]).await.fails(2, "--all-dead");

    // A host runs it again: it dies again; purged.
    let host = Host::<B>::open(url).await;
    dead::<B>(url, event).await;
    drop(host);
    let json = ofx(url, &["events", "redrive", "--all-dead", "--json"])
        .await
        .json();
    assert_eq!(json["redriven"], 1);
    let host = Host::<B>::open(url).await;
    dead::<B>(url, event).await;
    drop(host);
    let json = ofx(url, &["events", "purge", "--all-dead", "--json"])
        .await
        .json();
    assert_eq!(json["purged"], 1);
    assert_eq!(
        ofx(url, &["events", "dead", "--json"]).await.json(),
        serde_json::json!([])
    );
    let text = ofx(url, &["events", "purge", "--all-dead"]).await.ok();
    assert!(text.contains("purged 0 dead events"), "{text}");
    ofx(url, &["events", "purge", &uuid])
        .await
        .fails(1, "no dead event");
}
