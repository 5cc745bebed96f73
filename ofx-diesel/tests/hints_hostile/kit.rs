//! Two hosts on one SQLite file: A writes, B reads; A's watcher sends its hints to B's as told
//! (delivered, dropped, held, duplicated), and a test can push anything into B's hints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::operation::CompletionListener;
use ofx_core::watcher::{WakeHints, encode_hint};
use ofx_core::{
    Command, CommandContext, ComputeService, Computed, HostId, Hub, LogWatcher, Operation,
    command_handler, compute_method, invalidate, service,
};
use ofx_diesel::{DbHub, DbSettings, LogReader, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

diesel::table! {
    accounts (id) {
        id -> BigInt,
        balance -> BigInt,
    }
}

/// The command name every forged hint and raw row uses.
pub const DEPOSIT: &str = "hints_hostile.deposit";

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "hints_hostile.deposit")]
pub struct Dep {
    pub id: i64,
    pub amount: i64,
    /// Tells operations apart in `PASSES` (0 for raw rows and forged hints).
    #[serde(default)]
    pub nonce: u64,
}

/// The account whose `slow_balance` waits at the gate.
pub const SLOW_ID: i64 = 4242;
/// Released by a test to let `slow_balance(SLOW_ID)` return.
pub static SLOW_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
/// A permit each time `slow_balance(SLOW_ID)` has read the database.
pub static SLOW_READ: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

/// How many times each host ran the invalidation branch of the deposit with each nonce.
pub static PASSES: std::sync::LazyLock<Mutex<HashMap<(String, u64), u32>>> =
    std::sync::LazyLock::new(Mutex::default);
static NONCES: AtomicU64 = AtomicU64::new(1);

fn record_pass(host: &HostId, nonce: u64) -> u32 {
    if nonce == 0 {
        return 0;
    }
    let mut passes = PASSES.lock().unwrap();
    let count = passes.entry((format!("{host:?}"), nonce)).or_insert(0);
    *count += 1;
    *count
}

