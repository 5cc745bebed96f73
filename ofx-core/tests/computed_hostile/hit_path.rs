//! The hit path: published values (a copy of a consistent value in its table slot, served
//! without reading the node), the "last dependency" shortcut of a computation reading the same
//! dependency again, and the evictor's per-slot "accessed" flag. Each test states one promise
//! and tries to break it from the public API: "a compute call that starts after an invalidation
//! returned never gets a value computed from what was invalidated", whatever the value's
//! options, whatever was published, whatever is in flight.

use std::any::type_name;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ofx_core::{
    ComputeScope, ComputeService, Computed, ComputedState, EventCounter, Hub, HubBuilder, capture,
    compute_method, invalidate, service,
};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

use crate::lab::{Gates, PATIENCE};

/// How many times `reread` and the tasks of `tasks` read their dependency.
const READS: usize = 3;
/// Gate of `reread(k)`: `REREAD + k`; of `xyx(a, _)`: `XYX + a`; of `tasks(k, _)`: `TASKS + k`;
/// of `split(k)`: `SPLIT + k` (k < 16 for each).
const REREAD: usize = 0;
const XYX: usize = 16;
const TASKS: usize = 32;
const SPLIT: usize = 48;

/// A value that counts its live copies (clones included: a published copy counts).
struct Live {
    value: u64,
    live: Arc<AtomicU64>,
}

impl Live {
    fn new(value: u64, live: &Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            value,
            live: Arc::clone(live),
        }
    }
}

impl Clone for Live {
    fn clone(&self) -> Self {
        Self::new(self.value, &self.live)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PartialEq for Live {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

struct Hits {
    hub: Hub,
    events: EventCounter,
    /// The "database": `value(k)` reads `data[k]`.
    data: Vec<AtomicU64>,
    gates: Arc<Gates>,
    /// Live `Live` values.
    live: Arc<AtomicU64>,
    /// `racing`'s tasks add a permit each after their first read.
    started: Semaphore,
    /// Set by the test once it invalidated what `racing` read: its tasks then stop reading.
    invalidated: AtomicBool,
    this: Weak<Self>,
}

impl ComputeService for Hits {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Hits {
    /// A leaf: reads the "database".
    #[compute_method]
    async fn value(&self, k: usize) -> u64 {
        self.data[k].load(Ordering::SeqCst)
    }

    /// A dependent of `value(k)`.
    #[compute_method]
    async fn above(&self, k: usize) -> u64 {
        self.value(k).await + 1000
    }

    /// A new computation for every `nonce` whose body reads `value(k)`.
    #[compute_method]
    async fn in_body(&self, k: usize, nonce: u64) -> u64 {
        let _ = nonce;
        self.value(k).await
    }

    /// Reads `value(k)` `READS` times (the same dependency again: the shortcut), then passes
    /// gate `REREAD + k`. Returns the first read.
    #[compute_method]
    async fn reread(&self, k: usize) -> u64 {
        let first = self.value(k).await;
        for _ in 1..READS {
            self.value(k).await;
        }
        self.gates.pass(REREAD + k).await;
        first
    }

    /// Reads `value(k)` twice, passes gate `SPLIT + k`, reads it twice again. Returns the
    /// first and the last read.
    #[compute_method]
    async fn split(&self, k: usize) -> (u64, u64) {
        let first = self.value(k).await;
        self.value(k).await;
        self.gates.pass(SPLIT + k).await;
        self.value(k).await;
        (first, self.value(k).await)
    }

    /// Reads `value(a)`, `value(b)`, `value(a)` again, then passes gate `XYX + a`.
    #[compute_method]
    async fn xyx(&self, a: usize, b: usize) -> (u64, u64) {
        let x = self.value(a).await;
        let y = self.value(b).await;
        self.value(a).await;
        self.gates.pass(XYX + a).await;
        (x, y)
    }

    /// Reads `value(k)`, then 20 other values (past the edges' linear scan), then `value(k)`
    /// twice again.
    #[compute_method]
    async fn wide(&self, k: usize) -> u64 {
        let first = self.value(k).await;
        let mut others = 0;
        for other in 200..220 {
            others += self.value(other).await;
        }
        self.value(k).await;
        self.value(k).await;
        first + others
    }

    /// `n` tasks of this computation (spawned with its `ComputeScope`) read `value(k)`
    /// `READS` times each; then gate `TASKS + k`. Returns the least first read.
    #[compute_method]
    async fn tasks(&self, k: usize, n: usize) -> u64 {
        let this = self.this.upgrade().unwrap();
        let scope = ComputeScope::current();
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let this = Arc::clone(&this);
                tokio::spawn(scope.clone().run(async move {
                    let first = this.value(k).await;
                    for _ in 1..READS {
                        tokio::task::yield_now().await;
                        this.value(k).await;
                    }
                    first
                }))
            })
            .collect();
        let mut least = u64::MAX;
        for handle in handles {
            least = least.min(handle.await.unwrap());
        }
        self.gates.pass(TASKS + k).await;
        least
    }

    /// Two tasks of this computation read `value(k)`, add a permit to `started`, and read it
    /// again and again until `invalidated` is set, then `READS` times more. Returns the least
    /// first read.
    #[compute_method]
    async fn racing(&self, k: usize, nonce: u64) -> u64 {
        let _ = nonce;
        let this = self.this.upgrade().unwrap();
        let scope = ComputeScope::current();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let this = Arc::clone(&this);
                tokio::spawn(scope.clone().run(async move {
                    let first = this.value(k).await;
                    this.started.add_permits(1);
                    while !this.invalidated.load(Ordering::SeqCst) {
                        this.value(k).await;
                        tokio::task::yield_now().await;
                    }
                    for _ in 0..READS {
                        this.value(k).await;
                    }
                    first
                }))
            })
            .collect();
        let mut least = u64::MAX;
        for handle in handles {
            least = least.min(handle.await.unwrap());
        }
        least
    }

