//! Operations: the record of one executed command, with its items and nested commands, and the
//! moments of its life.
//!
//! # The life of an operation
//!
//! An outermost [`Commander::call`](crate::Commander::call) runs:
//!
//! 1. the **main branch**, through the filter pipeline (which only ever runs main branches);
//!    the first storage the handler touches begins its [`OperationScope`] lazily (for example a
//!    database transaction), and nested commands join it;
//! 2. the [`Operation`] is built once, then committed by the scope
//!    ([`OperationScope::commit`]), which answers with a [`CommitOutcome`]: committed (with the
//!    log's sequence number), certainly not committed, or in doubt;
//! 3. after the commit, the scope's and the hub's **after-commit hooks** run, in order (waking
//!    other hosts, for instance);
//! 4. **completion** ([`OperationCompletionNotifier`]) runs the invalidation pass: the
//!    invalidation branches of the nested commands in execution order, then the outer one,
//!    before `call` returns.
//!
//! On other hosts the log reader builds the `Operation` from its stored row and hands it to
//! [`OperationCompletionNotifier::complete_remote`]: the same invalidation pass.

mod completion;
mod events;
pub(crate) mod invalidation;
#[cfg(all(test, loom))]
mod loom_models;
pub(crate) mod recorder;
mod scope;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use completion::{
    CompletionListener, MAX_KNOWN_OPERATION_AGE, MAX_KNOWN_OPERATIONS, OperationCompletionNotifier,
    ReplayError,
};
pub use events::{EventDelivery, EventOptions, KeyConflict, OperationEvent, event_key_uuid};
pub(crate) use recorder::{LocalCommands, OperationRecorder};
pub use scope::{AfterCommitHook, CommitOutcome, Committed, OperationScope, ScopeFuture};

use crate::HostId;

/// The record of one executed command: what every host needs to replay its invalidation.
///
/// ```
/// use ofx_core::{HostId, Operation};
///
/// let operation = Operation::new(
///     uuid::Uuid::now_v7(),
///     HostId::from_string("host-a"),
///     "todos.complete",
///     serde_json::json!({ "id": 1 }),
/// )
/// .with_commit(Some(42), std::time::SystemTime::now());
/// assert_eq!(operation.sequence, Some(42));
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Operation {
    /// Unique and time-ordered (UUID v7).
    pub uuid: Uuid,
    /// The host that executed it.
    pub host_id: HostId,
    /// When it was started.
    pub logged_at: SystemTime,
    /// The command's name.
    pub command_name: String,
    /// The command, as JSON.
    pub command: serde_json::Value,
    /// The operation items its main branch set.
    pub items: BTreeMap<String, serde_json::Value>,
    /// The commands it called, in the order they completed, each with its own items.
    pub nested: Vec<NestedOperation>,
    /// Its position in the operation log it was committed to (`None` for an operation that was
    /// not stored, or before its commit).
    #[serde(default)]
    pub sequence: Option<i64>,
    /// When it was committed (`None` before its commit).
    #[serde(default)]
    pub committed_at: Option<SystemTime>,
    /// The events its main branches added (nested commands' included), stored with it by its
    /// scope: what [`CommandContext::add_event`](crate::CommandContext::add_event) recorded.
    /// Empty for an operation read back from the log (events live in their own table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<OperationEvent>,
    /// The typed commands, on the host that executed them (never serialized).
    #[serde(skip)]
    pub(crate) local: Option<Arc<LocalCommands>>,
}

/// A command called from inside another command's handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NestedOperation {
    /// The command's name.
    pub command_name: String,
    /// The command, as JSON.
    pub command: serde_json::Value,
    /// The operation items its main branch set.
    pub items: BTreeMap<String, serde_json::Value>,
}

impl NestedOperation {
    /// A nested command from its parts.
    pub fn new(
        command_name: impl Into<String>,
        command: serde_json::Value,
        items: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        Self {
            command_name: command_name.into(),
            command,
            items,
        }
    }
}

impl Operation {
    /// An operation from its parts, as a log reader builds it from a stored row: no items, no
    /// nested commands, logged now and not committed until said otherwise (see the `with_`
    /// methods).
    pub fn new(
        uuid: Uuid,
        host_id: HostId,
        command_name: impl Into<String>,
        command: serde_json::Value,
    ) -> Self {
        Self {
            uuid,
            host_id,
            logged_at: SystemTime::now(),
            command_name: command_name.into(),
            command,
            items: BTreeMap::new(),
            nested: Vec::new(),
            sequence: None,
            committed_at: None,
            events: Vec::new(),
            local: None,
        }
    }

    /// Sets when the operation started.
    #[must_use]
    pub fn with_logged_at(mut self, logged_at: SystemTime) -> Self {
        self.logged_at = logged_at;
        self
    }

    /// Sets the operation items of its command.
    #[must_use]
    pub fn with_items(mut self, items: BTreeMap<String, serde_json::Value>) -> Self {
        self.items = items;
        self
    }

    /// Sets its nested commands.
    #[must_use]
    pub fn with_nested(mut self, nested: Vec<NestedOperation>) -> Self {
        self.nested = nested;
        self
    }

    /// Sets where and when it was committed.
    #[must_use]
    pub fn with_commit(mut self, sequence: Option<i64>, committed_at: SystemTime) -> Self {
        self.sequence = sequence;
        self.committed_at = Some(committed_at);
        self
    }

    /// Whether this is the operation as its executing host recorded it (with its typed
    /// commands), rather than one read back from a log.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The operation as JSON.
    ///
    /// # Errors
    /// Never in practice: every field is plain JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// An operation read back from JSON.
    ///
    /// # Errors
    /// When the text is not an operation.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
