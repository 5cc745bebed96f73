//! The demo's service end to end: commands, their invalidation branches, items and the nested
//! command, and a replay on a second hub.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ofx_core::{ComputedState, Hub, Operation, capture};
use todos::{AddTodo, CompleteTodo, RemoveTodo, RenameTodo, TodoError, Todos};

fn alice() -> String {
    "alice".to_owned()
}

#[tokio::test]
async fn completing_a_todo_recomputes_only_what_depends_on_it() {
    let hub = Hub::new().unwrap();
    let todos = Todos::new(&hub);
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
    assert_eq!(open, 2);
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        3,
        "list + get(1) + get(2)"
    );
    assert_eq!(todos.open_count(alice()).await, 2);
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        3,
        "served from the cache"
    );

    commander.call(CompleteTodo { id: 1 }).await.unwrap();
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(todos.open_count(alice()).await, 1);
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        4,
        "only get(1) read the store again"
    );

    commander
        .call(RenameTodo {
            id: 2,
            title: "b2".into(),
        })
        .await
        .unwrap();
    assert_eq!(todos.get(2).await.unwrap().title, "b2");
    commander.call(RemoveTodo { id: 2 }).await.unwrap();
    assert_eq!(
        todos.list(alice()).await,
        vec![1],
        "the owner item reached the invalidation branch"
    );
    assert_eq!(todos.open_count(alice()).await, 0);
    assert_eq!(
        todos.activity(alice()).await,
        vec!["added 1: a", "added 2: b", "removed 2"]
    );
}

#[tokio::test]
async fn a_rejected_command_changes_nothing() {
    let hub = Hub::new().unwrap();
    let todos = Todos::new(&hub);
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
    assert!(todos.list(alice()).await.is_empty());
    assert!(todos.activity(alice()).await.is_empty());
}

#[tokio::test]
async fn a_second_hub_replays_the_operation() {
    struct Collect(Arc<Mutex<Vec<Operation>>>);
    impl ofx_core::operation::CompletionListener for Collect {
        fn on_operation_completed(&self, operation: &Operation, _local: bool) {
            self.0.lock().unwrap().push(operation.clone());
        }
    }
    let operations = Arc::new(Mutex::new(Vec::new()));
    let hub_a = Hub::builder()
        .completion_listener(Collect(operations.clone()))
        .build()
        .unwrap();
    let hub_b = Hub::new().unwrap();
    let _a = Todos::new(&hub_a);
    let b = Todos::new(&hub_b);
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
    let json = operations.lock().unwrap()[0].to_json().unwrap();
    hub_b
        .commander()
        .replay(&Operation::from_json(&json).unwrap())
        .await
        .unwrap();
    assert!(!list_on_b.is_consistent());
    assert!(
        !activity_on_b.is_consistent(),
        "the nested LogActivity was replayed"
    );
}