    /// Invalidated two seconds after it is computed.
    #[compute_method(auto_invalidate = "2s")]
    async fn expiring(&self, k: usize) -> u64 {
        self.data[k].load(Ordering::SeqCst)
    }

    /// `value(k)`, its invalidations put off by a second.
    #[compute_method(invalidation_delay = "1s")]
    async fn delayed(&self, k: usize) -> u64 {
        self.value(k).await
    }

    #[compute_method]
    async fn above_delayed(&self, k: usize) -> u64 {
        self.delayed(k).await + 1000
    }

    /// A leaf kept through eviction for ten seconds.
    #[compute_method(min_cache_duration = "10s")]
    async fn kept(&self, k: usize) -> u64 {
        self.data[k].load(Ordering::SeqCst)
    }

    /// Consolidating: `value(k) / 10`.
    #[compute_method(consolidate)]
    async fn cons(&self, k: usize) -> u64 {
        self.value(k).await / 10
    }

    #[compute_method]
    async fn above_cons(&self, k: usize) -> u64 {
        self.cons(k).await + 1000
    }

    /// Reads `cons(k)` three times, passes gate `SPLIT + k`, reads it three times again.
    #[compute_method]
    async fn reread_cons(&self, k: usize) -> u64 {
        for _ in 0..READS {
            self.cons(k).await;
        }
        self.gates.pass(SPLIT + k).await;
        for _ in 1..READS {
            self.cons(k).await;
        }
        self.cons(k).await
    }

    /// `Err` while `data[k]` is 0, cached a second.
    #[compute_method(error_lifetime = "1s")]
    async fn checked(&self, k: usize) -> Result<u64, String> {
        match self.data[k].load(Ordering::SeqCst) {
            0 => Err(format!("{k} is zero")),
            v => Ok(v),
        }
    }

    /// A counted value for any key.
    #[compute_method]
    async fn live_value(&self, k: u64) -> Live {
        Live::new(k + self.data[0].load(Ordering::SeqCst), &self.live)
    }

    /// A counted dependent of `live_value(k)`.
    #[compute_method]
    async fn live_above(&self, k: u64) -> Live {
        let below = self.live_value(k).await;
        Live::new(below.value + 1000, &self.live)
    }
}

impl Hits {
    fn new() -> Arc<Self> {
        Self::build(Hub::builder())
    }

    fn small(capacity: usize) -> Arc<Self> {
        Self::build(Hub::builder().capacity(capacity))
    }

    fn build(builder: HubBuilder) -> Arc<Self> {
        let events = EventCounter::new();
        let hits = Arc::new_cyclic(|this| Self {
            hub: builder.event_listener(events.clone()).build().unwrap(),
            events,
            data: (0..256).map(|_| AtomicU64::new(0)).collect(),
            gates: Gates::new(),
            live: Arc::new(AtomicU64::new(0)),
            started: Semaphore::new(0),
            invalidated: AtomicBool::new(false),
            this: this.clone(),
        });
        hits.hub.add_service(&hits).unwrap();
        hits
    }

    fn set(&self, k: usize, v: u64) {
        self.data[k].store(v, Ordering::SeqCst);
    }

    /// How many times the body of `Hits::{method}` ran.
    fn runs(&self, method: &str) -> u64 {
        self.events.computed(&format!("Hits::{method}"))
    }

    fn live(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }
}

/// Reads `read()` until it returns `expected`: each value that differs must be invalidated
/// within `PATIENCE` (a consolidation may still be on its way), or it was left stale for good.
async fn settle<F, Fut>(mut read: F, expected: u64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    loop {
        let (value, computed) = capture(read()).await.unwrap();
        if value == expected {
            return;
        }
        timeout(PATIENCE, computed.when_invalidated())
            .await
            .unwrap_or_else(|_| {
                panic!("{computed:?} serves {value}, the data says {expected}, never invalidated")
            });
    }
}

/// Lets the tasks spawned on a current-thread runtime run until they wait.
async fn let_spawned_tasks_run() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// After `invalidate!` returns, no call returns the old value.
// ---------------------------------------------------------------------------------------------

/// A value read again and again (published) is never served by a call that starts after
/// `invalidate!` (or `Computed::invalidate`) returned: not by a plain call, not by a call in
/// another compute method's body, not through a dependent; in every order.
#[tokio::test]
async fn a_published_value_is_never_served_after_invalidate_returns() {
    let h = Hits::new();
    h.set(1, 10);
    for _ in 0..3 {
        assert_eq!(h.value(1).await, 10);
        assert_eq!(h.above(1).await, 1010);
    }
    assert_eq!(h.in_body(1, 0).await, 10);
    for round in 1..=60u64 {
        let (_, old) = capture(h.value(1)).await.unwrap();
        h.set(1, 10 + round);
        if round % 2 == 0 {
            invalidate! { h.value(1); }
        } else {
            old.invalidate();
        }
        assert_eq!(old.state(), ComputedState::Invalidated);
        // Which call comes first after the invalidation: the plain one, one in a body, or the
        // dependent.
        for step in 0..3 {
            match (round + step) % 3 {
                0 => assert_eq!(
                    h.value(1).await,
                    10 + round,
                    "a plain call after the invalidation returned (round {round})"
                ),
                1 => assert_eq!(
                    h.in_body(1, round).await,
                    10 + round,
                    "a call in a body after the invalidation returned (round {round})"
                ),
                _ => assert_eq!(
                    h.above(1).await,
                    1010 + round,
                    "a dependent after the invalidation returned (round {round})"
                ),
            }
        }
        // Published again for the next round.
        assert_eq!(h.value(1).await, 10 + round);
        assert_eq!(h.above(1).await, 1010 + round);
    }
    assert_eq!(h.runs("value"), 61, "one computation per invalidation");
    assert_eq!(h.runs("above"), 61);
}

