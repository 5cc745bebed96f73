//! Hostile tests of invalidations racing each other on two threads: after `invalidate!`
//! returns, no call is served the old value or a value computed from it, even while another
//! thread is invalidating the same value.
//!
//! Thread A is held (in a key's `Hash`, or in the hub's event listener: user code the library
//! calls at those points) where the OS could preempt it, and another thread invalidates and
//! reads meanwhile. `two_writers_never_leave_a_stale_read_after_their_invalidate_returns` runs
//! the same races with no stall at all.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use ofx_core::{ComputeService, Hub, HubBuilder, HubEvent, capture, compute_method, invalidate};

use crate::lab::PATIENCE;

/// Where a thread stops: it says so on `entered`, then waits for `release`.
struct Stall {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl Stall {
    /// A stall, the receiver of its "entered" and the sender of its "release".
    fn new() -> (Self, Receiver<()>, Sender<()>) {
        let (entered, entered_rx) = channel();
        let (release_tx, release) = channel();
        (Self { entered, release }, entered_rx, release_tx)
    }

    fn stop(self) {
        self.entered.send(()).unwrap();
        self.release.recv_timeout(PATIENCE).unwrap();
    }
}

thread_local! {
    /// Armed: the next `SlowKey::hash` on this thread stalls.
    static STALL_HASH: RefCell<Option<Stall>> = const { RefCell::new(None) };
}

/// A key whose hash stalls on a thread that armed `STALL_HASH`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SlowKey(u64);

impl Hash for SlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if let Some(stall) = STALL_HASH.with(|armed| armed.borrow_mut().take()) {
            stall.stop();
        }
        self.0.hash(state);
    }
}

/// A listener that stalls the thread that tells the next `Invalidated` of `Slow::get` once
/// armed.
#[derive(Default)]
struct StallOnInvalidated(Mutex<Option<Stall>>);

impl StallOnInvalidated {
    fn on(&self, event: &HubEvent) {
        if let HubEvent::Invalidated { method } = event
            && method.ends_with("Slow::get")
        {
            let stall = self.0.lock().unwrap().take();
            if let Some(stall) = stall {
                stall.stop();
            }
        }
    }
}

struct Slow {
    hub: Hub,
    data: AtomicU64,
    listener: Arc<StallOnInvalidated>,
}

impl ComputeService for Slow {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Slow {
    fn new() -> Arc<Self> {
        Self::build(Hub::builder())
    }

    fn build(builder: HubBuilder) -> Arc<Self> {
        let listener = Arc::new(StallOnInvalidated::default());
        let hub = builder
            .event_listener({
                let listener = Arc::clone(&listener);
                move |event: &HubEvent| listener.on(event)
            })
            .build()
            .unwrap();
        Arc::new(Self {
            hub,
            data: AtomicU64::new(0),
            listener,
        })
    }

    fn set(&self, v: u64) {
        self.data.store(v, Ordering::SeqCst);
    }

    #[compute_method]
    async fn get(&self, key: SlowKey) -> u64 {
        let _ = key;
        self.data.load(Ordering::SeqCst)
    }

    #[compute_method]
    async fn above(&self, key: SlowKey) -> u64 {
        self.get(key).await + 1000
    }

