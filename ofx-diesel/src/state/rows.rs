//! The rows of the state service's tables.

use diesel::prelude::*;

use crate::schema::{ofx_state_quarantine, ofx_state_snapshots, ofx_stream_events};

/// A stream event to append (in the command's transaction).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = ofx_stream_events)]
pub struct NewStreamRow<'a> {
    /// The stream.
    pub stream: &'a str,
    /// Its position.
    pub position: i64,
    /// The event, as JSON.
    pub body: &'a str,
    /// The appending operation.
    pub operation_uuid: &'a str,
    /// When (µs).
    pub appended_at: i64,
}

/// A stream event read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ofx_stream_events)]
pub struct StreamRow {
    /// Its position.
    pub position: i64,
    /// The event, as JSON.
    pub body: String,
    /// The operation that appended it.
    pub operation_uuid: String,
    /// When it was appended (µs).
    pub appended_at: i64,
}

/// A saved snapshot.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ofx_state_snapshots)]
pub struct SnapshotRow {
    /// The projection.
    pub projection: String,
    /// Its version.
    pub version: i64,
    /// The position the state reflects.
    pub position: i64,
    /// When (µs).
    pub saved_at: i64,
    /// The encoded snapshot.
    pub body: Vec<u8>,
}

/// A quarantined stream event.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ofx_state_quarantine)]
pub struct QuarantineRow {
    /// The projection.
    pub projection: String,
    /// Its version.
    pub version: i64,
    /// The stream.
    pub stream: String,
    /// The event's position.
    pub position: i64,
    /// `undecodable`, `rejected`, `panicked` or `missing`.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// When (µs).
    pub quarantined_at: i64,
}
