//! [`Registry`]: one hub's method tables, its entry count and its evictor.

use std::any::{Any, TypeId};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use super::ComputeKey;
use super::clock::Queue;
use super::invalidation::{evict, invalidate_everything};
use super::method::ComputeMethodDescriptor;
use super::node::{CONSISTENT, ErasedNode, INVALIDATED, Nodes};
use super::table::{ErasedTable, MethodTable};
use crate::event::{HubEvent, HubEventListener};

/// Slots allocated with the registry, for the first methods used in the process: found with
/// one load.
const DIRECT: usize = 256;
const CHUNK: usize = 64;
const CHUNKS: usize = 1024;

type Slot = OnceLock<Arc<dyn ErasedTable>>;

/// One hub's cache: a table per compute method, found by the method's slot index without a
/// lock on the hit path.
pub(crate) struct Registry {
    /// The slots of the first `DIRECT` method indexes.
    direct: Box<[Slot]>,
    /// `CHUNKS` chunks of `CHUNK` slots for the next indexes, each chunk allocated on first use.
    chunks: Box<[OnceLock<Box<[Slot]>>]>,
    /// Tables whose method slot holds another type (a method of a generic `impl`, or more
    /// methods than slots): found by (slot, type).
    overflow: papaya::HashMap<(usize, TypeId), Arc<dyn ErasedTable>>,
    /// Every table, for eviction and `invalidate_everything`.
    tables: Mutex<Vec<Arc<dyn ErasedTable>>>,
    len: Arc<AtomicUsize>,
    capacity: usize,
    /// Every cached node in insertion order, for the evictor's clock (weak: the tables own
    /// the nodes).
    clock: Mutex<Queue<Weak<dyn ErasedNode>>>,
    evicting: Mutex<()>,
    /// Calls of the evictor to skip after a sweep that could not get under the capacity.
    postponed: AtomicUsize,
    /// The hub's event listener, shared with every table.
    listener: Option<Arc<dyn HubEventListener>>,
}

impl Registry {
    pub(crate) fn new(capacity: usize, listener: Option<Arc<dyn HubEventListener>>) -> Self {
        Self {
            direct: (0..DIRECT).map(|_| OnceLock::new()).collect(),
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            overflow: papaya::HashMap::new(),
            tables: Mutex::new(Vec::new()),
            len: Arc::new(AtomicUsize::new(0)),
            capacity,
            clock: Mutex::new(Queue::default()),
            evicting: Mutex::new(()),
            postponed: AtomicUsize::new(0),
            listener,
        }
    }

    /// Tells `event` to the hub's event listener, if there is one (and builds it only then).
    #[inline]
    pub(crate) fn emit(&self, event: impl FnOnce() -> HubEvent) {
        crate::event::emit(self.listener.as_ref(), event);
    }

    /// The number of cached entries (consistent or computing).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    #[inline]
    fn slot(&self, index: usize) -> Option<&Slot> {
        match self.direct.get(index) {
            Some(slot) => Some(slot),
            None => self.chunked_slot(index - DIRECT),
        }
    }

    #[cold]
    fn chunked_slot(&self, index: usize) -> Option<&Slot> {
        let chunk = self.chunks.get(index / CHUNK)?;
        let chunk = chunk.get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        chunk.get(index % CHUNK)
    }

    /// The table of `method` for these types, created on first use.
    #[inline]
    pub(crate) fn table<S, K, T>(&self, method: &ComputeMethodDescriptor) -> TableRef<'_, S, K, T>
    where
        S: 'static,
        K: ComputeKey,
        T: Clone + Send + Sync + 'static,
    {
        let index = method.slot();
        if let Some(table) = self.slot(index).and_then(OnceLock::get)
            && let Some(table) = (table.as_ref() as &dyn Any).downcast_ref()
        {
            return TableRef::Slot(table);
        }
        self.new_or_overflow_table(method, index)
    }

