//! The events table's rows.

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryId};
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Untyped};

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

/// The claiming statement of [`Backend::claim_events`](crate::Backend::claim_events): a type of
/// its own with a static query id, so that each connection prepares it once (a `sql_query` is
/// prepared again at every claim: one more round trip on PostgreSQL). Each backend writes its
/// SQL (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimEvents<'a> {
    /// The claiming host.
    pub(crate) host: &'a str,
    /// Now (µs): events due by then, whose lease (if any) ended before.
    pub(crate) now: i64,
    /// The new lease's end (µs).
    pub(crate) lease_until: i64,
    /// The most events claimed.
    pub(crate) limit: i64,
    /// Commands over this many bytes are not transferred.
    pub(crate) max_payload: i64,
}

impl QueryId for ClaimEvents<'_> {
    type QueryId = ClaimEvents<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for ClaimEvents<'_> {
    type SqlType = Untyped;
}

impl ClaimEvents<'_> {
    /// Writes the statement; `lock` goes after the selection of the events (PostgreSQL's row
    /// locks).
    pub(crate) fn write<'b, DB>(
        &'b self,
        out: &mut AstPass<'_, 'b, DB>,
        lock: &str,
    ) -> QueryResult<()>
    where
        DB: diesel::backend::Backend,
        str: diesel::serialize::ToSql<Text, DB>,
        i64: diesel::serialize::ToSql<BigInt, DB>,
        DB: diesel::sql_types::HasSqlType<Text> + diesel::sql_types::HasSqlType<BigInt>,
    {
        out.push_sql("UPDATE ofx_events SET lease_token = lease_token + 1, lease_owner = ");
        out.push_bind_param::<Text, _>(self.host)?;
        out.push_sql(", lease_until = ");
        out.push_bind_param::<BigInt, _>(&self.lease_until)?;
        out.push_sql(
            ", attempts = attempts + 1 WHERE uuid IN (SELECT uuid FROM ofx_events \
             WHERE state = 0 AND due_at <= ",
        );
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql(" AND (lease_until IS NULL OR lease_until < ");
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql(") ORDER BY due_at LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.limit)?;
        out.push_sql(lock);
        out.push_sql(") RETURNING uuid, command_name, CASE WHEN octet_length(command_json) <= ");
        out.push_bind_param::<BigInt, _>(&self.max_payload)?;
        out.push_sql(
            " THEN command_json END AS command_json, \
             CAST(octet_length(command_json) AS BIGINT) AS payload_bytes, attempts, \
             lease_token, due_at",
        );
        Ok(())
    }
}
