//! Hostile tests of the evictor's read mark and of the waiters' registry, racing hits,
//! invalidations, evictions and cancelled waiters on several threads.
//!
//! The evictor treats a slot's published value as "read since the hand last passed" and clears
//! it by replacing the map entry with an unpublished one for the same node; callers joining a
//! computation in flight and `Computed::when_invalidated` register their wake-ups in a
//! process-wide registry keyed by the node's address. The promises attacked, from the public API
//! only:
//!
//! - after `invalidate!` returns, no call returns the old value (nor one computed from it), while
//!   sweeps replace entries under hits on other threads;
//! - a value read on every step stays one node: a dependent computed from it is invalidated with
//!   it, whatever the evictor replaced in between;
//! - no waiter is left hanging: a caller joining a computation gets a value, and
//!   `when_invalidated()` returns once the value is invalidated (and not before), with many
//!   waiters on many nodes across hubs and runtimes, waiters cancelled, nodes evicted and dropped,
//!   and their memory reused by new nodes.
//!
//! Every failure is counted and the count asserted zero; `PATIENCE` only detects hangs.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use ofx_core::{
    ComputeService, Computed, ComputedState, Hub, HubEvent, capture, compute_method, invalidate,
};
use tokio::sync::{Barrier, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::lab::PATIENCE;

/// Keys of the "database".
const KEYS: usize = 64;
/// What `above(k)` adds to `value(k)`.
const ABOVE: u64 = 1 << 40;
/// How many times more iterations the CPU-bound stress loops run in an optimized build (about
/// ten times faster): the races get as many chances in the same time. (The loops that hand over
/// between threads at every step are bound by those hand-overs, not by the build: not scaled.)
const SCALE: u64 = if cfg!(debug_assertions) { 1 } else { 10 };

/// Counts of the hub's events, kept by a listener that only bumps atomics (no lock that would
/// serialize the hits it is told of).
#[derive(Default)]
struct Counts {
    evicted_value: AtomicU64,
    evicted_cold: AtomicU64,
    evicted_kept: AtomicU64,
    computed_gated: AtomicU64,
}

impl Counts {
    fn on(&self, event: &HubEvent) {
        match event {
            HubEvent::Evicted { method } if method.ends_with("Races::value") => {
                self.evicted_value.fetch_add(1, Ordering::Relaxed);
            }
            HubEvent::Evicted { method } if method.ends_with("Races::cold") => {
                self.evicted_cold.fetch_add(1, Ordering::Relaxed);
            }
            HubEvent::Evicted { method } if method.ends_with("Races::kept") => {
                self.evicted_kept.fetch_add(1, Ordering::Relaxed);
            }
            HubEvent::Computed { method } if method.ends_with("Races::gated") => {
                self.computed_gated.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

struct Races {
    hub: Hub,
    counts: Arc<Counts>,
    /// The "database": `value(k)` reads `data[k]`; bumped before each `invalidate!`.
    data: Vec<AtomicU64>,
    /// Tells the values of hubs apart (`tag`).
    id: u64,
    /// `gated` adds a permit here when its body starts, then waits for a permit of `gate`.
    entered: Semaphore,
    gate: Semaphore,
}

impl ComputeService for Races {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// What `slow(k)` and `gated(k)` return on the hub of service `id`.
fn tag(id: u64, k: u64) -> u64 {
    id << 48 | k
}

impl Races {
    fn new(id: u64, capacity: usize) -> Arc<Self> {
        let counts = Arc::new(Counts::default());
        let hub = Hub::builder()
            .capacity(capacity)
            .event_listener({
                let counts = Arc::clone(&counts);
                move |event: &HubEvent| counts.on(event)
            })
            .build()
            .unwrap();
        Arc::new(Self {
            hub,
            counts,
            data: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            id,
            entered: Semaphore::new(0),
            gate: Semaphore::new(0),
        })
    }

    /// Bumps `data[k]` and returns the new value.
    fn bump(&self, k: usize) -> u64 {
        self.data[k].fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A leaf: reads the "database".
    #[compute_method]
    async fn value(&self, k: usize) -> u64 {
        self.data[k].load(Ordering::SeqCst)
    }

    /// A dependent of `value(k)`.
    #[compute_method]
    async fn above(&self, k: usize) -> u64 {
        self.value(k).await + ABOVE
    }

    /// `value(k)`, never evicted for a minute (`min_cache_duration`): sweeps only clear its
    /// read mark.
    #[compute_method(min_cache_duration = "60s")]
    async fn kept(&self, k: usize) -> u64 {
        self.data[k].load(Ordering::SeqCst)
    }

    /// A dependent of `kept(k)`.
    #[compute_method]
    async fn kept_above(&self, k: usize) -> u64 {
        self.kept(k).await + ABOVE
    }

    /// A value read once: fills the cache, each miss ending with a sweep when over capacity.
    #[compute_method]
    async fn cold(&self, k: u64) -> u64 {
        k
    }

    /// Yields `k % 4 + 1` times (time for other callers to join, and points to cancel it at).
    #[compute_method]
    async fn slow(&self, k: u64) -> u64 {
        for _ in 0..=k % 4 {
            tokio::task::yield_now().await;
        }
        tag(self.id, k)
    }

    /// Says it started (`entered`), then waits for a permit of `gate`.
    #[compute_method]
    async fn gated(&self, k: u64) -> u64 {
        self.entered.add_permits(1);
        self.gate.acquire().await.unwrap().forget();
        tag(self.id, k)
    }
}

/// splitmix64: a deterministic spread of roles over callers.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Polls `future` once, without waiting: its output if it is ready.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *future).poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Misses on fresh `cold` keys until `done` (past the capacity, each ends with a sweep), reads
/// `value(hot)` and `above(hot)` after each miss when `hot` is given, and yields every `every`
/// misses.
async fn churn(
    s: Arc<Races>,
    done: Arc<AtomicBool>,
    next_cold: Arc<AtomicU64>,
    hot: Option<usize>,
    every: u64,
) {
    let mut n = 0u64;
    while !done.load(Ordering::SeqCst) {
        s.cold(next_cold.fetch_add(1, Ordering::SeqCst)).await;
        if let Some(hot) = hot {
            s.value(hot).await;
            s.above(hot).await;
        }
        n += 1;
        if n.is_multiple_of(every) {
            tokio::task::yield_now().await;
        }
    }
}

/// Spawns a `when_invalidated()` waiter on `computed`, of the kind `roll` picks: kept (into
/// `kept`), dropped after a few polls, or cut off by a timeout of a few microseconds (both into
/// `cancelled`). It waits at `start` first, if given, and counts in `premature` a return while
/// the value is still consistent.
fn spawn_invalidation_waiter(
    computed: Computed,
    roll: u64,
    start: Option<Arc<Barrier>>,
    premature: &Arc<AtomicU64>,
    kept: &mut JoinSet<()>,
    cancelled: &mut JoinSet<()>,
) {
    let premature = Arc::clone(premature);
    let wait = async move {
        if let Some(start) = start {
            start.wait().await;
        }
        let returned = match roll % 3 {
            0 => {
                computed.when_invalidated().await;
                true
            }
            1 => poll_then_drop(computed.when_invalidated(), 1 + (roll >> 8) % 4)
                .await
                .is_some(),
            _ => {
                let limit = Duration::from_micros((roll >> 8) % 50);
                timeout(limit, computed.when_invalidated()).await.is_ok()
            }
        };
        if returned && computed.is_consistent() {
            premature.fetch_add(1, Ordering::SeqCst);
        }
    };
    if roll.is_multiple_of(3) {
        kept.spawn(wait);
    } else {
        cancelled.spawn(wait);
    }
}

/// Polls `future` at most `polls` times, yielding in between, then drops it (cancelled) unless
/// it finished: its output if it did.
async fn poll_then_drop<F: Future>(future: F, polls: u64) -> Option<F::Output> {
    let mut future = pin!(future);
    for i in 0..polls {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        if let Some(output) = poll_once(&mut future).await {
            return Some(output);
        }
    }
    None
}

/// Awaits every task of `tasks` within `PATIENCE`: their outputs, or how many were left
/// hanging (aborted then).
async fn join_within_patience<T: 'static>(tasks: &mut JoinSet<T>) -> Result<Vec<T>, usize> {
    let mut outputs = Vec::new();
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            outputs.push(joined.unwrap());
        }
    };
    match timeout(PATIENCE, all).await {
        Ok(()) => Ok(outputs),
        Err(_) => {
            let hanging = tasks.len();
            tasks.abort_all();
            Err(hanging)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The read mark: entries replaced by the evictor under hits and invalidations.
// ---------------------------------------------------------------------------------------------

/// Which hot values `sweeps_under_hits` reads and invalidates.
#[derive(Clone, Copy)]
enum Hot {
    /// `value(k)` and `above(k)`: the evictor may take them.
    Plain,
    /// `kept(k)` and `kept_above(k)`: it may not (`min_cache_duration`), only clear their marks.
    Kept,
}

impl Races {
    async fn hot(&self, hot: Hot, k: usize) -> u64 {
        match hot {
            Hot::Plain => self.value(k).await,
            Hot::Kept => self.kept(k).await,
        }
    }

    async fn hot_above(&self, hot: Hot, k: usize) -> u64 {
        match hot {
            Hot::Plain => self.above(k).await,
            Hot::Kept => self.kept_above(k).await,
        }
    }

    fn invalidate_hot(&self, hot: Hot, k: usize) {
        match hot {
            Hot::Plain => invalidate! { self.value(k); },
            Hot::Kept => invalidate! { self.kept(k); },
        }
    }
}

/// What `sweeps_under_hits` saw: stale reads (by the writer itself right after its
/// `invalidate!` returned, of the values and of their dependents by the other tasks), how many
/// of the writer's were served by the node cached right before its `invalidate!`, still
/// consistent (`missed`: the invalidation never reached it), reads and misses.
#[derive(Debug, Default)]
struct Sweeps {
    own_stale: u64,
    missed: u64,
    stale_values: u64,
    stale_dependents: u64,
    reads: u64,
    misses: u64,
}

/// `readers` tasks hit the `hot_keys` hot values and their dependents (published) again and
/// again; a churner misses on fresh keys (each miss over capacity ends with a sweep whose hand
/// clears the hot values' read marks by replacing their entries) and hits a hot value right
/// after each of its sweeps; this task, `writes` times, captures a hot value (a hit), bumps its
/// data, invalidates it, publishes the data it wrote and reads the value again. A read that
/// starts after seeing that data must see at least it.
async fn sweeps_under_hits(
    s: &Arc<Races>,
    hot: Hot,
    hot_keys: usize,
    readers: usize,
    writes: u64,
) -> Sweeps {
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..hot_keys).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let stale_values = Arc::new(AtomicU64::new(0));
    let stale_dependents = Arc::new(AtomicU64::new(0));
    for k in 0..hot_keys {
        for _ in 0..2 {
            s.hot(hot, k).await;
            s.hot_above(hot, k).await;
        }
    }
    let mut tasks = JoinSet::new();
    for reader in 0..readers {
        let s = Arc::clone(s);
        let written = Arc::clone(&written);
        let done = Arc::clone(&done);
        let stale_values = Arc::clone(&stale_values);
        let stale_dependents = Arc::clone(&stale_dependents);
        tasks.spawn(async move {
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                for i in 0..hot_keys {
                    let k = (i + reader) % hot_keys;
                    let seen = written[k].load(Ordering::SeqCst);
                    if s.hot(hot, k).await < seen {
                        stale_values.fetch_add(1, Ordering::SeqCst);
                    }
                    if s.hot_above(hot, k).await < seen + ABOVE {
                        stale_dependents.fetch_add(1, Ordering::SeqCst);
                    }
                    reads += 2;
                }
                tokio::task::yield_now().await;
            }
            (reads, 0)
        });
    }
    tasks.spawn({
        let s = Arc::clone(s);
        let written = Arc::clone(&written);
        let done = Arc::clone(&done);
        let stale_values = Arc::clone(&stale_values);
        async move {
            let mut misses = 0u64;
            while !done.load(Ordering::SeqCst) {
                s.cold(misses).await;
                let k = misses as usize % hot_keys;
                let seen = written[k].load(Ordering::SeqCst);
                if s.hot(hot, k).await < seen {
                    stale_values.fetch_add(1, Ordering::SeqCst);
                }
                misses += 1;
                if misses.is_multiple_of(8) {
                    tokio::task::yield_now().await;
                }
            }
            (misses, misses)
        }
    });
    let (mut own_stale, mut missed) = (0u64, 0u64);
    for n in 1..=writes {
        let k = n as usize % hot_keys;
        let (_, before) = capture(s.hot(hot, k)).await.unwrap();
        let new = s.bump(k);
        s.invalidate_hot(hot, k);
        written[k].store(new, Ordering::SeqCst);
        let (read, served) = capture(s.hot(hot, k)).await.unwrap();
        if read < new {
            own_stale += 1;
            // Not a stale copy: the very node cached before `invalidate!`, still consistent.
            if served.ptr_eq(&before) && served.is_consistent() {
                missed += 1;
            }
        }
        if n.is_multiple_of(4) {
            tokio::task::yield_now().await;
        }
    }
    done.store(true, Ordering::SeqCst);
    let counted = join_within_patience(&mut tasks)
        .await
        .unwrap_or_else(|hanging| panic!("{hanging} readers or churners never finished"));
    let (reads, misses) = counted
        .into_iter()
        .fold((0, 0), |(reads, misses), (r, m)| (reads + r, misses + m));
    Sweeps {
        own_stale,
        missed,
        stale_values: stale_values.load(Ordering::SeqCst),
        stale_dependents: stale_dependents.load(Ordering::SeqCst),
        reads,
        misses,
    }
}

/// Promise: after `invalidate!` of a value returns, no call returns the old value, nor a
/// dependent computed from it, while sweeps replace entries under hits on other threads.
///
/// `sweeps_under_hits` on a hub of capacity 8, with 4 hot values (which the evictor may also
/// take: that is invalidation too, and the data only grows) and two readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_racing_eviction_sweeps_never_serve_a_value_after_invalidate_returns() {
    const HOT: usize = 4;
    let s = Races::new(0, 8);
    let seen = sweeps_under_hits(&s, Hot::Plain, HOT, 2, 20_000 * SCALE).await;
    assert_eq!(
        (seen.own_stale, seen.stale_values, seen.stale_dependents),
        (0, 0, 0),
        "with sweeps replacing entries under the hits, stale reads after invalidate! returned: \
         {} by the writer itself ({} of them served by the node cached right before its \
         invalidate!, still consistent: the invalidation never reached it), {} of the values \
         and {} of their dependents by the other tasks ({seen:?}; {} plain values evicted)",
        seen.own_stale,
        seen.missed,
        seen.stale_values,
        seen.stale_dependents,
        Counts::get(&s.counts.evicted_value),
    );
    assert!(seen.reads > 1_000, "the readers read ({seen:?})");
    let evicted = Counts::get(&s.counts.evicted_cold);
    assert!(
        evicted > seen.misses / 2,
        "the sweeps ran: {evicted} cold values evicted ({seen:?})"
    );
    for k in 0..HOT {
        let data = s.data[k].load(Ordering::SeqCst);
        assert_eq!(s.value(k).await, data, "value({k}) settled");
        assert_eq!(s.above(k).await, data + ABOVE, "above({k}) settled");
    }
}

/// Promise: the same for values the evictor may not take (`min_cache_duration`), whose entries
/// the sweeps only replace to clear their read marks; with the fewest actors: the writer, and a
/// churner that hits a hot value after each of its sweeps (no other reader).
///
/// (Seen failing in most runs: the node cached right before `invalidate!` stayed consistent
/// after it returned, serving the old value to the writer itself; never without the sweeps (no
/// churn, or a capacity nothing reaches) nor without the churner's hits after its sweeps.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_value_is_never_served_after_invalidate_while_sweeps_clear_its_mark() {
    const HOT: usize = 4;
    let s = Races::new(0, 8);
    let seen = sweeps_under_hits(&s, Hot::Kept, HOT, 0, 20_000 * SCALE).await;
    assert_eq!(
        (seen.own_stale, seen.stale_values),
        (0, 0),
        "a value kept through eviction, with sweeps clearing its read mark, stale reads after \
         invalidate! returned: {} by the writer itself ({} of them served by the node cached \
         right before its invalidate!, still consistent: the invalidation never reached it), {} \
         by the churner after its sweeps ({seen:?})",
        seen.own_stale,
        seen.missed,
        seen.stale_values,
    );
    assert_eq!(
        Counts::get(&s.counts.evicted_kept),
        0,
        "a value kept for a minute was evicted"
    );
    let evicted = Counts::get(&s.counts.evicted_cold);
    assert!(
        evicted > seen.misses / 2,
        "the sweeps ran: {evicted} cold values evicted ({seen:?})"
    );
}

/// Promise: a value read on every step is one node (never duplicated), and a dependent computed
/// from it is invalidated when it is (never lost), even if the evictor replaced its entry in
/// between; a dependency of a cached value is never evicted from under it.
///
/// On a hub of capacity 8: churners miss on fresh keys (sweeps) and hit `value(HOT)` and
/// `above(HOT)` on two threads; each round, this task captures `above(HOT)` and the node it was
/// computed from, then reads `value(HOT)` on every step with a miss of its own between reads,
/// checking that the table serves that same node while it is consistent, then bumps the data
/// and invalidates `value(HOT)`: the dependent must be invalidated when `invalidate!` returns,
/// and fresh reads (of the value, not served by the old node, and of the dependent) see the new
/// data.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_value_read_on_every_step_stays_one_node_and_takes_its_dependent_with_it() {
    const HOT: usize = 5;
    const ROUNDS: u64 = 3_000 * SCALE;
    const STEPS: usize = 3;
    let s = Races::new(0, 8);
    let done = Arc::new(AtomicBool::new(false));
    let next_cold = Arc::new(AtomicU64::new(0));
    let mut churners = JoinSet::new();
    for _ in 0..2 {
        let s = Arc::clone(&s);
        let done = Arc::clone(&done);
        let next_cold = Arc::clone(&next_cold);
        churners.spawn(churn(s, done, next_cold, Some(HOT), 4));
    }
    let (mut duplicated, mut outlived, mut lost_dependent, mut lost_node, mut stale) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut checked_rounds = 0u64;
    for round in 1..=ROUNDS {
        // A dependent and the node it was computed from (a churner may evict the dependent
        // between the two calls: then capture again).
        let mut pair = None;
        for _ in 0..100 {
            let (_, above) = capture(s.above(HOT)).await.unwrap();
            let dependencies = above.dependencies();
            if let [dependency] = dependencies.as_slice()
                && above.is_consistent()
            {
                pair = Some((above.clone(), dependency.clone()));
                break;
            }
        }
        let Some((above, dependency)) = pair else {
            panic!("round {round}: no consistent above({HOT}) with its dependency in 100 tries");
        };
        for _ in 0..STEPS {
            let (_, served) = capture(s.value(HOT)).await.unwrap();
            s.cold(next_cold.fetch_add(1, Ordering::SeqCst)).await;
            // The table serves another node while the one `above` was computed from is still
            // consistent: one of the two is not in the table, and an invalidation by key
            // would miss it. (It must at least be invalidated soon.)
            if !served.ptr_eq(&dependency)
                && dependency.is_consistent()
                && timeout(PATIENCE, dependency.when_invalidated())
                    .await
                    .is_err()
            {
                duplicated += 1;
            }
            // In this order: if the dependency is gone, so is the dependent. (Not "not
            // consistent": a node whose callers were handed its value was once seen to report
            // `Computing` a little longer.)
            if dependency.state() == ComputedState::Invalidated && above.is_consistent() {
                outlived += 1;
            }
        }
        let new = s.bump(HOT);
        invalidate! { s.value(HOT); }
        if above.is_consistent() {
            lost_dependent += 1;
        }
        let (read, served) = capture(s.value(HOT)).await.unwrap();
        if read != new {
            stale += 1;
            if served.ptr_eq(&dependency) {
                lost_node += 1;
            }
        }
        if s.above(HOT).await != new + ABOVE {
            stale += 1;
        }
        checked_rounds += 1;
    }
    done.store(true, Ordering::SeqCst);
    join_within_patience(&mut churners)
        .await
        .unwrap_or_else(|hanging| panic!("{hanging} churners never finished"));
    assert_eq!(
        (duplicated, outlived, lost_dependent, lost_node, stale),
        (0, 0, 0, 0, 0),
        "over {checked_rounds} rounds of {STEPS} steps: {duplicated} times the table served \
         another node while the one a dependent was computed from stayed consistent, \
         {outlived} times a dependent stayed consistent after its dependency was gone, \
         {lost_dependent} times the dependent stayed consistent after invalidate! of its \
         dependency's key returned, {lost_node} times the node read on every step served the \
         old value after it, {stale} stale reads after \
         invalidate! returned"
    );
    assert!(
        Counts::get(&s.counts.evicted_cold) > ROUNDS * STEPS as u64 / 2,
        "the sweeps ran ({} cold values evicted)",
        Counts::get(&s.counts.evicted_cold)
    );
}

// ---------------------------------------------------------------------------------------------
// The waiters' registry: callers joining computations in flight.
// ---------------------------------------------------------------------------------------------

/// Promise: a caller joining a computation in flight always gets its value (the leader's, or
/// its own when the leader was dropped), never hangs, and never gets another node's.
///
/// Three hubs of capacity 4 (each value evicted soon after it is computed, its node dropped and
/// its memory reused by the next ones); each round, six fresh keys per hub, each called by six
/// callers at once: some kept, some polled a few times then dropped, some aborted, some cut off
/// by a timeout of a few microseconds; some keys are invalidated while they compute.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_joining_a_computation_in_flight_always_get_a_value() {
    const HUBS: u64 = 3;
    const ROUNDS: u64 = 250 * SCALE;
    const KEYS_PER_ROUND: u64 = 6;
    const CALLERS: u64 = 6;
    let services: Vec<_> = (0..HUBS).map(|id| Races::new(id, 4)).collect();
    let (mut wrong, mut kept_calls) = (0u64, 0u64);
    for round in 0..ROUNDS {
        let mut kept = JoinSet::new();
        let mut cancelled = JoinSet::new();
        let mut aborted = Vec::new();
        for s in &services {
            for j in 0..KEYS_PER_ROUND {
                let key = round * KEYS_PER_ROUND + j;
                for c in 0..CALLERS {
                    let s = Arc::clone(s);
                    let roll = mix(key << 16 | s.id << 8 | c);
                    match roll % 5 {
                        0 | 1 => {
                            kept.spawn(async move { (key, s.id, s.slow(key).await) });
                        }
                        2 => {
                            cancelled.spawn(async move {
                                poll_then_drop(s.slow(key), 1 + (roll >> 8) % 4).await;
                            });
                        }
                        3 => {
                            cancelled.spawn(async move {
                                let limit = Duration::from_micros((roll >> 8) % 50);
                                let _ = timeout(limit, s.slow(key)).await;
                            });
                        }
                        _ => aborted.push(tokio::spawn(async move { s.slow(key).await })),
                    }
                }
                if (key + s.id).is_multiple_of(5) {
                    let s = Arc::clone(s);
                    cancelled.spawn(async move {
                        tokio::task::yield_now().await;
                        invalidate! { s.slow(key); }
                    });
                }
            }
        }
        for (i, task) in aborted.into_iter().enumerate() {
            if i % 2 == 0 {
                tokio::task::yield_now().await;
            }
            task.abort();
        }
        match join_within_patience(&mut kept).await {
            Ok(results) => {
                kept_calls += results.len() as u64;
                for (key, id, value) in results {
                    if value != tag(id, key) {
                        wrong += 1;
                    }
                }
            }
            Err(hanging) => panic!(
                "round {round}: {hanging} callers of slow(k) (joining a computation in flight \
                 among cancelled callers) never got a value"
            ),
        }
        if let Err(hanging) = join_within_patience(&mut cancelled).await {
            panic!("round {round}: {hanging} cancelling callers or invalidations never ended");
        }
    }
    assert_eq!(
        wrong, 0,
        "{wrong} of {kept_calls} callers got a value of another key or hub"
    );
    assert!(kept_calls > ROUNDS * HUBS * KEYS_PER_ROUND, "{kept_calls}");
}

enum Lead {
    /// Start `gated(k)` in a task of the leader's runtime.
    Start(u64),
    /// Drop that task; answer once it is gone.
    Abort(oneshot::Sender<()>),
    /// Await that task: its value.
    Finish(oneshot::Sender<Option<u64>>),
}

/// Promise: a caller joining a computation led on another runtime (another thread) is woken
/// when it ends, or takes it over when its leader is dropped, for thousands of short-lived
/// nodes (capacity 4: each evicted and dropped soon after, its memory reused by the next).
///
/// A leader thread with its own current-thread runtime starts `gated(k)` and holds it at the
/// gate; this thread's runtime spawns joiners (kept, polled once then dropped, aborted), lets
/// them register, then either has the leader dropped or not, and opens the gate once.
#[test]
fn joiners_on_another_runtime_are_woken_or_take_over_for_short_lived_nodes() {
    const NODES: u64 = 2_500;
    let s = Races::new(7, 4);
    let (lead, mut orders) = mpsc::unbounded_channel::<Lead>();
    let leader = std::thread::spawn({
        let s = Arc::clone(&s);
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut current: Option<tokio::task::JoinHandle<u64>> = None;
                while let Some(order) = orders.recv().await {
                    match order {
                        Lead::Start(k) => {
                            let s = Arc::clone(&s);
                            current = Some(tokio::spawn(async move { s.gated(k).await }));
                        }
                        Lead::Abort(done) => {
                            if let Some(task) = current.take() {
                                task.abort();
                                let _ = task.await;
                            }
                            let _ = done.send(());
                        }
                        Lead::Finish(value) => {
                            let task = current.take();
                            let result = match task {
                                Some(task) => task.await.ok(),
                                None => None,
                            };
                            let _ = value.send(result);
                        }
                    }
                }
            });
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (wrong, taken_over) = runtime.block_on(async {
        let (mut wrong, mut taken_over) = (0u64, 0u64);
        for k in 0..NODES {
            let expected = tag(s.id, k);
            let runs = Counts::get(&s.counts.computed_gated);
            lead.send(Lead::Start(k)).unwrap();
            timeout(PATIENCE, s.entered.acquire())
                .await
                .expect("the leader starts its computation")
                .unwrap()
                .forget();
            let mut kept = JoinSet::new();
            for _ in 0..2 {
                let s = Arc::clone(&s);
                kept.spawn(async move { s.gated(k).await });
            }
            let dropped = {
                let s = Arc::clone(&s);
                tokio::spawn(async move { poll_then_drop(s.gated(k), 1 + k % 3).await })
            };
            let aborted = {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.gated(k).await })
            };
            // Let them all join (they wait: the gate is closed).
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            aborted.abort();
            // Both gone before the leader may be: only the kept joiners are left to take over.
            let cut_short = timeout(PATIENCE, dropped)
                .await
                .unwrap_or_else(|_| panic!("node {k}: a joiner cancelled after a few polls hangs"))
                .unwrap();
            assert!(
                cut_short.is_none(),
                "node {k}: served while the gate is closed"
            );
            let aborted = timeout(PATIENCE, aborted)
                .await
                .unwrap_or_else(|_| panic!("node {k}: an aborted joiner hangs"));
            assert!(
                aborted.is_err(),
                "node {k}: served while the gate is closed"
            );
            let leader_dropped = k % 3 == 0;
            if leader_dropped {
                let (done, dropped_leader) = oneshot::channel();
                lead.send(Lead::Abort(done)).unwrap();
                timeout(PATIENCE, dropped_leader)
                    .await
                    .expect("the leader is dropped")
                    .unwrap();
            }
            s.gate.add_permits(1);
            match join_within_patience(&mut kept).await {
                Ok(values) => wrong += values.iter().filter(|&&v| v != expected).count() as u64,
                Err(hanging) => panic!(
                    "node {k}: {hanging} joiners were never woken (leader dropped: \
                     {leader_dropped}, runs of gated: {})",
                    Counts::get(&s.counts.computed_gated) - runs
                ),
            }
            if leader_dropped {
                // A joiner ran the body again: take its "entered".
                timeout(PATIENCE, s.entered.acquire())
                    .await
                    .expect("a joiner took the computation over")
                    .unwrap()
                    .forget();
                taken_over += 1;
            } else {
                let (value, led) = oneshot::channel();
                lead.send(Lead::Finish(value)).unwrap();
                match timeout(PATIENCE, led).await {
                    Ok(Ok(Some(value))) if value == expected => {}
                    Ok(Ok(Some(_))) => wrong += 1,
                    other => panic!("node {k}: the leader ended without a value: {other:?}"),
                }
            }
        }
        (wrong, taken_over)
    });
    drop(lead);
    leader.join().unwrap();
    assert_eq!(
        wrong, 0,
        "{wrong} callers got a value of another node ({taken_over} computations taken over)"
    );
    assert_eq!(taken_over, NODES.div_ceil(3));
}

