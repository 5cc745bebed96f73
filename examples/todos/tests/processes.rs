//! Two OS processes on one SQLite file: nothing in-process can hide a bug. This process is host
//! A; `todos follow <db>` is host B and reports its cached value going stale and recomputed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Stdio;
use std::time::Duration;

use ofx_core::Hub;
use ofx_diesel::{DbHub, DbSettings, Sqlite};
use todos::{AddTodo, RemoveTodo, Todos};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_one_process_invalidates_the_cache_of_another() {
    let path = std::env::temp_dir().join(format!(
        "ofx-todos-processes-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<Sqlite>::open(&path, DbSettings::default())
        .await
        .unwrap();
    let hub = Hub::builder().filter(db.operation_scope()).build().unwrap();
    let _todos = Todos::open(&hub, db).await.unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_todos"))
        .args(["follow", &path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("host B answers within 20 s")
            .unwrap()
            .expect("host B is running")
    };
    assert_eq!(next().await, "ready []");

    hub.commander()
        .call(AddTodo {
            owner: "alice".into(),
            title: "a".into(),
        })
        .await
        .unwrap();
    assert_eq!(next().await, "invalidated [1]");
    hub.commander()
        .call(AddTodo {
            owner: "alice".into(),
            title: "b".into(),
        })
        .await
        .unwrap();
    assert_eq!(next().await, "invalidated [1, 2]");
    hub.commander().call(RemoveTodo { id: 1 }).await.unwrap();
    assert_eq!(next().await, "invalidated [2]");

    drop(child.stdin.take()); // host B stops when its input closes
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
