//! [`ComputeMethodDescriptor`]: the static description of one `#[compute_method]`.

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long a transient `Err` result (or one nothing says is permanent) stays cached when a
/// method does not say otherwise.
pub const DEFAULT_ERROR_LIFETIME: Duration = Duration::from_secs(1);

/// How long a permanent `Err` result stays cached when a method does not say otherwise.
pub const DEFAULT_PERMANENT_ERROR_LIFETIME: Duration = Duration::from_secs(30);

/// The options of one compute method, set with `#[compute_method(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ComputeMethodOptions {
    /// Invalidate every result this long after it was computed (`auto_invalidate = "5s"`).
    /// `None`: results stay until invalidated or evicted.
    pub auto_invalidate: Option<Duration>,
    /// Invalidate a transient `Err` result this long after it was computed (`error_lifetime =
    /// "1s"`). An error is transient unless it is known to be permanent: by the method's
    /// `is_transient = path` function when it has one, otherwise by a mark of
    /// [`Error::permanent`](crate::Error::permanent) in the error's chain (for an error type
    /// that is a `std::error::Error`).
    pub error_lifetime: Duration,
    /// Invalidate a permanent `Err` result this long after it was computed
    /// (`permanent_error_lifetime = "30s"`): an error the method's `is_transient` function
    /// says is not transient, or one marked with [`Error::permanent`](crate::Error::permanent).
    pub permanent_error_lifetime: Duration,
    /// Put off every invalidation of a cached result by this long (`invalidation_delay =
    /// "1s"`): the result is served until then, and the invalidations asked for meanwhile
    /// make one. `None`: invalidations take effect at once. See
    /// [`with_invalidation_delay`](Self::with_invalidation_delay).
    pub invalidation_delay: Option<Duration>,
    /// Keep every result at least this long after it was computed, whatever the cache's
    /// capacity (`min_cache_duration = "10s"`): the evictor passes it by until then.
    /// Invalidation still removes it at once. `None`: results may be evicted as soon as they
    /// are computed.
    pub min_cache_duration: Option<Duration>,
    /// Recompute an invalidated result at once and invalidate what was computed from it only
    /// if the new result differs (`consolidate`). See
    /// [`with_consolidation`](Self::with_consolidation).
    pub consolidate: bool,
}

impl ComputeMethodOptions {
    /// The defaults: no auto-invalidation, transient errors cached for
    /// [`DEFAULT_ERROR_LIFETIME`] and permanent ones for [`DEFAULT_PERMANENT_ERROR_LIFETIME`].
    pub const DEFAULT: Self = Self {
        auto_invalidate: None,
        error_lifetime: DEFAULT_ERROR_LIFETIME,
        permanent_error_lifetime: DEFAULT_PERMANENT_ERROR_LIFETIME,
        invalidation_delay: None,
        min_cache_duration: None,
        consolidate: false,
    };

    /// Sets [`auto_invalidate`](Self::auto_invalidate).
    pub const fn with_auto_invalidate(mut self, delay: Duration) -> Self {
        self.auto_invalidate = Some(delay);
        self
    }

    /// Sets [`error_lifetime`](Self::error_lifetime).
    pub const fn with_error_lifetime(mut self, lifetime: Duration) -> Self {
        self.error_lifetime = lifetime;
        self
    }

    /// Sets [`permanent_error_lifetime`](Self::permanent_error_lifetime).
    pub const fn with_permanent_error_lifetime(mut self, lifetime: Duration) -> Self {
        self.permanent_error_lifetime = lifetime;
        self
    }

    /// Sets [`invalidation_delay`](Self::invalidation_delay).
    ///
    /// An invalidation of a cached result (by `invalidate!`, by a dependency, by a command's
    /// invalidation pass on any host, by [`Computed::invalidate`](crate::Computed::invalidate))
    /// is carried out `delay` after the first one asked for: until then the result is served
    /// and stays a dependency of what reads it, and further invalidations are folded into that
    /// one. It suits a value that changes in bursts and is expensive to compute (a summary
    /// over many rows), at the price of serving it up to `delay` out of date: `invalidate!`
    /// returns before such a value is invalidated. A result still computing is invalidated at
    /// once (it is never cached); so is everything on
    /// [`Hub::invalidate_everything`](crate::Hub::invalidate_everything). Without a tokio
    /// runtime to wait on, the invalidation happens at once.
    pub const fn with_invalidation_delay(mut self, delay: Duration) -> Self {
        self.invalidation_delay = Some(delay);
        self
    }