// ---------------------------------------------------------------------------------------------
// The waiters' registry: `Computed::when_invalidated`.
// ---------------------------------------------------------------------------------------------

/// Promise: `when_invalidated()` always returns after an invalidation, and never before one,
/// with many waiters on many nodes across hubs registering while the invalidations run on
/// another thread.
///
/// Each round, on three hubs: 16 values and 16 dependents per hub, four waiters on each (kept,
/// polled a few times then dropped, cut off by a timeout of a few microseconds), released at
/// once with an invalidator that invalidates every value by key, by handle, or through the
/// dependent first. The nodes of a round are dropped at its end: the next round's reuse their
/// memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_invalidated_always_returns_after_an_invalidation_racing_it() {
    const HUBS: u64 = 3;
    const ROUNDS: u64 = 120 * SCALE;
    const PER_HUB: usize = 16;
    const WAITERS: u64 = 4;
    let services: Vec<_> = (0..HUBS).map(|id| Races::new(id, 128)).collect();
    let premature = Arc::new(AtomicU64::new(0));
    let mut kept_waits = 0usize;
    for round in 0..ROUNDS {
        let mut targets = Vec::new();
        for s in &services {
            for k in 0..PER_HUB {
                let (_, dependent) = capture(s.above(k)).await.unwrap();
                let (_, leaf) = capture(s.value(k)).await.unwrap();
                targets.push((Arc::clone(s), k, leaf, dependent));
            }
        }
        let waiters = targets.len() * WAITERS as usize;
        let start = Arc::new(Barrier::new(waiters + 1));
        let mut kept = JoinSet::new();
        let mut cancelled = JoinSet::new();
        for (i, (_, _, leaf, dependent)) in targets.iter().enumerate() {
            for w in 0..WAITERS {
                let computed = if w % 2 == 0 { leaf } else { dependent }.clone();
                let roll = mix(round << 32 | (i as u64) << 8 | w);
                spawn_invalidation_waiter(
                    computed,
                    roll,
                    Some(Arc::clone(&start)),
                    &premature,
                    &mut kept,
                    &mut cancelled,
                );
            }
        }
        let invalidator = tokio::spawn({
            let start = Arc::clone(&start);
            let targets = targets.clone();
            async move {
                start.wait().await;
                for (i, (s, k, leaf, dependent)) in targets.iter().enumerate() {
                    s.bump(*k);
                    match (i as u64 + round) % 3 {
                        0 => invalidate! { s.value(*k); },
                        1 => leaf.invalidate(),
                        _ => {
                            dependent.invalidate();
                            leaf.invalidate();
                        }
                    }
                    if i % 4 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        timeout(PATIENCE, invalidator)
            .await
            .expect("the invalidator ends")
            .unwrap();
        for (_, k, leaf, dependent) in &targets {
            assert!(
                !leaf.is_consistent() && !dependent.is_consistent(),
                "round {round}: value({k}) or above({k}) consistent after its invalidation"
            );
        }
        kept_waits += kept.len();
        if let Err(hanging) = join_within_patience(&mut kept).await {
            panic!(
                "round {round}: {hanging} when_invalidated() waiters never returned after their \
                 value was invalidated"
            );
        }
        if let Err(hanging) = join_within_patience(&mut cancelled).await {
            panic!("round {round}: {hanging} cancelled waiters never ended");
        }
    }
    assert_eq!(
        premature.load(Ordering::SeqCst),
        0,
        "when_invalidated() returned while the value was still consistent"
    );
    assert!(kept_waits > 1_000, "{kept_waits} kept waiters");
}

enum Invalidate {
    Handle(Computed),
    Key(usize),
}

/// Promise: a waiter on a node is woken by its invalidation whatever node lived at the same
/// address before, and whatever waiters of that node were cancelled, and when.
///
/// Thousands of short-lived nodes, one at a time, on a runtime of their own: each gets a waiter
/// polled once and dropped at once, a waiter left registered and dropped only once the next
/// node has a waiter of its own, and a kept waiter; then a thread without a runtime invalidates
/// it (by handle or by key) and the kept waiter must return. Each node leaves the table with
/// its invalidation and is dropped with its last handle: its memory is free for the next ones.
#[test]
fn a_waiter_is_woken_whatever_node_lived_at_its_address_before() {
    const NODES: u64 = 4_000;
    let s = Races::new(3, 8);
    let (to_invalidator, orders) = std::sync::mpsc::channel::<(Invalidate, u64)>();
    let (invalidated, invalidations) = std::sync::mpsc::channel::<u64>();
    let invalidator = std::thread::spawn({
        let s = Arc::clone(&s);
        move || {
            for (order, n) in orders {
                match order {
                    Invalidate::Handle(computed) => computed.invalidate(),
                    Invalidate::Key(k) => invalidate! { s.value(k); },
                }
                if invalidated.send(n).is_err() {
                    return;
                }
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let premature = runtime.block_on(async {
        let mut premature = 0u64;
        let mut lingering: Option<std::pin::Pin<Box<dyn Future<Output = ()>>>> = None;
        for n in 0..NODES {
            let k = (n % KEYS as u64) as usize;
            s.bump(k);
            let (_, computed) = capture(s.value(k)).await.unwrap();
            // Registered, then dropped at once.
            if poll_then_drop(computed.when_invalidated(), 1)
                .await
                .is_some()
            {
                premature += 1;
            }
            // The waiter that must return.
            let mut kept = Box::pin(computed.when_invalidated());
            if poll_once(&mut kept).await.is_some() {
                premature += 1;
            }
            // Registered, kept past this node's end: the previous one goes now, after this
            // node's waiter registered.
            let mut next = {
                let computed = computed.clone();
                Box::pin(async move { computed.when_invalidated().await })
                    as std::pin::Pin<Box<dyn Future<Output = ()>>>
            };
            if poll_once(&mut next).await.is_some() {
                premature += 1;
            }
            drop(lingering.replace(next));
            let order = if n % 2 == 0 {
                Invalidate::Handle(computed.clone())
            } else {
                Invalidate::Key(k)
            };
            to_invalidator.send((order, n)).unwrap();
            if timeout(PATIENCE, kept).await.is_err() {
                panic!(
                    "node {n}: when_invalidated() never returned after the node was \
                     invalidated on another thread ({computed:?}, state {:?})",
                    computed.state()
                );
            }
            // The invalidator is done with this node (its handle dropped) before the next.
            let done = invalidations.recv_timeout(PATIENCE).unwrap();
            assert_eq!(done, n);
            if computed.is_consistent() {
                premature += 1;
            }
        }
        premature
    });
    drop(to_invalidator);
    invalidator.join().unwrap();
    assert_eq!(
        premature, 0,
        "when_invalidated() returned {premature} times while its value was still consistent"
    );
}

/// Promise: no waiter is left hanging when the evictor races its registration: a value that
/// something awaits is never evicted, one whose waiters were all cancelled may be, and either
/// way `when_invalidated()` returns once the value is gone.
///
/// On a hub of capacity 16, two churners miss on fresh keys (sweeps on two threads) while
/// waiters register on 48 values: kept, polled a few times then dropped, or cut off by a
/// timeout of a few microseconds. At the end of each round `invalidate_everything`: every kept
/// waiter must have returned by then or return now, and none while its value was consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_racing_eviction_sweeps_are_never_left_hanging() {
    const ROUNDS: u64 = 80 * SCALE;
    const VALUES: usize = 48;
    let s = Races::new(0, 16);
    let premature = Arc::new(AtomicU64::new(0));
    let next_cold = Arc::new(AtomicU64::new(0));
    let mut kept_waits = 0usize;
    for round in 0..ROUNDS {
        let done = Arc::new(AtomicBool::new(false));
        let mut churners = JoinSet::new();
        for _ in 0..2 {
            let s = Arc::clone(&s);
            let done = Arc::clone(&done);
            let next_cold = Arc::clone(&next_cold);
            churners.spawn(churn(s, done, next_cold, None, 2));
        }
        let mut kept = JoinSet::new();
        let mut cancelled = JoinSet::new();
        for k in 0..VALUES {
            let (_, computed) = capture(s.value(k)).await.unwrap();
            let roll = mix(round << 32 | k as u64);
            spawn_invalidation_waiter(computed, roll, None, &premature, &mut kept, &mut cancelled);
            s.cold(next_cold.fetch_add(1, Ordering::SeqCst)).await;
        }
        if let Err(hanging) = join_within_patience(&mut cancelled).await {
            panic!("round {round}: {hanging} cancelled waiters never ended");
        }
        // More sweeps with the cancelled waiters gone.
        for _ in 0..32 {
            s.cold(next_cold.fetch_add(1, Ordering::SeqCst)).await;
        }
        done.store(true, Ordering::SeqCst);
        if let Err(hanging) = join_within_patience(&mut churners).await {
            panic!("round {round}: {hanging} churners never ended");
        }
        s.hub.invalidate_everything();
        kept_waits += kept.len();
        if let Err(hanging) = join_within_patience(&mut kept).await {
            panic!(
                "round {round}: {hanging} when_invalidated() waiters never returned, though \
                 invalidate_everything() returned"
            );
        }
    }
    assert_eq!(
        premature.load(Ordering::SeqCst),
        0,
        "when_invalidated() returned while the value was still consistent"
    );
    assert!(kept_waits > 200, "{kept_waits} kept waiters");
    assert!(
        Counts::get(&s.counts.evicted_value) > 0,
        "no value whose waiters were cancelled was ever evicted: the race with the evictor was \
         not exercised"
    );
}
