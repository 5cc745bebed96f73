//! [`ReliableMap`]: one transactional map: its writes (in a command's operation), its reads
//! (compute methods) and its observers.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ofx_core::computed::{ComputeMethodDescriptor, ComputeMethodOptions};
use ofx_core::{CommandContext, ComputeService, Hub, ScopeFuture};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::MAPS_STREAM;
use super::change::{MapAction, MapChange, StoredAction, StoredChange};
use super::manager::ManagerInner;
use crate::backend::Backend;
use crate::row::micros;
use crate::scope::OperationConnection;
use crate::state::rows::NewStreamRow;
use crate::{Error, Result};

/// What a map's key and value types must be: serde both ways, shared between tasks. A key
/// must serialize deterministically (its JSON is its identity in the table): no `HashMap`
/// inside a key.
pub trait MapKey: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> MapKey for T {}

/// Receives a map's notifications on one host, in redo order.
///
/// `changed` is called synchronously by the manager's follower, for every change of every
/// transaction in commit order (within one, in write order): **keep it fast**, with no I/O and
/// no blocking, since every later notification of every map waits for it. `rebuild` gets the
/// map's whole content, as of a commit sequence number, before any change after it: replace
/// everything derived from the map. Match on [`MapAction`] with a wildcard arm: new actions may
/// be added.
pub trait MapObserver<K, V>: Send + Sync + 'static {
    /// One change.
    fn changed(&self, change: &MapChange<K, V>);

    /// The map's whole content (when the manager starts, when it lost coverage of the change
    /// log, after a restore, and once after subscribing). If reading it fails midway, the
    /// stream ends early and another rebuild follows, before any change.
    fn rebuild(&self, entries: Rebuild<K, V>) -> ScopeFuture<'_, ()>;
}

/// A map's whole content, as of [`sequence`](Self::sequence), read page by page from one
/// consistent snapshot of the database (an async stream: [`next`](Self::next)).
pub struct Rebuild<K, V> {
    map: String,
    sequence: u64,
    entries: mpsc::Receiver<(String, String)>,
    skipped: Arc<AtomicU64>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: MapKey, V: MapKey> Rebuild<K, V> {
    /// The map's name.
    pub fn map(&self) -> &str {
        &self.map
    }

    /// The commit sequence number the content is as of: the changes delivered after this
    /// rebuild are those after it.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The next entry, by key (in the order of the keys' JSON); `None` at the end. An entry
    /// that does not decode is logged, counted in the manager's status and skipped.
    pub async fn next(&mut self) -> Option<(K, V)> {
        loop {
            let (key, value) = self.entries.recv().await?;
            match decode_entry::<K, V>(&key, &value) {
                Ok(entry) => return Some(entry),
                Err(reason) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(map = %self.map, key, %reason, "map entry does not decode; skipped");
                }
            }
        }
    }

    /// Every (remaining) entry.
    pub async fn collect(mut self) -> Vec<(K, V)> {
        let mut all = Vec::new();
        while let Some(entry) = self.next().await {
            all.push(entry);
        }
        all
    }
}

impl<K, V> std::fmt::Debug for Rebuild<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuild")
            .field("map", &self.map)
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

fn decode_entry<K: MapKey, V: MapKey>(
    key: &str,
    value: &str,
) -> std::result::Result<(K, V), String> {
    let key = serde_json::from_str(key).map_err(|error| format!("key: {error}"))?;
    let value = serde_json::from_str(value).map_err(|error| format!("value: {error}"))?;
    Ok((key, value))
}

/// An observer of one map, with the sequence its last rebuild was as of.
struct Slot<K, V> {
    id: u64,
    observer: Arc<dyn MapObserver<K, V>>,
    /// `None`: it needs a rebuild, and gets no change until then.
    rebuilt_at: Option<u64>,
}

