//! Hosts with a map manager, a service whose commands write a map, and observers that record
//! what they are told.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use ofx_diesel::maps::{
    ManagerChange, ManagerObserver, MapAction, MapChange, MapManager, MapObserver, MapSettings,
    Rebuild, ReliableMap, TransactionCommitted,
};
use ofx_diesel::{Backend, DbHub, DbSettings};
use serde::{Deserialize, Serialize};

/// The map the tests write: names to numbers.
pub(crate) const VALUES: &str = "values";

/// One write of [`Apply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    Add(String, i64),
    Set(String, i64),
    Update(String, i64),
    Remove(String),
    Clear,
    Restore(Vec<(String, i64)>),
    /// Fails the command (after the writes before it).
    Fail,
    /// Runs these as a nested command, whose failure is swallowed.
    Nested(Vec<Op>),
}

/// Applies writes to the map `values`, in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "maps.apply")]
pub(crate) struct Apply {
    pub(crate) ops: Vec<Op>,
}

/// Sets entries of the map `late` (added on the writing host by this command).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "maps.write_late")]
pub(crate) struct WriteLate {
    pub(crate) ops: Vec<(String, i64)>,
}

/// Removes the map `values`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "maps.remove_values")]
pub(crate) struct RemoveValues;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error("failed on purpose")]
    Failed,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
}

pub(crate) struct Writer<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) maps: MapManager<B>,
    pub(crate) values: ReliableMap<String, i64, B>,
}

impl<B: Backend> ComputeService for Writer<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: Backend> Writer<B> {
    #[command_handler]
    pub(crate) async fn apply(
        &self,
        command: Apply,
        ctx: &CommandContext,
    ) -> Result<(), ApplyError> {
        for op in command.ops {
            match op {
                Op::Add(key, value) => self.values.add(ctx, &key, &value).await?,
                Op::Set(key, value) => {
                    self.values.set(ctx, &key, &value).await?;
                }
                Op::Update(key, value) => {
                    self.values.update(ctx, &key, &value).await?;
                }
                Op::Remove(key) => {
                    self.values.remove(ctx, &key).await?;
                }
                Op::Clear => self.values.clear(ctx).await?,
                Op::Restore(entries) => self.values.restore(ctx, entries).await?,
                Op::Fail => return Err(ApplyError::Failed),
                Op::Nested(ops) => {
                    let _ = self.hub.commander().call(Apply { ops }).await;
                }
            }
        }
        Ok(())
    }

    #[command_handler]
    pub(crate) async fn write_late(
        &self,
        command: WriteLate,
        ctx: &CommandContext,
    ) -> Result<(), ApplyError> {
        let late = self.maps.map::<String, i64>("late")?;
        for (key, value) in command.ops {
            late.set(ctx, &key, &value).await?;
        }
        Ok(())
    }

    #[command_handler]
    pub(crate) async fn remove_values(
        &self,
        _command: RemoveValues,
        ctx: &CommandContext,
    ) -> Result<(), ApplyError> {
        self.values.remove_map(ctx).await?;
        Ok(())
    }
}

/// What an observer was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    Rebuild {
        sequence: u64,
        entries: Vec<(String, i64)>,
    },
    Change {
        action: MapAction<String, i64>,
        sequence: u64,
        position: u64,
    },
    Committed(TransactionCommitted),
    Manager(ManagerChange),
}

/// Records every notification it gets, of the map and of the manager, in one list.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) notes: Arc<Mutex<Vec<Note>>>,
}

impl Recorder {
    pub(crate) fn notes(&self) -> Vec<Note> {
        self.notes.lock().unwrap().clone()
    }

    pub(crate) fn committed(&self) -> Vec<TransactionCommitted> {
        self.notes()
            .into_iter()
            .filter_map(|note| match note {
                Note::Committed(committed) => Some(committed),
                _ => None,
            })
            .collect()
    }

