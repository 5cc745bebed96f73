//! The demo's service end to end: caching, dependency, invalidation and recomputation.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::Ordering;

use ofx_core::{ComputedState, Hub, capture};
use todos::Todos;

#[tokio::test]
async fn completing_a_todo_recomputes_only_what_depends_on_it() {
    let todos = Todos::new(Hub::new().unwrap());
    todos.add("alice", "a");
    todos.add("alice", "b");
    todos.add("bob", "c");

    let (open, computed) = capture(todos.open_count("alice".to_owned())).await.unwrap();
    assert_eq!(open, 2);
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        3,
        "list + get(1) + get(2)"
    );
    assert_eq!(todos.open_count("alice".to_owned()).await, 2);
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        3,
        "served from the cache"
    );

    todos.complete(1);
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(todos.open_count("alice".to_owned()).await, 1);
    assert_eq!(
        todos.reads.load(Ordering::SeqCst),
        4,
        "only get(1) read the store again"
    );

    todos.add("alice", "d");
    assert_eq!(todos.open_count("alice".to_owned()).await, 2);
}
