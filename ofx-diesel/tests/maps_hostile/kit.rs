//! The attack kit: hosts with a map manager and two maps, a service whose commands write maps
//! in every way (nested, failing, pausing mid-transaction), observers that record everything
//! in one list per host, checks of redo order, SQL on the side (the table and the change log
//! read on connections of their own, rows inserted by hand), gates to stop a command or an
//! observer at a chosen point.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, service,
};
use ofx_diesel::maps::{
    ManagerChange, ManagerObserver, MapAction, MapChange, MapManager, MapObserver, MapSettings,
    Rebuild, ReliableMap, TransactionCommitted,
};
use ofx_diesel::{Backend, DbHub, DbSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The two maps every host has before it starts.
pub(crate) const VALUES: &str = "values";
pub(crate) const OTHER: &str = "other";

// ---------------------------------------------------------------------------------------------
// Commands

/// One write, to the map named `map`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) map: String,
    pub(crate) op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    Add(String, i64),
    Set(String, i64),
    Update(String, i64),
    Remove(String),
    GetOrAdd(String, i64),
    Clear,
    Restore(Vec<(String, i64)>),
    RemoveMap,
    /// Fails the command (after the writes before it).
    Fail,
    /// Runs these steps as a nested command; its failure fails this one.
    Nested(Vec<Step>),
    /// Runs these steps as a nested command and ignores its failure.
    NestedSwallowed(Vec<Step>),
    /// Tells the gate of this name that it was reached, and waits until it is opened.
    Pause(String),
    /// Fails the command unless `get_in` of the key gives this value.
    Expect(String, Option<i64>),
    /// Records the operation id under this tag (see [`tagged`]).
    Tag(String),
}

pub(crate) fn on(map: &str, op: Op) -> Step {
    Step {
        map: map.to_owned(),
        op,
    }
}

pub(crate) fn values(op: Op) -> Step {
    on(VALUES, op)
}

pub(crate) fn other(op: Op) -> Step {
    on(OTHER, op)
}

/// Runs steps in one transaction (one operation).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "maps_hostile.run")]
pub(crate) struct Run {
    pub(crate) steps: Vec<Step>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("failed on purpose")]
    Failed,
    #[error("get_in {0}: expected {1:?}, got {2:?}")]
    Unexpected(String, Option<i64>, Option<i64>),
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
}

pub(crate) struct Writer<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) maps: MapManager<B>,
}

impl<B: Backend> ComputeService for Writer<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: Backend> Writer<B> {
    #[command_handler]
    pub(crate) async fn run(&self, command: Run, ctx: &CommandContext) -> Result<(), RunError> {
        for step in command.steps {
            let map = self.maps.map::<String, i64>(&step.map)?;
            match step.op {
                Op::Add(key, value) => map.add(ctx, &key, &value).await?,
                Op::Set(key, value) => {
                    map.set(ctx, &key, &value).await?;
                }
                Op::Update(key, value) => {
                    map.update(ctx, &key, &value).await?;
                }
                Op::Remove(key) => {
                    map.remove(ctx, &key).await?;
                }
                Op::GetOrAdd(key, value) => {
                    map.get_or_add(ctx, &key, || value).await?;
                }
                Op::Clear => map.clear(ctx).await?,
                Op::Restore(entries) => map.restore(ctx, entries).await?,
                Op::RemoveMap => map.remove_map(ctx).await?,
                Op::Fail => return Err(RunError::Failed),
                Op::Nested(steps) => self.hub.commander().call(Run { steps }).await?,
                Op::NestedSwallowed(steps) => {
                    let _ = self.hub.commander().call(Run { steps }).await;
                }
                Op::Pause(name) => gate(&name).pass().await,
                Op::Tag(tag) => {
                    TAGS.lock().unwrap().insert(tag, ctx.operation_id());
                }
                Op::Expect(key, expected) => {
                    let got = map.get_in(ctx, &key).await?;
                    if got != expected {
                        return Err(RunError::Unexpected(key, expected, got));
                    }
                }
            }
        }
        Ok(())
    }

