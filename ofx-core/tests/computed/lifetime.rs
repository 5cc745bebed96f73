//! Error lifetime and auto-invalidation, on tokio's paused clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ofx_core::{Hub, capture};

use crate::common::Store;

#[tokio::test(start_paused = true)]
async fn an_error_is_cached_for_its_lifetime_then_recomputed() {
    let store = Store::new(Hub::builder());
    store.failing.store(true, Ordering::SeqCst);
    let (first, computed) = capture(store.fallible(1)).await.unwrap();
    assert!(first.is_err());
    assert!(store.fallible(1).await.is_err());
    assert_eq!(store.runs("fallible"), 1, "the error is cached");

    tokio::time::advance(Duration::from_millis(900)).await;
    tokio::task::yield_now().await;
    assert!(
        computed.is_consistent(),
        "still cached before its lifetime (1 s by default)"
    );

    store.failing.store(false, Ordering::SeqCst);
    computed.when_invalidated().await;
    assert_eq!(store.fallible(1).await, Ok(1));
    assert_eq!(store.runs("fallible"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_success_is_not_expired() {
    let store = Store::new(Hub::builder());
    let (value, computed) = capture(store.fallible(2)).await.unwrap();
    assert_eq!(value, Ok(2));
    tokio::time::advance(Duration::from_secs(3600)).await;
    tokio::task::yield_now().await;
    assert!(computed.is_consistent());
}

#[tokio::test(start_paused = true)]
async fn the_error_lifetime_option_is_obeyed() {
    let store = Store::new(Hub::builder());
    let start = tokio::time::Instant::now();
    let (_, computed) = capture(store.fallible_longer()).await.unwrap();
    computed.when_invalidated().await;
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert!(start.elapsed() < Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn auto_invalidate_expires_every_value() {
    let store = Store::new(Hub::builder());
    let start = tokio::time::Instant::now();
    let (first, computed) = capture(store.tick()).await.unwrap();
    assert_eq!(store.tick().await, first);
    computed.when_invalidated().await;
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert_eq!(store.tick().await, first + 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_under_a_result_alias_expires_too() {
    let store = Store::new(Hub::builder());
    let start = tokio::time::Instant::now();
    let (value, computed) = capture(store.aliased()).await.unwrap();
    assert!(value.is_err());
    computed.when_invalidated().await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// How long `computed`, just captured, stays cached (on the paused clock).
async fn lifetime_of(computed: &ofx_core::Computed) -> Duration {
    let start = tokio::time::Instant::now();
    computed.when_invalidated().await;
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn an_error_marked_permanent_is_cached_for_the_permanent_lifetime() {
    let store = Store::new(Hub::builder());
    store.failing.store(true, Ordering::SeqCst);
    let (error, computed) = capture(store.guarded(1)).await.unwrap();
    assert!(error.unwrap_err().is_permanent());
    let lived = lifetime_of(&computed).await;
    assert!(
        lived >= Duration::from_secs(30) && lived < Duration::from_secs(31),
        "30 s by default: {lived:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_methods_own_classifier_picks_the_lifetime() {
    let store = Store::new(Hub::builder());
    let (busy, computed) = capture(store.lookup(1)).await.unwrap();
    assert_eq!(busy, Err(crate::common::LookupError::Busy));
    let lived = lifetime_of(&computed).await;
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(2),
        "transient: the error lifetime, 1 s: {lived:?}"
    );

    let (missing, computed) = capture(store.lookup(0)).await.unwrap();
    assert_eq!(missing, Err(crate::common::LookupError::Missing));
    let lived = lifetime_of(&computed).await;
    assert!(
        lived >= Duration::from_secs(10) && lived < Duration::from_secs(11),
        "permanent: permanent_error_lifetime, 10 s: {lived:?}"
    );

    let (found, computed) = capture(store.lookup(5)).await.unwrap();
    assert_eq!(found, Ok(5));
    tokio::time::advance(Duration::from_secs(3600)).await;
    tokio::task::yield_now().await;
    assert!(computed.is_consistent(), "a value does not expire");
}

#[tokio::test(start_paused = true)]
async fn a_std_error_not_marked_permanent_is_transient() {
    let store = Store::new(Hub::builder());
    store.failing.store(true, Ordering::SeqCst);
    let (error, computed) = capture(store.denied()).await.unwrap();
    assert!(error.is_err());
    let lived = lifetime_of(&computed).await;
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(2),
        "the error lifetime, 1 s: {lived:?}"
    );
}
