//! One cached result and its edges in the dependency graph.

use std::sync::{Arc, Weak};

use thin_vec::ThinVec;

use super::method::ComputeMethodDescriptor;
use super::table::MethodTable;
use crate::event::HubEvent;
// std's, or loom's in the loom models' build.
use crate::sync::{AtomicU8, AtomicU32, AtomicUsize, Mutex, MutexGuard, OnceLock, Ordering, fence};

/// The body is running; no value yet.
pub(crate) const COMPUTING: u8 = 0;
/// The body is running, and something it read was invalidated meanwhile: its value will be
/// handed to the callers that waited for it, but never served from the cache.
pub(crate) const COMPUTING_INVALIDATED: u8 = 1;
/// The value is cached and current.
pub(crate) const CONSISTENT: u8 = 2;
/// The value is out of date (or the computation was abandoned, then there is no value).
pub(crate) const INVALIDATED: u8 = 3;

/// A flag of a node: an invalidation of this (consistent) value is scheduled (its method has an
/// invalidation delay, and one was asked for).
const DELAYED: u8 = 0b01;

/// The parts of a cached result that do not depend on its key or value types.
///
/// Whoever awaits its next state change registers in [`waiters`](super::waiters), by its
/// address: most nodes are never awaited.
pub(crate) struct NodeCore {
    state: AtomicU8,
    /// [`DELAYED`], and [`waiters::AWAITED`](super::waiters::AWAITED).
    flags: AtomicU8,
    /// Until when the evictor keeps this value (its method's minimum cache duration), on the
    /// [`keep_clock`]; 0: no such promise.
    kept_until: AtomicU32,
    version: u64,
    method: &'static ComputeMethodDescriptor,
    /// The address of the dependency recorded last (0: none, or a dependency was removed
    /// since): a computation that reads it again records nothing and takes no lock. While it is
    /// set, that dependency is in `edges` (every removal clears it first, under the lock), so it
    /// is alive and its address is its own.
    last_dependency: AtomicUsize,
    edges: Mutex<Edges>,
}

/// A node's edges. The lists are `ThinVec`s (one pointer each, their length and capacity on
/// the heap with the items): most nodes have one of the two lists empty, and an empty one
/// then costs 8 bytes instead of a `Vec`'s 24.
#[derive(Default)]
struct Edges {
    /// What this value was computed from. Strong: a dependency lives while its dependents do.
    dependencies: ThinVec<Arc<dyn ErasedNode>>,
    /// The addresses of `dependencies`, while the value computes and once it has more than
    /// [`SCAN_LIMIT`] of them: what keeps recording a computation's dependencies linear in
    /// their number (a call of a dependency already recorded records nothing).
    known: Option<Box<AddressSet>>,
    /// What was computed from this value. Weak: a dependent may be dropped at any time.
    dependents: ThinVec<Weak<dyn ErasedNode>>,
}

type AddressSet = std::collections::HashSet<usize, foldhash::fast::FixedState>;

/// Up to this many dependencies, a new one is checked against the others one by one (cheaper
/// than hashing); past it, through [`Edges::known`].
const SCAN_LIMIT: usize = 16;

/// The address of a node, the same for every pointer to it (a `dyn` pointer's metadata is not
/// part of it).
#[inline]
fn address(node: &Arc<dyn ErasedNode>) -> usize {
    Arc::as_ptr(node).cast::<()>() as usize
}

/// The address of a node seen through a reference: the same as [`address`] of an `Arc` to it.
#[inline]
pub(crate) fn address_of(node: &dyn ErasedNode) -> usize {
    std::ptr::from_ref(node).cast::<()>() as usize
}

impl Edges {
    fn has_dependency(&self, key: usize) -> bool {
        match &self.known {
            Some(known) => known.contains(&key),
            None => self
                .dependencies
                .iter()
                .any(|recorded| address(recorded) == key),
        }
    }