/// A value published by hits inside bodies only (never read by a plain call) is never served
/// to a body after `invalidate!` returned.
#[tokio::test]
async fn a_value_published_by_reads_in_bodies_is_never_served_to_a_body_after_invalidate() {
    let h = Hits::new();
    let mut nonce = 0;
    for round in 0..40u64 {
        h.set(2, round);
        for _ in 0..3 {
            nonce += 1;
            assert_eq!(
                h.in_body(2, nonce).await,
                round,
                "a body read after invalidate! returned (round {round})"
            );
        }
        invalidate! { h.value(2); }
    }
}

/// `Computed::invalidate` on a stale handle of a value already replaced does not touch its
/// successor, and the successor's published value is current.
#[tokio::test]
async fn invalidating_a_replaced_handle_leaves_the_published_successor_current() {
    let h = Hits::new();
    h.set(3, 1);
    let (_, first) = capture(h.value(3)).await.unwrap();
    h.set(3, 2);
    invalidate! { h.value(3); }
    let (_, second) = capture(h.value(3)).await.unwrap();
    assert_eq!(h.value(3).await, 2);
    first.invalidate();
    assert!(second.is_consistent(), "the successor is left alone");
    assert_eq!(h.value(3).await, 2);
    h.set(3, 3);
    second.invalidate();
    assert_eq!(h.value(3).await, 3);
}

/// `auto_invalidate`: a published value is served until it expires, then never; an
/// `invalidate!` before it expires takes effect at once.
#[tokio::test(start_paused = true)]
async fn an_auto_invalidated_value_is_never_served_after_it_expires_or_is_invalidated() {
    let h = Hits::new();
    for round in 1..=5u64 {
        h.set(4, round);
        let start = Instant::now();
        let (value, computed) = capture(h.expiring(4)).await.unwrap();
        assert_eq!(value, round);
        assert_eq!(h.expiring(4).await, round);
        assert_eq!(h.expiring(4).await, round);
        h.set(4, round * 100);
        timeout(PATIENCE, computed.when_invalidated())
            .await
            .expect("an auto-invalidated value expires");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(
            h.expiring(4).await,
            round * 100,
            "a call after the expiry (round {round})"
        );
        assert_eq!(h.expiring(4).await, round * 100);
        // Before it expires, invalidate! takes effect at once.
        h.set(4, round * 1000);
        invalidate! { h.expiring(4); }
        assert_eq!(h.expiring(4).await, round * 1000);
        assert_eq!(h.expiring(4).await, round * 1000);
        // The next round starts once this value's lifetime ended (its timer fired).
        let (_, last) = capture(h.expiring(4)).await.unwrap();
        timeout(PATIENCE, last.when_invalidated())
            .await
            .expect("the last value expires");
    }
}

/// `invalidation_delay`: a published value named by an invalidation is served until the
/// delay ends, and then never again, nor are its dependents.
#[tokio::test(start_paused = true)]
async fn a_delayed_value_is_served_until_its_delay_ends_then_never() {
    let h = Hits::new();
    h.set(5, 1);
    let (_, delayed) = capture(h.delayed(5)).await.unwrap();
    let (_, above) = capture(h.above_delayed(5)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(h.delayed(5).await, 1);
        assert_eq!(h.above_delayed(5).await, 1001);
    }
    let start = Instant::now();
    h.set(5, 2);
    invalidate! { h.value(5); }
    assert_eq!(
        h.value(5).await,
        2,
        "the undelayed value is invalidated at once"
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(h.delayed(5).await, 1, "served until the delay ends");
    assert_eq!(h.above_delayed(5).await, 1001);
    timeout(PATIENCE, delayed.when_invalidated())
        .await
        .expect("the delayed invalidation is carried out");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(above.state(), ComputedState::Invalidated);
    for _ in 0..3 {
        assert_eq!(h.delayed(5).await, 2, "never served once the delay ended");
        assert_eq!(h.above_delayed(5).await, 1002);
    }
    // Named directly.
    let (_, delayed) = capture(h.delayed(5)).await.unwrap();
    h.set(5, 3);
    invalidate! { h.delayed(5); h.value(5); }
    assert_eq!(h.delayed(5).await, 2, "served until the delay ends");
    timeout(PATIENCE, delayed.when_invalidated()).await.unwrap();
    assert_eq!(h.delayed(5).await, 3);
    assert_eq!(h.above_delayed(5).await, 1003);
}

/// `min_cache_duration` keeps a value through eviction, never through an invalidation: a
/// published kept value is not served after `invalidate!` returned, under pressure or not.
#[tokio::test(start_paused = true)]
async fn a_kept_value_is_never_served_after_invalidate_returns() {
    let h = Hits::small(8);
    h.set(6, 1);
    let (_, kept) = capture(h.kept(6)).await.unwrap();
    assert_eq!(h.kept(6).await, 1);
    assert_eq!(h.kept(6).await, 1);
    for key in 100..140 {
        h.value(key).await;
    }
    assert!(kept.is_consistent(), "kept through eviction");
    h.set(6, 2);
    assert_eq!(h.kept(6).await, 1, "not invalidated: still served");
    invalidate! { h.kept(6); }
    assert_eq!(
        h.kept(6).await,
        2,
        "never served after invalidate! returned"
    );
    assert_eq!(h.kept(6).await, 2);
}

/// `consolidate`: the consolidating value itself is never served after `invalidate!`
/// returned (only its dependents may be, until the comparison); the dependents settle.
#[tokio::test]
async fn a_published_consolidating_value_is_never_served_after_invalidate_returns() {
    let h = Hits::new();
    h.set(7, 10);
    for _ in 0..3 {
        assert_eq!(h.cons(7).await, 1);
        assert_eq!(h.above_cons(7).await, 1001);
    }
    // Unchanged: 15 / 10 == 1.
    h.set(7, 15);
    invalidate! { h.value(7); }
    assert_eq!(h.cons(7).await, 1);
    settle(|| h.above_cons(7), 1001).await;
    for round in 2..=20u64 {
        h.set(7, round * 10);
        if round % 2 == 0 {
            invalidate! { h.value(7); }
        } else {
            invalidate! { h.cons(7); h.value(7); }
        }
        assert_eq!(
            h.cons(7).await,
            round,
            "the consolidating value after invalidate! returned (round {round})"
        );
        assert_eq!(h.cons(7).await, round);
        settle(|| h.above_cons(7), 1000 + round).await;
        assert_eq!(h.above_cons(7).await, 1000 + round);
    }
}

/// `Result` outputs: a published `Err` is never served after `invalidate!` returned, nor after
/// its `error_lifetime` ended.
#[tokio::test(start_paused = true)]
async fn a_published_error_is_never_served_after_invalidate_or_its_lifetime() {
    let h = Hits::new();
    h.set(8, 0);
    for _ in 0..3 {
        assert!(h.checked(8).await.is_err());
    }
    h.set(8, 5);
    invalidate! { h.checked(8); }
    assert_eq!(h.checked(8).await, Ok(5), "after invalidate! returned");
    h.set(8, 0);
    invalidate! { h.checked(8); }
    let start = Instant::now();
    let (first, computed) = capture(h.checked(8)).await.unwrap();
    assert!(first.is_err());
    assert!(h.checked(8).await.is_err());
    assert!(h.checked(8).await.is_err());
    h.set(8, 6);
    timeout(PATIENCE, computed.when_invalidated())
        .await
        .expect("an error expires");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        h.checked(8).await,
        Ok(6),
        "after the error's lifetime ended"
    );
    // A value is not an error: it stays.
    let (_, ok) = capture(h.checked(8)).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(ok.is_consistent());
}

