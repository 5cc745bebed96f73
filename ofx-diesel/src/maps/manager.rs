//! [`MapManager`]: the maps of one database on one hub (Service Fabric's state manager): it
//! hands out maps, follows their change log and delivers notifications.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use ofx_core::background::TaskHealth;
use ofx_core::{Hub, HubExtension, ScopeFuture, WeakHub};
use tokio::sync::{Notify, watch};

use super::MAPS_STREAM;
use super::change::{ManagerChange, TransactionCommitted};
use super::map::{ErasedMap, MapKey, MapShared, MapTracker, ReliableMap};
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::{Error, Result};

/// Receives the manager's notifications on one host. Both methods are called synchronously by
/// the manager's follower, in order with the maps' notifications: **keep them fast** (no I/O,
/// no blocking). Match on [`ManagerChange`] with a wildcard arm: new kinds may be added.
pub trait ManagerObserver: Send + Sync + 'static {
    /// After the changes of a transaction were delivered to the maps' observers.
    fn transaction_committed(&self, committed: &TransactionCommitted) {
        let _ = committed;
    }

    /// A map was added or removed, or every map is about to be rebuilt. Subscribing to a map
    /// from [`ManagerChange::Added`] misses none of its changes.
    fn state_changed(&self, change: &ManagerChange) {
        let _ = change;
    }
}

/// Settings of a [`MapManager`]; every field has a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MapSettings {
    /// How often the follower polls, ±10 % jitter (default: the database's log-reader poll
    /// periods, with or without a watcher).
    pub poll_period: Option<Duration>,
    /// Changes read per query (default 1024).
    pub read_batch: i64,
    /// Entries per page of a rebuild's read (default 512).
    pub rebuild_page: i64,
    /// A read of the change log that takes longer is abandoned and retried (default 30 s).
    pub refresh_timeout: Duration,
    /// Backoff after a failure: from this (default 50 ms)...
    pub retry_min: Duration,
    /// ...doubling up to this (default 5 s).
    pub retry_max: Duration,
    /// How long [`MapManager::sync`] waits (default 5 s).
    pub sync_timeout: Duration,
    /// Changes older than this are trimmed from the log (default 1 h; `None`: never). A host
    /// whose follower falls further behind loses coverage: its observers are rebuilt.
    pub change_retention: Option<Duration>,
    /// How often the follower trims (default 1 min).
    pub trim_period: Duration,
}

impl Default for MapSettings {
    fn default() -> Self {
        Self {
            poll_period: None,
            read_batch: 1024,
            rebuild_page: 512,
            refresh_timeout: Duration::from_secs(30),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(5),
            change_retention: Some(Duration::from_secs(3600)),
            trim_period: Duration::from_secs(60),
        }
    }
}

/// What a [`MapManager`] has done on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapStatus {
    /// Whether it started: the change log's head read, and the first rebuilds delivered.
    pub ready: bool,
    /// The commit sequence number delivered last.
    pub position: u64,
    /// Changes delivered.
    pub changes: u64,
    /// Transactions delivered.
    pub transactions: u64,
    /// Rebuilds delivered (one per observer rebuilt).
    pub rebuilds: u64,
    /// Times it lost coverage of the change log (and rebuilt everything).
    pub coverage_losses: u64,
    /// Changes or entries that did not decode, skipped.
    pub skipped: u64,
    /// The last error of the follower, cleared by a successful read.
    pub last_error: Option<String>,
}

/// What the follower publishes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Progress {
    pub(crate) ready: bool,
    /// The last change delivered and invalidated.
    pub(crate) position: u64,
    /// The number of the last refresh that finished.
    pub(crate) refreshed: u64,
    pub(crate) stopped: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) changes: AtomicU64,
    pub(crate) transactions: AtomicU64,
    pub(crate) rebuilds: AtomicU64,
    pub(crate) coverage_losses: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A map's key and value types, and the map.
type TypedMap = (TypeId, Arc<dyn std::any::Any + Send + Sync>);

