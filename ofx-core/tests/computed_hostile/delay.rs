//! `invalidation_delay`: "An invalidation of a cached result ... is carried out `delay` after
//! the first one asked for: until then the result is served and stays a dependency of what
//! reads it, and further invalidations are folded into that one. ... A result still computing
//! is invalidated at once (it is never cached)". All on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ofx_core::{
    ComputeService, ComputedState, EventCounter, Hub, capture, compute_method, invalidate,
};
use tokio::time::Instant;

use crate::lab::{Gates, PATIENCE};

struct Debounce {
    hub: Hub,
    events: EventCounter,
    values: Vec<AtomicU64>,
    gates: Arc<Gates>,
}

impl ComputeService for Debounce {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Debounce {
    fn new(keys: usize) -> Arc<Self> {
        let events = EventCounter::new();
        Arc::new(Self {
            hub: Hub::builder()
                .event_listener(events.clone())
                .build()
                .unwrap(),
            events,
            values: (0..keys as u64).map(AtomicU64::new).collect(),
            gates: Gates::new(),
        })
    }

    fn set(&self, k: usize, v: u64) {
        self.values[k].store(v, Ordering::SeqCst);
    }

    #[compute_method]
    async fn value(&self, k: usize) -> u64 {
        self.values[k].load(Ordering::SeqCst)
    }

    /// `value(k)`, invalidations put off by a second; gate `k % 64` after reading it.
    #[compute_method(invalidation_delay = "1s")]
    async fn debounced(&self, k: usize) -> u64 {
        let v = self.value(k).await;
        self.gates.pass(k % 64).await;
        v
    }

    #[compute_method]
    async fn above(&self, k: usize) -> u64 {
        self.debounced(k).await + 1000
    }

    #[compute_method]
    async fn other_above(&self, k: usize) -> u64 {
        self.debounced(k).await + 2000
    }

