//! The demo's service end to end on SQLite: commands, their invalidation branches, items and the
//! nested command, atomicity, and a second host replaying the log.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ofx_core::{ComputedState, Hub, capture};
use ofx_diesel::{DbHub, DbSettings, LogReader, Sqlite};
use todos::{AddTodo, CompleteTodo, Figures, RemoveTodo, RenameTodo, TodoError, Todos};

fn alice() -> String {
    "alice".to_owned()
}

fn temp_file() -> String {
    let path = std::env::temp_dir().join(format!(
        "ofx-todos-test-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    path.to_string_lossy().into_owned()
}

async fn host(path: &str, read: bool) -> (Hub, Arc<Todos>, Option<LogReader>) {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings.read_log = read;
    let db = DbHub::<Sqlite>::open(path, settings).await.unwrap();
    let (hub, todos) = Todos::start(db.clone()).await.unwrap();
    let reader = db.log_reader(&hub);
    (hub, todos, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_todo_recomputes_only_what_depends_on_it() {
    let (hub, todos, _) = host(&temp_file(), false).await;
    let commander = hub.commander();
    commander
        .call(AddTodo {
            owner: alice(),
            title: "a".into(),
        })
        .await
        .unwrap();
    commander
        .call(AddTodo {
            owner: alice(),
            title: "b".into(),
        })
        .await
        .unwrap();
    commander
        .call(AddTodo {
            owner: "bob".into(),
            title: "c".into(),
        })
        .await
        .unwrap();

    let (open, computed) = capture(todos.open_count(alice())).await.unwrap();
    assert_eq!(open, Ok(2));
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        3,
        "list + get(1) + get(2)"
    );
    assert_eq!(todos.open_count(alice()).await, Ok(2));
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        3,
        "served from the cache"
    );

    commander.call(CompleteTodo { id: 1 }).await.unwrap();
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(todos.open_count(alice()).await, Ok(1));
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        4,
        "only get(1) read the database again"
    );

    commander
        .call(RenameTodo {
            id: 2,
            title: "b2".into(),
        })
        .await
        .unwrap();
    assert_eq!(todos.get(2).await.unwrap().unwrap().title, "b2");
    commander.call(RemoveTodo { id: 2 }).await.unwrap();
    assert_eq!(
        todos.list(alice()).await,
        Ok(vec![1]),
        "the owner item reached the invalidation branch"
    );
    assert_eq!(todos.open_count(alice()).await, Ok(0));
    assert_eq!(
        todos.activity(alice()).await.unwrap(),
        vec!["added 1: a", "added 2: b", "removed 2"]
    );
    commander.call(CompleteTodo { id: 1 }).await.unwrap(); // done already: not counted again
    let figures = todos.figures(alice()).await.unwrap();
    assert_eq!(
        figures.figures,
        Figures {
            added: 2,
            completed: 1,
            removed: 1
        },
        "the history's state service counted each command once"
    );
    assert_eq!(
        figures.position, 5,
        "3 added (bob's too), 1 completed, 1 removed"
    );
    let view = todos.view(alice()).await.unwrap();
    assert_eq!(view.len(), 1);
    assert!(view[0].done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_changes_nothing() {
    let (hub, todos, _) = host(&temp_file(), false).await;
    let error = hub
        .commander()
        .call(RenameTodo {
            id: 99,
            title: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(
        error.handler_error::<TodoError>(),
        Some(TodoError::NotFound(99))
    ));
    let error = hub
        .commander()
        .call(AddTodo {
            owner: alice(),
            title: " ".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(
        error.handler_error::<TodoError>(),
        Some(TodoError::EmptyTitle)
    ));
    assert_eq!(todos.list(alice()).await, Ok(vec![]));
    assert_eq!(todos.activity(alice()).await, Ok(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_the_same_file_recomputes_after_the_log() {
    let path = temp_file();
    let (hub_a, _a, _) = host(&path, false).await;
    let (_hub_b, b, _reader) = host(&path, true).await;
    let (_, list_on_b) = capture(b.list(alice())).await.unwrap();
    let (_, activity_on_b) = capture(b.activity(alice())).await.unwrap();

    hub_a
        .commander()
        .call(AddTodo {
            owner: alice(),
            title: "a".into(),
        })
        .await
        .unwrap();
    for computed in [&list_on_b, &activity_on_b] {
        tokio::time::timeout(Duration::from_secs(10), computed.when_invalidated())
            .await
            .expect("host B's reader replays the operation, nested command included");
    }
    assert_eq!(b.list(alice()).await, Ok(vec![1]));
    // Host B's state service follows the history stream: its figures get there too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (figures, computed) = capture(b.figures(alice())).await.unwrap();
        if figures.unwrap().figures.added == 1 {
            break;
        }
        tokio::time::timeout_at(deadline.into(), computed.when_invalidated())
            .await
            .expect("host B's figures follow within 10 s");
    }
}
