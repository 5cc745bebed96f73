//! A call that starts after an invalidation never gets a value computed from what was
//! invalidated, whatever is in flight: dependents waiting on a computing dependency, chains of
//! them, dependents still computing after reading it, and captures.
//!
//! Interleavings are forced, not hoped for: each test runs on tokio's current-thread runtime,
//! where a spawned task runs without interruption until its first pending `.await`, and the
//! test waits for a body to have started with [`EventCounter::wait_until`]: once it returns for
//! `Computed` of a method, that body ran up to its first pending point, which is either its
//! gate or the single-flight wait on a computation in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ofx_core::{ComputeService, EventCounter, Hub, capture, compute_method, invalidate};
use tokio::sync::Semaphore;

/// A point in a compute body where it stops, when armed, until the test lets it through.
struct Gate {
    armed: AtomicBool,
    permits: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            permits: Semaphore::new(0),
        }
    }
}

impl Gate {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Lets `count` bodies through.
    fn open(&self, count: usize) {
        self.permits.add_permits(count);
    }

    async fn pass(&self) {
        if self.armed.load(Ordering::SeqCst) {
            self.permits.acquire().await.unwrap().forget();
        }
    }
}

/// `d` reads the "database" then passes its gate; the others are computed from it:
/// `a` waits on `d`, `e` on `a`; `b` reads `d` then passes its own gate, `c` waits on `b`.
struct Chain {
    hub: Hub,
    events: EventCounter,
    source: AtomicU64,
    d_gate: Gate,
    b_gate: Gate,
    /// When set, the next `d` to pass its gate panics (and clears it).
    d_panics_once: AtomicBool,
}

impl ComputeService for Chain {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Chain {
    fn new() -> Arc<Self> {
        let events = EventCounter::new();
        Arc::new(Self {
            hub: Hub::builder()
                .event_listener(events.clone())
                .build()
                .unwrap(),
            events,
            source: AtomicU64::new(1),
            d_gate: Gate::default(),
            b_gate: Gate::default(),
            d_panics_once: AtomicBool::new(false),
        })
    }

    fn runs(&self, method: &str) -> u64 {
        self.events.computed(&format!("Chain::{method}"))
    }

    /// Waits until the body of `method` has started `count` times in all.
    async fn started(&self, method: &str, count: u64) {
        let method = format!("Chain::{method}");
        self.events
            .wait_until(|events| events.computed(&method) >= count)
            .await;
    }

    #[compute_method]
    async fn d(&self) -> u64 {
        let value = self.source.load(Ordering::SeqCst);
        self.d_gate.pass().await;
        assert!(
            !self.d_panics_once.swap(false, Ordering::SeqCst),
            "d was told to panic"
        );
        value
    }

    #[compute_method]
    async fn a(&self) -> u64 {
        self.d().await * 10
    }

    #[compute_method]
    async fn e(&self) -> u64 {
        self.a().await * 10
    }

    #[compute_method]
    async fn b(&self) -> u64 {
        let value = self.d().await;
        self.b_gate.pass().await;
        value + 1000
    }

    #[compute_method]
    async fn c(&self) -> u64 {
        self.b().await * 10
    }