    /// Delayed too, reading a delayed value.
    #[compute_method(invalidation_delay = "1s")]
    async fn twice(&self, k: usize) -> u64 {
        self.debounced(k).await * 10
    }
}

/// A result still computing when what it read is invalidated is invalidated at once: it is
/// never cached, and the next call computes the new value without waiting for the delay.
#[tokio::test(start_paused = true)]
async fn a_value_computing_when_its_dependency_is_invalidated_is_never_cached() {
    let d = Debounce::new(8);
    let start = Instant::now();
    d.gates.hold(1);
    let reader = tokio::spawn({
        let d = Arc::clone(&d);
        async move { capture(d.debounced(1)).await.unwrap() }
    });
    d.gates.entered(1).await;
    d.set(1, 5);
    invalidate! { d.value(1); }
    d.gates.release(1);
    let (_, computed) = reader.await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        computed.state(),
        ComputedState::Invalidated,
        "a result still computing is invalidated at once"
    );
    assert_eq!(
        d.debounced(1).await,
        5,
        "the next call computes the new value"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// The same with the computing value itself named by `invalidate!`.
#[tokio::test(start_paused = true)]
async fn a_value_computing_when_invalidated_directly_is_never_cached() {
    let d = Debounce::new(8);
    d.gates.hold(2);
    let reader = tokio::spawn({
        let d = Arc::clone(&d);
        async move { capture(d.debounced(2)).await.unwrap() }
    });
    d.gates.entered(2).await;
    d.set(2, 7);
    invalidate! { d.debounced(2); d.value(2); }
    d.gates.release(2);
    let (_, computed) = reader.await.unwrap();
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(d.debounced(2).await, 7);
}

/// "stays a dependency of what reads it": a dependent first computed during the delay, from
/// the old value, is invalidated with it.
#[tokio::test(start_paused = true)]
async fn a_dependent_first_computed_during_the_delay_is_invalidated_with_the_value() {
    let d = Debounce::new(8);
    let (_, debounced) = capture(d.debounced(3)).await.unwrap();
    d.set(3, 9);
    invalidate! { d.value(3); }
    tokio::time::advance(Duration::from_millis(500)).await;
    let (served, dependent) = capture(d.other_above(3)).await.unwrap();
    assert_eq!(served, 2003, "the old value, served within the delay");
    debounced.when_invalidated().await;
    assert_eq!(dependent.state(), ComputedState::Invalidated);
    assert_eq!(d.other_above(3).await, 2009);
}

/// A dependent invalidated on its own and recomputed during the delay (from the old value) is
/// invalidated when the delay ends.
#[tokio::test(start_paused = true)]
async fn a_dependent_recomputed_during_the_delay_is_invalidated_with_the_value() {
    let d = Debounce::new(8);
    let (_, debounced) = capture(d.debounced(4)).await.unwrap();
    let (_, first) = capture(d.above(4)).await.unwrap();
    d.set(4, 10);
    invalidate! { d.value(4); }
    tokio::time::advance(Duration::from_millis(200)).await;
    invalidate! { d.above(4); }
    assert_eq!(
        first.state(),
        ComputedState::Invalidated,
        "not delayed itself"
    );
    let (served, second) = capture(d.above(4)).await.unwrap();
    assert_eq!(served, 1004);
    debounced.when_invalidated().await;
    assert_eq!(second.state(), ComputedState::Invalidated);
    assert_eq!(d.above(4).await, 1010);
}

/// After a delayed invalidation was carried out, the next value's invalidation is put off by a
/// full delay again, from its own first request.
#[tokio::test(start_paused = true)]
async fn a_second_round_of_invalidations_is_delayed_again() {
    let d = Debounce::new(8);
    let (_, first) = capture(d.debounced(5)).await.unwrap();
    d.set(5, 11);
    invalidate! { d.value(5); }
    first.when_invalidated().await;
    let (served, second) = capture(d.debounced(5)).await.unwrap();
    assert_eq!(served, 11);
    tokio::time::advance(Duration::from_millis(300)).await;
    let start = Instant::now();
    d.set(5, 12);
    invalidate! { d.value(5); }
    tokio::time::advance(Duration::from_millis(900)).await;
    assert!(second.is_consistent(), "served within the second delay");
    assert_eq!(d.debounced(5).await, 11);
    second.when_invalidated().await;
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(d.debounced(5).await, 12);
}

/// The timer of a value replaced meanwhile (`invalidate_everything`, then a new computation)
/// does not invalidate its successor, which nobody asked to invalidate.
#[tokio::test(start_paused = true)]
async fn the_timer_of_a_replaced_value_leaves_its_successor_alone() {
    let d = Debounce::new(8);
    let (_, first) = capture(d.debounced(6)).await.unwrap();
    invalidate! { d.value(6); }
    d.hub.invalidate_everything();
    assert_eq!(first.state(), ComputedState::Invalidated);
    let (_, second) = capture(d.debounced(6)).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert!(
        second.is_consistent(),
        "the successor was not invalidated: {second:?}"
    );
    assert_eq!(d.events.invalidated("Debounce::debounced"), 1);
}

/// A chain of delayed values: a change reaches the top after both delays, and everything is
/// fresh then.
#[tokio::test(start_paused = true)]
async fn a_chain_of_delayed_values_settles_to_fresh_values() {
    let d = Debounce::new(8);
    let (_, top) = capture(d.twice(7)).await.unwrap();
    let start = Instant::now();
    d.set(7, 3);
    invalidate! { d.value(7); }
    top.when_invalidated().await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(d.twice(7).await, 30);
    assert_eq!(d.debounced(7).await, 3);
}

/// Many keys, each invalidated several times in one burst: each is invalidated once, a delay
/// after its first request, and all read fresh afterwards.
#[tokio::test(start_paused = true)]
async fn many_keys_are_each_invalidated_once_after_the_delay() {
    const KEYS: usize = 2_000;
    let d = Debounce::new(KEYS);
    let mut computeds = Vec::new();
    for k in 0..KEYS {
        computeds.push(capture(d.above(k)).await.unwrap().1);
    }
    for round in 0..3_u64 {
        for k in 0..KEYS {
            d.set(k, k as u64 + 10_000 * (round + 1));
            invalidate! { d.value(k); }
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(
        computeds.iter().all(|c| c.is_consistent()),
        "served within the delay"
    );
    tokio::time::advance(Duration::from_millis(701)).await;
    for c in &computeds {
        tokio::time::timeout(PATIENCE, c.when_invalidated())
            .await
            .expect("invalidated after the delay");
    }
    assert_eq!(d.events.invalidated("Debounce::debounced"), KEYS as u64);
    for k in 0..KEYS {
        assert_eq!(d.above(k).await, k as u64 + 31_000);
    }
}

/// The hub (with the service) is dropped while a delayed invalidation is pending: the handle the
/// test kept is still invalidated when the delay ends.
#[tokio::test(start_paused = true)]
async fn a_delayed_invalidation_is_carried_out_after_the_hub_is_dropped() {
    let d = Debounce::new(8);
    let (_, computed) = capture(d.debounced(0)).await.unwrap();
    invalidate! { d.value(0); }
    drop(d);
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(computed.state(), ComputedState::Invalidated);
}

/// A pending delayed invalidation does not keep a dropped hub alive ("Background work started
/// by a hub stops when its last handle is dropped").
#[tokio::test(start_paused = true)]
async fn a_pending_delayed_invalidation_does_not_keep_the_hub_alive() {
    let d = Debounce::new(8);
    let weak = d.hub.downgrade();
    let (_, computed) = capture(d.debounced(0)).await.unwrap();
    invalidate! { d.value(0); }
    drop(computed);
    drop(d);
    assert!(
        weak.upgrade().is_none(),
        "the hub is dropped with its last handle"
    );
}

/// The runtime the delay's timer was waiting on shuts down before it fires: the invalidation
/// asked for must still be carried out. It is lost instead: the value stays consistent for
/// good, and every later invalidation, on a live runtime, is folded into the lost one.
#[test]
fn a_delayed_invalidation_survives_the_runtime_that_scheduled_it() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let d = Debounce::new(8);
    let first = paused();
    let (_, computed) = first.block_on(async {
        let captured = capture(d.debounced(1)).await.unwrap();
        invalidate! { d.debounced(1); }
        captured
    });
    drop(first);

    paused().block_on(async {
        invalidate! { d.debounced(1); }
        tokio::time::timeout(PATIENCE, computed.when_invalidated())
            .await
            .expect("invalidated a delay after the invalidations asked for");
    });
}

/// A hub 30 days old (past 2^31 ms) delays by the delay, not by more or less.
#[tokio::test(start_paused = true)]
async fn an_old_hub_delays_by_the_delay() {
    let d = Debounce::new(8);
    tokio::time::advance(Duration::from_secs(30 * 24 * 3600)).await;
    let (_, computed) = capture(d.debounced(2)).await.unwrap();
    invalidate! { d.value(2); }
    tokio::time::advance(Duration::from_millis(900)).await;
    assert!(computed.is_consistent());
    let start = Instant::now();
    computed.when_invalidated().await;
    assert!(
        start.elapsed() <= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}