    /// The sum of the values of `values`, computed from its `entries` (a compute method that
    /// depends on the map's).
    #[compute_method]
    pub(crate) async fn total(&self) -> Result<i64, String> {
        let map = self
            .maps
            .map::<String, i64>(VALUES)
            .map_err(|e| e.to_string())?;
        let entries = map.entries().await.map_err(|e| e.to_string())?;
        Ok(entries.iter().map(|(_, value)| value).sum())
    }

    /// Twice the value of `key` in `values`, from its `get`.
    #[compute_method]
    pub(crate) async fn doubled(&self, key: String) -> Result<Option<i64>, String> {
        let map = self
            .maps
            .map::<String, i64>(VALUES)
            .map_err(|e| e.to_string())?;
        let value = map.get(&key).await.map_err(|e| e.to_string())?;
        Ok(value.map(|value| value * 2))
    }
}

static TAGS: LazyLock<Mutex<HashMap<String, uuid::Uuid>>> = LazyLock::new(Default::default);

/// The operation id of the command that ran `Op::Tag(tag)`.
pub(crate) fn tagged(tag: &str) -> Option<uuid::Uuid> {
    TAGS.lock().unwrap().get(tag).copied()
}

// ---------------------------------------------------------------------------------------------
// Gates

/// A point where a command (or an async observer) stops until the test opens it.
pub(crate) struct Gate {
    reached: watch::Sender<u32>,
    open: watch::Sender<bool>,
}

static GATES: LazyLock<Mutex<HashMap<String, Arc<Gate>>>> = LazyLock::new(Default::default);

/// The gate named `name` (created closed the first time).
pub(crate) fn gate(name: &str) -> Arc<Gate> {
    Arc::clone(
        GATES
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate {
                    reached: watch::Sender::new(0),
                    open: watch::Sender::new(false),
                })
            }),
    )
}

/// A gate name of its own.
pub(crate) fn fresh_gate() -> String {
    format!("gate-{}", uuid::Uuid::new_v4().simple())
}

impl Gate {
    /// Says it was reached, then waits until opened.
    pub(crate) async fn pass(&self) {
        self.reached.send_modify(|count| *count += 1);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }

    /// Waits until it was reached `times` times in all.
    pub(crate) async fn reached(&self, times: u32) {
        let mut reached = self.reached.subscribe();
        within(Duration::from_secs(30), "the gate is reached", async {
            let _ = reached.wait_for(|count| *count >= times).await;
        })
        .await;
    }

    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }
}

/// A gate for synchronous observers: `hold` blocks the calling thread (the follower's) until
/// `release`, at most 30 s. Called through `block_in_place`: a worker blocked in place would
/// strand the tasks queued on it (the contract's "no blocking").
#[derive(Clone, Default)]
pub(crate) struct Hold {
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
}

impl Hold {
    /// Blocks until released (marks itself reached first).
    pub(crate) fn hold(&self) {
        let (lock, condvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        condvar.notify_all();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.1 && Instant::now() < deadline {
            state = condvar
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    pub(crate) fn is_reached(&self) -> bool {
        self.state.0.lock().unwrap().0
    }

    pub(crate) fn release(&self) {
        let (lock, condvar) = &*self.state;
        lock.lock().unwrap().1 = true;
        condvar.notify_all();
    }
}

/// Holds the follower (synchronously) at the change of a given position, once.
#[derive(Clone, Default)]
pub(crate) struct HoldAt {
    pub(crate) position: Arc<Mutex<Option<u64>>>,
    pub(crate) hold: Hold,
}

impl MapObserver<String, i64> for HoldAt {
    fn changed(&self, change: &MapChange<String, i64>) {
        let at = *self.position.lock().unwrap();
        if at == Some(change.position) {
            *self.position.lock().unwrap() = None;
            // Off the runtime's worker (its queued tasks move to another thread).
            tokio::task::block_in_place(|| self.hold.hold());
        }
    }

    fn rebuild(&self, _entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async {})
    }
}

// ---------------------------------------------------------------------------------------------
// Observers

/// What an observer was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    Rebuild {
        map: String,
        sequence: u64,
        entries: Vec<(String, i64)>,
    },
    Change {
        map: String,
        action: MapAction<String, i64>,
        sequence: u64,
        position: u64,
        operation: uuid::Uuid,
    },
    Committed(TransactionCommitted),
    Manager(ManagerChange),
}

