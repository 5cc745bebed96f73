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

    /// The commit's outcome was unknown (the connection broke during `COMMIT`) and the
    /// operation was not found afterwards: the command did not happen.
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

    /// The commit's outcome stays unknown: the database could not be asked in time whether the
    /// operation was committed. Check the log for the operation's uuid before retrying.
    #[error("the commit of operation {operation} is in doubt: {reason}")]
    CommitInDoubt {
        /// The operation's uuid.
        operation: uuid::Uuid,
        /// Why it could not be verified.
        reason: String,
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

impl From<Error> for ofx_core::Error {
    fn from(error: Error) -> Self {
        ofx_core::Error::scope(error)
    }
}

/// `Result` with ofx-diesel's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
