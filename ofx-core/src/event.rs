//! What happens on a hub, told to a listener: a hook for tests and diagnostics.
//!
//! A hub built with [`HubBuilder::event_listener`](crate::HubBuilder::event_listener) tells
//! its listener of every [`HubEvent`]: compute method bodies run, cache hits, invalidations,
//! evictions and operations. A hub without a listener builds no event at all.
//!
//! [`EventCounter`] is a ready-made listener that counts events by kind and by name, and can
//! await a condition on its counts:
//!
//! ```
//! use ofx_core::{compute_method, invalidate, ComputeService, EventCounter, Hub};
//!
//! struct Prices { hub: Hub }
//! impl ComputeService for Prices { fn hub(&self) -> &Hub { &self.hub } }
//!
//! impl Prices {
//!     #[compute_method]
//!     async fn base(&self) -> u64 { 100 }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ofx_core::Error> {
//! let events = EventCounter::new();
//! let prices = Prices { hub: Hub::builder().event_listener(events.clone()).build()? };
//! prices.base().await;
//! prices.base().await;
//! assert_eq!(events.computed("Prices::base"), 1);
//! assert_eq!(events.cache_hits("Prices::base"), 1);
//!
//! invalidate! { prices.base(); }
//! assert_eq!(events.invalidated("Prices::base"), 1);
//! events.wait_until(|events| events.invalidated("base") == 1).await;
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;

/// What happened on a hub, told to its [`HubEventListener`].
///
/// Compute method events name their method by its full name, `path::Type::method` (as
/// [`ComputeMethodDescriptor::name`](crate::computed::ComputeMethodDescriptor::name) and
/// [`Computed::method`](crate::Computed::method) give it): a `&'static str`, so reporting one
/// allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubEvent {
    /// A compute method's body started running: a miss. Told once per computation, before its
    /// body runs (a body that is then cancelled or panics was still counted).
    Computed {
        /// `path::Type::method`.
        method: &'static str,
    },
    /// A call was served from the cache.
    CacheHit {
        /// `path::Type::method`.
        method: &'static str,
    },
    /// A cached (or computing) value was invalidated: named by `invalidate!` or
    /// [`Computed::invalidate`](crate::Computed::invalidate), computed from an invalidated
    /// or evicted value, expired, or cleared by
    /// [`Hub::invalidate_everything`](crate::Hub::invalidate_everything). Told once per value.
    Invalidated {
        /// `path::Type::method`.
        method: &'static str,
    },
    /// A cached value was evicted to keep the cache within its capacity, and so invalidated.
    /// An evicted value is told as `Evicted` only; the values computed from it, invalidated
    /// with it, as [`Invalidated`](Self::Invalidated).
    Evicted {
        /// `path::Type::method`.
        method: &'static str,
    },
    /// A consolidating compute method (`#[compute_method(consolidate)]`) recomputed a value
    /// that was invalidated, and compared it with the old one: `changed`, the values computed
    /// from the old one were invalidated; otherwise they were kept, now computed from the new.
    Consolidated {
        /// `path::Type::method`.
        method: &'static str,
        /// Whether the new value differs from the old one.
        changed: bool,
    },
    /// An operation completed on this host (`local`) or was replayed from another's log.
    OperationCompleted {
        /// The operation's id.
        operation: Uuid,
        /// The command's registered name.
        command: String,
        /// Whether it ran on this host (`false`: replayed from another host's log).
        local: bool,
    },
    /// Replaying an operation from the log failed (it will be retried or counted as failed).
    ReplayFailed {
        /// The operation's id.
        operation: Uuid,
        /// The command's registered name.
        command: String,
        /// What went wrong.
        error: String,
    },
    /// An invalidation branch panicked (caught; the work went on).
    InvalidationPanicked {
        /// The operation's id.
        operation: Uuid,
        /// The command's registered name.
        command: String,
    },
    /// An outermost command failed for a transient reason before its commit and runs again
    /// (see [`reprocess`](crate::commander::reprocess)).
    CommandRetried {
        /// The command's registered name.
        command: &'static str,
        /// The try about to run (2 for the first retry).
        next_try: u32,
    },
}

