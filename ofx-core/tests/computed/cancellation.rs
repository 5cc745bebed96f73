//! Dropped callers and panicking bodies leave no key stuck.

use std::sync::atomic::Ordering;

use ofx_core::Hub;

use crate::common::Store;

#[tokio::test]
async fn dropping_the_leader_hands_the_computation_to_a_waiter() {
    let store = Store::new(Hub::builder());
    // Boxed, so that `drop(leader)` drops the future itself.
    let mut leader = Box::pin(store.gated(3));
    let waiter = store.gated(3);
    tokio::pin!(waiter);
    // Poll each once: the leader starts the body and blocks on the gate; the waiter waits.
    tokio::select! { biased; _ = &mut leader => panic!("the gate is closed"), () = async {} => {} }
    tokio::select! { biased; _ = &mut waiter => panic!("the gate is closed"), () = async {} => {} }
    assert_eq!(store.runs("gated"), 1);

    drop(leader);
    store.gate.add_permits(1);
    assert_eq!(waiter.await, 3, "the waiter still gets a value");
    assert_eq!(
        store.runs("gated"),
        2,
        "it computed it after the leader left"
    );
    store.gated(3).await;
    assert_eq!(store.runs("gated"), 2, "and it was cached");
}

#[tokio::test]
async fn a_dropped_sole_caller_leaves_no_computing_entry() {
    let store = Store::new(Hub::builder());
    {
        let caller = store.gated(5);
        tokio::pin!(caller);
        tokio::select! { biased; _ = &mut caller => panic!("the gate is closed"), () = async {} => {} }
        assert_eq!(
            store.hub.cached_len(),
            2,
            "gated(5) computing, value(5) cached"
        );
    }
    assert_eq!(store.hub.cached_len(), 1, "only value(5) is left");
    store.gate.add_permits(1);
    assert_eq!(store.gated(5).await, 5);
}

#[tokio::test]
async fn a_panicking_body_does_not_poison_the_key() {
    let store = Store::new(Hub::builder());
    store.panicking.store(true, Ordering::SeqCst);
    let panicked = tokio::spawn({
        let store = store.clone();
        async move { store.panicky(8).await }
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(store.hub.cached_len(), 0);

    store.panicking.store(false, Ordering::SeqCst);
    assert_eq!(store.panicky(8).await, 8);
    assert_eq!(store.runs("panicky"), 2);
}