/// `Hub::invalidate_everything`: no published value of any kind (plain, dependent, delayed,
/// consolidating and its dependents, expiring, kept, error, a generic method's two tables) is
/// served after it returned; all at once, without waiting for a delay or a consolidation.
#[tokio::test(start_paused = true)]
async fn invalidate_everything_leaves_no_published_value() {
    let h = Hits::new();
    let a = Gen::<u8>::new(&h.hub, 1);
    let b = Gen::<u16>::new(&h.hub, 2);
    h.set(9, 10);
    h.set(10, 0);
    for _ in 0..3 {
        assert_eq!(h.value(9).await, 10);
        assert_eq!(h.above(9).await, 1010);
        assert_eq!(h.delayed(9).await, 10);
        assert_eq!(h.above_delayed(9).await, 1010);
        assert_eq!(h.cons(9).await, 1);
        assert_eq!(h.above_cons(9).await, 1001);
        assert_eq!(h.expiring(9).await, 10);
        assert_eq!(h.kept(9).await, 10);
        assert!(h.checked(10).await.is_err());
        assert_eq!(a.name(0).await, "u8#0=1");
        assert_eq!(b.name(0).await, "u16#0=2");
    }
    let start = Instant::now();
    h.set(9, 20);
    h.set(10, 7);
    a.set(11);
    b.set(22);
    h.hub.invalidate_everything();
    assert_eq!(h.hub.cached_len(), 0);
    assert_eq!(h.value(9).await, 20);
    assert_eq!(h.above(9).await, 1020);
    assert_eq!(h.delayed(9).await, 20, "a delayed value at once");
    assert_eq!(h.above_delayed(9).await, 1020);
    assert_eq!(
        h.above_cons(9).await,
        1002,
        "a consolidation's dependent at once"
    );
    assert_eq!(h.cons(9).await, 2);
    assert_eq!(h.expiring(9).await, 20);
    assert_eq!(h.kept(9).await, 20);
    assert_eq!(h.checked(10).await, Ok(7));
    assert_eq!(a.name(0).await, "u8#0=11");
    assert_eq!(b.name(0).await, "u16#0=22", "the overflow table too");
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// A computation in flight when `Hub::invalidate_everything` is called hands its value to its
/// callers but is never cached: the next call computes anew.
#[tokio::test]
async fn a_computation_in_flight_during_invalidate_everything_is_never_cached() {
    let h = Hits::new();
    h.set(11, 1);
    h.value(11).await;
    h.value(11).await;
    h.gates.hold(REREAD + 11);
    let leader = tokio::spawn({
        let h = Arc::clone(&h);
        async move { capture(h.reread(11)).await.unwrap() }
    });
    h.gates.entered(REREAD + 11).await;
    h.set(11, 2);
    h.hub.invalidate_everything();
    h.gates.release(REREAD + 11);
    let (value, computed) = timeout(PATIENCE, leader).await.unwrap().unwrap();
    assert_eq!(value, 1, "its callers get its value");
    assert_eq!(computed.state(), ComputedState::Invalidated, "never cached");
    assert_eq!(h.reread(11).await, 2);
    assert_eq!(h.runs("reread"), 2);
}

// ---------------------------------------------------------------------------------------------
// Dependencies: the "last dependency" shortcut.
// ---------------------------------------------------------------------------------------------

/// A computation that read a dependency several times (the shortcut: the same dependency as
/// the last one) and is still running when that dependency is invalidated is not cached; the
/// caller that joined it is not left waiting; the next call recomputes. With the dependency
/// published before the computation and without.
#[tokio::test]
async fn a_computation_rereading_a_dependency_invalidated_mid_flight_is_not_cached() {
    let h = Hits::new();
    for (k, published) in [(1, false), (2, true), (3, true)] {
        h.set(k, 1);
        if published {
            h.value(k).await;
            h.value(k).await;
        }
        h.gates.hold(REREAD + k);
        let leader = tokio::spawn({
            let h = Arc::clone(&h);
            async move { capture(h.reread(k)).await.unwrap() }
        });
        h.gates.entered(REREAD + k).await;
        let joiner = tokio::spawn({
            let h = Arc::clone(&h);
            async move { h.reread(k).await }
        });
        let_spawned_tasks_run().await;
        assert!(!joiner.is_finished());
        h.set(k, 2);
        if k == 3 {
            h.hub.invalidate_everything();
        } else {
            invalidate! { h.value(k); }
        }
        h.gates.release(REREAD + k);
        let (value, computed) = timeout(PATIENCE, leader).await.unwrap().unwrap();
        assert_eq!(value, 1);
        assert_eq!(
            computed.state(),
            ComputedState::Invalidated,
            "a computation that read an invalidated value is not cached (key {k})"
        );
        let joined = timeout(PATIENCE, joiner)
            .await
            .expect("the caller that joined is not left waiting")
            .unwrap();
        assert_eq!(joined, 1, "the caller that joined gets its value");
        let runs = h.runs("reread");
        assert_eq!(h.reread(k).await, 2, "the next call recomputes (key {k})");
        assert_eq!(h.runs("reread"), runs + 1);
        let (_, fresh) = capture(h.reread(k)).await.unwrap();
        assert!(fresh.is_consistent());
    }
}

/// A computation that read a dependency twice, then (held) sees it invalidated, then reads
/// the recomputed one twice, is not cached: the read of the new value does not launder the
/// read of the old one.
#[tokio::test]
async fn reading_a_recomputed_dependency_after_the_old_one_does_not_make_the_result_cacheable() {
    let h = Hits::new();
    h.set(4, 1);
    h.value(4).await;
    h.value(4).await;
    h.gates.hold(SPLIT + 4);
    let leader = tokio::spawn({
        let h = Arc::clone(&h);
        async move { capture(h.split(4)).await.unwrap() }
    });
    h.gates.entered(SPLIT + 4).await;
    h.set(4, 2);
    invalidate! { h.value(4); }
    assert_eq!(h.value(4).await, 2);
    assert_eq!(h.value(4).await, 2, "the new value published");
    h.gates.release(SPLIT + 4);
    let ((first, last), computed) = timeout(PATIENCE, leader).await.unwrap().unwrap();
    assert_eq!((first, last), (1, 2));
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(h.split(4).await, (2, 2), "the next call recomputes");
    // The recomputed one depends on the new value.
    let (_, fresh) = capture(h.split(4)).await.unwrap();
    h.set(4, 3);
    invalidate! { h.value(4); }
    assert_eq!(fresh.state(), ComputedState::Invalidated);
    assert_eq!(h.split(4).await, (3, 3));
}

/// Read X, read Y, read X again: invalidating X (or Y) invalidates the dependent, whether it is
/// cached or still computing.
#[tokio::test]
async fn reading_x_then_y_then_x_again_keeps_both_dependencies() {
    let h = Hits::new();
    h.set(5, 1);
    h.set(6, 100);
    let (value, computed) = capture(h.xyx(5, 6)).await.unwrap();
    assert_eq!(value, (1, 100));
    assert_eq!(h.xyx(5, 6).await, (1, 100));
    assert_eq!(h.xyx(5, 6).await, (1, 100));
    h.set(5, 2);
    invalidate! { h.value(5); }
    assert_eq!(computed.state(), ComputedState::Invalidated, "X reaches it");
    assert_eq!(h.xyx(5, 6).await, (2, 100));
    let (_, computed) = capture(h.xyx(5, 6)).await.unwrap();
    h.set(6, 200);
    invalidate! { h.value(6); }
    assert_eq!(computed.state(), ComputedState::Invalidated, "Y reaches it");
    assert_eq!(h.xyx(5, 6).await, (2, 200));
    // Mid-flight, with X and Y published.
    h.value(5).await;
    h.value(6).await;
    h.gates.hold(XYX + 5);
    let leader = tokio::spawn({
        let h = Arc::clone(&h);
        async move {
            invalidate! { h.xyx(5, 6); }
            capture(h.xyx(5, 6)).await.unwrap()
        }
    });
    h.gates.entered(XYX + 5).await;
    h.set(5, 3);
    invalidate! { h.value(5); }
    h.gates.release(XYX + 5);
    let (value, computed) = timeout(PATIENCE, leader).await.unwrap().unwrap();
    assert_eq!(value, (2, 200));
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(h.xyx(5, 6).await, (3, 200));
}

/// A computation with more dependencies than the edges scan one by one reads X first and
/// again last: X still reaches it.
#[tokio::test]
async fn a_dependency_read_first_and_again_after_many_others_still_reaches_the_dependent() {
    let h = Hits::new();
    h.set(7, 1);
    let (value, computed) = capture(h.wide(7)).await.unwrap();
    assert_eq!(value, 1);
    assert_eq!(computed.dependencies().len(), 21);
    h.wide(7).await;
    h.set(7, 2);
    invalidate! { h.value(7); }
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(h.wide(7).await, 2);
    let (_, computed) = capture(h.wide(7)).await.unwrap();
    h.set(219, 5);
    invalidate! { h.value(219); }
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(h.wide(7).await, 7);
}

/// Several tasks of one computation (spawned with its `ComputeScope`) read the same published
/// dependency; it is invalidated while the computation is held: not cached, recomputed next.
#[tokio::test]
async fn tasks_of_one_computation_rereading_a_dependency_are_invalidated_with_it() {
    let h = Hits::new();
    for (k, published) in [(8, false), (9, true)] {
        h.set(k, 1);
        if published {
            h.value(k).await;
            h.value(k).await;
        }
        h.gates.hold(TASKS + k);
        let leader = tokio::spawn({
            let h = Arc::clone(&h);
            async move { capture(h.tasks(k, 3)).await.unwrap() }
        });
        h.gates.entered(TASKS + k).await;
        let (_, dependency) = capture(h.value(k)).await.unwrap();
        assert_eq!(
            dependency
                .dependents()
                .iter()
                .filter(|d| d.method().ends_with("tasks"))
                .count(),
            1,
            "the tasks' computation depends on the value once"
        );
        h.set(k, 2);
        invalidate! { h.value(k); }
        h.gates.release(TASKS + k);
        let (value, computed) = timeout(PATIENCE, leader).await.unwrap().unwrap();
        assert_eq!(value, 1);
        assert_eq!(computed.state(), ComputedState::Invalidated, "key {k}");
        assert_eq!(h.tasks(k, 3).await, 2);
    }
}

/// On two threads: two tasks of one computation read one dependency again and again while it
/// is invalidated under them. After each round the computation (which read the old value) is
/// not cached, and the next call computes the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_racing_an_invalidation_of_what_they_reread_never_leave_the_result_cached() {
    let h = Hits::new();
    for round in 0..200u64 {
        h.invalidated.store(false, Ordering::SeqCst);
        h.set(10, round * 2);
        invalidate! { h.value(10); }
        let reader = tokio::spawn({
            let h = Arc::clone(&h);
            async move { capture(h.racing(10, round)).await.unwrap() }
        });
        timeout(PATIENCE, h.started.acquire_many(2))
            .await
            .unwrap()
            .unwrap()
            .forget();
        h.set(10, round * 2 + 1);
        invalidate! { h.value(10); }
        h.invalidated.store(true, Ordering::SeqCst);
        let (value, computed) = timeout(PATIENCE, reader).await.unwrap().unwrap();
        assert_eq!(value, round * 2);
        assert_eq!(
            computed.state(),
            ComputedState::Invalidated,
            "round {round}: it read the old value"
        );
        assert_eq!(
            h.racing(10, round).await,
            round * 2 + 1,
            "round {round}: recomputed"
        );
        timeout(PATIENCE, h.started.acquire_many(2))
            .await
            .unwrap()
            .unwrap()
            .forget();
    }
}

