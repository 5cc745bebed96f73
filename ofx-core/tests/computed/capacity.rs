//! The bounded cache (eviction is invalidation) and hub isolation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ofx_core::{ComputeService, Hub, capture, compute_method, invalidate};

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

/// The evictor's "read since the hand passed" mark is cleared as the hand passes: a value read
/// many times, then no more, is evicted by later sweeps like any value read once.
#[tokio::test]
async fn a_value_no_longer_read_loses_its_second_chance() {
    let store = Store::new(Hub::builder().capacity(8));
    let (_, once_hot) = capture(store.value(63)).await.unwrap();
    for _ in 0..100 {
        store.value(63).await;
    }
    // Read on every step while the cache turns over: kept (the mark is set again after each
    // pass of the hand clears it).
    for key in 0..40 {
        store.value(key).await;
        store.value(63).await;
    }
    assert!(
        once_hot.is_consistent(),
        "a value read on every step was kept"
    );
    // Then never read again: the hand clears its mark, then takes it.
    for key in 40..63 {
        store.value(key).await;
    }
    assert!(
        !once_hot.is_consistent(),
        "a value no longer read was evicted after the hand's passes"
    );
    assert_eq!(
        store.value(63).await,
        63,
        "and it is computed again when asked"
    );
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

/// A value that counts the live instances of its kind.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Reports {
    hub: Hub,
    live: Arc<AtomicUsize>,
}

impl ComputeService for Reports {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Reports {
    #[compute_method]
    async fn report(&self) -> Arc<Counted> {
        self.live.fetch_add(1, Ordering::SeqCst);
        Arc::new(Counted(Arc::clone(&self.live)))
    }
}

#[tokio::test]
async fn invalidated_values_are_freed_within_a_bound() {
    let reports = Reports {
        hub: Hub::new().unwrap(),
        live: Arc::new(AtomicUsize::new(0)),
    };
    // A removed entry of the table is dropped when its bucket (32 entries) needs the room and
    // the readers that might still see it have moved on (threads of other tests, reading
    // meanwhile, put that off for a while): the count of old values comes back down to a few
    // dozen, never grows for good.
    let mut rounds = 0;
    loop {
        // The second call is a hit, which publishes the value in the table's slot.
        drop(reports.report().await);
        drop(reports.report().await);
        invalidate! { reports.report(); }
        rounds += 1;
        let live = reports.live.load(Ordering::SeqCst);
        if rounds >= 1_000 && live <= 64 {
            break;
        }
        assert!(rounds < 100_000, "{live} values of one key still alive");
    }
    drop(reports.report().await);
    drop(reports);
    // Invalidated or not, a hub's values go with it.
    let live = Arc::new(AtomicUsize::new(0));
    let reports = Reports {
        hub: Hub::new().unwrap(),
        live: Arc::clone(&live),
    };
    drop(reports.report().await);
    drop(reports.report().await);
    drop(reports);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "a dropped hub keeps no value"
    );
}
