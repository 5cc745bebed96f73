//! The operation log's rows, and their conversion to and from [`Operation`]s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use ofx_core::{HostId, Operation};

use crate::schema::ofx_operations;

/// The largest command, items or nested JSON the log writes or reads (bytes, the three together);
/// larger rows are refused when written, and skipped when read without being transferred. Also
/// the largest event command: a larger one fails its producing command when it commits
/// ([`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge)), and an event row over it is dead
/// when claimed.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// [`MAX_PAYLOAD_BYTES`] as the readers' queries bind it.
const MAX_PAYLOAD_BYTES_I64: i64 = MAX_PAYLOAD_BYTES as i64;

diesel::define_sql_function! {
    /// The size of a text value in bytes. Neither backend reads the value to answer: PostgreSQL
    /// takes it from the value's header (a TOASTed value is not fetched), SQLite (3.43 and
    /// later) from the record header (overflow pages are not read).
    fn octet_length(text: Text) -> Integer;
}

/// The size in bytes of a row's three payload columns together (`BIGINT`: three values of up to
/// 1 GB each overflow an `INTEGER` sum).
#[diesel::dsl::auto_type]
fn payload_bytes() -> _ {
    octet_length(ofx_operations::command_json).cast::<BigInt>()
        + octet_length(ofx_operations::items_json).cast::<BigInt>()
        + octet_length(ofx_operations::nested_json).cast::<BigInt>()
}

/// `CASE WHEN <payload bytes> <= <cap> THEN column END`: the column's value only if the row's
/// payload is under the cap, so that an oversized row never crosses the wire. The cap is bound.
#[diesel::dsl::auto_type]
fn capped<C: diesel::Expression<SqlType = Text>>(column: C) -> _ {
    let cap: i64 = MAX_PAYLOAD_BYTES_I64;
    diesel::dsl::case_when(payload_bytes().le(cap), column)
}

/// A row as read. Its payload columns are `None` when the row is larger than
/// [`MAX_PAYLOAD_BYTES`]: the readers' queries ask for their sizes first
/// ([`payload_bytes`](Self::payload_bytes)) and transfer them only under the cap.
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
    /// The size in bytes of the command, items and nested JSON together, as stored.
    #[diesel(select_expression = payload_bytes(), select_expression_type = payload_bytes)]
    pub payload_bytes: i64,
    /// The command; `None` when the row is over the cap.
    #[diesel(
        select_expression = capped(ofx_operations::command_json),
        select_expression_type = capped<ofx_operations::command_json>
    )]
    pub command_json: Option<String>,
    /// The items; `None` when the row is over the cap.
    #[diesel(
        select_expression = capped(ofx_operations::items_json),
        select_expression_type = capped<ofx_operations::items_json>
    )]
    pub items_json: Option<String>,
    /// The nested operations; `None` when the row is over the cap.
    #[diesel(
        select_expression = capped(ofx_operations::nested_json),
        select_expression_type = capped<ofx_operations::nested_json>
    )]
    pub nested_json: Option<String>,
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

impl Inserted {
    /// What is known of a row whose insert got no reply (the connection failed after the
    /// row, and the `COMMIT` pipelined behind it, were sent): its transaction's id, taken at
    /// `BEGIN`. Its index is not known (0, which no row has): commit verification finds it by
    /// the operation's uuid.
    pub const fn unknown(xid: Option<i64>) -> Self {
        Self { idx: 0, xid }
    }

    /// Whether the row's index is known (see [`unknown`](Self::unknown)).
    pub const fn has_index(&self) -> bool {
        self.idx > 0
    }
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
    /// The command, items and nested JSON together are larger than [`MAX_PAYLOAD_BYTES`]
    /// (their size in bytes; the reader did not fetch them).
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
    ///
    /// # Errors
    /// [`BadRow`] when a column is too large or malformed.
    pub fn to_operation(&self) -> Result<Operation, BadRow> {
        let size = usize::try_from(self.payload_bytes).unwrap_or(usize::MAX);
        if size > MAX_PAYLOAD_BYTES {
            return Err(BadRow::TooLarge(size));
        }
        let uuid =
            uuid::Uuid::parse_str(&self.uuid).map_err(|_| BadRow::Uuid(self.uuid.clone()))?;
        let command = parse("command_json", self.command_json.as_deref())?;
        let items = parse("items_json", self.items_json.as_deref())?;
        let nested = parse("nested_json", self.nested_json.as_deref())?;
        Ok(Operation::new(
            uuid,
            HostId::from_string(self.host_id.as_str()),
            &self.command_name,
            command,
        )
        .with_logged_at(time(self.logged_at))
        .with_items(items)
        .with_nested(nested)
        .with_commit(Some(self.idx), time(self.committed_at)))
    }
}

/// A JSON column. Under the size cap the columns are there (they are `NOT NULL`); a missing
/// one fails to decode, as the empty text it is read as.
fn parse<T: serde::de::DeserializeOwned>(
    column: &'static str,
    text: Option<&str>,
) -> Result<T, BadRow> {
    serde_json::from_str(text.unwrap_or_default()).map_err(|source| BadRow::Json { column, source })
}
