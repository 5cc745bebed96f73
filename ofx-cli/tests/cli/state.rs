//! `state status` and `state quarantine`: a stream, its snapshot, a quarantined event.

use std::time::Duration;

use crate::common::{Append, Host, NoteQueries, TallyEvent, ofx};

backend_tests! {
    state_tables_are_shown => sqlite_state_tables_are_shown, postgres_state_tables_are_shown;
}

async fn state_tables_are_shown<B: NoteQueries>(url: &str) {
    // Before anything: empty sections.
    let text = ofx(url, &["state", "status"]).await.ok();
    assert!(text.contains("STREAMS\n(none)"), "{text}");
    assert_eq!(
        ofx(url, &["state", "quarantine"]).await.ok().trim(),
        "(no quarantined events)"
    );

    let host = Host::<B>::open(url).await;
    tokio::time::timeout(Duration::from_secs(30), host.notes.tally.ready())
        .await
        .unwrap()
        .unwrap();
    host.call(Append {
        events: vec![TallyEvent::Add(2), TallyEvent::Poison, TallyEvent::Add(3)],
    })
    .await;
    assert_eq!(*host.notes.tally.current_state().await.unwrap(), 5);
    assert_eq!(host.notes.tally.save_snapshot().await.unwrap(), Some(3));

    let json = ofx(url, &["state", "status", "--json"]).await.json();
    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{json}");
    assert_eq!(streams[0]["stream"], "tally");
    assert_eq!(streams[0]["head"], 3);
    assert_eq!(streams[0]["events"], 3);
    assert!(streams[0]["last_appended_at"].is_string());
    let snapshot = &json["snapshots"][0];
    assert_eq!(snapshot["projection"], "tally", "{json}");
    assert_eq!(snapshot["version"], 1);
    assert_eq!(snapshot["position"], 3);
    let quarantine = &json["quarantine"][0];
    assert_eq!(quarantine["projection"], "tally", "{json}");
    assert_eq!(quarantine["stream"], "tally");
    assert_eq!(quarantine["count"], 1);

    let text = ofx(url, &["state", "status"]).await.ok();
    for expected in ["STREAMS", "SNAPSHOTS", "QUARANTINE", "HEAD", "POSITION"] {
        assert!(text.contains(expected), "{text}");
    }
    let json = ofx(url, &["state", "quarantine", "-n", "5", "--json"])
        .await
        .json();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json[0]["position"], 2);
    assert_eq!(json[0]["kind"], "rejected");
    assert!(
        json[0]["reason"]
            .as_str()
            .unwrap()
            .contains("poison is never applied")
    );
    let table = ofx(url, &["state", "quarantine"]).await.ok();
    let line = table.lines().nth(1).unwrap();
    assert!(
        line.starts_with("tally") && line.contains("rejected"),
        "{table}"
    );
    drop(host);
}