/// What the manager keeps of one map: its name and observers.
pub(crate) struct MapShared<K, V> {
    pub(crate) name: String,
    slots: Mutex<Vec<Slot<K, V>>>,
    next_id: AtomicU64,
}

/// A map as the manager's follower sees it, whatever its types.
pub(crate) trait ErasedMap: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The observers that need a rebuild.
    fn needs_rebuild(&self) -> Vec<u64>;
    /// Every observer needs a rebuild.
    fn reset(&self);
    /// Hands `entries` (as of `sequence`) to observer `id`, and records that it is rebuilt.
    fn rebuild_observer<'a>(
        &'a self,
        id: u64,
        sequence: u64,
        entries: mpsc::Receiver<(String, String)>,
        skipped: Arc<AtomicU64>,
    ) -> ScopeFuture<'a, ()>;
    /// Records that observer `id`'s rebuild failed: it needs another.
    fn rebuild_failed(&self, id: u64);
    /// Delivers a stored change to the observers rebuilt before it.
    fn deliver(
        &self,
        change: &StoredChange,
        position: u64,
        sequence: u64,
        operation: Uuid,
    ) -> std::result::Result<(), String>;
    /// Invalidates this host's cached reads the change affects.
    fn invalidate(&self, hub: &Hub, manager: u64, change: &StoredChange);
}

impl<K: MapKey, V: MapKey> MapShared<K, V> {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            slots: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot<K, V>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn decode_action(&self, change: &StoredChange) -> std::result::Result<MapAction<K, V>, String> {
        fn field<T: DeserializeOwned>(
            value: &Option<Value>,
            name: &str,
        ) -> std::result::Result<T, String> {
            let value = value.as_ref().ok_or_else(|| format!("no {name}"))?;
            T::deserialize(value).map_err(|error| format!("{name}: {error}"))
        }
        Ok(match change.action {
            StoredAction::Add => MapAction::Add {
                key: field(&change.key, "key")?,
                value: field(&change.new, "new value")?,
            },
            StoredAction::Update => MapAction::Update {
                key: field(&change.key, "key")?,
                old: field(&change.old, "old value")?,
                new: field(&change.new, "new value")?,
            },
            StoredAction::Remove => MapAction::Remove {
                key: field(&change.key, "key")?,
                old: field(&change.old, "old value")?,
            },
            StoredAction::Clear | StoredAction::Drop => MapAction::Clear,
            StoredAction::Restore => return Err("a restore is not a change".to_owned()),
        })
    }
}