    /// Records the dependency at address `key` unless it is recorded already; returns whether
    /// it was new. `share` gives the reference to keep, asked for only when it is new: a
    /// dependency read again costs no reference count.
    fn insert_dependency(
        &mut self,
        key: usize,
        share: impl FnOnce() -> Arc<dyn ErasedNode>,
    ) -> bool {
        match &mut self.known {
            Some(known) => {
                if !known.insert(key) {
                    return false;
                }
            }
            None => {
                if self
                    .dependencies
                    .iter()
                    .any(|recorded| address(recorded) == key)
                {
                    return false;
                }
                if self.dependencies.len() >= SCAN_LIMIT {
                    let mut known = AddressSet::with_capacity_and_hasher(
                        self.dependencies.len() * 2,
                        foldhash::fast::FixedState::default(),
                    );
                    known.extend(self.dependencies.iter().map(address));
                    known.insert(key);
                    self.known = Some(Box::new(known));
                }
            }
        }
        push(&mut self.dependencies, share());
        true
    }
}

/// Pushes `item` onto `list`, sized for exactly one item when it is the first: most lists hold
/// one (a value read by one computation, a computation that reads one value), and a `ThinVec`'s
/// first allocation otherwise holds four (80 bytes for one 16-byte edge instead of 32).
fn push<T>(list: &mut ThinVec<T>, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(item);
}