pub(crate) struct ManagerInner<B: Backend> {
    pub(crate) db: DbHub<B>,
    pub(crate) settings: MapSettings,
    /// Tells managers apart in the hub's cache.
    pub(crate) id: u64,
    hub: OnceLock<WeakHub>,
    attached: AtomicBool,
    /// The maps, in the order they were added.
    maps: Mutex<Vec<Arc<dyn ErasedMap>>>,
    /// The maps by name, with their types.
    typed: Mutex<HashMap<String, TypedMap>>,
    /// Maps added whose `Added` notification is due.
    added: Mutex<Vec<String>>,
    observers: Mutex<Vec<Arc<dyn ManagerObserver>>>,
    /// Wakes the follower.
    pub(crate) wake: Notify,
    pub(crate) progress: watch::Sender<Progress>,
    /// The number of the last refresh that started (see `sync`).
    pub(crate) refresh_started: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) counters: Counters,
    pub(crate) skipped: Arc<AtomicU64>,
    pub(crate) health: Arc<TaskHealth>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Backend> ManagerInner<B> {
    /// The hub's cache, once attached.
    pub(crate) fn tracker(&self) -> Option<MapTracker> {
        self.hub
            .get()
            .and_then(WeakHub::upgrade)
            .map(|hub| MapTracker { hub })
    }

    pub(crate) fn hub(&self) -> Option<Hub> {
        self.hub.get().and_then(WeakHub::upgrade)
    }

    pub(crate) fn maps(&self) -> Vec<Arc<dyn ErasedMap>> {
        lock(&self.maps).clone()
    }

    pub(crate) fn map_named(&self, name: &str) -> Option<Arc<dyn ErasedMap>> {
        lock(&self.maps)
            .iter()
            .find(|map| map.name() == name)
            .cloned()
    }

    pub(crate) fn take_added(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.added))
    }

    pub(crate) fn observers(&self) -> Vec<Arc<dyn ManagerObserver>> {
        lock(&self.observers).clone()
    }

    pub(crate) fn notify(&self, change: &ManagerChange) {
        for observer in self.observers() {
            observer.state_changed(change);
        }
    }
}

/// The transactional maps of one database on one hub, and their notifications (Service
/// Fabric's state manager). Add it to the hub after the `DbHub`; get maps with
/// [`map`](Self::map). Clones share it.
///
/// See the [module docs](super) for the order of notifications, rebuilds and the
/// materialized-view pattern.
pub struct MapManager<B: Backend> {
    pub(crate) inner: Arc<ManagerInner<B>>,
}

impl<B: Backend> Clone for MapManager<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: Backend> std::fmt::Debug for MapManager<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapManager")
            .field("backend", &B::NAME)
            .field("maps", &self.names())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> MapManager<B> {
    /// A manager of `db`'s maps with default settings.
    pub fn new(db: &DbHub<B>) -> Self {
        Self::with_settings(db, MapSettings::default())
    }

    /// A manager of `db`'s maps.
    pub fn with_settings(db: &DbHub<B>, settings: MapSettings) -> Self {
        let (progress, _) = watch::channel(Progress::default());
        Self {
            inner: Arc::new(ManagerInner {
                db: db.clone(),
                settings,
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                hub: OnceLock::new(),
                attached: AtomicBool::new(false),
                maps: Mutex::new(Vec::new()),
                typed: Mutex::new(HashMap::new()),
                added: Mutex::new(Vec::new()),
                observers: Mutex::new(Vec::new()),
                wake: Notify::new(),
                progress,
                refresh_started: AtomicU64::new(0),
                last_error: Mutex::new(None),
                counters: Counters::default(),
                skipped: Arc::new(AtomicU64::new(0)),
                health: TaskHealth::new(),
            }),
        }
    }

    /// The map `name` with keys `K` and values `V`, added to this manager the first time (its
    /// observers then get [`ManagerChange::Added`]). Every host that reads, writes or observes
    /// a map gets it here under the same name and types.
    ///
    /// # Errors
    /// [`Error::MapAttach`] when `name` was added with other types.
    pub fn map<K: MapKey, V: MapKey>(&self, name: &str) -> Result<ReliableMap<K, V, B>> {
        let mut typed = lock(&self.inner.typed);
        let types = TypeId::of::<(K, V)>();
        if let Some((known, shared)) = typed.get(name) {
            if *known != types {
                return Err(Error::MapAttach(
                    "a map of this name was added with other key or value types",
                ));
            }
            let shared = Arc::clone(shared)
                .downcast::<MapShared<K, V>>()
                .map_err(|_| Error::MapAttach("a map of this name has other types"))?;
            return Ok(ReliableMap::new(shared, Arc::clone(&self.inner)));
        }
        let shared = Arc::new(MapShared::<K, V>::new(name.to_owned()));
        typed.insert(
            name.to_owned(),
            (
                types,
                Arc::clone(&shared) as Arc<dyn std::any::Any + Send + Sync>,
            ),
        );
        lock(&self.inner.maps).push(Arc::clone(&shared) as Arc<dyn ErasedMap>);
        lock(&self.inner.added).push(name.to_owned());
        drop(typed);
        self.inner.wake.notify_one();
        Ok(ReliableMap::new(shared, Arc::clone(&self.inner)))
    }

    /// The names of the maps added, in order.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .maps()
            .iter()
            .map(|map| map.name().to_owned())
            .collect()
    }

    /// Registers an observer of the manager: transactions committed, maps added and removed,
    /// rebuilds. Register it before the hub starts (or before adding maps) to miss nothing.
    pub fn subscribe(&self, observer: impl ManagerObserver) {
        lock(&self.inner.observers).push(Arc::new(observer));
    }

    /// Whether the follower started (see [`MapStatus::ready`]).
    pub fn is_ready(&self) -> bool {
        self.inner.progress.borrow().ready
    }

    /// Waits until the follower started.
    ///
    /// # Errors
    /// [`Error::MapAttach`] when the manager stopped first.
    pub async fn ready(&self) -> Result<()> {
        let mut progress = self.inner.progress.subscribe();
        let progress = progress
            .wait_for(|progress| progress.ready || progress.stopped)
            .await
            .map_err(|_| Error::MapAttach("the manager stopped"))?;
        if progress.ready {
            Ok(())
        } else {
            Err(Error::MapAttach("the manager stopped"))
        }
    }

    /// Waits until every change committed before the call (on any host) was delivered on this
    /// host, with [`MapSettings::sync_timeout`]; returns the sequence number reached.
    ///
    /// # Errors
    /// [`Error::MapsUnavailable`] when that takes longer (the database is slow or down).
    pub async fn sync(&self) -> Result<u64> {
        self.sync_within(self.inner.settings.sync_timeout).await
    }

    /// [`sync`](Self::sync) with its own timeout.
    ///
    /// # Errors
    /// As [`sync`](Self::sync).
    pub async fn sync_within(&self, timeout: Duration) -> Result<u64> {
        let after = self.inner.refresh_started.load(Ordering::SeqCst);
        self.inner.wake.notify_one();
        let mut progress = self.inner.progress.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            progress.wait_for(|progress| {
                (progress.ready && progress.refreshed > after) || progress.stopped
            }),
        )
        .await;
        match waited {
            Ok(Ok(progress)) if !progress.stopped => Ok(progress.position),
            _ => Err(Error::MapsUnavailable {
                timeout,
                last_error: lock(&self.inner.last_error).clone(),
            }),
        }
    }

    /// What the follower has done.
    pub fn status(&self) -> MapStatus {
        let progress = self.inner.progress.borrow().clone();
        let counters = &self.inner.counters;
        MapStatus {
            ready: progress.ready,
            position: progress.position,
            changes: counters.changes.load(Ordering::Relaxed),
            transactions: counters.transactions.load(Ordering::Relaxed),
            rebuilds: counters.rebuilds.load(Ordering::Relaxed),
            coverage_losses: counters.coverage_losses.load(Ordering::Relaxed),
            skipped: self.inner.skipped.load(Ordering::Relaxed),
            last_error: lock(&self.inner.last_error).clone(),
        }
    }

    /// The follower task's health.
    pub fn health(&self) -> Arc<TaskHealth> {
        Arc::clone(&self.inner.health)
    }

    /// Deletes the changes appended before `older_than` ago, all but the last (the follower
    /// also does, see [`MapSettings::change_retention`]); returns how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn trim_changes(&self, older_than: Duration) -> Result<usize> {
        super::follower::trim(&self.inner, older_than).await
    }
}