impl<K: MapKey, V: MapKey> ErasedMap for MapShared<K, V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn needs_rebuild(&self) -> Vec<u64> {
        self.slots()
            .iter()
            .filter(|slot| slot.rebuilt_at.is_none())
            .map(|slot| slot.id)
            .collect()
    }

    fn reset(&self) {
        for slot in self.slots().iter_mut() {
            slot.rebuilt_at = None;
        }
    }

    fn rebuild_observer<'a>(
        &'a self,
        id: u64,
        sequence: u64,
        entries: mpsc::Receiver<(String, String)>,
        skipped: Arc<AtomicU64>,
    ) -> ScopeFuture<'a, ()> {
        Box::pin(async move {
            let observer = self
                .slots()
                .iter()
                .find(|slot| slot.id == id)
                .map(|slot| Arc::clone(&slot.observer));
            let Some(observer) = observer else { return };
            observer
                .rebuild(Rebuild {
                    map: self.name.clone(),
                    sequence,
                    entries,
                    skipped,
                    _types: PhantomData,
                })
                .await;
            if let Some(slot) = self.slots().iter_mut().find(|slot| slot.id == id) {
                slot.rebuilt_at = Some(sequence);
            }
        })
    }

    fn rebuild_failed(&self, id: u64) {
        if let Some(slot) = self.slots().iter_mut().find(|slot| slot.id == id) {
            slot.rebuilt_at = None;
        }
    }

    fn deliver(
        &self,
        change: &StoredChange,
        position: u64,
        sequence: u64,
        operation: Uuid,
    ) -> std::result::Result<(), String> {
        if change.action == StoredAction::Restore {
            // Every observer gets the restored content (read at or after this position).
            self.reset();
            return Ok(());
        }
        // Decoded whether or not anyone observes: what does not decode is skipped everywhere.
        let action = self.decode_action(change)?;
        let observers: Vec<Arc<dyn MapObserver<K, V>>> = self
            .slots()
            .iter()
            .filter(|slot| slot.rebuilt_at.is_some_and(|at| at < position))
            .map(|slot| Arc::clone(&slot.observer))
            .collect();
        if observers.is_empty() {
            return Ok(());
        }
        let change = MapChange {
            action,
            sequence,
            position,
            operation,
        };
        for observer in observers {
            observer.changed(&change);
        }
        Ok(())
    }

    fn invalidate(&self, hub: &Hub, manager: u64, change: &StoredChange) {
        let tracker = MapTracker { hub: hub.clone() };
        let map_key = (manager, self.name.clone());
        ofx_core::computed::invalidate::<MapTracker, (u64, String), Read<usize>>(
            &tracker, &MAP_LEN, &map_key,
        );
        ofx_core::computed::invalidate::<MapTracker, (u64, String), Read<Vec<(K, V)>>>(
            &tracker,
            &MAP_ENTRIES,
            &map_key,
        );
        match (&change.action, &change.key) {
            (StoredAction::Add | StoredAction::Update | StoredAction::Remove, Some(key)) => {
                // The key as `get` serializes it (a `Value` may order an object's fields
                // otherwise).
                let Some(key) = K::deserialize(key)
                    .ok()
                    .and_then(|key| serde_json::to_string(&key).ok())
                else {
                    return;
                };
                let entry_key = (manager, self.name.clone(), key);
                ofx_core::computed::invalidate::<MapTracker, (u64, String, String), Read<Option<V>>>(
                    &tracker, &MAP_GET, &entry_key,
                );
            }
            _ => {
                // Every key may have changed: what every `get` of the map depends on.
                ofx_core::computed::invalidate::<MapTracker, (u64, String), ()>(
                    &tracker, &MAP_EPOCH, &map_key,
                );
            }
        }
    }
}

/// A read's result as cached (errors are shared).
type Read<T> = std::result::Result<T, Arc<Error>>;

static MAP_GET: ComputeMethodDescriptor =
    ComputeMethodDescriptor::new("ReliableMap::get", ComputeMethodOptions::DEFAULT);
static MAP_EPOCH: ComputeMethodDescriptor =
    ComputeMethodDescriptor::new("ReliableMap::epoch", ComputeMethodOptions::DEFAULT);
static MAP_LEN: ComputeMethodDescriptor =
    ComputeMethodDescriptor::new("ReliableMap::len", ComputeMethodOptions::DEFAULT);
static MAP_ENTRIES: ComputeMethodDescriptor =
    ComputeMethodDescriptor::new("ReliableMap::entries", ComputeMethodOptions::DEFAULT);

/// The maps' reads in the hub's cache.
pub(crate) struct MapTracker {
    pub(crate) hub: Hub,
}

impl ComputeService for MapTracker {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// A transactional map of one database: entries in the `ofx_map_entries` table, written only
/// inside a command's operation (each write records its change in the same transaction), read
/// through compute methods that every host invalidates as the changes commit, and observed in
/// redo order on every host ([`subscribe`](Self::subscribe)). Get one from
/// [`MapManager::map`](super::MapManager::map); clones share it.
pub struct ReliableMap<K, V, B: Backend> {
    shared: Arc<MapShared<K, V>>,
    manager: Arc<ManagerInner<B>>,
}

impl<K, V, B: Backend> Clone for ReliableMap<K, V, B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            manager: Arc::clone(&self.manager),
        }
    }
}