/// A computation reads a consolidating value three times, is held while that value is
/// invalidated and found unchanged (so the computation is kept, now depending on the new
/// value), reads it three times again; then a real change reaches it.
#[tokio::test]
async fn a_computation_rereading_a_consolidated_value_is_reached_by_the_next_change() {
    let h = Hits::new();
    h.set(11, 10);
    h.cons(11).await;
    h.cons(11).await;
    h.gates.hold(SPLIT + 11);
    let leader = tokio::spawn({
        let h = Arc::clone(&h);
        async move { capture(h.reread_cons(11)).await.unwrap() }
    });
    h.gates.entered(SPLIT + 11).await;
    h.set(11, 12);
    invalidate! { h.value(11); }
    assert_eq!(h.cons(11).await, 1);
    timeout(
        PATIENCE,
        h.events
            .wait_until(|events| events.consolidated("Hits::cons") >= 1),
    )
    .await
    .unwrap();
    h.gates.release(SPLIT + 11);
    let (value, computed) = timeout(PATIENCE, leader).await.unwrap().unwrap();
    assert_eq!(value, 1);
    assert!(computed.is_consistent(), "unchanged: kept");
    h.set(11, 20);
    invalidate! { h.value(11); }
    timeout(PATIENCE, computed.when_invalidated())
        .await
        .expect("the change reaches the computation that read the new value");
    assert_eq!(h.reread_cons(11).await, 2);
}