    /// Fills the cache.
    #[compute_method]
    async fn fill(&self, k: u64) -> u64 {
        k
    }
}

/// Promise: after `invalidate!` returns, no call returns the old value, and a node leaves the
/// table (its published value with it) before any invalidation of it returns.
///
/// Thread A invalidates `get(0)` and is preempted (here: stalled in the key's `Hash`, called by
/// the table's removal) after the node's state moved to invalidated and before its slot left the
/// table. The writer's own `invalidate!` then finds the node already invalidated and returns at
/// once; a plain call made after it returned is served the published value: the old one.
#[tokio::test]
async fn a_published_value_is_never_served_after_a_second_invalidate_returns() {
    let s = Slow::new();
    s.set(1);
    let (_, computed) = capture(s.get(SlowKey(0))).await.unwrap();
    assert_eq!(
        s.get(SlowKey(0)).await,
        1,
        "the second read publishes the value"
    );
    s.set(2);
    let (stall, entered, release) = Stall::new();
    let first = std::thread::spawn(move || {
        STALL_HASH.with(|armed| *armed.borrow_mut() = Some(stall));
        // Its first hash of a `SlowKey`: the removal of the node from its table.
        computed.invalidate();
    });
    entered.recv_timeout(PATIENCE).unwrap();
    invalidate! { s.get(SlowKey(0)); }
    let served = s.get(SlowKey(0)).await;
    release.send(()).unwrap();
    first.join().unwrap();
    assert_eq!(
        served, 2,
        "a call that started after invalidate! returned was served the published old value"
    );
}

/// Promise: after `invalidate!` returns, no call returns a value computed from what it
/// invalidated (its dependents included).
///
/// Thread A invalidates `get(1)` and is preempted (here: stalled in the hub's event listener,
/// told `Invalidated` when the node left its table) before it took the node's dependents. The
/// writer's `invalidate! { get(1) }` finds nothing in the table: it must not return before A
/// invalidated `above(1)`, computed from the old `get(1)`. A is let go once the writer began
/// its invalidation (a writer that returns at once reads before A goes on).
#[tokio::test]
async fn a_dependent_is_never_served_after_a_concurrent_invalidate_returns() {
    let s = Slow::new();
    s.set(1);
    for _ in 0..3 {
        assert_eq!(s.above(SlowKey(1)).await, 1001);
    }
    s.set(2);
    let (stall, entered, release) = Stall::new();
    *s.listener.0.lock().unwrap() = Some(stall);
    let first = std::thread::spawn({
        let s = Arc::clone(&s);
        move || {
            invalidate! { s.get(SlowKey(1)); }
        }
    });
    entered.recv_timeout(PATIENCE).unwrap();
    let (leaf, dependent) = invalidate_and_read(&s, SlowKey(1), release);
    first.join().unwrap();
    assert_eq!(leaf, 2, "the invalidated value itself");
    assert_eq!(
        dependent, 1002,
        "a dependent computed from the old value was served after invalidate! returned"
    );
}

/// Promise: on two threads, once a writer's `invalidate!` returned, every read that starts
/// afterwards sees the new data (the writer bumps the data, invalidates, then publishes the
/// sequence it wrote; a reader that starts after reading that sequence must see at least it).
///
/// The same races as the tests above, with no stall at all: two writers invalidate the same
/// value concurrently. The one that comes second finds the node already invalidated, or gone
/// from the table, while the first has not reached its dependents yet. (Before invalidations
/// waited for each other, stale reads were seen in 17 runs of 18: up to 2,312 of the value and
/// 5,018 of its dependent in a run of 40,000 writes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_never_leave_a_stale_read_after_their_invalidate_returns() {
    use std::sync::atomic::AtomicBool;
    let s = Slow::new();
    let written = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let stale_leaf = Arc::new(AtomicU64::new(0));
    let stale_dependent = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            let written = Arc::clone(&written);
            let done = Arc::clone(&done);
            let stale_leaf = Arc::clone(&stale_leaf);
            let stale_dependent = Arc::clone(&stale_dependent);
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let seen = written.load(Ordering::SeqCst);
                    if s.get(SlowKey(9)).await < seen {
                        stale_leaf.fetch_add(1, Ordering::SeqCst);
                    }
                    if s.above(SlowKey(9)).await < seen + 1000 {
                        stale_dependent.fetch_add(1, Ordering::SeqCst);
                    }
                    reads += 1;
                    if reads.is_multiple_of(8) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            let written = Arc::clone(&written);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                for i in 0..20_000u64 {
                    let n = next.fetch_add(1, Ordering::SeqCst) + 1;
                    s.data.fetch_max(n, Ordering::SeqCst);
                    invalidate! { s.get(SlowKey(9)); }
                    written.fetch_max(n, Ordering::SeqCst);
                    if i.is_multiple_of(4) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    let (leaf, dependent) = (
        stale_leaf.load(Ordering::SeqCst),
        stale_dependent.load(Ordering::SeqCst),
    );
    assert_eq!(
        (leaf, dependent),
        (0, 0),
        "stale reads after an invalidate! returned: {leaf} of the value, {dependent} of its \
         dependent"
    );
}

/// The same as `a_dependent_is_never_served_after_a_concurrent_invalidate_returns` with the
/// dependent read once (never published).
#[tokio::test]
async fn a_dependent_never_published_is_never_served_after_a_concurrent_invalidate_returns() {
    let s = Slow::new();
    s.set(1);
    assert_eq!(s.above(SlowKey(6)).await, 1001);
    s.set(2);
    let (stall, entered, release) = Stall::new();
    *s.listener.0.lock().unwrap() = Some(stall);
    let first = std::thread::spawn({
        let s = Arc::clone(&s);
        move || {
            invalidate! { s.get(SlowKey(6)); }
        }
    });
    entered.recv_timeout(PATIENCE).unwrap();
    let (_, dependent) = invalidate_and_read(&s, SlowKey(6), release);
    first.join().unwrap();
    assert_eq!(
        dependent, 1002,
        "a dependent computed from the old value was served after invalidate! returned"
    );
}

/// On a thread of its own: says it begins, releases the stalled thread through `release` once
/// the main thread hears it, invalidates `get(key)`, then reads `get(key)` and `above(key)`.
fn invalidate_and_read(s: &Arc<Slow>, key: SlowKey, release: Sender<()>) -> (u64, u64) {
    let (began_tx, began) = channel();
    let writer = std::thread::spawn({
        let s = Arc::clone(s);
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            began_tx.send(()).unwrap();
            invalidate! { s.get(key.clone()); }
            runtime.block_on(async { (s.get(key.clone()).await, s.above(key).await) })
        }
    });
    began.recv_timeout(PATIENCE).unwrap();
    release.send(()).unwrap();
    writer.join().unwrap()
}