impl NodeCore {
    pub(crate) fn new(method: &'static ComputeMethodDescriptor, version: u64) -> Self {
        Self {
            state: AtomicU8::new(COMPUTING),
            flags: AtomicU8::new(0),
            kept_until: AtomicU32::new(0),
            version,
            method,
            last_dependency: AtomicUsize::new(0),
            edges: Mutex::new(Edges::default()),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn method(&self) -> &'static ComputeMethodDescriptor {
        self.method
    }

    /// Claims the scheduling of this value's delayed invalidation: `true` for the first caller
    /// only.
    pub(crate) fn claim_delayed_invalidation(&self) -> bool {
        self.flags.fetch_or(DELAYED, Ordering::AcqRel) & DELAYED == 0
    }

    /// Promises to keep the value `duration` from now (its method's minimum cache duration).
    pub(crate) fn keep_for(&self, duration: std::time::Duration) {
        let until = keep_clock::now()
            .wrapping_add(keep_clock::ticks(duration))
            .max(1);
        self.kept_until.store(until, Ordering::Relaxed);
    }

    /// Whether the evictor must keep the value still (its minimum cache duration is not over).
    pub(crate) fn is_kept(&self) -> bool {
        let until = self.kept_until.load(Ordering::Relaxed);
        until != 0 && keep_clock::is_before(keep_clock::now(), until)
    }

    /// Whether something awaits this node's next state change (a `Computed::when_invalidated`,
    /// such as a live stream showing the value): the evictor keeps such a value.
    pub(crate) fn is_awaited(&self) -> bool {
        super::waiters::is_awaited(self.address(), &self.flags)
    }

    /// Registers a listener for the next state change. The caller must check the state again
    /// after this, before awaiting.
    pub(crate) fn listen(&self) -> event_listener::EventListener {
        let listener = super::waiters::listen(self.address(), &self.flags);
        // Pairs with the fence in `notify_all`: either the notifier sees this listener, or the
        // caller's next state check sees the new state.
        fence(Ordering::SeqCst);
        listener
    }

    /// Wakes every listener. Most nodes have none: then this is a fence and a load.
    pub(crate) fn notify_all(&self) {
        fence(Ordering::SeqCst);
        if self.flags.load(Ordering::Relaxed) & super::waiters::AWAITED != 0 {
            super::waiters::notify(self.address(), &self.flags);
        }
    }

    /// What the node's waiters are registered by.
    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Moves `from` to `to` if the state is `from`.
    pub(crate) fn transition(&self, from: u8, to: u8) -> Result<(), u8> {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
    }

    fn edges(&self) -> MutexGuard<'_, Edges> {
        // A panic while the lock is held leaves the edges consistent (every operation on them is
        // a single push or take), so a poisoned lock is still usable.
        self.edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `self` (a computing node) is computed from the node at address `key`,
    /// unless it is recorded already; returns whether it was new. `share` gives the reference
    /// to keep, asked for only when it is new.
    pub(crate) fn add_dependency(
        &self,
        key: usize,
        share: impl FnOnce() -> Arc<dyn ErasedNode>,
    ) -> bool {
        if self.last_dependency.load(Ordering::Acquire) == key {
            return false;
        }
        let mut edges = self.edges();
        let new = edges.insert_dependency(key, share);
        self.last_dependency.store(key, Ordering::Release);
        new
    }

    /// Replaces the dependency at address `old` (a consolidated value that did not change)
    /// with `new` (its successor). Returns `false`, changing nothing, when `old` is not among
    /// the dependencies anymore (`self` was invalidated: its edges are gone).
    pub(crate) fn replace_dependency(&self, old: usize, new: &Arc<dyn ErasedNode>) -> bool {
        let mut edges = self.edges();
        self.last_dependency.store(0, Ordering::Release);
        let Some(index) = edges
            .dependencies
            .iter()
            .position(|recorded| address(recorded) == old)
        else {
            return false;
        };
        let new_key = address(new);
        if edges.has_dependency(new_key) {
            edges.dependencies.remove(index);
        } else {
            edges.dependencies[index] = Arc::clone(new);
            if let Some(known) = &mut edges.known {
                known.insert(new_key);
            }
        }
        if let Some(known) = &mut edges.known {
            known.remove(&old);
        }
        true
    }

    /// Forgets `dependency` (a computation that was abandoned before `self` used its value).
    pub(crate) fn remove_dependency(&self, dependency: &dyn ErasedNode) {
        let key = address_of(dependency);
        let mut edges = self.edges();
        self.last_dependency.store(0, Ordering::Release);
        edges
            .dependencies
            .retain(|recorded| address(recorded) != key);
        if let Some(known) = &mut edges.known {
            known.remove(&key);
        }
    }

    /// Ends the recording of dependencies (the computation returned): frees what made it fast.
    pub(crate) fn end_recording(&self) {
        let mut edges = self.edges();
        if edges.known.is_some() {
            edges.known = None;
            edges.dependencies.shrink_to_fit();
        }
    }

    /// Records `dependent` as computed from `self`. Returns `false` if `self` is already
    /// invalidated: then the dependent must be invalidated by the caller.
    pub(crate) fn add_dependent(&self, dependent: Weak<dyn ErasedNode>) -> bool {
        let mut edges = self.edges();
        // Checked under the lock: invalidation sets the state first and drains the dependents
        // under this lock, so a dependent is either drained or refused here, never lost.
        if matches!(self.state(), INVALIDATED | COMPUTING_INVALIDATED) {
            return false;
        }
        // A value read by one computation after another (recomputed after a change, the old
        // one dropped) finds the previous one's edge last, dead: it takes its place (a load, no
        // reference count) instead of growing the list until the sweep below.
        if let Some(last) = edges.dependents.last_mut()
            && last.strong_count() == 0
        {
            *last = dependent;
            return true;
        }
        if edges.dependents.len() >= 8 && edges.dependents.len().is_power_of_two() {
            edges
                .dependents
                .retain(|known| known.upgrade().is_some_and(|node| node.core().is_live()));
        }
        push(&mut edges.dependents, dependent);
        true
    }

    /// Drops the dependencies and returns the live dependents (called once, on invalidation).
    pub(crate) fn take_edges(&self) -> Vec<Arc<dyn ErasedNode>> {
        self.take_all_edges().0
    }

    /// Takes the edges (called once, on invalidation): the live dependents, and the
    /// dependencies.
    pub(crate) fn take_all_edges(&self) -> (Nodes, Nodes) {
        let mut guard = self.edges();
        self.last_dependency.store(0, Ordering::Release);
        let edges = std::mem::take(&mut *guard);
        drop(guard);
        let dependents = edges
            .dependents
            .into_iter()
            .filter_map(|dependent| dependent.upgrade())
            .collect();
        (dependents, edges.dependencies.into_iter().collect())
    }

    /// Whether a live (consistent or computing) value depends on this one. Drops the edges to
    /// dead or invalidated dependents it meets on the way (from the most recent), so that the
    /// cost is constant over time.
    pub(crate) fn has_live_dependents(&self) -> bool {
        let mut edges = self.edges();
        while let Some(last) = edges.dependents.last() {
            if last
                .upgrade()
                .is_some_and(|dependent| matches!(dependent.core().state(), COMPUTING | CONSISTENT))
            {
                return true;
            }
            edges.dependents.pop();
        }
        false
    }

    pub(crate) fn dependencies(&self) -> Vec<Arc<dyn ErasedNode>> {
        self.edges().dependencies.iter().cloned().collect()
    }

    pub(crate) fn dependents(&self) -> Vec<Arc<dyn ErasedNode>> {
        self.edges()
            .dependents
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn is_live(&self) -> bool {
        self.state() != INVALIDATED
    }
}

impl Drop for NodeCore {
    fn drop(&mut self) {
        super::waiters::forget(self.address(), &self.flags);
    }
}

/// Nodes seen without their types.
pub(crate) type Nodes = Vec<Arc<dyn ErasedNode>>;

/// Why a node leaves its method table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// A lookup found it invalidated and helps remove it: its invalidation was told already.
    Cleanup,
    /// It was just invalidated: tell the hub's listener.
    Invalidated,
    /// It was just evicted: tell the hub's listener.
    Evicted,
}

/// A cached result seen without its key and value types.
pub(crate) trait ErasedNode: Send + Sync + 'static {
    fn core(&self) -> &NodeCore;
    /// Removes this node from its method table if it is still the entry for its key, and tells
    /// the hub's event listener why, unless `removal` is [`Removal::Cleanup`].
    fn detach(&self, removal: Removal);
    /// Tells the hub's event listener that this node left its table, and why (nothing for
    /// [`Removal::Cleanup`]); [`detach`](Self::detach) without the removal.
    fn tell(&self, removal: Removal);
    /// Consolidates this node, just invalidated: keeps `dependents` while its method computes
    /// the new value in a task of its own, then makes them dependents of the new value if it
    /// equals this one, or invalidates them. `Err(dependents)`: it cannot (no consolidator, no
    /// service, no runtime), invalidate them now.
    fn consolidate(&self, dependents: Nodes) -> Result<(), Nodes>;
    /// Whether the value was read since the evictor's hand last passed (a hit publishes it in
    /// its table's slot: a value read again since then gets a second chance; a value read once
    /// is evicted first). With `take`, clears the mark.
    fn accessed(&self, take: bool) -> bool;
}