    /// [`table`](Self::table) when it is not in its slot: creates it there, or finds or
    /// creates it in the overflow map.
    #[cold]
    fn new_or_overflow_table<S, K, T>(
        &self,
        method: &ComputeMethodDescriptor,
        index: usize,
    ) -> TableRef<'_, S, K, T>
    where
        S: 'static,
        K: ComputeKey,
        T: Clone + Send + Sync + 'static,
    {
        if let Some(slot) = self.slot(index) {
            let table = slot.get_or_init(|| {
                method.set_service::<S>();
                self.new_table::<S, K, T>()
            });
            if let Some(table) = (table.as_ref() as &dyn Any).downcast_ref() {
                return TableRef::Slot(table);
            }
        }
        self.overflow_table(index, true)
            .unwrap_or_else(|| unreachable!("overflow_table creates the table when asked"))
    }

    /// The table of `method` for these types if it exists.
    pub(crate) fn existing_table<S, K, T>(
        &self,
        method: &ComputeMethodDescriptor,
    ) -> Option<TableRef<'_, S, K, T>>
    where
        S: 'static,
        K: ComputeKey,
        T: Clone + Send + Sync + 'static,
    {
        let index = method.slot();
        if let Some(slot) = self.slot(index) {
            let table = slot.get()?;
            if let Some(table) = (table.as_ref() as &dyn Any).downcast_ref() {
                return Some(TableRef::Slot(table));
            }
        }
        self.overflow_table(index, false)
    }

    #[cold]
    fn overflow_table<S, K, T>(&self, index: usize, create: bool) -> Option<TableRef<'_, S, K, T>>
    where
        S: 'static,
        K: ComputeKey,
        T: Clone + Send + Sync + 'static,
    {
        let key = (index, TypeId::of::<MethodTable<S, K, T>>());
        let overflow = self.overflow.pin();
        let table = if create {
            Arc::clone(overflow.get_or_insert_with(key, || self.new_table::<S, K, T>()))
        } else {
            Arc::clone(overflow.get(&key)?)
        };
        let table: Arc<dyn Any + Send + Sync> = table;
        table.downcast().ok().map(TableRef::Overflow)
    }