    /// Reads `d` through `capture`.
    #[compute_method]
    async fn f(&self) -> u64 {
        let (value, _) = capture(self.d()).await.unwrap();
        value + 7
    }
}

fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

#[tokio::test]
async fn a_call_after_invalidating_a_computing_dependency_does_not_join_its_waiting_dependent() {
    let chain = Chain::new();
    chain.d_gate.arm();
    let leader = spawn({
        let chain = chain.clone();
        async move { chain.d().await }
    });
    chain.started("d", 1).await; // d read 1 and waits at its gate.
    let waiting = spawn({
        let chain = chain.clone();
        async move { chain.a().await }
    });
    chain.started("a", 1).await; // a waits for d's computation (single flight).

    chain.source.store(2, Ordering::SeqCst);
    invalidate! { chain.d(); }
    let after = spawn({
        let chain = chain.clone();
        async move { chain.a().await }
    });
    chain.d_gate.open(2);

    assert_eq!(leader.await.unwrap(), 1, "d's leader gets what it computed");
    assert_eq!(
        waiting.await.unwrap(),
        10,
        "a caller that waited before the invalidation gets its value"
    );
    assert_eq!(
        after.await.unwrap(),
        20,
        "a call that started after the invalidation was served a value computed from the old d"
    );
    assert_eq!(chain.runs("a"), 2, "a's body ran again");
    assert_eq!(chain.runs("d"), 2);
    assert_eq!(chain.a().await, 20, "and the fresh value is cached");
    assert_eq!(chain.runs("a"), 2);
}

#[tokio::test]
async fn the_invalidation_reaches_through_a_chain_of_waiting_dependents() {
    let chain = Chain::new();
    chain.d_gate.arm();
    let leader = spawn({
        let chain = chain.clone();
        async move { chain.d().await }
    });
    chain.started("d", 1).await;
    let a = spawn({
        let chain = chain.clone();
        async move { chain.a().await }
    });
    chain.started("a", 1).await; // a waits on d
    let e = spawn({
        let chain = chain.clone();
        async move { chain.e().await }
    });
    chain.started("e", 1).await; // e waits on a, which waits on d

    chain.source.store(2, Ordering::SeqCst);
    invalidate! { chain.d(); }
    let after = spawn({
        let chain = chain.clone();
        async move { chain.e().await }
    });
    chain.d_gate.open(2);

    assert_eq!(leader.await.unwrap(), 1);
    assert_eq!(a.await.unwrap(), 10);
    assert_eq!(e.await.unwrap(), 100);
    assert_eq!(
        after.await.unwrap(),
        200,
        "e started after the invalidation was served a value computed from the old d"
    );
    assert_eq!(
        (chain.runs("e"), chain.runs("a"), chain.runs("d")),
        (2, 2, 2)
    );
}

#[tokio::test]
async fn the_invalidation_reaches_the_waiters_of_a_dependent_still_computing() {
    let chain = Chain::new();
    chain.b_gate.arm();
    let b = spawn({
        let chain = chain.clone();
        async move { chain.b().await }
    });
    chain.started("b", 1).await; // b read d (cached now) and waits at its gate.
    let c = spawn({
        let chain = chain.clone();
        async move { chain.c().await }
    });
    chain.started("c", 1).await; // c waits on b.

    chain.source.store(2, Ordering::SeqCst);
    invalidate! { chain.d(); }
    let after = spawn({
        let chain = chain.clone();
        async move { chain.c().await }
    });
    chain.b_gate.open(2);

    assert_eq!(b.await.unwrap(), 1001);
    assert_eq!(c.await.unwrap(), 10_010);
    assert_eq!(
        after.await.unwrap(),
        10_020,
        "c started after the invalidation was served a value computed from the old d"
    );
    assert_eq!(
        (chain.runs("c"), chain.runs("b"), chain.runs("d")),
        (2, 2, 2)
    );
}

#[tokio::test]
async fn a_capture_after_the_invalidation_captures_a_fresh_value() {
    let chain = Chain::new();
    chain.d_gate.arm();
    let leader = spawn({
        let chain = chain.clone();
        async move { chain.d().await }
    });
    chain.started("d", 1).await;
    let waiting = spawn({
        let chain = chain.clone();
        async move { chain.a().await }
    });
    chain.started("a", 1).await;

    chain.source.store(2, Ordering::SeqCst);
    invalidate! { chain.d(); }
    let after = spawn({
        let chain = chain.clone();
        async move { capture(chain.a()).await.unwrap() }
    });
    chain.d_gate.open(2);

    assert_eq!(leader.await.unwrap(), 1);
    assert_eq!(waiting.await.unwrap(), 10);
    let (value, computed) = after.await.unwrap();
    assert_eq!(value, 20);
    assert!(
        computed.is_consistent(),
        "the captured value is the fresh one, cached"
    );
    let (_, cached) = capture(chain.a()).await.unwrap();
    assert!(cached.ptr_eq(&computed));
}

#[tokio::test]
async fn a_dependency_read_through_capture_inside_a_body_is_a_dependency() {
    let chain = Chain::new();
    let (value, f) = capture(chain.f()).await.unwrap();
    assert_eq!(value, 8);
    let (_, d) = capture(chain.d()).await.unwrap();
    assert!(
        f.dependencies()
            .iter()
            .any(|dependency| dependency.ptr_eq(&d)),
        "f read d"
    );

    chain.source.store(2, Ordering::SeqCst);
    invalidate! { chain.d(); }
    assert!(!f.is_consistent(), "f was computed from d");
    assert_eq!(chain.f().await, 9);
}

#[tokio::test]
async fn a_dependent_waiting_on_an_abandoned_computation_is_not_invalidated() {
    let chain = Chain::new();
    chain.d_gate.arm();
    // Boxed, so that `drop(leader)` drops the computation itself.
    let mut leader = Box::pin(chain.d());
    tokio::select! { biased; _ = &mut leader => panic!("the gate is closed"), () = async {} => {} }
    let waiting = spawn({
        let chain = chain.clone();
        async move { capture(chain.a()).await.unwrap() }
    });
    chain.started("a", 1).await; // a waits on the leader's d.

    drop(leader); // abandoned: no value, nothing invalidated
    chain.started("d", 2).await; // a's task took over d's computation.
    chain.d_gate.open(1);

    let (value, a) = waiting.await.unwrap();
    assert_eq!(value, 10);
    assert!(
        a.is_consistent(),
        "a was computed from a d nobody invalidated: it is cached"
    );
    assert_eq!(chain.a().await, 10);
    assert_eq!(chain.runs("a"), 1, "served from the cache");
}

#[tokio::test]
async fn a_dependent_waiting_on_a_computation_that_panicked_is_not_invalidated() {
    let chain = Chain::new();
    chain.d_gate.arm();
    chain.d_panics_once.store(true, Ordering::SeqCst);
    let leader = spawn({
        let chain = chain.clone();
        async move { chain.d().await }
    });
    chain.started("d", 1).await;
    let waiting = spawn({
        let chain = chain.clone();
        async move { capture(chain.a()).await.unwrap() }
    });
    chain.started("a", 1).await; // a waits on the leader's d.

    chain.d_gate.open(1);
    assert!(leader.await.unwrap_err().is_panic());
    chain.started("d", 2).await; // a's task took over d's computation.
    chain.d_gate.open(1);

    let (value, a) = waiting.await.unwrap();
    assert_eq!(value, 10);
    assert!(a.is_consistent(), "nothing a used was invalidated");
    assert_eq!(chain.a().await, 10);
    assert_eq!(chain.runs("a"), 1, "served from the cache");
}

#[tokio::test]
async fn the_invalidation_reaches_the_callers_of_a_dependency_they_compute_themselves() {
    let chain = Chain::new();
    chain.d_gate.arm();
    // e computes a, which computes d: each leads the computation of its dependency.
    let first = spawn({
        let chain = chain.clone();
        async move { chain.e().await }
    });
    chain.started("d", 1).await; // d read 1 and waits at its gate, under a, under e.

    chain.source.store(2, Ordering::SeqCst);
    invalidate! { chain.d(); }
    let after = spawn({
        let chain = chain.clone();
        async move { chain.e().await }
    });
    chain.d_gate.open(2);

    assert_eq!(first.await.unwrap(), 100, "the first caller gets its value");
    assert_eq!(
        after.await.unwrap(),
        200,
        "e started after the invalidation was served a value computed from the old d"
    );
    assert_eq!(
        (chain.runs("e"), chain.runs("a"), chain.runs("d")),
        (2, 2, 2)
    );
}
