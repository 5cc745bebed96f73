//! Events with guaranteed delivery: commands a main branch adds to its operation
//! ([`CommandContext::add_event`](crate::CommandContext::add_event)), stored by the operation's
//! scope in the transaction of the operation itself, and run later, once, by one host's event
//! processor (see ofx-diesel's `EventProcessor`).
//!
//! An event is a command: it has a handler like any other, the same closed registry decodes it,
//! and its run is an operation of its own (its invalidation is replayed on every host). What
//! this module defines is what the producing side records: the event, when it is due, and the
//! key that deduplicates it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happens when an event's key is taken already: by an event stored before (in the
/// events table) or added before in the same operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyConflict {
    /// The command fails (nothing it wrote commits).
    Fail,
    /// The existing event stays as it is; the new one is dropped (the default: a key
    /// deduplicates).
    #[default]
    Keep,
    /// The existing event takes the new payload and due time, and runs (again) as a new
    /// event: its attempts are reset, whatever state it was in, and a run in progress elsewhere
    /// is fenced off (its completion is refused; it runs again with the new payload).
    Replace,
}

/// When and under what identity an event runs: built with [`EventOptions::new`] and passed to
/// [`CommandContext::add_event_with`](crate::CommandContext::add_event_with).
///
/// ```
/// use std::time::Duration;
/// use ofx_core::operation::{EventOptions, KeyConflict};
///
/// // Runs in 10 minutes, at most once per order.
/// let remind = EventOptions::new()
///     .delay(Duration::from_secs(600))
///     .key("order-42/remind");
/// // Runs at the end of the current minute, once for all the events of that minute, with the
/// // last payload.
/// let digest = EventOptions::new()
///     .debounce("digest", Duration::from_secs(60))
///     .on_conflict(KeyConflict::Replace);
/// # let _ = (remind, digest);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct EventOptions {
    pub(crate) due: Due,
    pub(crate) key: Option<String>,
    pub(crate) window: Option<Duration>,
    pub(crate) on_conflict: KeyConflict,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Due {
    #[default]
    Now,
    After(Duration),
    At(SystemTime),
}

impl EventOptions {
    /// Runs as soon as a host's processor claims it, no key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `delay` after the operation started (± the processor's poll period when no watcher
    /// wakes it at the due time).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.due = Due::After(delay);
        self
    }

    /// Runs at `at` (a time in the past means now).
    pub fn due_at(mut self, at: SystemTime) -> Self {
        self.due = Due::At(at);
        self
    }

    /// Deduplicates by `key`: the event's uuid is derived from its command name and the key, so
    /// that two events with one key are one event. What the second one does is
    /// [`on_conflict`](Self::on_conflict)'s choice ([`KeyConflict::Keep`] by default).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Debounces by `key` over windows of `window`: the due time is rounded up to the end of its
    /// window, and the uuid is derived from the key *and* that time, so that the events of one
    /// window are one event, run once at the window's end. With [`KeyConflict::Replace`] it
    /// runs with the last payload, with [`KeyConflict::Keep`] (the default) the first.
    pub fn debounce(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.key = Some(key.into());
        self.window = Some(window).filter(|window| !window.is_zero());
        self
    }

    /// What a key that is taken does (see [`KeyConflict`]); ignored without a key.
    pub fn on_conflict(mut self, strategy: KeyConflict) -> Self {
        self.on_conflict = strategy;
        self
    }

    /// The event's due time for an operation started at `logged_at`.
    pub(crate) fn due_time(&self, logged_at: SystemTime) -> SystemTime {
        let due = match self.due {
            Due::Now => logged_at,
            // A delay past what a time can hold is the farthest future the storage knows.
            Due::After(delay) => logged_at.checked_add(delay).unwrap_or_else(far_future),
            Due::At(at) => at,
        };
        match self.window {
            Some(window) => round_up(due, window),
            None => due,
        }
    }
}

/// The latest due time: `i64::MAX` microseconds after the Unix epoch (what a storage holds).
fn far_future() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(i64::MAX.unsigned_abs())
}

/// `time` rounded up to a multiple of `window` since the Unix epoch.
fn round_up(time: SystemTime, window: Duration) -> SystemTime {
    let since = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let window = window.as_nanos().max(1);
    let rounded = since.div_ceil(window).saturating_mul(window);
    let rounded = u64::try_from(rounded).unwrap_or(u64::MAX);
    UNIX_EPOCH + Duration::from_nanos(rounded)
}

/// The namespace of the uuids derived from event keys.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6f66_785f_6576_656e_745f_6b65_795f_7631);