/// A cached result of the compute method `S::method(K) -> T`. (Its fields in the compiler's
/// order: `repr(C)` with what a hit reads first made the hit slower, 1.87× → 2.09× the
/// `RwLock<HashMap>` baseline in `cargo bench -p ofx-core --bench computed -- hit/`.)
pub(crate) struct Node<S, K, T> {
    core: NodeCore,
    key: K,
    table: Weak<MethodTable<S, K, T>>,
    output: OnceLock<T>,
}

impl<S, K, T> Node<S, K, T>
where
    S: 'static,
    K: super::ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(core: NodeCore, key: K, table: Weak<MethodTable<S, K, T>>) -> Self {
        Self {
            core,
            key,
            table,
            output: OnceLock::new(),
        }
    }

    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    #[inline]
    pub(crate) fn output(&self) -> Option<&T> {
        self.output.get()
    }

    /// Stores the computed value; called once by the computation's leader.
    pub(crate) fn set_output(&self, value: T) {
        // Only the leader sets the output, once; a second set cannot happen.
        let _ = self.output.set(value);
    }

    /// Waits until the computation ends. `None`: it was abandoned (its caller was dropped or
    /// its body panicked) and the caller should try again.
    pub(crate) async fn wait_output(&self) -> Option<T> {
        loop {
            if let Some(value) = self.output.get() {
                return Some(value.clone());
            }
            if self.core.state() == INVALIDATED {
                // Stored, then invalidated since the check above (the leader stores the value
                // before it ends the computation): the callers that waited still get it.
                return self.output.get().cloned();
            }
            let listener = self.core.listen();
            if self.output.get().is_some() || self.core.state() == INVALIDATED {
                continue;
            }
            listener.await;
        }
    }
}