    fn new_table<S, K, T>(&self) -> Arc<dyn ErasedTable>
    where
        S: 'static,
        K: ComputeKey,
        T: Clone + Send + Sync + 'static,
    {
        let table: Arc<dyn ErasedTable> =
            MethodTable::<S, K, T>::new(Arc::clone(&self.len), self.listener.clone());
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&table));
        table
    }

    /// Records a node just inserted into its table, for the evictor. The evictor runs when its
    /// computation ends ([`evict_if_over_capacity`](Self::evict_if_over_capacity)).
    pub(crate) fn inserted(&self, node: Weak<dyn ErasedNode>) {
        let mut clock = self.clock.lock().unwrap_or_else(PoisonError::into_inner);
        clock.push_back(node);
        // Invalidated nodes leave their weak reference behind (which keeps their allocation):
        // drop them once they outnumber the live entries.
        if clock.len() > self.len().saturating_mul(2).saturating_add(64) {
            clock.retain(|node| {
                node.upgrade()
                    .is_some_and(|node| node.core().state() != INVALIDATED)
            });
        }
    }

    /// Evicts entries while the cache holds more than its capacity. Eviction is invalidation:
    /// an evicted entry's dependents are invalidated with it.
    ///
    /// The policy is a clock (FIFO with a second chance) that keeps what is in use: nodes queue
    /// in insertion order and the evictor takes them from the front. A node read since the hand
    /// last passed is sent to the back with its flag cleared; so is a node something awaits
    /// (`Computed::when_invalidated`: a live stream showing it), a node within its method's
    /// minimum cache duration, and a node that a live
    /// (consistent or computing) value depends on: a dependency of a value in use is in use,
    /// though its dependent's cache hits never read it. Other consistent nodes are evicted, and
    /// the evictor then looks at once at what each victim depended on: a dependency left with no
    /// live dependent and not read since the hand passed is evicted too, so that dropping a
    /// top-level value frees its dependencies without another turn of the hand.
    ///
    /// It runs when a computation ends, once the values it read are registered as its
    /// dependencies (so in use), not when its node is inserted: at that point the values the
    /// new computation is about to read are not known to be in use, and a sweep then could
    /// evict exactly them (the newest values, depended on by nothing yet).
    ///
    /// A sweep evicts down to 7/8 of the capacity at once, so that sweeps are rare. The hand
    /// makes two turns at most (the first may only clear flags, the second then evicts): a sweep
    /// never loops. Values in use are never evicted, so a sweep may fail to get under the
    /// capacity: when values depended on by computations still running fill it (a consistent
    /// graph always has values nothing depends on, which the second turn evicts; a running
    /// computation protects what it read until it ends). Then the next sweep waits for an eighth
    /// of the capacity more computations, so that the evictor's cost stays constant per
    /// computation (two turns per eighth of the capacity) even when nothing can be evicted; the
    /// cache may meanwhile hold up to an eighth more than its capacity, plus what is computing.
    #[inline]
    pub(crate) fn evict_if_over_capacity(&self) {
        if self.len() > self.capacity {
            self.over_capacity();
        }
    }

    #[cold]
    fn over_capacity(&self) {
        let postponed = self
            .postponed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            });
        if postponed.is_ok() {
            return;
        }
        // One evictor at a time; the others go on, the running sweep covers them.
        let Ok(_evicting) = self.evicting.try_lock() else {
            return;
        };
        let evicted = self.sweep(self.capacity - self.capacity / 8);
        let len = self.len();
        if len > self.capacity {
            self.postponed
                .store((self.capacity / 8).max(1), Ordering::Relaxed);
        }
        tracing::trace!(evicted, len, "evicted cached values");
    }

    /// Two turns of the hand at most, until the cache holds `target` values. Returns how many
    /// values it evicted.
    ///
    /// Victims are evicted under the clock's lock: they have no live dependent, so evicting
    /// one invalidates nothing else, and the lock is only ever taken by inserts, which do not
    /// run inside an event listener or an invalidation.
    fn sweep(&self, target: usize) -> usize {
        let mut evicted = 0;
        let mut clock = self.clock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut left = 2 * clock.len();
        while self.len() > target && left > 0 {
            left -= 1;
            let Some(weak) = clock.pop_front() else {
                break;
            };
            let Some(node) = weak.upgrade() else {
                continue;
            };
            let core = node.core();
            match core.state() {
                INVALIDATED => {}
                CONSISTENT
                    if !node.accessed(true)
                        && !core.has_live_dependents()
                        && !core.is_awaited()
                        && !core.is_kept() =>
                {
                    if let Some(dependencies) = evict(node.as_ref()) {
                        evicted += 1 + self.evict_unused(dependencies, target);
                    }
                }
                // Read since the hand last passed, depended on by a live value, or computing:
                // a second chance.
                _ => clock.push_back(weak),
            }
        }
        evicted
    }

    /// Evicts, depth first while the cache holds more than `target` values, the `nodes` (the
    /// dependencies of a value just evicted) and their own dependencies that no live value
    /// depends on and that were not read since the hand passed. Returns how many it evicted.
    fn evict_unused(&self, mut nodes: Nodes, target: usize) -> usize {
        let mut evicted = 0;
        while self.len() > target {
            let Some(node) = nodes.pop() else {
                break;
            };
            let core = node.core();
            if core.state() != CONSISTENT
                || node.accessed(false)
                || core.has_live_dependents()
                || core.is_awaited()
                || core.is_kept()
            {
                continue;
            }
            if let Some(dependencies) = evict(node.as_ref()) {
                evicted += 1;
                nodes.extend(dependencies);
            }
        }
        evicted
    }

    /// Invalidates every cached value.
    pub(crate) fn invalidate_everything(&self) {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for table in tables {
            invalidate_everything(table.all());
        }
    }
}

/// A method table borrowed from its slot, or held for a table found in the overflow map.
pub(crate) enum TableRef<'a, S, K, T> {
    Slot(&'a MethodTable<S, K, T>),
    Overflow(Arc<MethodTable<S, K, T>>),
}

impl<S, K, T> Deref for TableRef<'_, S, K, T> {
    type Target = MethodTable<S, K, T>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        match self {
            Self::Slot(table) => table,
            Self::Overflow(table) => table,
        }
    }
}
