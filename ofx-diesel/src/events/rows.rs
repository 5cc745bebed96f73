//! The events table's rows.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use crate::schema::ofx_events;

/// An event to insert (in the producing operation's transaction).
#[derive(Debug, Clone)]
pub struct NewEventRow<'a> {
    /// The event's uuid.
    pub uuid: &'a str,
    /// The producing operation.
    pub operation_uuid: &'a str,
    /// The producing host.
    pub host_id: &'a str,
    /// The command's name.
    pub command_name: &'a str,
    /// The command, as JSON.
    pub command_json: &'a str,
    /// Its key.
    pub event_key: Option<&'a str>,
    /// When it was produced (µs).
    pub logged_at: i64,
    /// When it may run (µs).
    pub due_at: i64,
}

/// An event a processor claimed. Its command is `None` when it is over
/// [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES) (not transferred).
#[derive(Debug, Clone, QueryableByName)]
pub struct ClaimedEvent {
    /// The event's uuid.
    #[diesel(sql_type = Text)]
    pub uuid: String,
    /// The command's name.
    #[diesel(sql_type = Text)]
    pub command_name: String,
    /// The command, as JSON, unless too large.
    #[diesel(sql_type = Nullable<Text>)]
    pub command_json: Option<String>,
    /// The command's size in bytes.
    #[diesel(sql_type = BigInt)]
    pub payload_bytes: i64,
    /// Claims so far, this one included.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// This claim's fencing number.
    #[diesel(sql_type = BigInt)]
    pub lease_token: i64,
    /// When it was due (µs).
    #[diesel(sql_type = BigInt)]
    pub due_at: i64,
}

/// An event as stored, for the listing API (see [`EventInfo`](crate::EventInfo)).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ofx_events)]
pub struct EventRow {
    /// The uuid.
    pub uuid: String,
    /// The producing operation.
    pub operation_uuid: String,
    /// The producing host.
    pub host_id: String,
    /// The command's name.
    pub command_name: String,
    /// The command.
    pub command_json: String,
    /// Its key.
    pub event_key: Option<String>,
    /// When produced (µs).
    pub logged_at: i64,
    /// When due (µs).
    pub due_at: i64,
    /// 0 pending, 1 done, 2 dead.
    pub state: i32,
    /// Claims so far.
    pub attempts: i32,
    /// The fencing number.
    pub lease_token: i64,
    /// The lease's host.
    pub lease_owner: Option<String>,
    /// The lease's end (µs).
    pub lease_until: Option<i64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When done or dead (µs).
    pub finished_at: Option<i64>,
}

/// How a claimed event is given back after its run failed.
#[derive(Debug, Clone)]
pub struct EventRelease<'a> {
    /// The event's uuid.
    pub uuid: &'a str,
    /// The claim's fencing number.
    pub lease_token: i64,
    /// Why it failed.
    pub error: &'a str,
    /// `Some(due)`: pending again, due then; `None`: dead.
    pub retry_at: Option<i64>,
    /// Now (µs).
    pub now: i64,
    /// Whether the run does not count as an attempt (the event could not run on this host:
    /// its handler's service is not added here yet).
    pub refund: bool,
}
