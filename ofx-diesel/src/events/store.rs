//! Storing an operation's events, and completing a claimed event, in the operation's
//! transaction.

use ofx_core::Operation;
use ofx_core::operation::KeyConflict;

use super::rows::NewEventRow;
use crate::backend::Backend;
use crate::row::{MAX_PAYLOAD_BYTES, micros};
use crate::{Error, Result};

/// The claim of the event an operation runs: its transaction marks the event done, if the claim
/// is still the event's.
#[derive(Debug, Clone)]
pub(crate) struct EventClaim {
    pub(crate) uuid: uuid::Uuid,
    pub(crate) lease_token: i64,
}

/// Inserts `operation`'s events in its transaction. Their times are the core's, stamped with
/// the system clock, shifted by `offset` µs: how far this host's clock is from it (0 unless a
/// test injects a skewed clock). They are not corrected to the database server's clock: a due
/// time may be a window's end, or a time the application gave.
pub(crate) async fn store_events<B: Backend>(
    connection: &mut B::Connection,
    operation: &Operation,
    offset: i64,
) -> Result<()> {
    if operation.events.is_empty() {
        return Ok(());
    }
    let micros = |time| micros(time) + offset;
    let operation_uuid = operation.uuid.to_string();
    let host_id = operation.host_id.to_string();
    let logged_at = micros(operation.logged_at);
    for event in &operation.events {
        let command_json = serde_json::to_string(&event.command)?;
        if command_json.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::PayloadTooLarge {
                operation: event.uuid,
                size: command_json.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let uuid = event.uuid.to_string();
        let row = NewEventRow {
            uuid: &uuid,
            operation_uuid: &operation_uuid,
            host_id: &host_id,
            command_name: &event.command_name,
            command_json: &command_json,
            event_key: event.key.as_deref(),
            logged_at,
            due_at: micros(event.due_at),
        };
        let strategy = if event.key.is_some() {
            event.on_conflict
        } else {
            // A new uuid cannot be taken: a plain insert.
            KeyConflict::Fail
        };
        match B::insert_event(connection, row, strategy).await {
            Ok(_) => {}
            Err(Error::Database(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))) => {
                return Err(Error::EventKeyConflict {
                    event: event.uuid,
                    key: event.key.clone().unwrap_or_default(),
                });
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