    /// The changes delivered after the last rebuild.
    pub(crate) fn changes_since_rebuild(&self) -> Vec<(MapAction<String, i64>, u64, u64)> {
        let notes = self.notes();
        let start = notes
            .iter()
            .rposition(|note| matches!(note, Note::Rebuild { .. }))
            .map_or(0, |at| at + 1);
        notes[start..]
            .iter()
            .filter_map(|note| match note {
                Note::Change {
                    action,
                    sequence,
                    position,
                } => Some((action.clone(), *sequence, *position)),
                _ => None,
            })
            .collect()
    }

    /// The content the notifications give: the last rebuild, with the changes after it.
    pub(crate) fn content(&self) -> BTreeMap<String, i64> {
        let mut content = BTreeMap::new();
        for note in self.notes() {
            match note {
                Note::Rebuild { entries, .. } => content = entries.into_iter().collect(),
                Note::Change { action, .. } => apply(&mut content, &action),
                _ => {}
            }
        }
        content
    }
}

pub(crate) fn apply(content: &mut BTreeMap<String, i64>, action: &MapAction<String, i64>) {
    match action {
        MapAction::Add { key, value } => {
            assert!(
                content.insert(key.clone(), *value).is_none(),
                "added {key}, which was there"
            );
        }
        MapAction::Update { key, old, new } => {
            assert_eq!(
                content.insert(key.clone(), *new),
                Some(*old),
                "updated {key}"
            );
        }
        MapAction::Remove { key, old } => {
            assert_eq!(content.remove(key), Some(*old), "removed {key}");
        }
        MapAction::Clear => content.clear(),
        other => panic!("unknown action {other:?}"),
    }
}

impl MapObserver<String, i64> for Recorder {
    fn changed(&self, change: &MapChange<String, i64>) {
        self.notes.lock().unwrap().push(Note::Change {
            action: change.action.clone(),
            sequence: change.sequence,
            position: change.position,
        });
    }

    fn rebuild(&self, entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move {
            let sequence = entries.sequence();
            let entries = entries.collect().await;
            self.notes
                .lock()
                .unwrap()
                .push(Note::Rebuild { sequence, entries });
        })
    }
}

impl ManagerObserver for Recorder {
    fn transaction_committed(&self, committed: &TransactionCommitted) {
        self.notes
            .lock()
            .unwrap()
            .push(Note::Committed(committed.clone()));
    }

    fn state_changed(&self, change: &ManagerChange) {
        self.notes
            .lock()
            .unwrap()
            .push(Note::Manager(change.clone()));
    }
}

/// A secondary index kept by notifications: value → keys (sorted).
#[derive(Clone, Default)]
pub(crate) struct Index {
    pub(crate) by_value: Arc<Mutex<BTreeMap<i64, BTreeSet<String>>>>,
    /// The forward map it needs to know old values on `Clear`.
    forward: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl Index {
    pub(crate) fn snapshot(&self) -> BTreeMap<i64, BTreeSet<String>> {
        self.by_value.lock().unwrap().clone()
    }

    /// The index of `content`.
    pub(crate) fn of(content: &BTreeMap<String, i64>) -> BTreeMap<i64, BTreeSet<String>> {
        let mut index: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for (key, value) in content {
            index.entry(*value).or_default().insert(key.clone());
        }
        index
    }

    fn unindex(by_value: &mut BTreeMap<i64, BTreeSet<String>>, key: &str, value: i64) {
        if let Some(keys) = by_value.get_mut(&value) {
            keys.remove(key);
            if keys.is_empty() {
                by_value.remove(&value);
            }
        }
    }
}

impl MapObserver<String, i64> for Index {
    fn changed(&self, change: &MapChange<String, i64>) {
        let mut by_value = self.by_value.lock().unwrap();
        let mut forward = self.forward.lock().unwrap();
        match &change.action {
            MapAction::Add { key, value } => {
                by_value.entry(*value).or_default().insert(key.clone());
                forward.insert(key.clone(), *value);
            }
            MapAction::Update { key, old, new } => {
                Self::unindex(&mut by_value, key, *old);
                by_value.entry(*new).or_default().insert(key.clone());
                forward.insert(key.clone(), *new);
            }
            MapAction::Remove { key, old } => {
                Self::unindex(&mut by_value, key, *old);
                forward.remove(key);
            }
            MapAction::Clear => {
                by_value.clear();
                forward.clear();
            }
            _ => {}
        }
    }

