//! The invalidation delay and the minimum cache duration, on tokio's paused clock.

use std::time::Duration;

use ofx_core::{ComputedState, Hub, capture, invalidate};

use crate::common::Store;

#[tokio::test(start_paused = true)]
async fn a_delayed_invalidation_serves_the_old_value_until_the_delay_then_happens_once() {
    let store = Store::new(Hub::builder());
    let (value, debounced) = capture(store.debounced(1)).await.unwrap();
    assert_eq!(value, 1);
    let (above, dependent) = capture(store.above_debounced(1)).await.unwrap();
    assert_eq!(above, 2);

    // A burst of changes: the first starts the delay, the others fold into it.
    let start = tokio::time::Instant::now();
    for round in 0..5_u64 {
        store.set(1, 10 + round);
        invalidate! { store.value(1); }
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            store.debounced(1).await,
            1,
            "round {round}: the old value is served within the delay"
        );
        assert!(debounced.is_consistent());
        assert!(
            dependent.is_consistent(),
            "round {round}: and what reads it"
        );
    }
    assert_eq!(store.runs("debounced"), 1);

    debounced.when_invalidated().await;
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_millis(1100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        dependent.state(),
        ComputedState::Invalidated,
        "its dependents follow it"
    );
    assert_eq!(
        store.events.invalidated("Store::debounced"),
        1,
        "one invalidation"
    );
    assert_eq!(store.debounced(1).await, 14, "the latest value");
    assert_eq!(store.above_debounced(1).await, 15);
    assert_eq!(store.runs("debounced"), 2);
}

#[tokio::test(start_paused = true)]
async fn the_delay_applies_to_direct_invalidation_but_not_to_invalidate_everything() {
    let store = Store::new(Hub::builder());
    let (_, debounced) = capture(store.debounced(2)).await.unwrap();
    invalidate! { store.debounced(2); }
    assert!(debounced.is_consistent(), "invalidate! is put off too");
    debounced.invalidate();
    assert!(debounced.is_consistent(), "and Computed::invalidate");
    store.hub.invalidate_everything();
    assert_eq!(debounced.state(), ComputedState::Invalidated, "at once");
    // The timer that was scheduled finds it invalidated already: nothing more happens.
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(store.events.invalidated("Store::debounced"), 1);
}

#[test]
fn without_a_runtime_to_wait_on_the_invalidation_happens_at_once() {
    let store = Store::new(Hub::builder());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (_, debounced) = runtime.block_on(capture(store.debounced(3))).unwrap();
    invalidate! { store.value(3); }
    assert_eq!(debounced.state(), ComputedState::Invalidated);
}

#[tokio::test(start_paused = true)]
async fn values_within_their_minimum_cache_duration_survive_eviction() {
    let store = Store::new(Hub::builder().capacity(8));
    let mut kept = Vec::new();
    for key in 0..4 {
        kept.push(capture(store.kept(key)).await.unwrap().1);
    }
    // Enough other values to evict everything else several times over.
    for key in 0..40 {
        store.value(key).await;
    }
    assert!(
        kept.iter().all(|computed| computed.is_consistent()),
        "kept through eviction within ten seconds"
    );
    assert!(
        store.events.evicted("Store::value") > 20,
        "the others were evicted: {}",
        store.events.evicted("Store::value")
    );
    assert_eq!(store.runs("kept"), 4);

    // Once the duration is over they are values like the others.
    tokio::time::advance(Duration::from_secs(11)).await;
    for key in 40..64 {
        store.value(key).await;
    }
    assert!(
        kept.iter().all(|computed| !computed.is_consistent()),
        "evicted after ten seconds"
    );
    assert!(store.hub.cached_len() <= 9, "{}", store.hub.cached_len());
}

#[tokio::test(start_paused = true)]
async fn a_kept_value_is_still_invalidated_at_once() {
    let store = Store::new(Hub::builder());
    let (_, kept) = capture(store.kept(5)).await.unwrap();
    invalidate! { store.kept(5); }
    assert_eq!(kept.state(), ComputedState::Invalidated);
}