/// The kind of a [`HubEvent`], without its data: what [`EventCounter`] counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HubEventKind {
    /// [`HubEvent::Computed`].
    Computed,
    /// [`HubEvent::CacheHit`].
    CacheHit,
    /// [`HubEvent::Invalidated`].
    Invalidated,
    /// [`HubEvent::Evicted`].
    Evicted,
    /// [`HubEvent::OperationCompleted`].
    OperationCompleted,
    /// [`HubEvent::ReplayFailed`].
    ReplayFailed,
    /// [`HubEvent::InvalidationPanicked`].
    InvalidationPanicked,
    /// [`HubEvent::CommandRetried`].
    CommandRetried,
    /// [`HubEvent::Consolidated`].
    Consolidated,
}

impl HubEventKind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::Computed,
        Self::CacheHit,
        Self::Invalidated,
        Self::Evicted,
        Self::OperationCompleted,
        Self::ReplayFailed,
        Self::InvalidationPanicked,
        Self::CommandRetried,
        Self::Consolidated,
    ];

    const fn index(self) -> usize {
        match self {
            Self::Computed => 0,
            Self::CacheHit => 1,
            Self::Invalidated => 2,
            Self::Evicted => 3,
            Self::OperationCompleted => 4,
            Self::ReplayFailed => 5,
            Self::InvalidationPanicked => 6,
            Self::CommandRetried => 7,
            Self::Consolidated => 8,
        }
    }
}

const KINDS: usize = HubEventKind::ALL.len();

impl HubEvent {
    /// The event's kind.
    pub fn kind(&self) -> HubEventKind {
        match self {
            Self::Computed { .. } => HubEventKind::Computed,
            Self::CacheHit { .. } => HubEventKind::CacheHit,
            Self::Invalidated { .. } => HubEventKind::Invalidated,
            Self::Evicted { .. } => HubEventKind::Evicted,
            Self::OperationCompleted { .. } => HubEventKind::OperationCompleted,
            Self::ReplayFailed { .. } => HubEventKind::ReplayFailed,
            Self::InvalidationPanicked { .. } => HubEventKind::InvalidationPanicked,
            Self::CommandRetried { .. } => HubEventKind::CommandRetried,
            Self::Consolidated { .. } => HubEventKind::Consolidated,
        }
    }

    /// The compute method a compute event is about (`None` for operation events).
    pub fn method(&self) -> Option<&'static str> {
        match self {
            Self::Computed { method }
            | Self::CacheHit { method }
            | Self::Invalidated { method }
            | Self::Evicted { method }
            | Self::Consolidated { method, .. } => Some(method),
            Self::OperationCompleted { .. }
            | Self::ReplayFailed { .. }
            | Self::InvalidationPanicked { .. }
            | Self::CommandRetried { .. } => None,
        }
    }

    /// The command an operation event is about (`None` for compute events).
    pub fn command(&self) -> Option<&str> {
        match self {
            Self::OperationCompleted { command, .. }
            | Self::ReplayFailed { command, .. }
            | Self::InvalidationPanicked { command, .. } => Some(command),
            Self::CommandRetried { command, .. } => Some(command),
            Self::Computed { .. }
            | Self::CacheHit { .. }
            | Self::Invalidated { .. }
            | Self::Evicted { .. }
            | Self::Consolidated { .. } => None,
        }
    }
}