/// The uuid of an event of `command_name` with `key` (and, when debounced, due at `window_end`).
pub fn event_key_uuid(command_name: &str, key: &str, window_end: Option<SystemTime>) -> Uuid {
    // Each part with its length first, so that no two different (name, key, window) give one
    // byte string, whatever bytes the key holds.
    let mut name = Vec::with_capacity(command_name.len() + key.len() + 40);
    for part in [command_name.as_bytes(), key.as_bytes()] {
        name.extend_from_slice(&(part.len() as u64).to_le_bytes());
        name.extend_from_slice(part);
    }
    if let Some(end) = window_end {
        let micros = end
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        name.push(1);
        name.extend_from_slice(&micros.to_le_bytes());
    }
    Uuid::new_v5(&KEY_NAMESPACE, &name)
}

/// One event an operation produced: a command to run later, once, on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OperationEvent {
    /// The event's uuid: time-ordered and new, or derived from its key.
    pub uuid: Uuid,
    /// The command's name.
    pub command_name: String,
    /// The command, as JSON.
    pub command: serde_json::Value,
    /// When it may run.
    pub due_at: SystemTime,
    /// Its deduplication key, if any.
    pub key: Option<String>,
    /// What a taken key does.
    pub on_conflict: KeyConflict,
}

impl OperationEvent {
    /// An event from its parts (what `add_event` builds).
    pub fn new(
        command_name: impl Into<String>,
        command: serde_json::Value,
        logged_at: SystemTime,
        options: &EventOptions,
    ) -> Self {
        let command_name = command_name.into();
        let due_at = options.due_time(logged_at);
        let uuid = match &options.key {
            Some(key) => event_key_uuid(&command_name, key, options.window.map(|_| due_at)),
            None => Uuid::now_v7(),
        };
        Self {
            uuid,
            command_name,
            command,
            due_at,
            key: options.key.clone(),
            on_conflict: options.on_conflict,
        }
    }
}

/// Which event a command runs as, when an event processor runs it: read it in the handler with
/// [`CommandContext::event_delivery`](crate::CommandContext::event_delivery), for instance to
/// key the event's effects by its uuid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventDelivery {
    /// The event's uuid.
    pub event: Uuid,
    /// This run's attempt (1 for the first).
    pub attempt: u32,
}

impl EventDelivery {
    /// A delivery of `event`, attempt `attempt`.
    pub fn new(event: Uuid, attempt: u32) -> Self {
        Self { event, attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_give_stable_uuids_per_command_and_window() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let a = OperationEvent::new(
            "a",
            serde_json::Value::Null,
            at,
            &EventOptions::new().key("k"),
        );
        let b = OperationEvent::new(
            "a",
            serde_json::Value::Null,
            at,
            &EventOptions::new().key("k"),
        );
        let other = OperationEvent::new(
            "b",
            serde_json::Value::Null,
            at,
            &EventOptions::new().key("k"),
        );
        assert_eq!(a.uuid, b.uuid);
        assert_ne!(a.uuid, other.uuid);

        let window = Duration::from_secs(60);
        let options = EventOptions::new().debounce("k", window);
        let first = OperationEvent::new("a", serde_json::Value::Null, at, &options);
        let same = OperationEvent::new(
            "a",
            serde_json::Value::Null,
            at + Duration::from_secs(19),
            &options,
        );
        let next = OperationEvent::new(
            "a",
            serde_json::Value::Null,
            at + Duration::from_secs(21),
            &options,
        );
        assert_eq!(first.due_at, UNIX_EPOCH + Duration::from_secs(1_020));
        assert_eq!(first.uuid, same.uuid);
        assert_ne!(first.uuid, next.uuid);
        assert_eq!(next.due_at, UNIX_EPOCH + Duration::from_secs(1_080));
    }

    #[test]
    fn keys_never_collide_across_parts() {
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_ne!(
            event_key_uuid("h.ev", "k\0z", None),
            event_key_uuid("h.ev\0k", "z", None)
        );
        assert_ne!(
            event_key_uuid("h.ev", "k\x001800000000000000", None),
            event_key_uuid("h.ev", "k", Some(at))
        );
    }

    #[test]
    fn a_delay_past_the_representable_is_the_far_future() {
        let options = EventOptions::new().delay(Duration::MAX);
        let event = OperationEvent::new("a", serde_json::Value::Null, SystemTime::now(), &options);
        assert_eq!(event.due_at, far_future());
    }

    #[test]
    fn unkeyed_events_get_new_uuids_and_their_delay() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let options = EventOptions::new().delay(Duration::from_secs(5));
        let a = OperationEvent::new("a", serde_json::Value::Null, at, &options);
        let b = OperationEvent::new("a", serde_json::Value::Null, at, &options);
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(a.due_at, at + Duration::from_secs(5));
    }
}
