//! Invalidations in flight, process-wide: what lets an invalidation that meets a value another
//! thread is invalidating return only once that thread has invalidated what was computed from
//! it.
//!
//! Each node's state moves once, and only the thread that moved it walks its dependents. So an
//! invalidation that finds a value invalidated already (or gone from its table) cannot tell
//! whether the values computed from it are out of the cache yet: the thread that moved it may
//! still be walking them. Such an invalidation waits, before it returns, until every
//! invalidation begun on another thread before it met that value has walked its values. Every
//! invalidation ends its walk before it waits itself, so two that wait for each other both
//! go on.
//!
//! An invalidation never waits for one of its own thread (an event listener that invalidates
//! from inside an invalidation), and waits [`PATIENCE`] at most: a listener that blocks until
//! another thread's invalidation returns would otherwise never let either end. It logs a
//! warning then.
//!
//! The loom models' build never waits: loom runs its threads one at a time and would not run
//! the one waited for.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest an invalidation waits for others.
const PATIENCE: Duration = Duration::from_secs(1);

/// The id of the next invalidation.
static NEXT: AtomicU64 = AtomicU64::new(1);
/// How many invalidations are walking their values: 0 lets an invalidation skip the lock.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// The ids of the invalidations walking their values.
static RUNNING: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
/// Notified when an invalidation ends its walk, if someone waits.
static ENDED: Condvar = Condvar::new();
static WAITERS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The invalidations of this thread walking their values (nested ones, started by event
    /// listeners, after the ones they are nested in).
    static OWN: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn running() -> MutexGuard<'static, BTreeSet<u64>> {
    // The set is changed by single inserts and removals: a panic cannot leave it half-changed.
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One invalidation walking its values.
pub(crate) struct Run {
    id: u64,
    /// The newest invalidation begun when this one last met a value invalidated by another:
    /// it waits for those begun up to it.
    horizon: u64,
    /// Whether it waits at its end (not under a lock other invalidations may need).
    waits: bool,
}

impl Run {
    /// Begins an invalidation; `waits`: it waits at its end for the ones it met, if any.
    pub(crate) fn begin(waits: bool) -> Self {
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        running().insert(id);
        // A thread being torn down has no list: its invalidation may then wait for an outer one
        // of its own, at most `PATIENCE`.
        let _ = OWN.try_with(|own| own.borrow_mut().push(id));
        Self {
            id,
            horizon: 0,
            waits: waits && !cfg!(loom),
        }
    }

    /// This invalidation met a value invalidated already, maybe by another still walking the
    /// values computed from it.
    pub(crate) fn met_invalidated(&mut self) {
        if ACTIVE.load(Ordering::SeqCst) > 1 {
            self.horizon = NEXT.load(Ordering::SeqCst) - 1;
        }
    }

    /// Ends the walk; then, if it met values invalidated by others, waits for their walks.
    pub(crate) fn end(self) {
        running().remove(&self.id);
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        let _ = OWN.try_with(|own| own.borrow_mut().retain(|id| *id != self.id));
        if WAITERS.load(Ordering::SeqCst) > 0 {
            ENDED.notify_all();
        }
        if self.waits && self.horizon > 0 {
            wait_for(self.horizon);
        }
    }
}

/// Waits until the invalidations begun so far on other threads have walked their values: for
/// an invalidation that found nothing to invalidate, since the value may have just left its
/// table for another thread's invalidation.
pub(crate) fn settle() {
    if !cfg!(loom) && ACTIVE.load(Ordering::SeqCst) > 0 {
        wait_for(NEXT.load(Ordering::SeqCst) - 1);
    }
}

/// Waits until no invalidation of another thread with an id up to `horizon` is walking.
fn wait_for(horizon: u64) {
    let own = OWN.try_with(|own| own.borrow().clone()).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    let mut running = running();
    loop {
        if !running.range(..=horizon).any(|id| !own.contains(id)) {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                "an invalidation returned before another thread's invalidation of the same \
                 values ended (waited {PATIENCE:?}): is an event listener blocking?"
            );
            return;
        }
        WAITERS.fetch_add(1, Ordering::SeqCst);
        let (guard, _) = ENDED
            .wait_timeout(running, deadline - now)
            .unwrap_or_else(PoisonError::into_inner);
        WAITERS.fetch_sub(1, Ordering::SeqCst);
        running = guard;
    }
}