    fn rebuild(&self, mut entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move {
            let mut content = BTreeMap::new();
            while let Some((key, value)) = entries.next().await {
                content.insert(key, value);
            }
            *self.by_value.lock().unwrap() = Self::of(&content);
            *self.forward.lock().unwrap() = content;
        })
    }
}

/// One host: a database handle, a hub with the map manager, the writer service.
pub(crate) struct Host<B: Backend> {
    pub(crate) db: DbHub<B>,
    pub(crate) maps: MapManager<B>,
    pub(crate) writer: Arc<Writer<B>>,
    /// Subscribed to the manager and to `values` before the hub started.
    pub(crate) recorder: Recorder,
}

impl<B: Backend> Host<B> {
    pub(crate) async fn open(url: &str) -> Self {
        Self::open_with(url, MapSettings::default(), |_| {}).await
    }

    /// With `settings`, and `prepare` run on the manager before the hub starts.
    pub(crate) async fn open_with(
        url: &str,
        settings: MapSettings,
        prepare: impl FnOnce(&MapManager<B>),
    ) -> Self {
        let db = DbHub::<B>::open(url, fast()).await.unwrap();
        let maps = MapManager::with_settings(&db, settings);
        let recorder = Recorder::default();
        maps.subscribe(recorder.clone());
        let values = maps.map::<String, i64>(VALUES).unwrap();
        values.subscribe(recorder.clone());
        prepare(&maps);
        let hub = Hub::builder()
            .with(db.clone())
            .with(maps.clone())
            .start()
            .await
            .unwrap();
        let writer = Arc::new(Writer {
            hub: hub.clone(),
            maps: maps.clone(),
            values,
        });
        hub.add_service(&writer).unwrap();
        within(
            Duration::from_secs(30),
            "the manager is ready",
            maps.ready(),
        )
        .await
        .unwrap();
        Self {
            db,
            maps,
            writer,
            recorder,
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.writer.hub
    }

    pub(crate) fn values(&self) -> &ReliableMap<String, i64, B> {
        &self.writer.values
    }

    pub(crate) async fn apply(&self, ops: Vec<Op>) -> Result<(), ofx_core::Error> {
        self.hub().commander().call(Apply { ops }).await
    }

    /// The map's content, read from its table.
    pub(crate) async fn table(&self) -> BTreeMap<String, i64> {
        let maps = MapManager::<B>::new(&self.db);
        let plain = maps.map::<String, i64>(VALUES).unwrap();
        plain.entries().await.unwrap().into_iter().collect()
    }

    pub(crate) async fn sync(&self) -> u64 {
        self.maps
            .sync_within(Duration::from_secs(20))
            .await
            .unwrap()
    }
}

/// Settings for tests: a short poll period.
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(50);
    settings
}

/// Map settings with a follower that polls only every hour (woken by nothing but its own
/// host's commits and `sync`).
pub(crate) fn deaf() -> MapSettings {
    let mut settings = MapSettings::default();
    settings.poll_period = Some(Duration::from_secs(3600));
    settings
}

pub(crate) async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Waits until `condition` holds, failing after `limit`.
pub(crate) async fn until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh SQLite file.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!("ofx-maps-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    path
}

/// A fresh PostgreSQL database on the server at 127.0.0.1:5432 (or `OFX_TEST_POSTGRES`).
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_database() -> String {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {server} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or set OFX_TEST_POSTGRES to another server"
            )
        });
    let name = format!(
        "ofx_maps_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    DbHub::<ofx_diesel::Postgres>::open(&url, fast())
        .await
        .unwrap();
    url
}
