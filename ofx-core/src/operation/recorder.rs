//! [`OperationRecorder`]: an operation being executed, shared by its outermost command and the
//! commands it calls.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use uuid::Uuid;

use super::{KeyConflict, NestedOperation, Operation, OperationEvent, OperationScope};
use crate::command::OperationItems;
use crate::command::registry::ErasedCommand;
use crate::{Error, HostId};

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

/// A nested command that succeeded, recorded for the outer operation.
pub(crate) struct RecordedNested {
    pub(crate) record: NestedOperation,
    pub(crate) command: Arc<ErasedCommand>,
    pub(crate) items: OperationItems,
}

/// The storing scope an operation began, in the typed slot of its outermost context.
struct ActiveScope {
    /// Which storage: the state's type and the storage's own key (one database among several).
    key: (TypeId, usize),
    name: &'static str,
    state: Arc<dyn Any + Send + Sync>,
    scope: Arc<dyn OperationScope>,
}

/// An operation being executed: shared by the outermost command and the commands it calls.
pub(crate) struct OperationRecorder {
    pub(crate) uuid: Uuid,
    pub(crate) host_id: HostId,
    pub(crate) logged_at: SystemTime,
    nested: Mutex<Vec<RecordedNested>>,
    scope: Mutex<Option<ActiveScope>>,
    frames: std::sync::atomic::AtomicU64,
    /// The events added so far, each with the nested calls it was added in (outermost first):
    /// a failed nested call's events are dropped with it. Every version of a keyed event is
    /// kept (see [`resolve_events`]), so that a failed nested call that replaced an event
    /// leaves the version before.
    events: Mutex<Vec<(Arc<[u64]>, OperationEvent)>>,
}

