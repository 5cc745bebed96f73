//! [`MethodTable`]: one hub's cache of one compute method, keyed by the arguments.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use super::ComputeKey;
use super::node::{ErasedNode, Node};
use crate::event::{HubEvent, HubEventListener};

type Map<S, K, T> = papaya::HashMap<K, Arc<Node<S, K, T>>, foldhash::fast::RandomState>;

/// The cached results of `S::method(K) -> T` on one hub.
pub(crate) struct MethodTable<S, K, T> {
    map: Map<S, K, T>,
    /// The hub-wide entry count, shared by all of its tables.
    len: Arc<AtomicUsize>,
    /// The hub's event listener.
    listener: Option<Arc<dyn HubEventListener>>,
    this: Weak<Self>,
    _service: PhantomData<fn() -> S>,
}

impl<S, K, T> MethodTable<S, K, T>
where
    S: 'static,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        len: Arc<AtomicUsize>,
        listener: Option<Arc<dyn HubEventListener>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                // Incremental resizing (papaya's default) kept a table with many entries and a
                // steady churn of invalidations and recomputations resizing all the time, each
                // insert and removal helping copy a chunk: an invalidation took 19 µs with
                // 10,000 values cached instead of 0.45 µs (`cargo bench -p ofx-axum --bench
                // streams`). Blocking resizes copy once, when the table fills.
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            len,
            listener,
            _service: PhantomData,
        })
    }

    /// A weak reference to this table, for the nodes it holds.
    pub(crate) fn weak(&self) -> Weak<Self> {
        self.this.clone()
    }

    pub(crate) fn map(&self) -> &Map<S, K, T> {
        &self.map
    }

    /// Inserts `node` for its key unless the key has an entry. Returns whether it was inserted.
    pub(crate) fn try_insert(&self, node: &Arc<Node<S, K, T>>, guard: &impl papaya::Guard) -> bool {
        let inserted = self
            .map
            .try_insert(node.key().clone(), Arc::clone(node), guard)
            .is_ok();
        if inserted {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        inserted
    }

    /// Removes `node` if it is still the entry for its key.
    pub(crate) fn remove_node(&self, node: &Node<S, K, T>) {
        let guard = self.map.guard();
        let removed = self.map.remove_if(
            node.key(),
            |_, current| std::ptr::eq(Arc::as_ptr(current), node),
            &guard,
        );
        if matches!(removed, Ok(Some(_))) {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Tells `event` to the hub's event listener, if there is one (and builds it only then).
    #[inline]
    pub(crate) fn emit(&self, event: impl FnOnce() -> HubEvent) {
        crate::event::emit(self.listener.as_ref(), event);
    }

    /// The node cached for `key`, if any.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<Node<S, K, T>>> {
        self.map.pin().get(key).cloned()
    }
}

/// A method table seen without its types: what `invalidate_everything` needs.
pub(crate) trait ErasedTable: Any + Send + Sync {
    /// Every node in the table.
    fn all(&self) -> Vec<Arc<dyn ErasedNode>>;
}

impl<S, K, T> ErasedTable for MethodTable<S, K, T>
where
    S: 'static,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    fn all(&self) -> Vec<Arc<dyn ErasedNode>> {
        let guard = self.map.guard();
        self.map
            .iter(&guard)
            .map(|(_, node)| Arc::clone(node) as Arc<dyn ErasedNode>)
            .collect()
    }
}
