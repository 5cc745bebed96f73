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
    let db = DbHub::<Sqlite>::open(&path, writer_settings())
        .await
        .unwrap();
    let (hub, _todos) = Todos::start(db).await.unwrap();

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

/// The randomized check across processes: host A (this process) runs a mix of commands; host B
/// (`todos check <db>`, caching all along) must then serve exactly what a fresh host computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_many_commands_the_other_process_serves_no_stale_value() {
    use rand::Rng;
    use todos::CompleteTodo;

    let path = std::env::temp_dir().join(format!(
        "ofx-todos-check-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<Sqlite>::open(&path, writer_settings())
        .await
        .unwrap();
    let (hub, todos) = Todos::start(db.clone()).await.unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_todos"))
        .args(["check", &path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ask = async |index: i64| {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(format!("check {index}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("host B answers within 30 s")
            .unwrap()
            .expect("host B is running")
    };
    assert_eq!(
        ask(0).await,
        "open=0 todos=[]",
        "host B caches the empty state first"
    );

    let commander = hub.commander();
    let mut operations = 0;
    for step in 0..300 {
        let (choice, id) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..10),
                rng.random_range(1..=(step / 3 + 1)),
            )
        };
        let result = match choice {
            0..=4 => commander
                .call(AddTodo {
                    owner: "alice".into(),
                    title: format!("t{step}"),
                })
                .await
                .map(|_| ()),
            5..=6 => commander.call(CompleteTodo { id }).await.map(|_| ()),
            7 => commander.call(RemoveTodo { id }).await,
            _ => commander
                .call(todos::RenameTodo {
                    id,
                    title: format!("r{step}"),
                })
                .await
                .map(|_| ()),
        };
        if result.is_ok() {
            operations += 1;
        }
        if step % 50 == 0 {
            ask(0).await; // host B reads (and caches) while the commands go on
        }
    }
    // Every successful command logged one operation (plus a nested one for add and remove):
    // wait for the last index, then compare with a host whose cache is fresh.
    let last: i64 = {
        use diesel_async::RunQueryDsl;
        let mut connection = db.connection().await.unwrap();
        diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT MAX(idx) FROM ofx_operations)",
        ))
        .get_result(&mut *connection)
        .await
        .unwrap()
    };
    assert!(operations > 100 && last >= operations);
    // A hub without a reader: its values are computed fresh from the database.
    let fresh_hub = Hub::new().unwrap();
    let fresh = Todos::open(&fresh_hub, db.clone(), todos.history().clone())
        .await
        .unwrap();
    let expected = todos_snapshot(&fresh).await;
    assert_eq!(
        ask(last).await,
        expected,
        "host B's cached values equal a fresh computation"
    );
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// The same line `todos check` prints.
async fn todos_snapshot(todos: &Todos) -> String {
    let alice = || "alice".to_owned();
    let ids = todos.list(alice()).await.unwrap();
    let mut items = Vec::new();
    for id in &ids {
        if let Some(todo) = todos.get(*id).await.unwrap() {
            items.push(format!("{}:{}:{}", todo.id, todo.title, todo.done));
        }
    }
    format!(
        "open={} todos=[{}]",
        todos.open_count(alice()).await.unwrap(),
        items.join(",")
    )
}

/// The test process only writes: no log reader of its own.
fn writer_settings() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.read_log = false;
    settings
}