impl Note {
    pub(crate) fn is_rebuild(&self) -> bool {
        matches!(self, Self::Rebuild { .. })
    }
}

/// Records the notifications of the maps and of the manager it is subscribed to, in one list.
/// Subscribe it to a map with [`Recorder::of`].
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) notes: Arc<Mutex<Vec<Note>>>,
}

/// A recorder's subscription to one map (the map's name in each note).
#[derive(Clone)]
pub(crate) struct OfMap {
    map: String,
    recorder: Recorder,
}

impl Recorder {
    pub(crate) fn of(&self, map: &str) -> OfMap {
        OfMap {
            map: map.to_owned(),
            recorder: self.clone(),
        }
    }

    pub(crate) fn notes(&self) -> Vec<Note> {
        self.notes.lock().unwrap().clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.notes.lock().unwrap().len()
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

    pub(crate) fn rebuilds(&self, map: &str) -> Vec<u64> {
        self.notes()
            .into_iter()
            .filter_map(|note| match note {
                Note::Rebuild {
                    map: name,
                    sequence,
                    ..
                } if name == map => Some(sequence),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn manager_notes(&self) -> Vec<ManagerChange> {
        self.notes()
            .into_iter()
            .filter_map(|note| match note {
                Note::Manager(change) => Some(change),
                _ => None,
            })
            .collect()
    }

    /// The content of `map` the notifications give: its last rebuild and the changes after it
    /// (panics on a change that does not fit).
    pub(crate) fn content(&self, map: &str) -> BTreeMap<String, i64> {
        content_of(&self.notes(), map)
    }

    /// The notes after the start's rebuilds (the manager's `Rebuild` and the maps').
    pub(crate) fn after_start(&self) -> Vec<Note> {
        let notes = self.notes();
        let skip = notes
            .iter()
            .take_while(|note| {
                note.is_rebuild() || matches!(note, Note::Manager(ManagerChange::Rebuild { .. }))
            })
            .count();
        notes[skip..].to_vec()
    }
}

pub(crate) fn content_of(notes: &[Note], map: &str) -> BTreeMap<String, i64> {
    let mut content = BTreeMap::new();
    for note in notes {
        match note {
            Note::Rebuild {
                map: name, entries, ..
            } if name == map => content = entries.iter().cloned().collect(),
            Note::Change {
                map: name, action, ..
            } if name == map => apply(&mut content, action, map),
            _ => {}
        }
    }
    content
}

pub(crate) fn apply(
    content: &mut BTreeMap<String, i64>,
    action: &MapAction<String, i64>,
    map: &str,
) {
    match action {
        MapAction::Add { key, value } => {
            assert!(
                content.insert(key.clone(), *value).is_none(),
                "{map}: added {key}, which was there"
            );
        }
        MapAction::Update { key, old, new } => {
            assert_eq!(
                content.insert(key.clone(), *new),
                Some(*old),
                "{map}: updated {key}"
            );
        }
        MapAction::Remove { key, old } => {
            assert_eq!(content.remove(key), Some(*old), "{map}: removed {key}");
        }
        MapAction::Clear => content.clear(),
        other => panic!("unknown action {other:?}"),
    }
}

impl MapObserver<String, i64> for OfMap {
    fn changed(&self, change: &MapChange<String, i64>) {
        self.recorder.notes.lock().unwrap().push(Note::Change {
            map: self.map.clone(),
            action: change.action.clone(),
            sequence: change.sequence,
            position: change.position,
            operation: change.operation,
        });
    }

    fn rebuild(&self, entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move {
            assert_eq!(entries.map(), self.map);
            let sequence = entries.sequence();
            let entries = entries.collect().await;
            self.recorder.notes.lock().unwrap().push(Note::Rebuild {
                map: self.map.clone(),
                sequence,
                entries,
            });
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

/// Asserts redo order in the notes of a recorder subscribed to the manager and to every map
/// written: each transaction's changes (consecutive positions, in write order, the last one its
/// sequence, all with its sequence and operation) then its `Committed`, with no manager
/// notification between; sequences strictly increasing. A map's rebuild comes between
/// transactions, or inside one when it is as of that transaction or later (a restore); no change
/// of a map at or before its last rebuild's sequence is delivered. `every_map`: the recorder
/// observes every map the transactions write, and no restore happened (each `Committed` then
/// follows exactly its `changes` changes). Returns the transactions.
pub(crate) fn assert_redo_order(notes: &[Note], every_map: bool) -> Vec<TransactionCommitted> {
    let mut open: Vec<(u64, u64, uuid::Uuid)> = Vec::new();
    let mut last_sequence = 0;
    let mut floors: HashMap<String, u64> = HashMap::new();
    let mut committed = Vec::new();
    for (at, note) in notes.iter().enumerate() {
        match note {
            Note::Change {
                map,
                sequence,
                position,
                operation,
                ..
            } => {
                if let Some(&(previous_position, previous_sequence, previous_operation)) =
                    open.last()
                {
                    assert!(
                        *position > previous_position,
                        "note {at}: positions of a transaction increase: {notes:#?}"
                    );
                    assert_eq!(*sequence, previous_sequence, "note {at}: one sequence");
                    assert_eq!(*operation, previous_operation, "note {at}: one operation");
                }
                assert!(
                    *position <= *sequence,
                    "note {at}: a position after its sequence"
                );
                assert!(
                    *position > last_sequence,
                    "note {at}: a change at {position} after transaction {last_sequence}"
                );
                let floor = floors.get(map).copied().unwrap_or(0);
                assert!(
                    *position > floor,
                    "note {at}: a change of {map} at {position}, in its rebuild as of {floor}"
                );
                open.push((*position, *sequence, *operation));
            }
            Note::Committed(transaction) => {
                assert!(
                    transaction.sequence > last_sequence,
                    "note {at}: sequence {} after {last_sequence}: {notes:#?}",
                    transaction.sequence
                );
                if let Some(&(position, sequence, operation)) = open.last() {
                    assert_eq!(sequence, transaction.sequence, "note {at}");
                    assert!(position <= transaction.sequence, "note {at}");
                    assert_eq!(operation, transaction.operation, "note {at}");
                    assert!(open.len() <= transaction.changes, "note {at}");
                }
                if every_map {
                    assert_eq!(
                        open.len(),
                        transaction.changes,
                        "note {at}: the changes of transaction {}: {notes:#?}",
                        transaction.sequence
                    );
                    if let Some(&(first, ..)) = <[_]>::first(&open) {
                        assert_eq!(
                            first + transaction.changes as u64 - 1,
                            transaction.sequence,
                            "note {at}: consecutive positions"
                        );
                    }
                }
                open.clear();
                last_sequence = transaction.sequence;
                committed.push(transaction.clone());
            }
            Note::Rebuild { map, sequence, .. } => {
                if let Some(&(_, open_sequence, _)) = open.last() {
                    assert!(
                        *sequence >= open_sequence,
                        "note {at}: a rebuild as of {sequence} inside transaction \
                         {open_sequence}: {notes:#?}"
                    );
                }
                assert!(
                    *sequence >= last_sequence,
                    "note {at}: a rebuild as of {sequence} after transaction {last_sequence}"
                );
                floors.insert(map.clone(), *sequence);
            }
            Note::Manager(_) => {
                assert!(
                    open.is_empty(),
                    "note {at}: a manager notification inside a transaction: {notes:#?}"
                );
            }
        }
    }
    assert!(
        open.is_empty(),
        "changes without their transaction: {open:?}"
    );
    committed
}

/// Asserts that every change of a transaction has consecutive positions (the notes of a
/// recorder of every map the transactions write, with no restore).
pub(crate) fn assert_dense_transactions(notes: &[Note]) {
    let mut previous: Option<u64> = None;
    for note in notes {
        match note {
            Note::Change { position, .. } => {
                if let Some(previous) = previous {
                    assert_eq!(*position, previous + 1, "consecutive positions: {notes:#?}");
                }
                previous = Some(*position);
            }
            _ => previous = None,
        }
    }
}

/// A secondary index kept by notifications: value → keys.
#[derive(Clone, Default)]
pub(crate) struct Index {
    by_value: Arc<Mutex<BTreeMap<i64, BTreeSet<String>>>>,
    forward: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl Index {
    pub(crate) fn snapshot(&self) -> BTreeMap<i64, BTreeSet<String>> {
        self.by_value.lock().unwrap().clone()
    }

    pub(crate) fn of(content: &BTreeMap<String, i64>) -> BTreeMap<i64, BTreeSet<String>> {
        let mut index: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for (key, value) in content {
            index.entry(*value).or_default().insert(key.clone());
        }
        index
    }

    fn unindex(by_value: &mut BTreeMap<i64, BTreeSet<String>>, key: &str, value: i64) {
        let keys = by_value.get_mut(&value).expect("an indexed value");
        assert!(keys.remove(key), "{key} was indexed under {value}");
        if keys.is_empty() {
            by_value.remove(&value);
        }
    }
}

impl MapObserver<String, i64> for Index {
    fn changed(&self, change: &MapChange<String, i64>) {
        let mut by_value = self.by_value.lock().unwrap();
        let mut forward = self.forward.lock().unwrap();
        match &change.action {
            MapAction::Add { key, value } => {
                assert!(forward.insert(key.clone(), *value).is_none());
                by_value.entry(*value).or_default().insert(key.clone());
            }
            MapAction::Update { key, old, new } => {
                assert_eq!(forward.insert(key.clone(), *new), Some(*old));
                Self::unindex(&mut by_value, key, *old);
                by_value.entry(*new).or_default().insert(key.clone());
            }
            MapAction::Remove { key, old } => {
                assert_eq!(forward.remove(key), Some(*old));
                Self::unindex(&mut by_value, key, *old);
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

// ---------------------------------------------------------------------------------------------
// Hosts

/// One host: a database handle, a hub with the map manager, the writer service, and a recorder
/// subscribed to the manager and to both maps before the hub started.
pub(crate) struct Host<B: Backend> {
    pub(crate) db: DbHub<B>,
    pub(crate) maps: MapManager<B>,
    pub(crate) writer: Arc<Writer<B>>,
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
        for name in [VALUES, OTHER] {
            maps.map::<String, i64>(name)
                .unwrap()
                .subscribe(recorder.of(name));
        }
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

    pub(crate) fn map(&self, name: &str) -> ReliableMap<String, i64, B> {
        self.maps.map::<String, i64>(name).unwrap()
    }

    pub(crate) async fn run(&self, steps: Vec<Step>) -> Result<(), ofx_core::Error> {
        self.hub().commander().call(Run { steps }).await
    }

    pub(crate) async fn sync(&self) -> u64 {
        self.maps
            .sync_within(Duration::from_secs(30))
            .await
            .unwrap()
    }
}

/// Runs `steps` on `hub`.
pub(crate) async fn run_on(hub: &Hub, steps: Vec<Step>) -> Result<(), ofx_core::Error> {
    hub.commander().call(Run { steps }).await
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

/// Waits until the async `condition` holds, failing after `limit`.
pub(crate) async fn until_async<F: Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SQL on the side

#[derive(QueryableByName)]
struct Scalar {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    value: Option<i64>,
}

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = diesel::sql_types::Text)]
    first: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    second: String,
}

/// Raw queries of one backend.
pub(crate) trait Sql: Backend {
    fn scalar(
        connection: &mut Self::Connection,
        sql: String,
    ) -> impl Future<Output = QueryResult<Option<i64>>> + Send;
    fn pairs(
        connection: &mut Self::Connection,
        sql: String,
    ) -> impl Future<Output = QueryResult<Vec<(String, String)>>> + Send;
}

macro_rules! sql_impl {
    ($backend:ty) => {
        impl Sql for $backend {
            async fn scalar(
                connection: &mut Self::Connection,
                sql: String,
            ) -> QueryResult<Option<i64>> {
                Ok(diesel::sql_query(sql)
                    .get_result::<Scalar>(connection)
                    .await?
                    .value)
            }

            async fn pairs(
                connection: &mut Self::Connection,
                sql: String,
            ) -> QueryResult<Vec<(String, String)>> {
                let rows: Vec<Pair> = diesel::sql_query(sql).load(connection).await?;
                Ok(rows
                    .into_iter()
                    .map(|row| (row.first, row.second))
                    .collect())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
sql_impl!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
sql_impl!(ofx_diesel::Postgres);

/// A SQL string literal.
pub(crate) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub(crate) async fn scalar<B: Sql>(db: &DbHub<B>, sql: &str) -> Option<i64> {
    let mut connection = db.connection().await.unwrap();
    B::scalar(&mut connection, sql.to_owned()).await.unwrap()
}

pub(crate) async fn exec<B: Backend>(db: &DbHub<B>, statements: &str) {
    let mut connection = db.connection().await.unwrap();
    connection.batch_execute(statements).await.unwrap();
}

/// The content of map `map`, read from its table.
pub(crate) async fn table<B: Sql>(db: &DbHub<B>, map: &str) -> BTreeMap<String, i64> {
    let mut connection = db.connection().await.unwrap();
    B::pairs(
        &mut connection,
        format!(
            "SELECT key AS first, value AS second FROM ofx_map_entries WHERE map = {}",
            quote(map)
        ),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|(key, value)| {
        (
            serde_json::from_str(&key).unwrap(),
            serde_json::from_str(&value).unwrap(),
        )
    })
    .collect()
}

/// The head of the change log (0 when empty).
pub(crate) async fn log_head<B: Sql>(db: &DbHub<B>) -> u64 {
    let head = scalar(
        db,
        "SELECT MAX(position) AS value FROM ofx_stream_events WHERE stream = 'ofx.maps'",
    )
    .await
    .unwrap_or(0);
    u64::try_from(head).unwrap()
}

/// How many rows the change log has.
pub(crate) async fn log_rows<B: Sql>(db: &DbHub<B>) -> u64 {
    let rows = scalar(
        db,
        "SELECT COUNT(*) AS value FROM ofx_stream_events WHERE stream = 'ofx.maps'",
    )
    .await
    .unwrap_or(0);
    u64::try_from(rows).unwrap()
}

/// Inserts a change-log row by hand, at the head + 1, with the newest row's `appended_at`.
pub(crate) async fn insert_change_row<B: Sql>(db: &DbHub<B>, body: &str, operation: &str) -> u64 {
    let position = log_head(db).await + 1;
    let appended = scalar(
        db,
        "SELECT MAX(appended_at) AS value FROM ofx_stream_events WHERE stream = 'ofx.maps'",
    )
    .await
    .unwrap_or(0);
    exec(
        db,
        &format!(
            "INSERT INTO ofx_stream_events (stream, position, body, operation_uuid, appended_at) \
             VALUES ('ofx.maps', {position}, {}, {}, {appended})",
            quote(body),
            quote(operation)
        ),
    )
    .await;
    position
}

/// A fresh SQLite file.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!(
        "ofx-maps-hostile-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let path = path.to_string_lossy().into_owned();
    DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    path
}

/// The server of the PostgreSQL tests.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_server() -> String {
    std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh PostgreSQL database on the server at 127.0.0.1:5432 (or `OFX_TEST_POSTGRES`).
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_database() -> String {
    use diesel_async::AsyncConnection;
    let server = postgres_server();
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| panic!("cannot reach PostgreSQL at {server} ({error})"));
    let name = format!(
        "ofx_maps_hostile_{}_{}",
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

/// Runs SQL on a connection of its own to the server's `postgres` database.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_admin(sql: &str) {
    use diesel_async::AsyncConnection;
    let mut admin =
        diesel_async::AsyncPgConnection::establish(&format!("{}/postgres", postgres_server()))
            .await
            .unwrap();
    admin.batch_execute(sql).await.unwrap();
}

/// A number from a query on the server's `postgres` database.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_admin_scalar(sql: &str) -> Option<i64> {
    use diesel_async::AsyncConnection;
    let mut admin =
        diesel_async::AsyncPgConnection::establish(&format!("{}/postgres", postgres_server()))
            .await
            .unwrap();
    <ofx_diesel::Postgres as Sql>::scalar(&mut admin, sql.to_owned())
        .await
        .unwrap()
}