    /// Sets [`consolidate`](Self::consolidate).
    ///
    /// When a cached result of a consolidating method is invalidated, it leaves the cache as
    /// any other (the next call computes it again), but the values computed from it are kept
    /// while the method computes its new result in a task of its own; then, if the new result
    /// equals the old one (`PartialEq`), they stay cached, as computed from the new one, and
    /// the change stops there; otherwise they are invalidated, as they would have been at
    /// once. Use it for a value derived from others that often stays the same when they
    /// change (a count, a flag, a summary), read by values that are expensive to compute.
    ///
    /// The price: between the invalidation and the comparison, the values computed from it are
    /// served as they were, so `invalidate!` returns before they are invalidated (if they must
    /// be). The recomputation needs the service: its `Arc`, added to the hub with
    /// [`Hub::add_service`](crate::Hub::add_service); a method of a service that was not
    /// added invalidates what depends on it at once (and says so in a warning, once). So it
    /// does without a tokio runtime, and on
    /// [`Hub::invalidate_everything`](crate::Hub::invalidate_everything). If the recomputation
    /// panics or is cancelled, the dependents are invalidated.
    pub const fn with_consolidation(mut self) -> Self {
        self.consolidate = true;
        self
    }

    /// Sets [`min_cache_duration`](Self::min_cache_duration): the evictor keeps a result at
    /// least `duration` after it was computed (up to 24 days), even when the cache is over its
    /// capacity, which may then hold more than its capacity. For a value that is expensive to
    /// compute and read again soon, but not often enough to stay cached under pressure.
    pub const fn with_min_cache_duration(mut self, duration: Duration) -> Self {
        self.min_cache_duration = Some(duration);
        self
    }
}

impl Default for ComputeMethodOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The static description of one compute method: its name, its options, its slot in every
/// hub's cache and how often it was called. `#[compute_method]` makes one per method.
///
/// A method of a generic `impl` has one descriptor for every type argument: its counts add up
/// the calls of them all, and its name has no type arguments.
pub struct ComputeMethodDescriptor {
    name: &'static str,
    /// `Service::method`, set when the method is first called.
    full_name: OnceLock<Box<str>>,
    options: ComputeMethodOptions,
    /// Slot index + 1, or 0 until the first use assigns one.
    slot: AtomicUsize,
    /// Calls and computations, striped by thread so that threads calling one method do not
    /// contend on one cache line.
    counters: [Stripe; STRIPES],
    /// What happens off the hit path: invalidations, evictions, waits.
    cold: ColdCounters,
}

/// The counters of what does not happen on the hit path, on a cache line of their own (away
/// from `slot`, which every call reads).
#[repr(align(64))]
struct ColdCounters {
    invalidations: AtomicU64,
    evictions: AtomicU64,
    waits: AtomicU64,
}

/// How many stripes a descriptor's counters have: up to this many threads count exactly.
const STRIPES: usize = 16;

/// The counters of the threads that share one stripe, on a cache line of their own.
#[repr(align(64))]
struct Stripe {
    calls: AtomicU64,
    computations: AtomicU64,
}

impl Stripe {
    // A template for the array repeat in `ComputeMethodDescriptor::new`: each use is a fresh
    // value, which is what is meant.
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: Self = Self {
        calls: AtomicU64::new(0),
        computations: AtomicU64::new(0),
    };
}

/// The stripe of the current thread, assigned round-robin on first use.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE
        .try_with(|stripe| {
            let mut index = stripe.get();
            if index == usize::MAX {
                index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
                stripe.set(index);
            }
            index
        })
        // A thread being torn down counts in the first stripe.
        .unwrap_or(0)
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

impl ComputeMethodDescriptor {
    /// A descriptor for a method called `name` (for logs: `Type::method`).
    pub const fn new(name: &'static str, options: ComputeMethodOptions) -> Self {
        Self {
            name,
            full_name: OnceLock::new(),
            options,
            slot: AtomicUsize::new(0),
            counters: [Stripe::NEW; STRIPES],
            cold: ColdCounters {
                invalidations: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                waits: AtomicU64::new(0),
            },
        }
    }

    /// The method's name with its service type's path (`todos::Todos::get`) once it has been
    /// called, its bare name (`get`) before. A generic service's type arguments are left out.
    pub fn name(&self) -> &str {
        self.full_name.get().map_or(self.name, |name| name)
    }