// ---------------------------------------------------------------------------------------------
// Published values and eviction.
// ---------------------------------------------------------------------------------------------

/// With a small capacity, a value read (through its published copy) on every step survives
/// eviction and is computed once.
#[tokio::test]
async fn a_value_read_on_every_step_survives_eviction_through_published_hits() {
    let h = Hits::small(8);
    let (_, hot) = capture(h.value(63)).await.unwrap();
    h.value(63).await;
    for key in 100..160 {
        h.value(key).await;
        h.value(63).await;
        assert!(hot.is_consistent(), "evicted at key {key}");
    }
    assert!(h.events.evicted("Hits::value") >= 40);
    assert_eq!(h.runs("value"), 61, "the hot value computed once");
}

/// An evicted value, published before, is recomputed on the next call (its copy is not
/// served), and no dependent stays consistent after what it was computed from was evicted.
#[tokio::test]
async fn an_evicted_published_value_is_recomputed_and_never_outlives_its_dependencies() {
    let h = Hits::small(8);
    h.set(62, 1);
    let (_, dependent) = capture(h.above(62)).await.unwrap();
    let (_, leaf) = capture(h.value(62)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(h.above(62).await, 1001);
        assert_eq!(h.value(62).await, 1);
    }
    // Changed without an invalidation: only an eviction can make it visible.
    h.set(62, 2);
    let mut key = 100;
    while leaf.is_consistent() {
        h.value(key).await;
        key += 1;
        assert!(
            leaf.is_consistent() || !dependent.is_consistent(),
            "a dependent stays consistent after its dependency was evicted"
        );
        assert!(key < 200, "never evicted");
    }
    assert!(h.events.evicted("Hits::value") >= 1);
    assert_eq!(h.value(62).await, 2, "an evicted value is recomputed");
    assert_eq!(h.above(62).await, 1002, "and so is its dependent");
}

