//! The errors of ofx-core.

use std::sync::Arc;

/// The error a command handler returned, boxed.
pub type HandlerError = Arc<dyn std::error::Error + Send + Sync>;

/// An error of the ofx runtime.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`capture`](crate::capture) was given a future that called no compute method, so there
    /// is no computed value to return. Call a `#[compute_method]` inside the future.
    #[error("the captured future called no compute method")]
    NothingCaptured,

    /// Two command types use one name. Names identify commands in the operation log, so each
    /// must be unique: rename one in its `#[command(name = "...")]`.
    #[error("the command name `{name}` is used by two types: `{first}` and `{second}`")]
    DuplicateCommandName {
        /// The name.
        name: &'static str,
        /// One type using it.
        first: &'static str,
        /// The other type using it.
        second: &'static str,
    },

    /// Two services added to one hub handle one command (two types with a handler of it, or
    /// two type arguments of one generic service). A hub routes each command to one service:
    /// add only one of them to this hub.
    #[error(
        "the command `{command}` would have two handlers on this hub: in `{first}` and in `{second}`"
    )]
    DuplicateHandler {
        /// The command's name.
        command: &'static str,
        /// The service added first.
        first: &'static str,
        /// The service whose addition was refused.
        second: &'static str,
    },

    /// No service on this hub handles this command. Add the service with its
    /// `#[command_handler]` to the hub with [`Hub::add_service`](crate::Hub::add_service).
    #[error(
        "no service on this hub handles the command `{command}`: add the service that has its `#[command_handler]` with `Hub::add_service`"
    )]
    NoHandler {
        /// The command's name.
        command: &'static str,
    },

    /// The service that handles the command on this hub was dropped: a hub holds its services
    /// weakly (they hold the hub), so keep the `Arc` given to
    /// [`Hub::add_service`](crate::Hub::add_service) alive.
    #[error("the command `{command}` is handled by `{service}`, which was dropped")]
    ServiceDropped {
        /// The command's name.
        command: &'static str,
        /// The service type.
        service: &'static str,
    },

    /// A service was added to a hub other than the one its
    /// [`ComputeService::hub`](crate::ComputeService::hub) returns: its handlers would run on
    /// this hub and invalidate values cached on the other.
    #[error(
        "`{service}` belongs to another hub: add it to the hub its `ComputeService::hub` returns"
    )]
    ServiceOfAnotherHub {
        /// The service type.
        service: &'static str,
    },

    /// A backend command was called for a client. Backend commands are called by the service
    /// itself only.
    #[error("the command `{command}` is a backend command: clients may not call it")]
    BackendCommand {
        /// The command's name.
        command: &'static str,
    },

    /// A replayed operation names a command this program does not know (it was logged by a
    /// newer or different program). The operation is skipped.
    #[error("unknown command `{name}` in operation {operation}")]
    UnknownCommand {
        /// The unknown name.
        name: String,
        /// The operation's uuid.
        operation: uuid::Uuid,
    },

    /// A command could not be encoded or decoded as JSON.
    #[error("command `{command}` could not be (de)serialized: {source}")]
    CommandJson {
        /// The command's name.
        command: String,
        /// What serde said.
        #[source]
        source: Arc<serde_json::Error>,
    },

    /// An operation item could not be encoded or decoded as JSON.
    #[error("operation item `{key}` could not be (de)serialized: {source}")]
    Item {
        /// The item's key.
        key: &'static str,
        /// What serde said.
        #[source]
        source: Arc<serde_json::Error>,
    },

    /// The handler returned an error; it is here, boxed: downcast it with
    /// [`Error::handler_error`].
    #[error("the command handler failed: {0}")]
    Handler(#[source] HandlerError),

    /// The handler panicked: no operation was recorded and nothing was invalidated.
    #[error("the handler of `{command}` panicked")]
    HandlerPanicked {
        /// The command's name.
        command: &'static str,
    },

    /// A filter refused the command.
    #[error("{0}")]
    Rejected(String),

    /// The operation's commit failed in a way its scope could not resolve: the operation may
    /// or may not be stored. Check (for example the operation log, by uuid) before running a
    /// command that is not idempotent again. Nothing was invalidated here; if it was stored,
    /// the log reader replays it.
    #[error("the commit of operation {operation} is in doubt: {source}")]
    CommitInDoubt {
        /// The operation's uuid.
        operation: uuid::Uuid,
        /// The scope's error.
        #[source]
        source: Arc<Error>,
    },

    /// A command of one operation asked for a second storing scope (for instance a second
    /// database): one operation commits to one storage, atomically.
    #[error("the operation already writes to `{active}`; it cannot also write to `{requested}`")]
    ScopeConflict {
        /// The storage the operation writes to.
        active: &'static str,
        /// The other storage asked for.
        requested: &'static str,
    },

    /// An operation's storage was asked for outside a main branch (in an invalidation branch,
    /// which must do no I/O).
    #[error("the command `{command}` asked for its operation's storage outside its main branch")]
    NotInOperation {
        /// The command's name.
        command: &'static str,
    },

    /// A hub with extensions (storages, watchers) was built with `build()`: start it with
    /// `HubBuilder::start().await`, which attaches them in order.
    #[error("this hub has extensions ({extensions}): build it with `HubBuilder::start().await`")]
    ExtensionsNeedStart {
        /// Their names.
        extensions: String,
    },

    /// An extension could not attach to the hub (its server unreachable, for instance).
    #[error("the extension `{extension}` could not start: {source}")]
    Extension {
        /// Its name.
        extension: &'static str,
        /// Why.
        #[source]
        source: HandlerError,
    },

    /// Two events with one key were added to one operation, and the second's strategy is
    /// [`KeyConflict::Fail`](crate::operation::KeyConflict::Fail). A storage reports a key taken
    /// by an event stored before with its own error (ofx-diesel's `EventKeyConflict`).
    #[error("an event of `{command}` with the key `{key}` exists already")]
    EventKeyConflict {
        /// The event's command.
        command: String,
        /// The key.
        key: String,
    },

    /// The operation added events, but nothing stores them: no storage took part in it and
    /// none is attached to the hub as the home of events, or the storage that took part does
    /// not store events. Nothing was committed.
    #[error(
        "the command `{command}` added events, but its operation has no storage that stores them: attach a database to the hub (`HubBuilder::with`)"
    )]
    EventsNotStored {
        /// The outermost command.
        command: &'static str,
    },

    /// No command is registered under this name (a command called by name, or an event read
    /// back from storage).
    #[error("no command is registered under the name `{name}`")]
    UnknownCommandName {
        /// The name.
        name: String,
    },

    /// The operation scope failed: the operation could not be stored or committed (a database
    /// scope's error is here, boxed: downcast it with [`Error::scope_error`]). Nothing was
    /// invalidated.
    #[error("the operation scope failed: {0}")]
    Scope(#[source] HandlerError),
}

impl Error {
    /// Wraps a handler's error.
    pub fn handler<E: Into<Box<dyn std::error::Error + Send + Sync>>>(error: E) -> Self {
        Self::Handler(Arc::from(error.into()))
    }

    /// Wraps an operation scope's error.
    pub fn scope<E: Into<Box<dyn std::error::Error + Send + Sync>>>(error: E) -> Self {
        Self::Scope(Arc::from(error.into()))
    }

    /// The scope's error, if this is one of type `E` (also inside
    /// [`CommitInDoubt`](Self::CommitInDoubt)).
    pub fn scope_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Scope(error) => error.downcast_ref(),
            Self::CommitInDoubt { source, .. } => source.scope_error(),
            _ => None,
        }
    }

    /// The handler's error, if this is one of type `E`.
    pub fn handler_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Handler(error) => error.downcast_ref(),
            _ => None,
        }
    }
}

/// `Result` with ofx-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
