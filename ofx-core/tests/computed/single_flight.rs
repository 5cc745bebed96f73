//! Single flight and the invalidation race.

use ofx_core::{Hub, invalidate};
use tokio::task::JoinSet;

use crate::common::Store;

#[tokio::test]
async fn concurrent_callers_share_one_computation() {
    let store = Store::new(Hub::builder());
    let mut callers = JoinSet::new();
    for _ in 0..10 {
        let store = store.clone();
        callers.spawn(async move { store.gated(4).await });
    }
    // Let every caller start: the first leads and blocks on the gate, the others wait for it.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.runs("gated"), 1);
    store.gate.add_permits(1);
    let results: Vec<u64> = callers.join_all().await;
    assert_eq!(results, vec![4; 10]);
    assert_eq!(store.runs("gated"), 1, "the body ran once for ten callers");
}

#[tokio::test]
async fn a_value_whose_dependency_changed_while_computing_is_born_invalidated() {
    let store = Store::new(Hub::builder());
    let caller = tokio::spawn({
        let store = store.clone();
        async move { store.gated(1).await }
    });
    // Wait until `gated(1)` has read `value(1)` and blocks on the gate.
    store
        .events
        .wait_until(|events| events.computed("Store::value") == 1)
        .await;
    store.set(1, 10);
    invalidate! { store.value(1); }
    store.gate.add_permits(1);

    assert_eq!(
        caller.await.unwrap(),
        1,
        "the caller gets the value it waited for"
    );
    // ...but it was not cached as consistent: the next call computes again and sees the change.
    store.gate.add_permits(1);
    assert_eq!(store.gated(1).await, 10);
    assert_eq!(store.runs("gated"), 2);
}

#[tokio::test]
async fn invalidating_a_computing_value_makes_new_callers_compute_again() {
    let store = Store::new(Hub::builder());
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.gated(2).await }
    });
    store
        .events
        .wait_until(|events| events.computed("Store::gated") == 1)
        .await;
    store.set(2, 20);
    invalidate! { store.value(2); store.gated(2); }
    // A caller after the invalidation must not be handed the computation started before it.
    let second = tokio::spawn({
        let store = store.clone();
        async move { store.gated(2).await }
    });
    store
        .events
        .wait_until(|events| events.computed("Store::gated") == 2)
        .await;
    store.gate.add_permits(2);
    assert_eq!(first.await.unwrap(), 2);
    assert_eq!(second.await.unwrap(), 20);
}