/// How many times `host` ran the invalidation branch of the deposit with `nonce`.
pub fn passes(host: &HostId, nonce: u64) -> u32 {
    PASSES
        .lock()
        .unwrap()
        .get(&(format!("{host:?}"), nonce))
        .copied()
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub struct Accounts {
    pub hub: Hub,
    pub db: DbHub<Sqlite>,
}

impl ComputeService for Accounts {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

async fn read_balance(
    connection: &mut <Sqlite as ofx_diesel::Backend>::Connection,
    id: i64,
) -> QueryResult<Option<i64>> {
    accounts::table
        .find(id)
        .select(accounts::balance)
        .first(connection)
        .await
        .optional()
}

#[service]
impl Accounts {
    #[compute_method]
    pub async fn balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        let balance = read_balance(&mut connection, id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(balance.unwrap_or(0))
    }

    /// The balance; for account `SLOW_ID`, waits for a permit of `SLOW_GATE` after reading.
    #[compute_method]
    pub async fn slow_balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        let balance = read_balance(&mut connection, id)
            .await
            .map_err(|e| e.to_string())?;
        drop(connection);
        if id == SLOW_ID {
            SLOW_READ.add_permits(1);
            SLOW_GATE.acquire().await.unwrap().forget();
        }
        Ok(balance.unwrap_or(0))
    }

    #[command_handler]
    pub async fn deposit(&self, command: Dep, ctx: &CommandContext) -> Result<i64, AccountError> {
        invalidate! {
            let _pass = record_pass(self.hub.host_id(), command.nonce);
            self.balance(command.id);
            self.slow_balance(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::insert_into(accounts::table)
            .values((
                accounts::id.eq(command.id),
                accounts::balance.eq(command.amount),
            ))
            .on_conflict(accounts::id)
            .do_update()
            .set(accounts::balance.eq(accounts::balance + command.amount))
            .execute(&mut connection)
            .await?;
        Ok(read_balance(&mut connection, command.id)
            .await?
            .unwrap_or(0))
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

/// B's end: a wake-up and the hints B's reader replays.
#[derive(Debug, Default)]
pub struct Receiving {
    pub wakes: Arc<Notify>,
    pub hints: Arc<WakeHints>,
}

impl LogWatcher for Receiving {
    fn notify(&self) {}

    fn wakes(&self) -> Arc<Notify> {
        Arc::clone(&self.wakes)
    }

    fn hints(&self) -> Option<Arc<WakeHints>> {
        Some(Arc::clone(&self.hints))
    }
}

/// What A's end does with each hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pushes it into B's hints, then wakes B.
    Deliver,
    /// Wakes B without it (a lost or omitted hint).
    Drop,
    /// Keeps it (in `held`) and wakes B: the row comes first.
    Hold,
    /// Pushes it this many times, then wakes B.
    Duplicate(usize),
    /// Pushes it into B's hints without waking B (B's reader reads the rows only when woken
    /// otherwise: a reader behind).
    DeliverSilently,
    /// Pushes it from a new OS thread (outside any runtime, as the fs watch's thread) and from
    /// the committing task, then wakes B.
    Threads,
}

#[derive(Debug)]
pub struct Sending {
    pub peer: Arc<Receiving>,
    pub own: Arc<Notify>,
    pub mode: Mutex<Mode>,
    pub held: Mutex<Vec<String>>,
    pub threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub committed: AtomicU64,
}

impl Sending {
    pub fn new(peer: Arc<Receiving>, mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            peer,
            own: Arc::default(),
            mode: Mutex::new(mode),
            held: Mutex::default(),
            threads: Mutex::default(),
            committed: AtomicU64::new(0),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Joins the threads `Mode::Threads` started.
    pub fn join_threads(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for thread in threads {
            thread.join().expect("a pushing thread panicked");
        }
    }
}

impl LogWatcher for Sending {
    fn notify(&self) {
        self.peer.wakes.notify_one();
    }

    fn wakes(&self) -> Arc<Notify> {
        Arc::clone(&self.own)
    }

    fn notify_committed(&self, operation: &Operation) {
        self.committed.fetch_add(1, Relaxed);
        let hint = encode_hint(operation).expect("an operation encodes");
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Deliver => self.peer.hints.push(hint),
            Mode::Drop => {}
            Mode::DeliverSilently => {
                self.peer.hints.push(hint);
                return;
            }
            Mode::Hold => self.held.lock().unwrap().push(hint),
            Mode::Duplicate(n) => {
                for _ in 0..n {
                    self.peer.hints.push(hint.clone());
                }
            }
            Mode::Threads => {
                let hints = Arc::clone(&self.peer.hints);
                let copy = hint.clone();
                self.threads
                    .lock()
                    .unwrap()
                    .push(std::thread::spawn(move || hints.push(copy)));
                self.peer.hints.push(hint);
            }
        }
        self.peer.wakes.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// Completions

/// A listener's extra behaviour.
pub type Hook = Box<dyn Fn(&Operation) + Send + Sync>;

/// What a hub completed, by uuid: how many times.
#[derive(Default)]
pub struct Seen {
    pub by_uuid: Mutex<HashMap<Uuid, u32>>,
    pub changed: Notify,
    /// Called in the listener, after counting (for re-entrancy attacks).
    pub hook: OnceLock<Hook>,
}

impl Seen {
    pub fn count(&self, uuid: &Uuid) -> u32 {
        self.by_uuid.lock().unwrap().get(uuid).copied().unwrap_or(0)
    }

    /// Waits (up to `secs`) until `uuid` completed at least once; its count, or 0.
    pub async fn wait(&self, uuid: &Uuid, secs: u64) -> u32 {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let count = self.count(uuid);
                if count > 0 {
                    return count;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .unwrap_or(0)
    }

    pub fn all(&self) -> HashMap<Uuid, u32> {
        self.by_uuid.lock().unwrap().clone()
    }
}

struct Listener(Arc<Seen>);

impl CompletionListener for Listener {
    fn on_operation_completed(&self, operation: &Operation, _local: bool) {
        *self
            .0
            .by_uuid
            .lock()
            .unwrap()
            .entry(operation.uuid)
            .or_insert(0) += 1;
        if let Some(hook) = self.0.hook.get() {
            hook(operation);
        }
        self.0.changed.notify_waiters();
    }
}

/// A watcher started already.
#[derive(Debug)]
pub struct Started(pub Arc<dyn LogWatcher>);

impl ofx_core::LogWatcherFactory for Started {
    fn start(
        &self,
        _host_id: HostId,
        _stop: tokio_util::sync::CancellationToken,
    ) -> ofx_core::ScopeFuture<
        '_,
        Result<Arc<dyn LogWatcher>, Box<dyn std::error::Error + Send + Sync>>,
    > {
        let watcher = Arc::clone(&self.0);
        Box::pin(async move { Ok(watcher) })
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts

pub struct Host {
    pub hub: Hub,
    pub db: DbHub<Sqlite>,
    pub accounts: Arc<Accounts>,
    pub seen: Arc<Seen>,
    pub reader: Option<LogReader>,
    /// How many replays of rows failed (`HubEvent::ReplayFailed`; a hint's failure is none).
    pub replay_failed: tokio::sync::watch::Receiver<u64>,
}

impl Host {
    /// A host; `attach` false leaves the service out (attach it with `attach()`).
    pub async fn open(
        path: &str,
        settings: DbSettings,
        read: bool,
        watcher: Arc<dyn LogWatcher>,
        attach: bool,
    ) -> Self {
        let mut settings = settings;
        settings.read_log = read;
        settings.events.process = false;
        settings.trim = false;
        let db = DbHub::<Sqlite>::open(path, settings).await.unwrap();
        db.set_watcher(Started(watcher)).unwrap();
        let seen = Arc::new(Seen::default());
        let (failed, replay_failed) = tokio::sync::watch::channel(0_u64);
        let hub = Hub::builder()
            .completion_listener(Listener(Arc::clone(&seen)))
            .event_listener(move |event: &ofx_core::HubEvent| {
                if matches!(event, ofx_core::HubEvent::ReplayFailed { .. }) {
                    failed.send_modify(|count| *count += 1);
                }
            })
            .with(db.clone())
            .start()
            .await
            .unwrap();
        let accounts = Arc::new(Accounts {
            hub: hub.clone(),
            db: db.clone(),
        });
        if attach {
            hub.add_service(&accounts).unwrap();
        }
        let reader = db.log_reader(&hub);
        Self {
            hub,
            db,
            accounts,
            seen,
            reader,
            replay_failed,
        }
    }

    pub fn attach(&self) {
        self.hub.add_service(&self.accounts).unwrap();
    }

    pub fn reader(&self) -> &LogReader {
        self.reader.as_ref().unwrap()
    }

    pub fn stats(&self) -> &ofx_diesel::ReaderStats {
        self.reader().stats()
    }

    /// A deposit; its operation's uuid and sequence.
    pub async fn deposit(&self, id: i64, amount: i64) -> (Uuid, i64) {
        let executed = self
            .hub
            .commander()
            .call_committed(Dep {
                id,
                amount,
                nonce: 0,
            })
            .await
            .unwrap();
        (
            executed.operation,
            executed.committed.unwrap().sequence.unwrap(),
        )
    }

    /// A deposit with a fresh nonce; its operation's uuid, sequence and nonce.
    pub async fn deposit_counted(&self, id: i64, amount: i64) -> (Uuid, i64, u64) {
        let nonce = NONCES.fetch_add(1, Relaxed);
        let executed = self
            .hub
            .commander()
            .call_committed(Dep { id, amount, nonce })
            .await
            .unwrap();
        (
            executed.operation,
            executed.committed.unwrap().sequence.unwrap(),
            nonce,
        )
    }

    /// The balance, cached, and its computed value.
    pub async fn cached(&self, id: i64) -> (i64, Computed) {
        let (value, computed) = ofx_core::capture(self.accounts.balance(id)).await.unwrap();
        (value.unwrap(), computed)
    }
}

/// Settings: B polls once an hour (only wake-ups and hints move it) unless a test says so.
pub fn settings() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings.poll_period_with_watcher = Duration::from_secs(3600);
    settings.replay_retry_window = Duration::from_secs(30);
    settings
}

/// A fresh SQLite file with the accounts table.
pub async fn sqlite_file() -> String {
    let path =
        std::env::temp_dir().join(format!("ofx-hints-hostile-{}.db", Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<Sqlite>::open(&path, settings()).await.unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY NOT NULL, balance BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    path
}

/// The pair: A (writes, hints as `mode`), B (reads, service attached if `attach`).
pub struct Pair {
    pub path: String,
    pub a: Host,
    pub b: Host,
    pub on_a: Arc<Sending>,
    pub on_b: Arc<Receiving>,
}

pub async fn pair(mode: Mode) -> Pair {
    pair_with(mode, settings(), true).await
}

pub async fn pair_with(mode: Mode, b_settings: DbSettings, attach: bool) -> Pair {
    let path = sqlite_file().await;
    let on_b = Arc::new(Receiving::default());
    let on_a = Sending::new(Arc::clone(&on_b), mode);
    let a = Host::open(&path, settings(), false, on_a.clone(), true).await;
    let b = Host::open(&path, b_settings, true, on_b.clone(), attach).await;
    b.reader().wait_for(0).await;
    Pair {
        path,
        a,
        b,
        on_a,
        on_b,
    }
}

/// Whether `computed` is invalidated within `secs`.
pub async fn invalidated_within(computed: &Computed, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), computed.when_invalidated())
        .await
        .is_ok()
}

/// A deposit operation of `id` as another host would hint it.
pub fn forged(uuid: Uuid, id: i64, amount: i64, sequence: Option<i64>) -> Operation {
    Operation::new(
        uuid,
        HostId::from_string("elsewhere"),
        DEPOSIT,
        serde_json::json!({ "id": id, "amount": amount }),
    )
    .with_commit(sequence, SystemTime::now())
}

pub fn hint(operation: &Operation) -> String {
    encode_hint(operation).unwrap()
}

#[derive(QueryableByName)]
struct Big {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

pub async fn query_i64(db: &DbHub<Sqlite>, sql: &str) -> i64 {
    let mut connection = db.connection().await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Big>(&mut *connection)
        .await
        .unwrap()
        .n
}

/// The balance in the database (not cached).
pub async fn true_balance(db: &DbHub<Sqlite>, id: i64) -> i64 {
    query_i64(
        db,
        &format!("SELECT COALESCE((SELECT balance FROM accounts WHERE id = {id}), 0) AS n"),
    )
    .await
}

/// Commits, in one transaction, a deposit's data change and its operation row (uuid `uuid`,
/// command `command_id`/`amount`), as another host's framework would; returns the row's index.
pub async fn commit_raw(
    db: &DbHub<Sqlite>,
    uuid: Uuid,
    data_id: i64,
    command_id: i64,
    amount: i64,
) -> i64 {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let sql = format!(
        "BEGIN IMMEDIATE; \
         INSERT INTO accounts (id, balance) VALUES ({data_id}, {amount}) \
           ON CONFLICT(id) DO UPDATE SET balance = balance + {amount}; \
         INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, command_name, \
           command_json, items_json, nested_json) VALUES ('{uuid}', 'elsewhere', {now}, {now}, \
           '{DEPOSIT}', '{{\"id\": {command_id}, \"amount\": {amount}}}', '{{}}', '[]'); \
         COMMIT;"
    );
    db.connection()
        .await
        .unwrap()
        .batch_execute(&sql)
        .await
        .unwrap();
    query_i64(
        db,
        &format!("SELECT idx AS n FROM ofx_operations WHERE uuid = '{uuid}'"),
    )
    .await
}

pub fn stat(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(Relaxed)
}
