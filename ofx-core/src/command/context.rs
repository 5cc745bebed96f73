//! [`CommandContext`]: what a command handler knows about the call it serves.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Command, OperationItems};
use crate::Hub;
use crate::operation::{
    EventDelivery, EventOptions, OperationEvent, OperationRecorder, OperationScope,
};

/// How a handler is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallKind {
    /// The outermost command of an operation: its main branch runs.
    Outermost,
    /// A command called from inside another handler: its main branch runs, inside the outer
    /// command's operation, and it is recorded as a nested operation.
    Nested,
    /// The invalidation pass of a completed operation (here after its commit, or replayed from
    /// another host's log): only the command's invalidation branch runs, with this context.
    /// Filters never see it.
    Invalidation,
}

/// Values of any type for one call, kept on this host only (never serialized): a place for
/// filters to hand things to handlers, such as the authenticated user.
#[derive(Clone, Default)]
pub struct ContextItems {
    values: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl ContextItems {
    /// Stores `value`, replacing the value of the same type.
    pub fn set<T: Any + Send + Sync>(&self, value: T) {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(TypeId::of::<T>(), Box::new(value));
    }

    /// `self`, with the values of `other` added (a nested call's items on its parent's).
    pub(crate) fn merged(self, other: Self) -> Self {
        if Arc::ptr_eq(&self.values, &other.values) {
            return self;
        }
        let added =
            std::mem::take(&mut *other.values.lock().unwrap_or_else(PoisonError::into_inner));
        if !added.is_empty() {
            self.values
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(added);
        }
        self
    }

    /// A clone of the value of type `T`, if set.
    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref::<T>())
            .cloned()
    }
}

impl std::fmt::Debug for ContextItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("ContextItems")
            .field("count", &count)
            .finish()
    }
}

/// The context of one command call: its hub, its operation and operation items, its context
/// items, and whether it is an outermost, nested or invalidation call.
#[derive(Clone)]
pub struct CommandContext {
    pub(crate) hub: Hub,
    pub(crate) operation: Arc<OperationRecorder>,
    pub(crate) items: OperationItems,
    pub(crate) context_items: ContextItems,
    pub(crate) kind: CallKind,
    pub(crate) from_client: bool,
    pub(crate) command_name: &'static str,
    /// The nested calls this call is inside, outermost first, itself last (empty for the
    /// outermost command).
    pub(crate) nested_frames: Arc<[u64]>,
}

impl CommandContext {
    /// The hub running the command.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// This command's operation items: set them in the main branch, read them in the
    /// invalidation branch (on every host). A nested command has its own.
    pub fn items(&self) -> &OperationItems {
        &self.items
    }

    /// Values for this call on this host only.
    pub fn context_items(&self) -> &ContextItems {
        &self.context_items
    }

    /// How the handler is being called.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// Whether this is the invalidation pass (only invalidation branches see it).
    pub fn is_invalidating(&self) -> bool {
        self.kind == CallKind::Invalidation
    }

    /// The state of the storing [`OperationScope`] of this call's operation, begun with
    /// `begin` by the first command of the operation that asks (nested commands share it).
    /// `key` tells storages of one type apart (two databases); `name` is for errors. This is
    /// how a storage such as ofx-diesel's `DbHub::operation_connection` joins an operation.
    ///
    /// # Errors
    /// [`Error::ScopeConflict`](crate::Error::ScopeConflict) when the operation already has
    /// another storing scope (one operation commits to one storage), and
    /// [`Error::NotInOperation`](crate::Error::NotInOperation) in an invalidation pass.
    pub fn operation_scope<T, S>(
        &self,
        key: usize,
        name: &'static str,
        begin: impl FnOnce() -> (Arc<T>, Arc<S>),
    ) -> Result<Arc<T>, crate::Error>
    where
        T: Any + Send + Sync,
        S: OperationScope,
    {
        if self.kind == CallKind::Invalidation {
            return Err(crate::Error::NotInOperation {
                command: self.command_name,
            });
        }
        self.operation.scope(key, name, begin)
    }

    /// Adds an event to this call's operation: `event`, a command, runs later, once, on one
    /// host, as an operation of its own. It is stored with the operation, in its transaction:
    /// if the operation does not commit (or this nested command fails), the event does not
    /// exist. Returns the event's uuid. See [`add_event_with`](Self::add_event_with) for a
    /// delay or a key, and ofx-diesel's `EventProcessor` for how events run.
    ///
    /// # Errors
    /// As [`add_event_with`](Self::add_event_with).
    pub fn add_event<E: Command>(&self, event: E) -> Result<uuid::Uuid, crate::Error> {
        self.add_event_with(event, EventOptions::new())
    }

    /// Adds an event (see [`add_event`](Self::add_event)) with a due time or a key.
    ///
    /// # Errors
    /// [`Error::NotInOperation`](crate::Error::NotInOperation) in an invalidation pass (which
    /// must not produce anything); [`Error::NoHandler`](crate::Error::NoHandler) when no service
    /// of this hub handles `E` (events run on the hubs that produce them);
    /// [`Error::CommandJson`](crate::Error::CommandJson) when `E` does not serialize;
    /// [`Error::EventKeyConflict`](crate::Error::EventKeyConflict) when this operation added an
    /// event with the same key already and the strategy is
    /// [`KeyConflict::Fail`](crate::operation::KeyConflict::Fail).
    pub fn add_event_with<E: Command>(
        &self,
        event: E,
        options: EventOptions,
    ) -> Result<uuid::Uuid, crate::Error> {
        if self.kind == CallKind::Invalidation {
            return Err(crate::Error::NotInOperation {
                command: self.command_name,
            });
        }
        self.hub.handler(TypeId::of::<E>(), || E::NAME)?;
        let command = serde_json::to_value(&event).map_err(|source| crate::Error::CommandJson {
            command: E::NAME.to_owned(),
            source: Arc::new(source),
        })?;
        let event = OperationEvent::new(E::NAME, command, self.operation.logged_at, &options);
        let uuid = event.uuid;
        self.operation
            .add_event(Arc::clone(&self.nested_frames), event)?;
        Ok(uuid)
    }

    /// The event this command runs as, when an event processor runs it (`None` otherwise).
    pub fn event_delivery(&self) -> Option<EventDelivery> {
        self.context_items.get::<EventDelivery>()
    }

    /// Whether the command came from a client (see
    /// [`Commander::call_from_client`](crate::Commander::call_from_client)).
    pub fn is_from_client(&self) -> bool {
        self.from_client
    }

    /// The uuid of the operation this call belongs to.
    pub fn operation_id(&self) -> uuid::Uuid {
        self.operation.uuid
    }

    /// The name of the command being run.
    pub fn command_name(&self) -> &'static str {
        self.command_name
    }

    /// The nested commands this call runs inside, outermost first and this call last, each
    /// identified within its operation (empty for the outermost command). A storing scope
    /// keeps a savepoint per frame it saw write, so that a failed nested command's writes are
    /// undone (see [`OperationScope::end_nested`]).
    pub fn nested_frames(&self) -> &[u64] {
        &self.nested_frames
    }

    pub(crate) fn nested_frames_with(&self, frame: u64) -> Arc<[u64]> {
        self.nested_frames
            .iter()
            .copied()
            .chain(std::iter::once(frame))
            .collect()
    }
}

impl std::fmt::Debug for CommandContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandContext")
            .field("command", &self.command_name)
            .field("kind", &self.kind)
            .field("operation", &self.operation.uuid)
            .field("items", &self.items)
            .finish_non_exhaustive()
    }
}
