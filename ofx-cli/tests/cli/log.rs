//! `tail`, `inspect` and `trim` on a log of known commands.

use crate::common::{AddNote, AddTwo, Host, NoteQueries, ofx};

backend_tests! {
    tail_inspect_and_trim => sqlite_tail_inspect_and_trim, postgres_tail_inspect_and_trim;
}

async fn tail_inspect_and_trim<B: NoteQueries>(url: &str) {
    let host = Host::<B>::open(url).await;
    let mut operations = Vec::new();
    for id in 1..=3 {
        let (_, uuid, index) = host
            .call(AddNote {
                id,
                body: format!("note {id}"),
            })
            .await;
        operations.push((uuid, index));
    }
    let (_, nested_uuid, nested_index) = host
        .call(AddTwo {
            first: 10,
            second: 11,
        })
        .await;
    operations.push((nested_uuid, nested_index));

    // tail, as a table: the last two, oldest first.
    let table = ofx(url, &["tail", "-n", "2"]).await.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in ["INDEX", "UUID", "COMMAND", "HOST", "COMMITTED", "NESTED"] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(lines[1].contains(&operations[2].0.to_string()), "{table}");
    assert!(lines[1].contains("notes.add"), "{table}");
    assert!(lines[2].starts_with(&nested_index.to_string()), "{table}");
    assert!(lines[2].contains("notes.add_two"), "{table}");
    assert!(lines[2].contains(&host.host_id()), "{table}");
    assert!(
        lines[2].trim_end().ends_with('2'),
        "two nested commands: {table}"
    );

    // tail, as JSON: every operation, in index order.
    let json = ofx(url, &["--json", "tail"]).await.json();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 4, "{json}");
    for (entry, (uuid, index)) in list.iter().zip(&operations) {
        assert_eq!(entry["uuid"], uuid.to_string());
        assert_eq!(entry["index"], *index);
        assert_eq!(entry["host"], host.host_id());
        assert!(entry["committed_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(list[0]["command"], "notes.add");
    assert_eq!(list[0]["nested"], 0);
    assert_eq!(list[3]["nested"], 2);

    // inspect: the command, its items, its nested commands.
    let (first_uuid, first_index) = operations[0];
    let text = ofx(url, &["inspect", &first_uuid.to_string()]).await.ok();
    assert!(
        text.contains(&format!("index         {first_index}")),
        "{text}"
    );
    assert!(text.contains("notes.add"), "{text}");
    assert!(text.contains("\"body\": \"note 1\""), "{text}");
    assert!(text.contains("\"notes.length\": 6"), "{text}");
    assert!(text.contains("nested        (none)"), "{text}");
    let json = ofx(url, &["inspect", &nested_uuid.to_string(), "--json"])
        .await
        .json();
    assert_eq!(json["index"], nested_index);
    assert_eq!(json["uuid"], nested_uuid.to_string());
    assert_eq!(json["command_name"], "notes.add_two");
    assert_eq!(json["command"]["first"], 10);
    assert_eq!(json["host"], host.host_id());
    let nested = json["nested"].as_array().unwrap();
    assert_eq!(nested.len(), 2, "{json}");
    assert_eq!(nested[0]["command_name"], "notes.add");
    assert_eq!(nested[1]["command"]["body"], "nested 11");
    assert_eq!(nested[1]["items"]["notes.length"], 9);
    assert!(json["logged_at"].as_str().unwrap() <= json["committed_at"].as_str().unwrap());

    // An unknown uuid, a malformed one.
    let unknown = uuid::Uuid::new_v4();
    ofx(url, &["inspect", &unknown.to_string()])
        .await
        .fails(1, &format!("no operation {unknown} in the log"));
    ofx(url, &["inspect", "not-a-uuid"])
        .await
        .fails(2, "invalid value");

    // trim: nothing is 1 h old; everything is older than 0 s.
    let json = ofx(url, &["trim", "--older-than", "1h", "--json"])
        .await
        .json();
    assert_eq!(json["operations"], 0, "{json}");
    let text = ofx(url, &["trim", "--older-than", "0s", "--events", "--hosts"])
        .await
        .ok();
    assert!(
        text.contains("trimmed 4 operations logged more than"),
        "{text}"
    );
    assert!(text.contains("trimmed 0 finished events"), "{text}");
    assert!(text.contains("deleted 0 silent host rows"), "{text}");
    assert_eq!(ofx(url, &["tail"]).await.ok().trim(), "(the log is empty)");
    assert_eq!(
        ofx(url, &["tail", "--json"]).await.json(),
        serde_json::json!([])
    );
    ofx(url, &["inspect", &first_uuid.to_string()])
        .await
        .fails(1, "trimmed since");
    drop(host);
}
