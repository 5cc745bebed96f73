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

    /// The operation cannot use this database: it writes to another one already (one
    /// operation commits to one database), or this is an invalidation branch (which must do no
    /// I/O).
    #[error("no database scope for this call: {0}")]
    Scope(#[source] ofx_core::Error),

    /// The database is not attached to the command's hub: its watcher would not announce the
    /// commit, and no reader would follow the log there. Add it when the hub starts:
    /// `Hub::builder().with(db.clone()).start().await`.
    #[error(
        "this database is not attached to the command's hub: build the hub with `Hub::builder().with(db.clone()).start().await`"
    )]
    NotAttached,

    /// Two nested commands of one operation ran at the same time (`tokio::join!` in a handler)
    /// and both wrote, or the outer command wrote while a nested one ran: a failed one would
    /// roll the others' writes back with its own. Run nested commands that write one after
    /// the other.
    #[error(
        "nested commands of one operation that run at the same time cannot both write: run them one after the other"
    )]
    ConcurrentNestedWrites,

    /// A nested command's savepoint could not be kept or undone as its command ended.
    #[error("nested command savepoint: {0}")]
    Savepoint(String),

    /// The operation's connection is still held by an earlier `operation_connection` of the same
    /// operation: drop that guard before calling a nested command (which shares the connection)
    /// or asking again.
    #[error("the operation's connection is in use: drop the previous `OperationConnection` first")]
    ConnectionInUse,

    /// An operation's JSON could not be written.
    #[error("operation could not be serialized: {0}")]
    Json(#[from] serde_json::Error),

    /// A watcher was set on a database already attached to a hub: it would be ignored there.
    /// Set it before `HubBuilder::start`.
    #[error("the watcher must be set before the database is attached to a hub")]
    AlreadyAttached,

    /// The watcher could not start.
    #[error("the watcher could not start: {0}")]
    Watcher(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Waiting for a replay took longer than allowed.
    #[error("operation {sequence} was not replayed within {waited:?}: {blocked_by}")]
    ReplayTimeout {
        /// The log sequence waited for.
        sequence: i64,
        /// How long.
        waited: std::time::Duration,
        /// What the reader was still waiting for when the time ran out.
        blocked_by: crate::ReplayBlock,
    },

    /// This hub runs no log reader for this database (it was not attached, or the reader was
    /// stopped).
    #[error("no log reader of this database runs on this hub")]
    NoReader,

    /// An event's key is taken by an event stored before, and its strategy is
    /// [`KeyConflict::Fail`](ofx_core::operation::KeyConflict::Fail). Nothing was committed.
    #[error("event {event} (key `{key}`) exists already")]
    EventKeyConflict {
        /// The event's uuid (derived from its key).
        event: uuid::Uuid,
        /// The key.
        key: String,
    },

    /// A processor's run of an event could not complete it: another claim (after its lease
    /// ended), a redrive or a replacement of the event took it over. The run's operation
    /// was rolled back: its effects do not exist; the event's current holder runs it.
    #[error("the lease on event {event} was lost: its run's operation was rolled back")]
    EventLeaseLost {
        /// The event's uuid.
        event: uuid::Uuid,
    },

    /// A setting that cannot work (say, a zero event lease).
    #[error("invalid settings: {0}")]
    Settings(String),

    /// No event has this uuid in the state the call needs.
    #[error("no event {0} in the required state")]
    NoSuchEvent(uuid::Uuid),

    /// A state service was read (or written through) before its initial catch-up with its
    /// stream finished: see [`StateService::ready`](crate::state::StateService::ready).
    #[error("state service `{projection}` is not ready: it has not caught up with its stream yet")]
    NotReady {
        /// The projection's name.
        projection: &'static str,
    },

    /// [`StateService::current_state`](crate::state::StateService::current_state) could not
    /// catch up with the stream's head within its timeout. `local_state` still answers.
    #[error("state service `{projection}` cannot be refreshed within {timeout:?}: {cause}")]
    Unavailable {
        /// The projection's name.
        projection: &'static str,
        /// How long the call waited.
        timeout: std::time::Duration,
        /// What stopped it.
        cause: crate::state::UnavailableCause,
    },

    /// An append to a state service's stream conflicted with concurrent appends this many
    /// times in a row (each time the decision was made again on the newer state). Nothing was
    /// appended.
    #[error("appending to stream `{stream}` conflicted {attempts} times with concurrent appends")]
    AppendConflict {
        /// The stream.
        stream: String,
        /// Attempts made.
        attempts: u32,
    },

    /// A state service was added to a second hub, or to a hub without its database: it
    /// follows its stream for one hub (one per host), after that hub's `DbHub`.
    #[error("state service `{projection}`: {reason}")]
    StateAttach {
        /// The projection's name.
        projection: &'static str,
        /// What is wrong.
        reason: &'static str,
    },

    /// A read of a state service's stream took longer than
    /// [`StateSettings::refresh_timeout`](crate::state::StateSettings::refresh_timeout): it was
    /// abandoned (and its connection closed) to be retried.
    #[error("reading the stream took longer than {0:?}")]
    RefreshTimeout(std::time::Duration),

    /// A snapshot could not be saved or read (a directory's I/O).
    #[error("snapshot: {0}")]
    Snapshot(String),

    /// The state service stopped (its hub shut down).
    #[error("state service `{projection}` has stopped")]
    StateStopped {
        /// The projection's name.
        projection: &'static str,
    },

    /// [`ReliableMap::add`](crate::maps::ReliableMap::add) of a key the map has.
    #[error("map `{map}` has the key {key} already")]
    MapKeyExists {
        /// The map's name.
        map: String,
        /// The key, as JSON.
        key: String,
    },

    /// [`ReliableMap::update`](crate::maps::ReliableMap::update) of a key the map does not have.
    #[error("map `{map}` has no key {key}")]
    MapKeyMissing {
        /// The map's name.
        map: String,
        /// The key, as JSON.
        key: String,
    },

    /// A map's stored key or value does not decode as its type (another type was registered
    /// under the same name).
    #[error("map `{map}`: a stored entry does not decode: {reason}")]
    MapDecode {
        /// The map's name.
        map: String,
        /// Why.
        reason: String,
    },

    /// A [`MapManager`](crate::maps::MapManager) was added to a hub wrongly.
    #[error("map manager: {0}")]
    MapAttach(&'static str),

    /// The map manager's follower did not catch up with the change log within the timeout
    /// (see [`MapManager::sync`](crate::maps::MapManager::sync)).
    #[error("the maps' change log could not be followed within {timeout:?}{}", last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    MapsUnavailable {
        /// The timeout.
        timeout: std::time::Duration,
        /// The follower's last error, if it is failing.
        last_error: Option<String>,
    },
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