    /// Records the service type that owns the method, for [`name`](Self::name).
    pub(crate) fn set_service<S: 'static>(&self) {
        if self.full_name.get().is_none() {
            let service = std::any::type_name::<S>();
            // One descriptor serves every type argument of a generic `impl`: name none.
            let service = service.split_once('<').map_or(service, |(path, _)| path);
            let _ = self
                .full_name
                .set(format!("{service}::{}", self.name).into());
        }
    }

    /// How many times the method was called since the process started, on every hub: hits,
    /// waits on a computation in flight and computations. A sum of per-thread counts, read
    /// without synchronization with the callers.
    ///
    /// A call is counted with a plain load and store, not an atomic increment, to keep the hit
    /// path cheap: the count is exact while at most 16 threads have called compute methods
    /// (each counts in a stripe of its own); with more, two threads of one stripe calling at
    /// the same instant may be counted once.
    pub fn calls(&self) -> u64 {
        self.counters
            .iter()
            .map(|stripe| stripe.calls.load(Ordering::Relaxed))
            .sum()
    }

    /// How many times the method's body ran (the calls that computed a value), on every hub.
    /// Exact: a computation is rare enough to be counted atomically.
    pub fn computations(&self) -> u64 {
        self.counters
            .iter()
            .map(|stripe| stripe.computations.load(Ordering::Relaxed))
            .sum()
    }

    /// How many of the method's values were invalidated, on every hub: named by
    /// `invalidate!`, computed from an invalidated value, expired, or cleared by
    /// [`Hub::invalidate_everything`](crate::Hub::invalidate_everything). An evicted value
    /// counts in [`evictions`](Self::evictions) instead.
    pub fn invalidations(&self) -> u64 {
        self.cold.invalidations.load(Ordering::Relaxed)
    }

    /// How many of the method's values were evicted to keep a hub's cache within its capacity,
    /// on every hub.
    pub fn evictions(&self) -> u64 {
        self.cold.evictions.load(Ordering::Relaxed)
    }

    /// How many calls waited for a computation of the same value already in flight (single
    /// flight), on every hub. They count in [`calls`](Self::calls), neither as hits nor as
    /// computations.
    pub fn waits(&self) -> u64 {
        self.cold.waits.load(Ordering::Relaxed)
    }

    /// How many calls were served from the cache, on every hub: [`calls`](Self::calls) that
    /// neither computed nor waited. Derived from the other counts (nothing is added to the
    /// hit path to count them), so as approximate as `calls`.
    pub fn hits(&self) -> u64 {
        self.calls()
            .saturating_sub(self.computations())
            .saturating_sub(self.waits())
    }

    pub(crate) fn count_invalidation(&self) {
        self.cold.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_eviction(&self) {
        self.cold.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_wait(&self) {
        self.cold.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call; generated code calls it. Not public API.
    #[doc(hidden)]
    #[inline]
    pub fn count_call(&self) {
        // Not `fetch_add`: an atomic increment costs the hit path a few nanoseconds (see
        // `calls`).
        let calls = &self.counters[stripe()].calls;
        calls.store(
            calls.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Counts a computation; generated code calls it. Not public API.
    #[doc(hidden)]
    #[inline]
    pub fn count_computation(&self) {
        self.counters[stripe()]
            .computations
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The method's options.
    pub fn options(&self) -> &ComputeMethodOptions {
        &self.options
    }

    /// This method's slot in the hubs' method tables, assigned on first use, stable for the
    /// process's lifetime.
    #[inline]
    pub(crate) fn slot(&self) -> usize {
        match self.slot.load(Ordering::Acquire) {
            0 => self.assign_slot(),
            assigned => assigned - 1,
        }
    }

    #[cold]
    fn assign_slot(&self) -> usize {
        let candidate = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .slot
            .compare_exchange(0, candidate, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => candidate - 1,
            // Another thread assigned first; the candidate index stays unused.
            Err(assigned) => assigned - 1,
        }
    }
}

impl fmt::Debug for ComputeMethodDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComputeMethodDescriptor")
            .field("name", &self.name())
            .field("options", &self.options)
            .field("calls", &self.calls())
            .field("computations", &self.computations())
            .field("invalidations", &self.invalidations())
            .field("evictions", &self.evictions())
            .field("waits", &self.waits())
            .finish_non_exhaustive()
    }
}
