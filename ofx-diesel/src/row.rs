//! The operation log's rows, and their conversion to and from [`Operation`]s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use ofx_core::Operation;

use crate::schema::ofx_operations;

/// The largest command, items or nested JSON the log writes or reads (bytes); larger rows are
/// refused when written and skipped when read.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// A row as read.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ofx_operations)]
pub struct OperationRow {
    /// The cursor.
    pub idx: i64,
    /// The operation's uuid.
    pub uuid: String,
    /// The executing host.
    pub host_id: String,
    /// When it started (µs since the epoch).
    pub logged_at: i64,
    /// When it was committed (µs since the epoch).
    pub committed_at: i64,
    /// The command's name.
    pub command_name: String,
    /// The command.
    pub command_json: String,
    /// The items.
    pub items_json: String,
    /// The nested operations.
    pub nested_json: String,
}

/// What inserting an operation row returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The row's index: its place in the log (the readers' cursor).
    pub idx: i64,
    /// PostgreSQL: the id of the transaction that inserted the row (`pg_current_xact_id()`,
    /// taken before `idx` was drawn), which commit verification asks the server about. `None` on
    /// SQLite.
    pub xid: Option<i64>,
}

/// A row to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = ofx_operations)]
pub struct NewOperationRow<'a> {
    /// The operation's uuid.
    pub uuid: &'a str,
    /// The executing host.
    pub host_id: &'a str,
    /// When it started (µs since the epoch).
    pub logged_at: i64,
    /// When it was committed (µs since the epoch).
    pub committed_at: i64,
    /// The command's name.
    pub command_name: &'a str,
    /// The command.
    pub command_json: &'a str,
    /// The items.
    pub items_json: &'a str,
    /// The nested operations.
    pub nested_json: &'a str,
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
    })
}

/// The time `micros` µs after the Unix epoch.
pub(crate) fn time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Why a row cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum BadRow {
    /// Its uuid is not a uuid.
    #[error("malformed uuid `{0}`")]
    Uuid(String),
    /// A JSON column is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A JSON column does not decode.
    #[error("malformed {column}: {source}")]
    Json {
        /// Which column.
        column: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl OperationRow {
    /// The operation this row records (its commands still undecoded: the registry decodes them
    /// by name on replay).
    pub fn to_operation(&self) -> Result<Operation, BadRow> {
        let size = self.command_json.len() + self.items_json.len() + self.nested_json.len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(BadRow::TooLarge(size));
        }
        let uuid =
            uuid::Uuid::parse_str(&self.uuid).map_err(|_| BadRow::Uuid(self.uuid.clone()))?;
        let json = |column: &'static str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|source| BadRow::Json { column, source })
        };
        let operation = serde_json::json!({
            "uuid": uuid,
            "host_id": self.host_id,
            "logged_at": time(self.logged_at),
            "command_name": self.command_name,
            "command": json("command_json", &self.command_json)?,
            "items": json("items_json", &self.items_json)?,
            "nested": json("nested_json", &self.nested_json)?,
        });
        serde_json::from_value(operation).map_err(|source| BadRow::Json {
            column: "operation",
            source,
        })
    }
}