impl<K, V, B: Backend> std::fmt::Debug for ReliableMap<K, V, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableMap")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    Ok(serde_json::to_string(value)?)
}

fn decode<T: DeserializeOwned>(map: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|error| Error::MapDecode {
        map: map.to_owned(),
        reason: error.to_string(),
    })
}

impl<K: MapKey, V: MapKey, B: Backend> ReliableMap<K, V, B> {
    pub(crate) fn new(shared: Arc<MapShared<K, V>>, manager: Arc<ManagerInner<B>>) -> Self {
        Self { shared, manager }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Registers `observer` on this host: it gets a rebuild (the whole content) first, then
    /// every change committed after it, in order. Returns its id, for
    /// [`unsubscribe`](Self::unsubscribe).
    pub fn subscribe(&self, observer: impl MapObserver<K, V>) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.slots().push(Slot {
            id,
            observer: Arc::new(observer),
            rebuilt_at: None,
        });
        self.manager.wake.notify_one();
        id
    }

    /// Removes an observer; `false` if it was not there.
    pub fn unsubscribe(&self, id: u64) -> bool {
        let mut slots = self.shared.slots();
        let before = slots.len();
        slots.retain(|slot| slot.id != id);
        slots.len() != before
    }

    // ===== reads (compute methods) =====

    /// The value of `key`, as committed. A compute method: what calls it depends on it, and
    /// every host invalidates it when a committed change of `key` (or a clear, restore or
    /// removal of the map) reaches it; the host that committed does before its `call` returns.
    ///
    /// # Errors
    /// A database error, or a stored value that does not decode ([`Error::MapDecode`]); shared,
    /// as cached errors are.
    pub async fn get(&self, key: &K) -> Read<Option<V>> {
        let key = json(key).map_err(Arc::new)?;
        let read = {
            let manager = Arc::clone(&self.manager);
            let name = self.shared.name.clone();
            let key = key.clone();
            async move {
                let mut connection = manager.db.connection().await.map_err(Arc::new)?;
                match B::map_get(&mut connection, &name, &key)
                    .await
                    .map_err(Arc::new)?
                {
                    Some(value) => Ok(Some(decode(&name, &value).map_err(Arc::new)?)),
                    None => Ok(None),
                }
            }
        };
        let Some(tracker) = self.manager.tracker() else {
            return read.await;
        };
        let id = self.manager.id;
        let epoch_tracker = MapTracker {
            hub: tracker.hub.clone(),
        };
        let name = self.shared.name.clone();
        ofx_core::computed::compute(
            &tracker,
            &MAP_GET,
            (id, self.shared.name.clone(), key),
            Some(|read: &Read<Option<V>>| read_outcome(read)),
            |_| async move {
                ofx_core::computed::compute(
                    &epoch_tracker,
                    &MAP_EPOCH,
                    (id, name),
                    None,
                    |_| async {},
                )
                .await;
                read.await
            },
        )
        .await
    }

    /// The number of entries (a compute method, invalidated by every change of the map).
    ///
    /// # Errors
    /// A database error.
    pub async fn len(&self) -> Read<usize> {
        let read = {
            let manager = Arc::clone(&self.manager);
            let name = self.shared.name.clone();
            async move {
                let mut connection = manager.db.connection().await.map_err(Arc::new)?;
                let len = B::map_len(&mut connection, &name).await.map_err(Arc::new)?;
                Ok(usize::try_from(len).unwrap_or(0))
            }
        };
        let Some(tracker) = self.manager.tracker() else {
            return read.await;
        };
        ofx_core::computed::compute(
            &tracker,
            &MAP_LEN,
            (self.manager.id, self.shared.name.clone()),
            Some(|read: &Read<usize>| read_outcome(read)),
            |_| read,
        )
        .await
    }

