//! Events with guaranteed delivery: stored in the producing operation's transaction, run once
//! by one host's [`EventProcessor`], marked done in the transaction of their own run.
//!
//! # The life of an event
//!
//! 1. A main branch adds it: [`CommandContext::add_event`](ofx_core::CommandContext::add_event)
//!    (or `add_event_with` for a delay, a due time, a key). The operation's scope inserts it in
//!    the `ofx_events` table in the operation's transaction: a command that does not commit
//!    leaves no event, a nested command that fails takes its events with it.
//! 2. Every host's processor (started when the database attaches to a hub, unless
//!    [`EventSettings::process`] is off) is woken by the watcher after commits and by its own
//!    host's commits, and polls as a safety net. It **claims** due events under a **lease**
//!    ([`EventSettings::lease`], renewed by a heartbeat while the handler runs): each claim
//!    increments the event's **fencing number** and its attempt count.
//! 3. It runs the event as a command ([`Commander::call_by_name`](ofx_core::Commander::call_by_name)):
//!    its own operation, whose transaction also marks the event done, *if the claim is still
//!    the event's*: no other claim, redrive or replacement took it since. So the event's effects
//!    and its completion commit together, once: a host whose lease ended (paused, partitioned,
//!    slow) and whose event another host claimed meanwhile has its transaction refused
//!    ([`Error::EventLeaseLost`](crate::Error::EventLeaseLost)); the host that took the event
//!    over runs it. A host that dies mid-event loses its lease, and another host takes the event
//!    after it. (The fencing number is the check, not the clock: a run whose lease ended but
//!    whose event nobody claimed since is still the only run, and commits. Refusing it would
//!    only waste its work, and on SQLite, where a run that wrote holds the write lock that the
//!    heartbeat needs, it would refuse every run that writes and then outlasts its lease.)
//! 4. A run that fails gives the event back, due again after a backoff
//!    ([`EventRetry`]), or **dead** when the handler's error is
//!    [permanent](ofx_core::Error::permanent) or the attempts are spent. Dead events keep their
//!    last error; [`DbEvents`] lists, redrives and purges them. An event row that does not
//!    decode, is over [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES), or names an unknown
//!    command is dead at once, with the reason: it never blocks the events behind it.
//! 5. The trimmer deletes done events after [`EventSettings::done_max_age`] and dead ones after
//!    [`EventSettings::dead_max_age`].
//!
//! # What a handler of events must know
//!
//! - An event runs against the database that stored it: its handler writes through that
//!   database's [`operation_connection`](crate::DbHub::operation_connection) (another one is a
//!   scope conflict, and the run fails).
//! - Its main branch may run more than once (a failed or fenced-off run, reprocessing), its
//!   committed effects happen once. [`CommandContext::event_delivery`](ofx_core::CommandContext::event_delivery)
//!   tells it which event and attempt it runs.
//! - Leases are compared with each host's clock: keep the hosts' clocks within a small part of
//!   the lease. A host whose clock runs ahead may take an event over early; the fencing number
//!   still refuses the earlier run's commit, so effects stay once.
//!
//! # Keys
//!
//! An event with a key has a uuid derived from its command name and key (and, debounced, the
//! end of its window): two events with one key are one row. The second one's
//! [`KeyConflict`](ofx_core::operation::KeyConflict) decides: `Keep` (the default) drops it,
//! `Replace` gives the row the new payload and due time and makes it pending again (fencing off
//! a run in progress), `Fail` fails the command ([`Error::EventKeyConflict`](crate::Error::EventKeyConflict)).
//! A key stays taken until the trimmer deletes the finished event.

pub(crate) mod admin;
pub(crate) mod processor;
pub(crate) mod rows;
pub(crate) mod store;

use std::time::{Duration, SystemTime};

pub use admin::{DbEvents, EventCounts};
pub use processor::{EventProcessor, EventStats};
pub use rows::{ClaimedEvent, EventRelease, EventRow, NewEventRow};

use crate::row::time;

/// The shortest event lease [`DbHub::open`](crate::DbHub::open) accepts.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_millis(100);