/// Told of every [`HubEvent`] of the hub it was given to
/// ([`HubBuilder::event_listener`](crate::HubBuilder::event_listener)).
///
/// `on_event` is called synchronously, on the thread where the event happened, sometimes while
/// the hub holds internal locks (the evictor's, for [`HubEvent::Evicted`]): keep it short, and
/// do not call compute methods, invalidate or run commands from it. Record, count, or send the
/// event to a channel instead (one that never blocks the sender). A listener told of an
/// invalidation runs in the middle of it: an `invalidate!` of the same values on another thread
/// waits for it to end (see `invalidate!`), so a listener that blocks until that other
/// invalidation returns stalls both for 1 s. A closure `Fn(&HubEvent)` is a listener.
pub trait HubEventListener: Send + Sync + 'static {
    /// Called for each event.
    fn on_event(&self, event: &HubEvent);
}

impl<F: Fn(&HubEvent) + Send + Sync + 'static> HubEventListener for F {
    fn on_event(&self, event: &HubEvent) {
        self(event);
    }
}

/// Tells `listener`, if there is one, the event `event` builds. Without a listener this is one
/// check, and the event is not built; with one, the work is out of line (the callers are hot
/// paths such as the cache hit).
#[inline(always)]
pub(crate) fn emit(listener: Option<&Arc<dyn HubEventListener>>, event: impl FnOnce() -> HubEvent) {
    if let Some(listener) = listener {
        tell(listener.as_ref(), event);
    }
}

#[cold]
#[inline(never)]
fn tell(listener: &dyn HubEventListener, event: impl FnOnce() -> HubEvent) {
    listener.on_event(&event());
}

/// A [`HubEventListener`] that counts events by kind and by name (the compute method's or the
/// command's), for tests.
///
/// Clones share their counts: give one to the hub, keep one to read. Names are matched as
/// written or by their last segments: `"Store::value"` and `"value"` both count the events of
/// `my_crate::Store::value` (with those of every other method whose name ends so); a command is
/// named by its registered name (`"todo.add"`).
#[derive(Clone, Default)]
pub struct EventCounter {
    inner: Arc<CounterInner>,
}

#[derive(Default)]
struct CounterInner {
    totals: [AtomicU64; KINDS],
    by_name: Mutex<HashMap<Cow<'static, str>, [u64; KINDS]>>,
    changed: Notify,
}

impl EventCounter {
    /// A counter with every count at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events of `kind` were told.
    pub fn count(&self, kind: HubEventKind) -> u64 {
        self.inner.totals[kind.index()].load(Ordering::SeqCst)
    }

    /// How many events of `kind` about `name` (a compute method or a command, matched as the
    /// [type's documentation](Self) says) were told.
    pub fn count_for(&self, kind: HubEventKind, name: &str) -> u64 {
        let by_name = self.by_name();
        by_name
            .iter()
            .filter(|(known, _)| names_match(known, name))
            .map(|(_, counts)| counts[kind.index()])
            .sum()
    }

    /// How many times the body of `method` ran ([`HubEvent::Computed`]).
    pub fn computed(&self, method: &str) -> u64 {
        self.count_for(HubEventKind::Computed, method)
    }

    /// How many calls of `method` were served from the cache ([`HubEvent::CacheHit`]).
    pub fn cache_hits(&self, method: &str) -> u64 {
        self.count_for(HubEventKind::CacheHit, method)
    }

    /// How many values of `method` were invalidated ([`HubEvent::Invalidated`]).
    pub fn invalidated(&self, method: &str) -> u64 {
        self.count_for(HubEventKind::Invalidated, method)
    }

    /// How many values of `method` were evicted ([`HubEvent::Evicted`]).
    pub fn evicted(&self, method: &str) -> u64 {
        self.count_for(HubEventKind::Evicted, method)
    }

    /// How many invalidated values of `method` were recomputed and compared
    /// ([`HubEvent::Consolidated`]), changed or not.
    pub fn consolidated(&self, method: &str) -> u64 {
        self.count_for(HubEventKind::Consolidated, method)
    }