    /// Whether the map is empty (see [`len`](Self::len)).
    ///
    /// # Errors
    /// A database error.
    pub async fn is_empty(&self) -> Read<bool> {
        Ok(self.len().await? == 0)
    }

    /// Every entry, by key (in the order of the keys' JSON); a compute method, invalidated by
    /// every change of the map. For large maps, keep a view with an observer instead.
    ///
    /// # Errors
    /// A database error, or an entry that does not decode.
    pub async fn entries(&self) -> Read<Vec<(K, V)>> {
        let read = {
            let manager = Arc::clone(&self.manager);
            let name = self.shared.name.clone();
            async move {
                let mut connection = manager.db.connection().await.map_err(Arc::new)?;
                let rows = B::map_entries(&mut connection, &name, None, i64::MAX)
                    .await
                    .map_err(Arc::new)?;
                rows.iter()
                    .map(|(key, value)| {
                        decode_entry::<K, V>(key, value).map_err(|reason| {
                            Arc::new(Error::MapDecode {
                                map: name.clone(),
                                reason,
                            })
                        })
                    })
                    .collect()
            }
        };
        let Some(tracker) = self.manager.tracker() else {
            return read.await;
        };
        ofx_core::computed::compute(
            &tracker,
            &MAP_ENTRIES,
            (self.manager.id, self.shared.name.clone()),
            Some(|read: &Read<Vec<(K, V)>>| read_outcome(read)),
            |_| read,
        )
        .await
    }

    // ===== writes (in a command's operation) =====

    /// The operation's connection with the maps' lock taken: map writers queue, so that the
    /// change log's positions follow the commit order. The lock is taken, and the log's head
    /// read, once per transaction (again after a savepoint rolled back).
    async fn locked(&self, ctx: &CommandContext) -> Result<OperationConnection<B>> {
        let mut connection = self.manager.db.operation_connection(ctx).await?;
        let scope = self.manager.db.operation_scope(ctx)?;
        if scope.maps_next().is_none() {
            B::lock_for_append(&mut connection, MAPS_STREAM, true).await?;
            let head = B::stream_head(&mut connection, MAPS_STREAM).await?;
            scope.set_maps_next(Some(u64::try_from(head).unwrap_or(0) + 1));
        }
        Ok(connection)
    }

    /// Appends `change` to the change log at the next position, in the operation's
    /// transaction.
    async fn record(
        &self,
        ctx: &CommandContext,
        connection: &mut OperationConnection<B>,
        change: StoredChange,
    ) -> Result<()> {
        let body = serde_json::to_string(&change)?;
        if body.len() > crate::MAX_PAYLOAD_BYTES {
            return Err(Error::PayloadTooLarge {
                operation: ctx.operation_id(),
                size: body.len(),
                limit: crate::MAX_PAYLOAD_BYTES,
            });
        }
        let scope = self.manager.db.operation_scope(ctx)?;
        let next = match scope.maps_next() {
            Some(next) => next,
            // Not locked yet (cannot happen: every write locks first).
            None => {
                B::lock_for_append(connection, MAPS_STREAM, true).await?;
                u64::try_from(B::stream_head(connection, MAPS_STREAM).await?).unwrap_or(0) + 1
            }
        };
        let position = i64::try_from(next).unwrap_or(i64::MAX);
        let operation = ctx.operation_id().to_string();
        let row = NewStreamRow {
            stream: MAPS_STREAM,
            position,
            body: &body,
            operation_uuid: &operation,
            appended_at: micros(SystemTime::now()),
        };
        let inserted = B::append_stream(connection, std::slice::from_ref(&row)).await?;
        if inserted.len() != 1 {
            // Writers hold the maps' lock: only a writer that bypassed it gets here.
            scope.set_maps_next(None);
            return Err(Error::AppendConflict {
                stream: MAPS_STREAM.to_owned(),
                attempts: 1,
            });
        }
        scope.set_maps_next(Some(next + 1));
        self.manager.db.mark_stream_appended(ctx, MAPS_STREAM, next);
        Ok(())
    }