/// How a database's events are processed and kept; part of [`DbSettings`](crate::DbSettings).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EventSettings {
    /// Whether attaching the database to a hub starts an event processor there (default
    /// true).
    pub process: bool,
    /// How long a claim holds an event (default 30 s, at least [`MIN_LEASE`]: `DbHub::open`
    /// refuses less). A heartbeat renews it every third of it while the handler runs; a host
    /// that stops renewing loses its events after it: another host may claim them, and the
    /// first one's run is then refused at its commit. (On SQLite the heartbeat waits while the
    /// run's own transaction holds the write lock; nobody else can claim meanwhile either, so
    /// such a run still commits unless another host claimed the event before it wrote.)
    pub lease: Duration,
    /// Events one host runs at once (default 4). Each holds a pooled connection for its
    /// transaction: keep it below the pool's size. While runs are short (under 100 ms on
    /// average), as many more are claimed ahead in one statement and wait on this host for a
    /// slot (given back if they wait longer than half their lease, or when the processor
    /// stops); while runs are long, only the free slots are claimed for.
    /// 0 counts as 1.
    pub concurrency: usize,
    /// Retries after failed runs.
    pub retry: EventRetry,
    /// Done events are deleted this long after they were done (default 24 h). A key stays taken
    /// as long as its event is kept.
    pub done_max_age: Duration,
    /// Dead events are deleted this long after they died (default 7 days): the time to look at
    /// them and redrive them.
    pub dead_max_age: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            process: true,
            lease: Duration::from_secs(30),
            concurrency: 4,
            retry: EventRetry::default(),
            done_max_age: Duration::from_secs(24 * 3600),
            dead_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// When a failed event runs again. The default: 10 attempts in all, waiting 1 s, 2 s, 4 s, ...
/// (±25 %) up to 5 min between them, about 9 minutes in all: long enough to ride out a
/// database failover or a deployment, short enough that an event failing for a bug reaches the
/// dead events (and a human) the same hour. Raise `max_attempts` for work that must outlast
/// longer outages; dead events can always be redriven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRetry {
    /// Attempts in all, the first included (0 counts as 1): the event is dead after the last
    /// one fails. A claim is an attempt, whether its run failed or was lost (its host crashed,
    /// its lease ended and another host claimed it): an event claimed once more than this
    /// without a run that ended is dead too, with the reason. A claim given back unrun (a host
    /// without the event's service, a processor that stopped) is not.
    pub max_attempts: u32,
    /// The wait after the first failure, doubled after each next one.
    pub initial_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for EventRetry {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl EventRetry {
    /// `max_attempts` attempts, waiting `initial_delay` doubled after each failure, at most
    /// `max_delay`.
    pub fn new(max_attempts: u32, initial_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay,
            max_delay,
        }
    }

    /// The wait after failed attempt `attempt` (1 for the first), ±25 %.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let delay = self
            .initial_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        // Saturating: a delay near `Duration::MAX` times the jitter would overflow.
        Duration::try_from_secs_f64(delay.as_secs_f64() * (0.75 + rand::random::<f64>() * 0.5))
            .unwrap_or(Duration::MAX)
    }
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventState {
    /// Waiting for its due time, or claimed and running.
    Pending,
    /// Its run committed.
    Done,
    /// Given up: a permanent error, its attempts spent, or a row that cannot run.
    Dead,
}

impl EventState {
    pub(crate) fn code(self) -> i32 {
        match self {
            Self::Pending => 0,
            Self::Done => 1,
            Self::Dead => 2,
        }
    }

    pub(crate) fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::Pending),
            1 => Some(Self::Done),
            2 => Some(Self::Dead),
            _ => None,
        }
    }
}

/// An event as stored: what [`DbEvents`] lists.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EventInfo {
    /// The event's uuid.
    pub uuid: uuid::Uuid,
    /// The operation that produced it.
    pub operation: String,
    /// The host that produced it.
    pub host_id: String,
    /// The command's name.
    pub command_name: String,
    /// The command, as JSON text.
    pub command_json: String,
    /// Its key.
    pub key: Option<String>,
    /// When it was produced.
    pub logged_at: SystemTime,
    /// When it is (or was) due.
    pub due_at: SystemTime,
    /// Its state (`None`: a state this version does not know).
    pub state: Option<EventState>,
    /// Claims so far.
    pub attempts: u32,
    /// Its fencing number.
    pub lease_token: i64,
    /// The host holding its lease.
    pub lease_owner: Option<String>,
    /// When that lease ends.
    pub lease_until: Option<SystemTime>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was done or died.
    pub finished_at: Option<SystemTime>,
}

impl From<EventRow> for EventInfo {
    fn from(row: EventRow) -> Self {
        Self {
            uuid: uuid::Uuid::parse_str(&row.uuid).unwrap_or_default(),
            operation: row.operation_uuid,
            host_id: row.host_id,
            command_name: row.command_name,
            command_json: row.command_json,
            key: row.event_key,
            logged_at: time(row.logged_at),
            due_at: time(row.due_at),
            state: EventState::from_code(row.state),
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            lease_token: row.lease_token,
            lease_owner: row.lease_owner,
            lease_until: row.lease_until.map(time),
            last_error: row.last_error,
            finished_at: row.finished_at.map(time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_within_jitter_up_to_the_cap() {
        let retry = EventRetry::default();
        for _ in 0..100 {
            let first = retry.delay(1);
            assert!(first >= Duration::from_millis(750) && first <= Duration::from_millis(1250));
            let third = retry.delay(3);
            assert!(third >= Duration::from_secs(3) && third <= Duration::from_secs(5));
            assert!(retry.delay(30) <= Duration::from_secs(375));
        }
    }
}
