//! `tail --follow`: a line per operation as it commits; stops on SIGTERM, Ctrl-C (SIGINT), and
//! a closed standard output.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::common::{AddNote, Host, NoteQueries, command};

backend_tests! {
    follow_prints_operations_as_they_commit => sqlite_follow, postgres_follow;
}

/// The next line of `lines`, within 20 s.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line within 20 s")
        .unwrap()
        .expect("the output goes on")
}

/// Starts `ofx tail --follow` with `extra` arguments.
fn start(url: &str, extra: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut args = vec!["--database-url", url, "tail", "-f", "--interval", "50ms"];
    args.extend_from_slice(extra);
    let mut child = command(&args).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout).lines())
}

/// Sends `signal` to the child and awaits its clean exit.
async fn stop(mut child: Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("ofx stops within 20 s")
        .unwrap();
    assert!(status.success(), "{signal}: {status:?}");
}

async fn follow_prints_operations_as_they_commit<B: NoteQueries>(url: &str) {
    let host = Host::<B>::open(url).await;
    let (_, before, _) = host
        .call(AddNote {
            id: 1,
            body: "before".to_owned(),
        })
        .await;

    // A table: the header, the last operation, then each new one.
    let (child, mut lines) = start(url, &["-n", "1"]);
    assert!(next_line(&mut lines).await.starts_with("INDEX"));
    assert!(next_line(&mut lines).await.contains(&before.to_string()));
    for id in 2..=3 {
        let (_, uuid, index) = host
            .call(AddNote {
                id,
                body: "followed".to_owned(),
            })
            .await;
        let line = next_line(&mut lines).await;
        assert!(
            line.starts_with(&format!("{index}  {uuid}  notes.add")),
            "{line}"
        );
    }
    stop(child, "-TERM").await;

    // JSON lines; Ctrl-C stops it.
    let (child, mut lines) = start(url, &["-n", "1", "--json"]);
    // The last operation first: the head is read, whatever commits next is followed.
    let line = next_line(&mut lines).await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["command"], "notes.add", "{line}");
    let (_, uuid, index) = host
        .call(AddNote {
            id: 4,
            body: "json".to_owned(),
        })
        .await;
    let line = next_line(&mut lines).await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["index"], index, "{line}");
    assert_eq!(json["uuid"], uuid.to_string());
    assert_eq!(json["command"], "notes.add");
    assert_eq!(json["nested"], 0);
    assert!(json["committed_at"].is_string());
    stop(child, "-INT").await;

    // A closed standard output ends it at the next line.
    let (mut child, mut lines) = start(url, &["-n", "1"]);
    next_line(&mut lines).await;
    next_line(&mut lines).await;
    drop(lines);
    host.call(AddNote {
        id: 5,
        body: "unread".to_owned(),
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("ofx stops within 20 s of its output closing")
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(host);
}