/// Eviction takes the values nobody reads, and with a value it takes, the dependency that was
/// left unused; the published copies of neither are served afterwards.
#[tokio::test]
async fn evicted_dependents_and_their_unused_dependencies_are_recomputed() {
    let h = Hits::small(8);
    for k in 0..4 {
        h.set(k, k as u64);
        h.above(k).await;
        h.above(k).await;
    }
    let handles: Vec<(Computed, Computed)> = {
        let mut handles = Vec::new();
        for k in 0..4 {
            let (_, above) = capture(h.above(k)).await.unwrap();
            let dependency = above.dependencies().pop().unwrap();
            handles.push((above, dependency));
        }
        handles
    };
    for k in 0..4 {
        h.set(k, 10 + k as u64);
    }
    let mut key = 100;
    while handles.iter().any(|(above, _)| above.is_consistent()) {
        h.value(key).await;
        key += 1;
        for (above, dependency) in &handles {
            assert!(
                dependency.is_consistent() || !above.is_consistent(),
                "a dependent outlived its evicted dependency"
            );
        }
        assert!(key < 300, "never evicted");
    }
    for k in 0..4 {
        assert_eq!(h.above(k).await, 1010 + k as u64);
        assert_eq!(h.value(k).await, 10 + k as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency.
// ---------------------------------------------------------------------------------------------

/// On two threads: readers hammer published hits (plain, dependent, in a body) while a writer
/// changes the data, invalidates, then publishes the sequence it wrote. A read that starts
/// after seeing sequence `s` never returns data older than `s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_starts_after_an_invalidation_returned_sees_the_new_data() {
    const WRITES: u64 = 4_000;
    let h = Hits::new();
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    h.set(12, 0);
    h.value(12).await;
    h.above(12).await;
    let readers: Vec<_> = (0..2u64)
        .map(|reader| {
            let h = Arc::clone(&h);
            let written = Arc::clone(&written);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let seen = written.load(Ordering::SeqCst);
                    let value = h.value(12).await;
                    assert!(value >= seen, "read {value} after write {seen} returned");
                    let above = h.above(12).await;
                    assert!(above >= seen + 1000, "dependent {above} after write {seen}");
                    let in_body = h.in_body(12, reader * 100 + reads % 16).await;
                    assert!(in_body >= seen, "body read {in_body} after write {seen}");
                    reads += 1;
                    if reads.is_multiple_of(8) {
                        tokio::task::yield_now().await;
                    }
                }
                reads
            })
        })
        .collect();
    let writer = tokio::spawn({
        let h = Arc::clone(&h);
        let written = Arc::clone(&written);
        async move {
            for n in 1..=WRITES {
                h.set(12, n);
                invalidate! { h.value(12); }
                written.store(n, Ordering::SeqCst);
                if n.is_multiple_of(4) {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    timeout(PATIENCE, writer).await.unwrap().unwrap();
    done.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for reader in readers {
        reads += timeout(PATIENCE, reader).await.unwrap().unwrap();
    }
    assert!(reads > 100, "the readers read ({reads})");
    assert_eq!(h.value(12).await, WRITES);
    assert_eq!(h.above(12).await, WRITES + 1000);
}

// ---------------------------------------------------------------------------------------------
// Memory.
// ---------------------------------------------------------------------------------------------

/// How many old values may stay allocated in the tables' removed entries: "a few dozen" per
/// table (two tables here, and a published copy of each value).
const FEW: u64 = 128;

/// Runs `round(i)` for `i` in `0..rounds`, then goes on (up to `rounds * 10` more) until at
/// most `FEW` values are alive: a removed entry is freed once the readers that might see it
/// moved on, which a thread of another test preempted while reading can put off for a while
/// (1,070 alive were seen with the suite running in parallel, 86 alone), but not for good.
/// Returns the most seen alive, and whether it came back under `FEW`.
async fn churn<F, Fut>(h: &Hits, rounds: u64, mut round: F) -> (u64, bool)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut most = 0;
    for i in 0..rounds * 11 {
        round(i).await;
        most = most.max(h.live());
        if i >= rounds && h.live() <= FEW {
            return (most, true);
        }
    }
    (most, false)
}

/// Invalidating a published value (and its published dependent) again and again keeps a
/// bounded number of old values alive, not a growing one.
#[tokio::test]
async fn invalidating_a_published_value_repeatedly_keeps_a_bounded_number_alive() {
    let h = Hits::new();
    let (most, bounded) = churn(&h, 4_000, |i| {
        let h = &h;
        async move {
            h.set(0, i);
            for _ in 0..3 {
                assert_eq!(h.live_above(1).await.value, i + 1001);
            }
            invalidate! { h.live_value(1); }
        }
    })
    .await;
    assert!(
        bounded,
        "{} values alive after 44,000 rounds (at most {most})",
        h.live()
    );
}

/// Invalidating many keys once each (a value computed, published, invalidated, never used
/// again) keeps a bounded number of old values alive; a dropped hub keeps none.
#[tokio::test]
async fn invalidating_many_published_keys_once_each_keeps_a_bounded_number_alive() {
    let h = Hits::new();
    let (most, bounded) = churn(&h, 10_000, |key| {
        let h = &h;
        async move {
            for _ in 0..3 {
                assert_eq!(h.live_value(key).await.value, key);
            }
            invalidate! { h.live_value(key); }
        }
    })
    .await;
    assert!(
        bounded,
        "{} values alive after 110,000 keys (at most {most})",
        h.live()
    );
    let hub = h.hub.clone();
    let live = Arc::clone(&h.live);
    drop(h);
    drop(hub);
    assert_eq!(live.load(Ordering::SeqCst), 0, "a dropped hub keeps none");
}

// ---------------------------------------------------------------------------------------------
// Generic impls and hubs.
// ---------------------------------------------------------------------------------------------

/// A generic service: its compute methods have one descriptor for every type argument.
struct Gen<T> {
    hub: Hub,
    data: AtomicU64,
    _type: PhantomData<fn() -> T>,
}

impl<T: 'static> ComputeService for Gen<T> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl<T: Clone + Hash + Eq + Debug + Send + Sync + 'static> Gen<T> {
    fn new(hub: &Hub, data: u64) -> Self {
        Self {
            hub: hub.clone(),
            data: AtomicU64::new(data),
            _type: PhantomData,
        }
    }

    fn set(&self, data: u64) {
        self.data.store(data, Ordering::SeqCst);
    }

    /// The same key and output types for every `T`.
    #[compute_method]
    async fn name(&self, k: usize) -> String {
        format!(
            "{}#{k}={}",
            type_name::<T>(),
            self.data.load(Ordering::SeqCst)
        )
    }

    /// Key and output types that depend on `T`.
    #[compute_method]
    async fn echo(&self, v: T) -> (T, u64) {
        (v, self.data.load(Ordering::SeqCst))
    }

    /// A dependent of `name(k)`.
    #[compute_method]
    async fn shout(&self, k: usize) -> String {
        self.name(k).await.to_uppercase()
    }
}

/// A generic compute method used with two type arguments on one hub keeps one cache for each:
/// neither serves the other's (published) value, and invalidating one leaves the other.
#[tokio::test]
async fn a_generic_compute_method_keeps_one_cache_per_type_argument() {
    let hub = Hub::new().unwrap();
    let a = Gen::<u8>::new(&hub, 1);
    let b = Gen::<u16>::new(&hub, 2);
    let c = Gen::<i8>::new(&hub, 3);
    for _ in 0..3 {
        assert_eq!(a.name(0).await, "u8#0=1");
        assert_eq!(b.name(0).await, "u16#0=2");
        assert_eq!(c.name(0).await, "i8#0=3");
        assert_eq!(a.shout(0).await, "U8#0=1");
        assert_eq!(b.shout(0).await, "U16#0=2");
        assert_eq!(a.echo(5).await, (5, 1));
        assert_eq!(b.echo(5).await, (5, 2));
        assert_eq!(c.echo(5).await, (5, 3));
    }
    assert_eq!(hub.cached_len(), 8);
    let (_, b_name) = capture(b.name(0)).await.unwrap();
    let (_, c_echo) = capture(c.echo(5)).await.unwrap();
    a.set(10);
    invalidate! { a.name(0); a.echo(5); }
    assert_eq!(a.name(0).await, "u8#0=10");
    assert_eq!(a.shout(0).await, "U8#0=10");
    assert_eq!(a.echo(5).await, (5, 10));
    assert!(
        b_name.is_consistent(),
        "another type argument's value is left"
    );
    assert!(c_echo.is_consistent());
    assert_eq!(b.name(0).await, "u16#0=2");
    assert_eq!(b.shout(0).await, "U16#0=2");
    assert_eq!(c.echo(5).await, (5, 3));
    b.set(20);
    c.set(30);
    invalidate! { b.name(0); c.echo(5); }
    assert_eq!(b.name(0).await, "u16#0=20");
    assert_eq!(b.shout(0).await, "U16#0=20");
    assert_eq!(c.echo(5).await, (5, 30));
    assert_eq!(a.name(0).await, "u8#0=10");
    assert_eq!(c.name(0).await, "i8#0=3");
}

/// The same generic service type on two hubs: two caches, each invalidated on its own.
#[tokio::test]
async fn a_generic_service_on_two_hubs_keeps_two_caches() {
    let one = Gen::<u8>::new(&Hub::new().unwrap(), 1);
    let two = Gen::<u8>::new(&Hub::new().unwrap(), 2);
    for _ in 0..3 {
        assert_eq!(one.name(0).await, "u8#0=1");
        assert_eq!(two.name(0).await, "u8#0=2");
    }
    let (_, on_two) = capture(two.name(0)).await.unwrap();
    one.set(10);
    invalidate! { one.name(0); }
    assert_eq!(one.name(0).await, "u8#0=10");
    assert!(on_two.is_consistent());
    assert_eq!(two.name(0).await, "u8#0=2");
    two.hub.invalidate_everything();
    two.set(20);
    assert_eq!(two.name(0).await, "u8#0=20");
    assert_eq!(one.name(0).await, "u8#0=10");
}

// ---------------------------------------------------------------------------------------------
// A second invalidation racing the first (the control of `failing.rs`'s published case).
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Armed: the next `StallingKey::hash` on this thread says so on the first channel and
    /// waits on the second.
    static STALL_HASH: std::cell::RefCell<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>> =
        const { std::cell::RefCell::new(None) };
}

/// A key whose hash stalls the thread that armed `STALL_HASH`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StallingKey(u64);

impl Hash for StallingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some((entered, release)) = STALL_HASH.with(|armed| armed.borrow_mut().take()) {
            entered.send(()).unwrap();
            release.recv_timeout(PATIENCE).unwrap();
        }
        self.0.hash(state);
    }
}