impl OperationRecorder {
    pub(crate) fn new(host_id: HostId) -> Self {
        Self {
            uuid: Uuid::now_v7(),
            host_id,
            logged_at: SystemTime::now(),
            nested: Mutex::new(Vec::new()),
            scope: Mutex::new(None),
            frames: std::sync::atomic::AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    /// A recorder for replaying `operation`'s invalidation (records nothing).
    pub(crate) fn replaying(operation: &Operation) -> Self {
        Self {
            uuid: operation.uuid,
            host_id: operation.host_id.clone(),
            logged_at: operation.logged_at,
            nested: Mutex::new(Vec::new()),
            scope: Mutex::new(None),
            frames: std::sync::atomic::AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn push_nested(&self, nested: RecordedNested) {
        self.nested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(nested);
    }

    /// The state of the storing scope keyed `key`, begun with `begin` on first use. One storing
    /// scope per operation: a second, different one is refused (its writes could not commit
    /// atomically with the first's).
    pub(crate) fn scope<T, S>(
        &self,
        key: usize,
        name: &'static str,
        begin: impl FnOnce() -> (Arc<T>, Arc<S>),
    ) -> Result<Arc<T>, Error>
    where
        T: Any + Send + Sync,
        S: OperationScope,
    {
        let mut slot = self.scope.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (TypeId::of::<T>(), key);
        if let Some(active) = &*slot {
            if active.key != key {
                return Err(Error::ScopeConflict {
                    active: active.name,
                    requested: name,
                });
            }
            return Arc::clone(&active.state)
                .downcast::<T>()
                .map_err(|_| unreachable_state());
        }
        let (state, scope) = begin();
        *slot = Some(ActiveScope {
            key,
            name,
            state: Arc::clone(&state) as Arc<dyn Any + Send + Sync>,
            scope,
        });
        Ok(state)
    }

    /// Adds an event, added by the call inside the nested calls `frames`. An event with the
    /// uuid of one added before (one key) follows its conflict strategy.
    pub(crate) fn add_event(&self, frames: Arc<[u64]>, event: OperationEvent) -> Result<(), Error> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if event.on_conflict == KeyConflict::Fail
            && events.iter().any(|(_, added)| added.uuid == event.uuid)
        {
            return Err(Error::EventKeyConflict {
                command: event.command_name,
                key: event.key.unwrap_or_default(),
            });
        }
        // `Keep` and `Replace` are decided when the operation finishes, among the versions
        // whose nested calls did not fail.
        events.push((frames, event));
        Ok(())
    }

    /// Drops the events added inside the nested call `frame` (which failed).
    pub(crate) fn drop_events_of(&self, frame: u64) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(frames, _)| !frames.contains(&frame));
    }

    /// Whether an event was added.
    pub(crate) fn has_events(&self) -> bool {
        !self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// A new nested-call id within this operation.
    pub(crate) fn next_frame(&self) -> u64 {
        self.frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// The storing scope, if one began.
    pub(crate) fn active_scope(&self) -> Option<Arc<dyn OperationScope>> {
        self.scope
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|active| Arc::clone(&active.scope))
    }

    /// Takes the storing scope out, for its commit or rollback.
    pub(crate) fn take_scope(&self) -> Option<Arc<dyn OperationScope>> {
        self.scope
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|active| active.scope)
    }

    /// The finished operation of the outermost command, with the nested commands recorded so far.
    pub(crate) fn finish(
        &self,
        command_name: &str,
        command_json: serde_json::Value,
        command: Arc<ErasedCommand>,
        items: OperationItems,
    ) -> Operation {
        let nested =
            std::mem::take(&mut *self.nested.lock().unwrap_or_else(PoisonError::into_inner));
        let events = resolve_events(std::mem::take(
            &mut *self.events.lock().unwrap_or_else(PoisonError::into_inner),
        ));
        let (records, typed): (Vec<_>, Vec<_>) = nested
            .into_iter()
            .map(|nested| (nested.record, (nested.command, nested.items)))
            .unzip();
        Operation {
            uuid: self.uuid,
            host_id: self.host_id.clone(),
            logged_at: self.logged_at,
            command_name: command_name.to_owned(),
            command: command_json,
            items: items.to_json(),
            nested: records,
            sequence: None,
            committed_at: None,
            events,
            local: Some(Arc::new(LocalCommands {
                outer: (command, items),
                nested: typed,
            })),
        }
    }
}

#[cold]
fn unreachable_state() -> Error {
    // The key includes the state's type, so the downcast cannot fail.
    Error::Rejected("an operation scope's state has another type than its key".to_owned())
}

/// The events of an operation from the versions added (those of failed nested calls dropped
/// already): for each uuid, its first version, replaced by each later one whose strategy is
/// [`KeyConflict::Replace`] (a later `Keep` is dropped).
fn resolve_events(versions: Vec<(Arc<[u64]>, OperationEvent)>) -> Vec<OperationEvent> {
    let mut events: Vec<OperationEvent> = Vec::with_capacity(versions.len());
    let mut positions = std::collections::HashMap::with_capacity(versions.len());
    for (_, event) in versions {
        match positions.get(&event.uuid) {
            None => {
                positions.insert(event.uuid, events.len());
                events.push(event);
            }
            Some(&position) => {
                if event.on_conflict == KeyConflict::Replace {
                    events[position] = event;
                }
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::EventOptions;

    fn event(payload: &str, on_conflict: KeyConflict) -> OperationEvent {
        let options = EventOptions::new().key("k").on_conflict(on_conflict);
        OperationEvent::new("e", payload.into(), SystemTime::UNIX_EPOCH, &options)
    }

    fn resolved(recorder: &OperationRecorder) -> Vec<serde_json::Value> {
        let versions = recorder
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        resolve_events(versions)
            .into_iter()
            .map(|event| event.command)
            .collect()
    }

    #[test]
    fn a_failed_nested_call_takes_its_versions_of_an_event_with_it() {
        let recorder = OperationRecorder::new(HostId::new());
        let outer: Arc<[u64]> = Arc::from([]);
        let nested: Arc<[u64]> = Arc::from([1]);
        let added = [
            recorder.add_event(Arc::clone(&outer), event("outer", KeyConflict::Replace)),
            recorder.add_event(Arc::clone(&nested), event("nested", KeyConflict::Replace)),
            recorder.add_event(Arc::clone(&nested), event("kept", KeyConflict::Keep)),
        ];
        assert!(added.iter().all(Result::is_ok));
        assert_eq!(resolved(&recorder), ["nested"]);
        recorder.drop_events_of(1);
        assert_eq!(resolved(&recorder), ["outer"]);
        assert!(matches!(
            recorder.add_event(outer, event("again", KeyConflict::Fail)),
            Err(Error::EventKeyConflict { .. })
        ));
        assert_eq!(resolved(&recorder), ["outer"]);
    }
}