impl<S, K, T> ErasedNode for Node<S, K, T>
where
    S: 'static,
    K: super::ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    fn core(&self) -> &NodeCore {
        &self.core
    }

    fn consolidate(&self, dependents: Nodes) -> Result<(), Nodes> {
        let Some(table) = self.table.upgrade() else {
            return Err(dependents);
        };
        let Some(consolidator) = table.consolidator() else {
            return Err(dependents);
        };
        let (Some(old), Ok(runtime)) = (
            self.output.get().cloned(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return Err(dependents);
        };
        let Some(recompute) = (consolidator.recompute)(self.key.clone()) else {
            return Err(dependents);
        };
        let same = consolidator.same;
        let method = self.core.method;
        // This node's address: what the dependents' lists know it by.
        let this = std::ptr::from_ref(self).cast::<()>() as usize;
        // Invalidates the dependents unless disarmed: if the recomputation panics, or the task
        // is dropped (its runtime shutting down), they are not left computed from a value that
        // changed.
        let mut kept = super::invalidation::InvalidateOnDrop::new(dependents);
        runtime.spawn(async move {
            let (new, computed) = match super::context::capture(recompute).await {
                Ok(captured) => captured,
                Err(_) => unreachable!("a compute method's wrapper calls its compute method"),
            };
            let changed = !same(&old, &new);
            let dependents = kept.disarm();
            if changed {
                super::invalidation::invalidate_all(dependents);
            } else {
                super::invalidation::adopt(computed.node(), dependents, this);
            }
            table.emit(|| HubEvent::Consolidated {
                method: method.name(),
                changed,
            });
        });
        Ok(())
    }

    fn accessed(&self, take: bool) -> bool {
        self.table
            .upgrade()
            .is_some_and(|table| table.slot_accessed(self, take))
    }

    fn detach(&self, removal: Removal) {
        if let Some(table) = self.table.upgrade() {
            table.remove_node(self);
        }
        self.tell(removal);
    }

    fn tell(&self, removal: Removal) {
        let method = self.core.method;
        let emit = |event: fn(&'static str) -> HubEvent| {
            if let Some(table) = self.table.upgrade() {
                table.emit(|| event(method.name()));
            }
        };
        match removal {
            Removal::Cleanup => {}
            Removal::Invalidated => {
                method.count_invalidation();
                emit(|method| HubEvent::Invalidated { method });
            }
            Removal::Evicted => {
                method.count_eviction();
                emit(|method| HubEvent::Evicted { method });
            }
        }
    }
}

/// The clock of minimum cache durations: milliseconds since the first use, on 32 bits that wrap
/// (every 49 days), compared within half of that range: a duration is at most 24 days.
mod keep_clock {
    use std::sync::OnceLock;
    use std::time::Duration;

    // tokio's clock: the same as the system's monotonic clock, except in tests that pause it.
    use tokio::time::Instant;

    /// The longest duration the clock measures (a longer one is cut to it).
    const MAX_TICKS: u32 = u32::MAX / 2;

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// Now, in wrapping milliseconds.
    pub(super) fn now() -> u32 {
        // Wrapping is the point: only differences of less than `MAX_TICKS` are read.
        #[allow(clippy::cast_possible_truncation)]
        let ticks = Instant::now()
            .saturating_duration_since(epoch())
            .as_millis() as u32;
        ticks
    }

    /// `duration` in ticks, at least 1 and at most `MAX_TICKS`.
    pub(super) fn ticks(duration: Duration) -> u32 {
        u32::try_from(duration.as_millis())
            .unwrap_or(MAX_TICKS)
            .clamp(1, MAX_TICKS)
    }

    /// Whether `a` comes before `b` (less than `MAX_TICKS` apart).
    pub(super) fn is_before(a: u32, b: u32) -> bool {
        let ahead = b.wrapping_sub(a);
        ahead != 0 && ahead <= MAX_TICKS
    }
}