    /// How many operations of `command` completed, here or replayed
    /// ([`HubEvent::OperationCompleted`]).
    pub fn completed(&self, command: &str) -> u64 {
        self.count_for(HubEventKind::OperationCompleted, command)
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        let mut by_name = self.by_name();
        for total in &self.inner.totals {
            total.store(0, Ordering::SeqCst);
        }
        by_name.clear();
        drop(by_name);
        self.inner.changed.notify_waiters();
    }

    /// Waits until `condition` holds for this counter; it is checked now and after every
    /// event. Wrap it in [`tokio::time::timeout`] if the condition may never hold.
    pub async fn wait_until(&self, mut condition: impl FnMut(&Self) -> bool) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: an event told after the check wakes this waiter.
            changed.as_mut().enable();
            if condition(self) {
                return;
            }
            changed.await;
        }
    }

    fn by_name(&self) -> std::sync::MutexGuard<'_, HashMap<Cow<'static, str>, [u64; KINDS]>> {
        self.inner
            .by_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the full name `known` is `name` or ends with `::name`.
fn names_match(known: &str, name: &str) -> bool {
    known
        .strip_suffix(name)
        .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with("::"))
}

impl HubEventListener for EventCounter {
    fn on_event(&self, event: &HubEvent) {
        let kind = event.kind().index();
        {
            let mut by_name = self.by_name();
            if let Some(method) = event.method() {
                by_name.entry(Cow::Borrowed(method)).or_default()[kind] += 1;
            } else if let Some(command) = event.command() {
                match by_name.get_mut(command) {
                    Some(counts) => counts[kind] += 1,
                    None => {
                        let mut counts = [0; KINDS];
                        counts[kind] = 1;
                        by_name.insert(Cow::Owned(command.to_owned()), counts);
                    }
                }
            }
            // Counted under the lock, so that a total never runs ahead of the counts by name.
            self.inner.totals[kind].fetch_add(1, Ordering::SeqCst);
        }
        self.inner.changed.notify_waiters();
    }
}

impl fmt::Debug for EventCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for kind in HubEventKind::ALL {
            map.entry(&kind, &self.count(kind));
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_whole_segments() {
        assert!(names_match("app::Store::value", "Store::value"));
        assert!(names_match("app::Store::value", "value"));
        assert!(names_match("app::Store::value", "app::Store::value"));
        assert!(!names_match("app::Store::value", "alue"));
        assert!(!names_match("app::Store::value", "Store::val"));
    }

    #[test]
    fn the_counter_counts_by_kind_and_name() {
        let counter = EventCounter::new();
        counter.on_event(&HubEvent::Computed { method: "a::S::m" });
        counter.on_event(&HubEvent::Computed { method: "a::T::m" });
        counter.on_event(&HubEvent::CacheHit { method: "a::S::m" });
        let operation = Uuid::nil();
        counter.on_event(&HubEvent::OperationCompleted {
            operation,
            command: "todo.add".to_owned(),
            local: true,
        });
        counter.on_event(&HubEvent::OperationCompleted {
            operation,
            command: "todo.add".to_owned(),
            local: false,
        });
        assert_eq!(counter.count(HubEventKind::Computed), 2);
        assert_eq!(counter.computed("S::m"), 1);
        assert_eq!(counter.computed("m"), 2);
        assert_eq!(counter.cache_hits("S::m"), 1);
        assert_eq!(counter.completed("todo.add"), 2);
        assert_eq!(counter.count(HubEventKind::Evicted), 0);
        counter.reset();
        assert_eq!(counter.count(HubEventKind::Computed), 0);
        assert_eq!(counter.computed("m"), 0);
    }

    #[tokio::test]
    async fn wait_until_wakes_on_a_later_event() {
        let counter = EventCounter::new();
        let waiter = tokio::spawn({
            let counter = counter.clone();
            async move { counter.wait_until(|c| c.computed("m") == 2).await }
        });
        counter.on_event(&HubEvent::Computed { method: "a::S::m" });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one event of two");
        counter.on_event(&HubEvent::Computed { method: "a::S::m" });
        waiter.await.expect("the waiter does not panic");
    }
}
