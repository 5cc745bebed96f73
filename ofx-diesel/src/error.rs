//! The errors of ofx-diesel.

/// An error of the operation log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a query or the connection broke.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),

    /// No connection could be opened or taken from the pool.
    #[error("cannot connect to the database: {0}")]
    Connect(String),

    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migration(String),

    /// `COMMIT` failed and the operation certainly did not commit: PostgreSQL reported its
    /// transaction aborted, or (SQLite) the operation is not in the log after our connection's
    /// transaction was closed. The command did not happen.
    #[error(
        "the commit of operation {operation} failed, and it was not found in the log: {source}"
    )]
    CommitFailed {
        /// The operation's uuid.
        operation: uuid::Uuid,
        /// Why the commit failed.
        #[source]
        source: diesel::result::Error,
    },

    /// `COMMIT` failed and whether the operation committed stays unknown. Check the log for the
    /// operation's uuid before retrying.
    #[error("the commit of operation {operation} is in doubt: {reason}")]
    CommitInDoubt {
        /// The operation's uuid.
        operation: uuid::Uuid,
        /// Why verification could not tell.
        #[source]
        reason: Doubt,
    },

    /// The operation could not be serialized for the log (its command's `Serialize` failed).
    /// Nothing was committed.
    #[error("operation {operation} could not be serialized: {source}")]
    Encode {
        /// The operation's uuid.
        operation: uuid::Uuid,
        /// What failed.
        #[source]
        source: ofx_core::Error,
    },

    /// The operation's command, items and nested JSON together are over the log's limit.
    /// Nothing was committed.
    #[error("operation {operation} is {size} bytes, over the log's limit of {limit}")]
    PayloadTooLarge {
        /// The operation's uuid.
        operation: uuid::Uuid,
        /// Its command, items and nested JSON together, in bytes.
        size: usize,
        /// The limit, [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES).
        limit: usize,
    },

    /// `operation_connection` was called outside a command, or without the database scope
    /// filter on the hub (add it with `HubBuilder::filter(db.operation_scope())`).
    #[error(
        "no database operation scope: call `operation_connection` from a command handler on a hub built with `.filter(db.operation_scope())`"
    )]
    NoScope,

    /// The operation's connection is still held by an earlier `operation_connection` of the same
    /// operation: drop that guard before calling a nested command (which shares the connection)
    /// or asking again.
    #[error("the operation's connection is in use: drop the previous `OperationConnection` first")]
    ConnectionInUse,

    /// An operation's JSON could not be written.
    #[error("operation could not be serialized: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why commit verification could not tell whether an operation committed
/// ([`Error::CommitInDoubt`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Doubt {
    /// Its transaction was still in progress on the server (the old session had not finished
    /// committing or aborting) when verification gave up, after this long.
    #[error("its transaction was still in progress after {0:?}")]
    InProgress(std::time::Duration),
    /// Its transaction id could not be recorded, and the operation was not in the log within
    /// this long: without the id, absence proves nothing.
    #[error("no transaction id was recorded and the operation was not in the log after {0:?}")]
    NoTransactionId(std::time::Duration),
    /// The server no longer knows the transaction (`pg_xact_status` returned NULL: the id is
    /// older than its commit log), and the operation is not in the log.
    #[error("the server no longer knows transaction {0}")]
    UnknownTransaction(i64),
    /// The database could not be asked before the verification period ended: the last error.
    #[error("the database could not be asked: {0}")]
    Unreachable(#[source] Box<Error>),
    /// The database did not answer within the verification period (this long).
    #[error("the database did not answer within {0:?}")]
    NoAnswer(std::time::Duration),
    /// The verification task failed (it panicked).
    #[error("the verification task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl From<Error> for ofx_core::Error {
    fn from(error: Error) -> Self {
        ofx_core::Error::scope(error)
    }
}

/// `Result` with ofx-diesel's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