    fn change(&self, action: StoredAction) -> StoredChange {
        StoredChange {
            map: self.shared.name.clone(),
            action,
            key: None,
            old: None,
            new: None,
        }
    }

    /// The value of `key` as the command's transaction sees it (its own writes included). It
    /// takes the maps' lock, as a write does: what the transaction then writes is decided on
    /// the latest committed value, and other map writers wait until it commits.
    ///
    /// # Errors
    /// A database error; [`Error::MapDecode`]; outside a command's main branch, the errors of
    /// [`DbHub::operation_connection`](crate::DbHub::operation_connection).
    pub async fn get_in(&self, ctx: &CommandContext, key: &K) -> Result<Option<V>> {
        let key = json(key)?;
        let mut connection = self.locked(ctx).await?;
        B::map_get(&mut connection, &self.shared.name, &key)
            .await?
            .map(|value| decode(&self.shared.name, &value))
            .transpose()
    }

    /// Adds `key` with `value`.
    ///
    /// # Errors
    /// [`Error::MapKeyExists`] when the map has `key`; a database error.
    pub async fn add(&self, ctx: &CommandContext, key: &K, value: &V) -> Result<()> {
        let key_json = json(key)?;
        let value_json = json(value)?;
        let mut connection = self.locked(ctx).await?;
        if B::map_get(&mut connection, &self.shared.name, &key_json)
            .await?
            .is_some()
        {
            return Err(Error::MapKeyExists {
                map: self.shared.name.clone(),
                key: key_json,
            });
        }
        B::map_put(&mut connection, &self.shared.name, &key_json, &value_json).await?;
        let mut change = self.change(StoredAction::Add);
        change.key = Some(serde_json::from_str(&key_json)?);
        change.new = Some(serde_json::from_str(&value_json)?);
        self.record(ctx, &mut connection, change).await
    }

    /// Sets the value of `key`, adding it or updating it; returns the value it had.
    ///
    /// # Errors
    /// A database error; [`Error::MapDecode`] when the old value does not decode.
    pub async fn set(&self, ctx: &CommandContext, key: &K, value: &V) -> Result<Option<V>> {
        let key_json = json(key)?;
        let value_json = json(value)?;
        let mut connection = self.locked(ctx).await?;
        let old = B::map_get(&mut connection, &self.shared.name, &key_json).await?;
        B::map_put(&mut connection, &self.shared.name, &key_json, &value_json).await?;
        let mut change = self.change(if old.is_some() {
            StoredAction::Update
        } else {
            StoredAction::Add
        });
        change.key = Some(serde_json::from_str(&key_json)?);
        change.new = Some(serde_json::from_str(&value_json)?);
        change.old = old.as_deref().map(serde_json::from_str).transpose()?;
        self.record(ctx, &mut connection, change).await?;
        old.map(|old| decode(&self.shared.name, &old)).transpose()
    }

    /// Updates the value of `key`; returns the value it had.
    ///
    /// # Errors
    /// [`Error::MapKeyMissing`] when the map has no `key`; a database error.
    pub async fn update(&self, ctx: &CommandContext, key: &K, value: &V) -> Result<V> {
        let key_json = json(key)?;
        let value_json = json(value)?;
        let mut connection = self.locked(ctx).await?;
        let Some(old) = B::map_get(&mut connection, &self.shared.name, &key_json).await? else {
            return Err(Error::MapKeyMissing {
                map: self.shared.name.clone(),
                key: key_json,
            });
        };
        B::map_put(&mut connection, &self.shared.name, &key_json, &value_json).await?;
        let mut change = self.change(StoredAction::Update);
        change.key = Some(serde_json::from_str(&key_json)?);
        change.old = Some(serde_json::from_str(&old)?);
        change.new = Some(serde_json::from_str(&value_json)?);
        self.record(ctx, &mut connection, change).await?;
        decode(&self.shared.name, &old)
    }