impl<B: Backend> crate::state::StreamFollower for ManagerInner<B> {
    fn stream(&self) -> &'static str {
        MAPS_STREAM
    }

    fn catch_up_to(&self, position: u64) -> ScopeFuture<'_, ()> {
        Box::pin(async move {
            self.wake.notify_one();
            if lock(&self.last_error).is_some() {
                // Its reads fail: waiting would only delay the call by the timeout.
                return;
            }
            let mut progress = self.progress.subscribe();
            let timeout = self.settings.sync_timeout;
            let waited = tokio::time::timeout(
                timeout,
                progress.wait_for(|progress| progress.position >= position || progress.stopped),
            )
            .await;
            if waited.is_err() {
                tracing::warn!(
                    position,
                    ?timeout,
                    "the maps' follower did not deliver a committed change in time; the call returns without it"
                );
            }
        })
    }
}

impl<B: Backend> HubExtension for MapManager<B> {
    fn name(&self) -> &'static str {
        "ofx-diesel maps"
    }

    fn attach<'a>(&'a self, hub: &'a Hub) -> ScopeFuture<'a, ofx_core::Result<()>> {
        Box::pin(async move {
            let refuse = |reason: &'static str| ofx_core::Error::Extension {
                extension: "ofx-diesel maps",
                source: Arc::new(Error::MapAttach(reason)),
            };
            let Some(link) = self.inner.db.existing_link(hub) else {
                return Err(refuse(
                    "its database is not attached to this hub: add the DbHub with `HubBuilder::with` before the map manager",
                ));
            };
            if self.inner.attached.swap(true, Ordering::AcqRel) {
                return Err(refuse(
                    "it is attached to a hub already: create one map manager per hub",
                ));
            }
            let _ = self.inner.hub.set(hub.downgrade());
            let follower: Arc<dyn crate::state::StreamFollower> = self.inner.clone();
            link.register_follower(Arc::downgrade(&follower));
            super::follower::start(Arc::clone(&self.inner), hub, link.stream_wakes());
            Ok(())
        })
    }
}
