//! `min_cache_duration`: "the evictor keeps a result at least `duration` after it was computed
//! (up to 24 days), even when the cache is over its capacity"; "Invalidation still removes it
//! at once". All on tokio's paused clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ofx_core::{
    ComputeService, Computed, ComputedState, EventCounter, Hub, capture, compute_method, invalidate,
};

struct Pressure {
    hub: Hub,
    events: EventCounter,
    values: Vec<AtomicU64>,
}

impl ComputeService for Pressure {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Pressure {
    fn new(capacity: usize) -> Self {
        let events = EventCounter::new();
        Self {
            hub: Hub::builder()
                .capacity(capacity)
                .event_listener(events.clone())
                .build()
                .unwrap(),
            events,
            values: (0..256).map(AtomicU64::new).collect(),
        }
    }

    #[compute_method]
    async fn value(&self, k: usize) -> u64 {
        self.values[k].load(Ordering::SeqCst)
    }

    /// Kept ten seconds, computed from `value(k)`.
    #[compute_method(min_cache_duration = "10s")]
    async fn kept_from(&self, k: usize) -> u64 {
        self.value(k).await + 1
    }

    /// Kept ten seconds, a leaf.
    #[compute_method(min_cache_duration = "10s")]
    async fn kept(&self, k: usize) -> u64 {
        self.values[k].load(Ordering::SeqCst)
    }

    /// Kept 1000 hours: more than the 24 days the documentation caps it at.
    #[compute_method(min_cache_duration = "1000h")]
    async fn kept_long(&self, k: usize) -> u64 {
        self.values[k].load(Ordering::SeqCst)
    }

    /// Read once: eviction pressure.
    #[compute_method]
    async fn cold(&self, id: u64) -> u64 {
        id
    }

    async fn pressure(&self, from: u64, count: u64) {
        for id in from..from + count {
            self.cold(id).await;
        }
    }
}

fn all_consistent(computeds: &[Computed]) -> bool {
    computeds.iter().all(Computed::is_consistent)
}

/// A kept value computed from another value survives eviction pressure: the evictor may not
/// take it through what it was computed from (evicting `value(k)` would invalidate it).
#[tokio::test(start_paused = true)]
async fn a_kept_value_survives_pressure_on_what_it_was_computed_from() {
    let p = Pressure::new(8);
    let mut kept = Vec::new();
    for k in 0..6 {
        kept.push(capture(p.kept_from(k)).await.unwrap().1);
    }
    p.pressure(0, 64).await;
    assert!(
        all_consistent(&kept),
        "kept within ten seconds: {kept:?}; evicted values: {}",
        p.events.evicted("Pressure::value")
    );
}

/// More kept values than the capacity: all stay within the duration; after it, the cache comes
/// back within its capacity.
#[tokio::test(start_paused = true)]
async fn more_kept_values_than_the_capacity_stay_then_the_cache_comes_back_within_it() {
    let p = Pressure::new(8);
    let mut kept = Vec::new();
    for k in 0..100 {
        kept.push(capture(p.kept(k)).await.unwrap().1);
    }
    p.pressure(0, 32).await;
    assert!(all_consistent(&kept));
    assert!(p.hub.cached_len() >= 100, "{}", p.hub.cached_len());

    tokio::time::advance(Duration::from_secs(11)).await;
    p.pressure(1_000, 64).await;
    assert!(
        p.hub.cached_len() <= p.hub.capacity(),
        "{} > {}",
        p.hub.cached_len(),
        p.hub.capacity()
    );
    assert_eq!(p.events.evicted("Pressure::kept"), 100);
}

/// A kept value whose dependency is invalidated goes at once.
#[tokio::test(start_paused = true)]
async fn a_kept_value_is_invalidated_at_once_through_its_dependency() {
    let p = Pressure::new(8);
    let (_, kept) = capture(p.kept_from(3)).await.unwrap();
    p.values[3].store(30, Ordering::SeqCst);
    invalidate! { p.value(3); }
    assert_eq!(kept.state(), ComputedState::Invalidated);
    assert_eq!(p.kept_from(3).await, 31);
}

/// The duration counts from each computation: a value recomputed 8s after the first keeps its
/// own ten seconds.
#[tokio::test(start_paused = true)]
async fn a_recomputed_kept_value_gets_a_duration_of_its_own() {
    let p = Pressure::new(4);
    let (_, first) = capture(p.kept(7)).await.unwrap();
    tokio::time::advance(Duration::from_secs(8)).await;
    invalidate! { p.kept(7); }
    assert_eq!(first.state(), ComputedState::Invalidated);
    let (_, second) = capture(p.kept(7)).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await; // 13s after the first, 5s after this one
    p.pressure(0, 32).await;
    assert!(second.is_consistent(), "5s old: kept");
}

/// "(up to 24 days)": a duration above 24 days still keeps values at least 24 days, not less.
#[tokio::test(start_paused = true)]
async fn a_duration_beyond_24_days_keeps_values_24_days() {
    let p = Pressure::new(4);
    let mut kept = Vec::new();
    for k in 0..8 {
        kept.push(capture(p.kept_long(k)).await.unwrap().1);
    }
    p.pressure(0, 32).await;
    assert!(all_consistent(&kept), "at once: {kept:?}");
    tokio::time::advance(Duration::from_secs(23 * 24 * 3600)).await;
    p.pressure(100, 32).await;
    assert!(all_consistent(&kept), "23 days later: {kept:?}");
}

/// A capacity of one: every kept value stays, cold ones go.
#[tokio::test(start_paused = true)]
async fn a_capacity_of_one_keeps_every_kept_value() {
    let p = Pressure::new(1);
    let mut kept = Vec::new();
    for k in 0..10 {
        kept.push(capture(p.kept(k)).await.unwrap().1);
        p.pressure(k as u64 * 10, 3).await;
    }
    assert!(all_consistent(&kept));
    assert!(p.hub.cached_len() <= 11, "{}", p.hub.cached_len());
}

/// The promise does not depend on how old the hub is: on hubs 25, 50 and 100 days old (past
/// 2^31 and 2^32 milliseconds), kept values are kept ten seconds and no longer.
#[tokio::test(start_paused = true)]
async fn an_old_hub_keeps_values_for_the_duration_and_no_longer() {
    for days in [25_u64, 50, 100] {
        let p = Pressure::new(8);
        tokio::time::advance(Duration::from_secs(days * 24 * 3600)).await;
        let mut kept = Vec::new();
        for k in 0..4 {
            kept.push(capture(p.kept(k)).await.unwrap().1);
        }
        p.pressure(0, 32).await;
        assert!(all_consistent(&kept), "{days} days: kept at once");
        tokio::time::advance(Duration::from_secs(11)).await;
        p.pressure(100, 32).await;
        assert!(
            kept.iter().all(|c| !c.is_consistent()),
            "{days} days: evicted after the duration: {kept:?}"
        );
        assert!(p.hub.cached_len() <= p.hub.capacity(), "{days} days");
    }
}