    /// The value of `key`, added as `make()` when the map has none.
    ///
    /// # Errors
    /// A database error; [`Error::MapDecode`].
    pub async fn get_or_add(
        &self,
        ctx: &CommandContext,
        key: &K,
        make: impl FnOnce() -> V,
    ) -> Result<V> {
        let key_json = json(key)?;
        let mut connection = self.locked(ctx).await?;
        if let Some(value) = B::map_get(&mut connection, &self.shared.name, &key_json).await? {
            return decode(&self.shared.name, &value);
        }
        let value = make();
        let value_json = json(&value)?;
        B::map_put(&mut connection, &self.shared.name, &key_json, &value_json).await?;
        let mut change = self.change(StoredAction::Add);
        change.key = Some(serde_json::from_str(&key_json)?);
        change.new = Some(serde_json::from_str(&value_json)?);
        self.record(ctx, &mut connection, change).await?;
        Ok(value)
    }

    /// Removes `key`; returns the value it had (`None`, and no change, when it had none).
    ///
    /// # Errors
    /// A database error; [`Error::MapDecode`].
    pub async fn remove(&self, ctx: &CommandContext, key: &K) -> Result<Option<V>> {
        let key_json = json(key)?;
        let mut connection = self.locked(ctx).await?;
        let Some(old) = B::map_get(&mut connection, &self.shared.name, &key_json).await? else {
            return Ok(None);
        };
        B::map_delete(&mut connection, &self.shared.name, &key_json).await?;
        let mut change = self.change(StoredAction::Remove);
        change.key = Some(serde_json::from_str(&key_json)?);
        change.old = Some(serde_json::from_str(&old)?);
        self.record(ctx, &mut connection, change).await?;
        decode(&self.shared.name, &old).map(Some)
    }

    /// Removes every entry (one [`MapAction::Clear`] change, even when it was empty).
    ///
    /// # Errors
    /// A database error.
    pub async fn clear(&self, ctx: &CommandContext) -> Result<()> {
        let mut connection = self.locked(ctx).await?;
        B::map_clear(&mut connection, &self.shared.name).await?;
        self.record(ctx, &mut connection, self.change(StoredAction::Clear))
            .await
    }

    /// Replaces the whole content with `entries` (a restore from a backup): on every host,
    /// the map's observers get a rebuild with the new content, before any later change (no
    /// change per entry).
    ///
    /// # Errors
    /// A database error.
    pub async fn restore(
        &self,
        ctx: &CommandContext,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        let mut connection = self.locked(ctx).await?;
        B::map_clear(&mut connection, &self.shared.name).await?;
        for (key, value) in entries {
            B::map_put(
                &mut connection,
                &self.shared.name,
                &json(&key)?,
                &json(&value)?,
            )
            .await?;
        }
        self.record(ctx, &mut connection, self.change(StoredAction::Restore))
            .await
    }

    /// Removes the map: its entries are deleted; on every host its observers get a
    /// [`MapAction::Clear`] and the manager's observers a
    /// [`ManagerChange::Removed`](super::ManagerChange::Removed). The map may be written again
    /// later (it starts empty).
    ///
    /// # Errors
    /// A database error.
    pub async fn remove_map(&self, ctx: &CommandContext) -> Result<()> {
        let mut connection = self.locked(ctx).await?;
        B::map_clear(&mut connection, &self.shared.name).await?;
        self.record(ctx, &mut connection, self.change(StoredAction::Drop))
            .await
    }
}

/// A read's outcome for its cache lifetime: a failed read (the database) is a transient error.
fn read_outcome<T>(read: &Read<T>) -> ofx_core::__private::Outcome {
    if read.is_err() {
        ofx_core::__private::Outcome::TransientError
    } else {
        ofx_core::__private::Outcome::Value
    }
}
