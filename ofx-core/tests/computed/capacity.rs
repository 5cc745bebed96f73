//! The bounded cache (eviction is invalidation) and hub isolation.

use ofx_core::{ComputedState, Hub, capture, invalidate};

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
async fn evicting_a_dependency_invalidates_its_dependents() {
    let store = Store::new(Hub::builder().capacity(8));
    let (_, sum) = capture(store.sum(60, 61)).await.unwrap();
    let dependencies = sum.dependencies();
    assert_eq!(dependencies.len(), 2);

    // Keep reading sum(60, 61) so that it is the recently used one; fill the cache with others.
    for key in 0..40 {
        store.value(key).await;
        store.sum(60, 61).await;
    }
    // The dependencies were not read since: they were evicted, and eviction is invalidation.
    for dependency in &dependencies {
        assert_eq!(dependency.state(), ComputedState::Invalidated);
    }
    assert_eq!(
        sum.state(),
        ComputedState::Invalidated,
        "a dependent outlived an evicted dependency"
    );

    // And invalidation still reaches whatever is cached now.
    let (_, fresh) = capture(store.sum(60, 61)).await.unwrap();
    store.set(60, 600);
    invalidate! { store.value(60); }
    assert_eq!(fresh.state(), ComputedState::Invalidated);
    assert_eq!(store.sum(60, 61).await, 661);
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