struct Stalling {
    hub: Hub,
    data: AtomicU64,
}

impl ComputeService for Stalling {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Stalling {
    #[compute_method]
    async fn get(&self, key: StallingKey) -> u64 {
        let _ = key;
        self.data.load(Ordering::SeqCst)
    }
}

/// A value never published (read once), invalidated by a thread that stalls between the node's
/// state change and its removal from the table (in the key's `Hash`, which the removal calls):
/// a second `invalidate!` returns at once, and a call after it computes the new value (the
/// lookup finds the node invalidated and removes it). The same with a published value fails:
/// see `failing.rs`.
#[tokio::test]
async fn a_value_never_published_is_recomputed_after_a_second_invalidate_returns() {
    let s = Stalling {
        hub: Hub::new().unwrap(),
        data: AtomicU64::new(1),
    };
    let (_, computed) = capture(s.get(StallingKey(0))).await.unwrap();
    s.data.store(2, Ordering::SeqCst);
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let first = std::thread::spawn(move || {
        STALL_HASH.with(|armed| *armed.borrow_mut() = Some((entered_tx, release_rx)));
        // Its first hash of a key: the removal of the node from its table.
        computed.invalidate();
    });
    entered.recv_timeout(PATIENCE).unwrap();
    invalidate! { s.get(StallingKey(0)); }
    let served = s.get(StallingKey(0)).await;
    release.send(()).unwrap();
    first.join().unwrap();
    assert_eq!(served, 2, "a call after the second invalidate! returned");
    assert_eq!(s.get(StallingKey(0)).await, 2);
}
