//! The bounded cache (eviction is invalidation) and hub isolation.

use ofx_core::{Hub, capture, invalidate};

use crate::common::Store;

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let store = Store::new(Hub::builder().capacity(16));
    for key in 0..64 {
        store.value(key).await;
        assert!(
            store.hub.cached_len() <= 16,
            "{} > 16",
            store.hub.cached_len()
        );
    }
}

#[tokio::test]
async fn recently_read_values_survive_eviction() {
    let store = Store::new(Hub::builder().capacity(8));
    let (_, hot) = capture(store.value(63)).await.unwrap();
    for key in 0..40 {
        store.value(key).await;
        store.value(63).await;
    }
    assert!(hot.is_consistent(), "a value read on every step was kept");
}

#[tokio::test]
async fn two_hubs_are_two_hosts_with_separate_caches() {
    let a = Store::new(Hub::builder());
    let b = Store::new(Hub::builder());
    assert_ne!(a.hub.host_id(), b.hub.host_id());
    a.set(0, 1);
    b.set(0, 2);
    assert_eq!(a.value(0).await, 1);
    assert_eq!(b.value(0).await, 2);
    let (_, on_b) = capture(b.value(0)).await.unwrap();
    invalidate! { a.value(0); }
    assert!(
        on_b.is_consistent(),
        "invalidating on hub A leaves hub B's value"
    );
    assert_eq!(b.value(0).await, 2);
    assert_eq!(b.runs("value"), 1);
}
