//! Who awaits a cached result's next state change: an event per awaited node, kept aside by the
//! node's address.
//!
//! Few nodes are ever awaited (a caller joining a computation in flight, a
//! `Computed::when_invalidated`, such as a live stream showing the value), so a node does not
//! carry an event of its own: that was 8 bytes on every cached entry. An awaited node has its
//! [`AWAITED`] flag set; a state change of a node without it costs a fence and a load, as
//! notifying an event nobody listened to did.
//!
//! The protocol, for a waiter and a notifier racing:
//! - a waiter registers ([`listen`]) under its shard's lock, setting the flag there, then
//!   issues a `SeqCst` fence and checks the node's state again before it awaits;
//! - a notifier changes the state, issues a `SeqCst` fence, and reads the flag: if it is clear,
//!   the waiter's check after its fence sees the new state; if it is set, it takes the shard's
//!   lock, clears the flag and takes the event out, then wakes the event's listeners once the
//!   lock is released: a waiter that registered before is woken, and one that registers after
//!   sets the flag again, on a new event, and its check of the state sees the new state.

use event_listener::{Event, EventListener};

use crate::sync::{AtomicU8, Mutex, MutexGuard, Ordering};

/// The node's flag: something registered to await its next state change.
pub(crate) const AWAITED: u8 = 0b10;

type Events = std::collections::HashMap<usize, Event, foldhash::fast::FixedState>;

#[cfg(not(loom))]
const SHARDS: usize = 64;

#[cfg(not(loom))]
fn shards() -> &'static [Mutex<Events>] {
    static SHARDS_OF_THE_PROCESS: std::sync::LazyLock<Box<[Mutex<Events>]>> =
        std::sync::LazyLock::new(|| (0..SHARDS).map(|_| Mutex::default()).collect());
    &SHARDS_OF_THE_PROCESS
}

#[cfg(loom)]
const SHARDS: usize = 1;

#[cfg(loom)]
fn shards() -> &'static [Mutex<Events>] {
    loom::lazy_static! {
        static ref SHARDS_OF_THE_MODEL: Vec<Mutex<Events>> =
            (0..SHARDS).map(|_| Mutex::new(Events::default())).collect();
    }
    &SHARDS_OF_THE_MODEL
}

/// The shard of the node at `address`, locked. Its lock is never held while calling out: wakers
/// are woken after it is released.
fn shard(address: usize) -> MutexGuard<'static, Events> {
    // Nodes are at least 8-byte aligned; the multiplication spreads the rest of the bits.
    let index = (address >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> 58;
    shards()[index % SHARDS]
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers a listener for the next state change of the node at `address`, whose flags are
/// `flags`. The caller must issue a `SeqCst` fence and check the state again before it awaits.
pub(crate) fn listen(address: usize, flags: &AtomicU8) -> EventListener {
    let mut events = shard(address);
    flags.fetch_or(AWAITED, Ordering::Relaxed);
    events.entry(address).or_default().listen()
}

/// Wakes whoever awaits the node at `address`. The caller issued a `SeqCst` fence after the
/// state change and found [`AWAITED`] set.
///
/// The event is taken out under the lock and notified after it is released, so that a waker
/// that runs its task at once (and registers again) does not meet the lock held. A waiter
/// registering in between gets a new event, and its check of the state, after the lock this
/// call released, sees the new state.
pub(crate) fn notify(address: usize, flags: &AtomicU8) {
    let event = {
        let mut events = shard(address);
        flags.fetch_and(!AWAITED, Ordering::Relaxed);
        events.remove(&address)
    };
    if let Some(event) = event {
        event.notify(usize::MAX);
    }
}

/// Whether a listener awaits the node at `address` (registered and not dropped since).
pub(crate) fn is_awaited(address: usize, flags: &AtomicU8) -> bool {
    if flags.load(Ordering::Relaxed) & AWAITED == 0 {
        return false;
    }
    shard(address)
        .get(&address)
        .is_some_and(|event| event.total_listeners() > 0)
}

/// Forgets the event of the node at `address`, being dropped (its listeners were dropped: a
/// node is alive while something awaits it).
pub(crate) fn forget(address: usize, flags: &AtomicU8) {
    if flags.load(Ordering::Acquire) & AWAITED != 0 {
        shard(address).remove(&address);
    }
}
