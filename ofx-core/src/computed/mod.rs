//! Computed values: the memoized results of compute methods and their dependency graph.
//!
//! A [`Computed`] is one cached result of one compute method for one argument set on one hub.
//! Its life:
//!
//! 1. **computing**: the first caller runs the method's body; concurrent callers with the same
//!    arguments wait for it (single flight). Every compute method the body calls, across
//!    `.await`s in the same task, becomes a *dependency*.
//! 2. **consistent**: the value is cached and served to every caller.
//! 3. **invalidated**: the value is out of date. Invalidation removes it from the cache,
//!    invalidates everything computed from it (transitively), and wakes whoever awaits
//!    [`Computed::when_invalidated`]. The next call computes a new value.
//!
//! A computation registers as a dependent of a value before it uses it (a hit), waits for it
//! or computes it. If that value is invalidated while the dependent is still computing, the
//! dependent's value is *born invalidated*: the callers already waiting for that computation
//! get it, but it is never served from the cache, and new callers start a fresh computation.
//! So a call that starts after an invalidation never gets a value computed from what was
//! invalidated, whatever is in flight. A computation that is abandoned (its caller dropped, or
//! its body panicked) produces nothing and invalidates nothing: whoever waited for it looks
//! again.
//!
//! Calls made inside [`capture`] within a computation are dependencies of that computation too.
//!
//! The cache is bounded ([`HubBuilder::capacity`](crate::HubBuilder::capacity)). **Eviction is
//! invalidation**: an evicted value invalidates its dependents, so no value stays cached after
//! the thing it was computed from has been forgotten (a later invalidation could not reach it).
//! Dependents hold their dependencies alive; dependencies hold their dependents weakly.
//!
//! **A dependency of a value in use is in use**: the evictor (a clock with a second chance for
//! values read since its hand last passed) never evicts a value that a cached or computing
//! value depends on, though cache hits on the dependent never read it, nor a value something
//! awaits ([`Computed::when_invalidated`]: a live stream showing it). It evicts the values
//! nothing depends on that nobody read, and with each, the dependencies it leaves unused: so
//! eviction takes what nobody reads. The cache may hold more than its capacity while
//! computations in flight hold what they read, and then, for the next eighth of the capacity
//! of computations, up to an eighth more (the evictor waits before it tries again, which
//! keeps its cost constant per computation).

mod clock;
mod compute;
pub(crate) mod context;
mod in_flight;
mod invalidation;
#[cfg(all(test, loom))]
mod loom_models;
mod method;
mod node;
mod registry;
mod table;
mod waiters;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

pub use compute::{cached, compute, compute_consolidated, invalidate};
pub use context::{ComputeScope, capture};
pub use method::{
    ComputeMethodDescriptor, ComputeMethodOptions, DEFAULT_ERROR_LIFETIME,
    DEFAULT_PERMANENT_ERROR_LIFETIME,
};
pub(crate) use registry::Registry;
pub use table::Recompute;

use node::{COMPUTING, COMPUTING_INVALIDATED, CONSISTENT, ErasedNode};

/// What a compute method's arguments must be: they are its cache key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a compute method",
    label = "this argument is part of the cache key",
    note = "compute method arguments must implement `Hash + Eq + Clone + Send + Sync + 'static`"
)]
pub trait ComputeKey: Hash + Eq + Clone + Send + Sync + 'static {}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> ComputeKey for T {}

/// The state of a [`Computed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComputedState {
    /// Its body is running.
    Computing,
    /// Its value is cached and current.
    Consistent,
    /// Its value is out of date (or its computation was abandoned).
    Invalidated,
}

/// A handle to one cached result: its state, version and edges, and a way to await its
/// invalidation. Get one with [`capture`].
#[derive(Clone)]
pub struct Computed {
    node: Arc<dyn ErasedNode>,
}

impl Computed {
    pub(crate) fn new(node: Arc<dyn ErasedNode>) -> Self {
        Self { node }
    }

    pub(crate) fn node(&self) -> &Arc<dyn ErasedNode> {
        &self.node
    }

    /// The compute method's name, `Type::method`.
    pub fn method(&self) -> &'static str {
        self.node.core().method().name()
    }

    /// The current state.
    pub fn state(&self) -> ComputedState {
        match self.node.core().state() {
            COMPUTING => ComputedState::Computing,
            CONSISTENT => ComputedState::Consistent,
            COMPUTING_INVALIDATED => ComputedState::Invalidated,
            _ => ComputedState::Invalidated,
        }
    }

    /// Whether the value is cached and current.
    pub fn is_consistent(&self) -> bool {
        self.state() == ComputedState::Consistent
    }

    /// A number that grows with every computation on a hub: a recomputed value has a greater
    /// version than the value it replaces.
    pub fn version(&self) -> u64 {
        self.node.core().version()
    }

    /// The values this one was computed from (empty once invalidated).
    pub fn dependencies(&self) -> Vec<Computed> {
        self.node
            .core()
            .dependencies()
            .into_iter()
            .map(Self::new)
            .collect()
    }

    /// The values computed from this one that are still alive (empty once invalidated).
    pub fn dependents(&self) -> Vec<Computed> {
        self.node
            .core()
            .dependents()
            .into_iter()
            .map(Self::new)
            .collect()
    }

    /// Invalidates this value and everything computed from it.
    pub fn invalidate(&self) {
        invalidation::invalidate_all(vec![Arc::clone(&self.node)]);
    }

    /// Waits until this value is invalidated (returns at once if it is).
    pub async fn when_invalidated(&self) {
        let core = self.node.core();
        loop {
            if self.state() == ComputedState::Invalidated {
                return;
            }
            let listener = core.listen();
            if self.state() == ComputedState::Invalidated {
                return;
            }
            listener.await;
        }
    }

    /// Whether two handles are the same computed value.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.node, &other.node)
    }
}

impl fmt::Debug for Computed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Computed")
            .field("method", &self.method())
            .field("state", &self.state())
            .field("version", &self.version())
            .finish()
    }
}
