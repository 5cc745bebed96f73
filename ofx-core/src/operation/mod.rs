//! Operations: the record of one executed command, with its items and nested commands.

mod completion;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use completion::{
    CompletionListener, MAX_KNOWN_OPERATION_AGE, MAX_KNOWN_OPERATIONS, OperationCompletionNotifier,
};

use crate::HostId;
use crate::command::OperationItems;
use crate::command::registry::ErasedCommand;

/// The record of one executed command: what every host needs to replay its invalidation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Operation {
    /// Unique and time-ordered (UUID v7).
    pub uuid: Uuid,
    /// The host that executed it.
    pub host_id: String,
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

impl Operation {
    /// The operation as JSON, as stored in an operation log.
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

/// The typed commands of an operation, kept on the executing host so that its own invalidation
/// does not decode what it just encoded.
pub(crate) struct LocalCommands {
    pub(crate) outer: (Arc<ErasedCommand>, OperationItems),
    pub(crate) nested: Vec<(Arc<ErasedCommand>, OperationItems)>,
}

impl std::fmt::Debug for LocalCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCommands")
            .field("nested", &self.nested.len())
            .finish_non_exhaustive()
    }
}

/// An operation being executed: shared by the outermost command and the commands it calls.
pub(crate) struct OperationRecorder {
    pub(crate) uuid: Uuid,
    pub(crate) host_id: HostId,
    pub(crate) logged_at: SystemTime,
    nested: Mutex<Vec<RecordedNested>>,
    /// The finished operation, once built (a database scope builds it before its commit, the
    /// in-memory scope reuses it).
    finished: Mutex<Option<Operation>>,
}

pub(crate) struct RecordedNested {
    pub(crate) record: NestedOperation,
    pub(crate) command: Arc<ErasedCommand>,
    pub(crate) items: OperationItems,
}

impl OperationRecorder {
    pub(crate) fn new(host_id: HostId) -> Self {
        Self {
            uuid: Uuid::now_v7(),
            host_id,
            logged_at: SystemTime::now(),
            nested: Mutex::new(Vec::new()),
            finished: Mutex::new(None),
        }
    }

    /// A recorder for replaying `operation`'s invalidation (records nothing).
    pub(crate) fn replaying(operation: &Operation) -> Self {
        Self {
            uuid: operation.uuid,
            host_id: HostId::from_string(operation.host_id.as_str()),
            logged_at: operation.logged_at,
            nested: Mutex::new(Vec::new()),
            finished: Mutex::new(None),
        }
    }

    pub(crate) fn push_nested(&self, nested: RecordedNested) {
        self.nested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(nested);
    }

    /// The finished operation of the outermost command (built once; later calls return it).
    pub(crate) fn finish(
        &self,
        command_name: &str,
        command_json: serde_json::Value,
        command: Arc<ErasedCommand>,
        items: OperationItems,
    ) -> Operation {
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(operation) = &*finished {
            return operation.clone();
        }
        let nested =
            std::mem::take(&mut *self.nested.lock().unwrap_or_else(PoisonError::into_inner));
        let (records, typed): (Vec<_>, Vec<_>) = nested
            .into_iter()
            .map(|nested| (nested.record, (nested.command, nested.items)))
            .unzip();
        let operation = Operation {
            uuid: self.uuid,
            host_id: self.host_id.to_string(),
            logged_at: self.logged_at,
            command_name: command_name.to_owned(),
            command: command_json,
            items: items.to_json(),
            nested: records,
            local: Some(Arc::new(LocalCommands {
                outer: (command, items),
                nested: typed,
            })),
        };
        *finished = Some(operation.clone());
        operation
    }
}
