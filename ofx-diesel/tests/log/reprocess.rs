//! Reprocessing against real databases: commands that fail for a transient database reason
//! (PostgreSQL serialization failures between concurrent `SERIALIZABLE` transactions, SQLite's
//! `BUSY` when a read transaction's snapshot went stale, a connection cut before `COMMIT`) run
//! again and succeed, their effects once; a commit that happened or is in doubt is never run
//! again.
//!
//! The service increments a tally by read-modify-write (a `SELECT`, then an `UPDATE` of the
//! value read): an increment that ran twice, or was lost, shows in the tally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use ofx_core::{
    Command, CommandContext, ComputeService, EventCounter, Hub, HubEvent, HubEventKind,
    HubEventListener, ReprocessPolicy, command_handler, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

diesel::table! {
    tallies (id) {
        id -> BigInt,
        value -> BigInt,
    }
}

const TALLIES: &str = "CREATE TABLE tallies (id BIGINT PRIMARY KEY NOT NULL, value BIGINT NOT NULL); \
     INSERT INTO tallies (id, value) VALUES (1, 0)";

/// The tally queries of one backend.
pub(crate) trait TallyQueries: Backend {
    fn read_tally(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl std::future::Future<Output = QueryResult<i64>> + Send;
    fn write_tally(
        connection: &mut Self::Connection,
        id: i64,
        value: i64,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
}

macro_rules! tally_queries {
    ($backend:ty) => {
        impl TallyQueries for $backend {
            async fn read_tally(connection: &mut Self::Connection, id: i64) -> QueryResult<i64> {
                tallies::table
                    .find(id)
                    .select(tallies::value)
                    .first(connection)
                    .await
            }

            async fn write_tally(
                connection: &mut Self::Connection,
                id: i64,
                value: i64,
            ) -> QueryResult<usize> {
                diesel::update(tallies::table.find(id))
                    .set(tallies::value.eq(value))
                    .execute(connection)
                    .await
            }
        }
    };
}

#[cfg(feature = "sqlite")]
tally_queries!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
tally_queries!(ofx_diesel::Postgres);

/// Adds one to tally `id`: reads it, then writes the value read plus one. Gated: the first run
/// waits at the service's gate between its read and its write. With a ticket, the first run of
/// each ticket waits at the service's barrier between its read and its write, so that
/// concurrent commands all read before any writes.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "tallies.increment")]
pub(crate) struct Increment {
    pub(crate) id: i64,
    pub(crate) gated: bool,
    pub(crate) ticket: Option<u64>,
}

/// The handler's error: the usual wrapping of the database's errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TallyError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub(crate) struct Tallies<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
    /// Main-branch runs.
    runs: AtomicU64,
    /// Serialization failures (`40001`) the handler's queries met.
    serialization_failures: AtomicU64,
    /// The first gated run arrived at the gate.
    arrived: Notify,
    gate_taken: AtomicBool,
    /// Opens the gate.
    open: Notify,
    /// Where the first runs of ticketed commands meet.
    barrier: Option<tokio::sync::Barrier>,
    tickets: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl<B: Backend> ComputeService for Tallies<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: TallyQueries> Tallies<B> {
    #[command_handler]
    pub(crate) async fn increment(
        &self,
        command: Increment,
        ctx: &CommandContext,
    ) -> Result<i64, TallyError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let mut connection = self.db.operation_connection(ctx).await?;
        let value = self.counted(B::read_tally(&mut connection, command.id).await)?;
        if command.gated && !self.gate_taken.swap(true, Ordering::SeqCst) {
            let open = self.open.notified();
            self.arrived.notify_one();
            open.await;
        }
        if let (Some(ticket), Some(barrier)) = (command.ticket, &self.barrier)
            && self.tickets.lock().unwrap().insert(ticket)
        {
            barrier.wait().await;
        }
        self.counted(B::write_tally(&mut connection, command.id, value + 1).await)?;
        Ok(value + 1)
    }
}

impl<B: Backend> Tallies<B> {
    /// Counts a serialization failure.
    fn counted<T>(&self, result: QueryResult<T>) -> QueryResult<T> {
        if let Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::SerializationFailure,
            _,
        )) = &result
        {
            self.serialization_failures.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn runs(&self) -> u64 {
        AtomicU64::load(&self.runs, Ordering::SeqCst)
    }
}

/// Counts the commands whose first try failed (the retries announcing a second try), and the
/// highest try any command needed.
#[derive(Debug, Clone, Default)]
struct FirstTries {
    failed: Arc<AtomicU64>,
    highest: Arc<AtomicU64>,
}

impl HubEventListener for FirstTries {
    fn on_event(&self, event: &HubEvent) {
        if let HubEvent::CommandRetried { next_try, .. } = event {
            if *next_try == 2 {
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
            self.highest
                .fetch_max(u64::from(*next_try), Ordering::SeqCst);
        }
    }
}

/// Both listeners.
#[derive(Debug, Clone, Default)]
struct Listeners {
    counter: EventCounter,
    first_tries: FirstTries,
}

impl HubEventListener for Listeners {
    fn on_event(&self, event: &HubEvent) {
        self.counter.on_event(event);
        self.first_tries.on_event(event);
    }
}

/// A host running only commands (no reader, no event processor) with the tallies service.
struct TallyHost<B: Backend> {
    tallies: Arc<Tallies<B>>,
    events: Listeners,
}

impl<B: TallyQueries> TallyHost<B> {
    async fn open(url: &str, settings: DbSettings, policy: ReprocessPolicy) -> Self {
        Self::open_with_barrier(url, settings, policy, None).await
    }

    async fn open_with_barrier(
        url: &str,
        settings: DbSettings,
        policy: ReprocessPolicy,
        barrier: Option<usize>,
    ) -> Self {
        let mut settings = settings;
        settings.read_log = false;
        settings.events.process = false;
        let db = DbHub::<B>::open(url, settings).await.unwrap();
        let events = Listeners::default();
        let hub = Hub::builder()
            .with(db.clone())
            .reprocessing(policy)
            .event_listener(events.clone())
            .start()
            .await
            .unwrap();
        let tallies = Arc::new(Tallies {
            hub: hub.clone(),
            db,
            runs: AtomicU64::new(0),
            serialization_failures: AtomicU64::new(0),
            arrived: Notify::new(),
            gate_taken: AtomicBool::new(false),
            open: Notify::new(),
            barrier: barrier.map(tokio::sync::Barrier::new),
            tickets: std::sync::Mutex::default(),
        });
        hub.add_service(&tallies).unwrap();
        Self { tallies, events }
    }

    async fn increment(&self, gated: bool) -> Result<i64, ofx_core::Error> {
        self.tallies
            .hub
            .commander()
            .call(Increment {
                id: 1,
                gated,
                ticket: None,
            })
            .await
    }

    fn retries(&self) -> u64 {
        self.events.counter.count(HubEventKind::CommandRetried)
    }

    async fn tally(&self) -> i64 {
        let mut connection = self.tallies.db.connection().await.unwrap();
        B::read_tally(&mut connection, 1).await.unwrap()
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use ofx_core::ReprocessPolicy;
    use ofx_diesel::{DbHub, Doubt, Error, Postgres};

    use super::{Increment, TALLIES, TallyHost};
    use crate::common::{RawSql, fast, postgres_database};
    use crate::proxy::{Fault, Proxy};

    async fn tallies_database() -> String {
        let url = postgres_database().await;
        let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
        direct.exec(TALLIES).await;
        url
    }

    const COMMANDS: u64 = 200;
    const TASKS: u64 = 8;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_serializable_read_modify_writes_are_retried_and_each_counts_once() {
        let url = tallies_database().await;
        let mut settings = fast();
        settings.serializable = true;
        // Eight transactions waiting at the barrier, and one retrying.
        settings.pool_size = TASKS as usize + 2;
        // Eight transactions on one row: the first tries of each round all read before any
        // writes, so one wins and seven fail; a command may then lose several rounds of retries
        // in a row, and three tries are not enough for each of 200 to win one.
        let policy = ReprocessPolicy::tries(10);
        let host = Arc::new(
            TallyHost::<Postgres>::open_with_barrier(&url, settings, policy, Some(TASKS as usize))
                .await,
        );
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let host = Arc::clone(&host);
            tasks.push(tokio::spawn(async move {
                for round in 0..COMMANDS / TASKS {
                    host.tallies
                        .hub
                        .commander()
                        .call(Increment {
                            id: 1,
                            gated: false,
                            ticket: Some(task * 1_000 + round),
                        })
                        .await
                        .unwrap_or_else(|error| panic!("every increment succeeds: {error:?}"));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let tallies = &host.tallies;
        assert_eq!(
            host.tally().await,
            COMMANDS as i64,
            "each command's effect once, none lost"
        );
        let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
        assert_eq!(
            direct.count("ofx_operations").await,
            COMMANDS as i64,
            "one operation per command"
        );
        let first_tries_failed = host.events.first_tries.failed.load(Ordering::SeqCst);
        let highest_try = host.events.first_tries.highest.load(Ordering::SeqCst);
        let retries = host.retries();
        let failures = tallies.serialization_failures.load(Ordering::SeqCst);
        eprintln!(
            "{COMMANDS} commands from {TASKS} tasks: {first_tries_failed} first tries failed \
             ({:.0} %), {retries} retries in all, {} main-branch runs, {failures} serialization \
             failures seen by the handler; the most tries one command needed: {highest_try}",
            first_tries_failed as f64 * 100.0 / COMMANDS as f64,
            tallies.runs()
        );
        assert!(retries > 0, "concurrent serializable writes conflicted");
        assert!(failures > 0, "the handler met 40001");
        assert!(
            first_tries_failed * 5 >= COMMANDS,
            "at least a fifth of the first tries failed ({first_tries_failed})"
        );
        assert_eq!(
            tallies.runs(),
            COMMANDS + retries,
            "each retry is one more run of the main branch"
        );
    }

    /// A host reaching the tallies through a proxy, and a direct handle to check the server.
    async fn through_proxy(
        settings: ofx_diesel::DbSettings,
    ) -> (Proxy, TallyHost<Postgres>, DbHub<Postgres>) {
        let url = tallies_database().await;
        let proxy = Proxy::start(&url).await;
        let host =
            TallyHost::<Postgres>::open(proxy.url(), settings, ReprocessPolicy::default()).await;
        let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
        (proxy, host, direct)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_cut_before_it_reached_the_server_is_run_again_once() {
        let (proxy, host, direct) = through_proxy(fast()).await;
        proxy.arm(Fault::CutBeforeCommit);
        assert_eq!(host.increment(false).await.unwrap(), 1);
        assert_eq!(proxy.intercepted(), 1);
        assert_eq!(
            host.tallies.runs(),
            2,
            "the command ran again after the cut"
        );
        assert_eq!(host.retries(), 1);
        assert_eq!(direct.count("tallies WHERE value = 1").await, 1, "once");
        assert_eq!(direct.count("ofx_operations").await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_verified_after_its_reply_was_cut_off_is_not_run_again() {
        let (proxy, host, direct) = through_proxy(fast()).await;
        for round in 1..=3 {
            proxy.arm(Fault::ForwardThenCutClient);
            let value = host
                .increment(false)
                .await
                .unwrap_or_else(|error| panic!("round {round}: the commit happened: {error:?}"));
            assert_eq!(value, round);
            assert_eq!(proxy.intercepted(), round as u64);
            assert_eq!(
                host.tallies.runs(),
                round as u64,
                "round {round}: the main branch ran once"
            );
            assert_eq!(host.retries(), 0);
            assert_eq!(
                direct
                    .count(&format!("tallies WHERE value = {round}"))
                    .await,
                1
            );
            assert_eq!(direct.count("ofx_operations").await, round);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_in_doubt_is_returned_and_not_run_again() {
        let mut settings = fast();
        settings.commit_verification = Duration::from_secs(1);
        let (proxy, host, direct) = through_proxy(settings).await;
        proxy.arm(Fault::CutClientAndHold);
        let error = host
            .increment(false)
            .await
            .expect_err("the commit is held past the verification period");
        assert!(
            matches!(error, ofx_core::Error::CommitInDoubt { .. }),
            "{error:?}"
        );
        assert!(
            matches!(
                error.scope_error::<Error>(),
                Some(Error::CommitInDoubt {
                    reason: Doubt::InProgress(_),
                    ..
                })
            ),
            "{error:?}"
        );
        assert!(!host.tallies.hub.is_transient(&error));
        assert_eq!(host.tallies.runs(), 1, "never run again");
        assert_eq!(host.retries(), 0);
        assert_eq!(direct.count("tallies WHERE value = 0").await, 1);
        // The held COMMIT happens when released: running the command again would have counted
        // it twice.
        tokio::time::timeout(Duration::from_secs(10), proxy.release_and_await_reply())
            .await
            .expect("the released COMMIT was answered within 10 s");
        assert_eq!(direct.count("tallies WHERE value = 1").await, 1);
        assert_eq!(direct.count("ofx_operations").await, 1);
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::time::Duration;

    use diesel_async::SimpleAsyncConnection;
    use ofx_core::ReprocessPolicy;
    use ofx_diesel::{DbHub, Sqlite};

    use super::{TALLIES, TallyHost};
    use crate::common::{RawSql, fast, sqlite_file};

    /// SQLite operations begin `IMMEDIATE`: they hold the write lock from their start, so a
    /// command's reads are never stale. While another connection holds the write lock longer
    /// than the busy timeout, the command's `BEGIN` fails BUSY (transient): it is run again,
    /// and reads what that connection committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_lock_held_by_another_connection_is_busy_and_run_again() {
        let path = sqlite_file().await;
        let direct = DbHub::<Sqlite>::open(&path, fast()).await.unwrap();
        direct.exec(TALLIES).await;
        let host = std::sync::Arc::new(
            TallyHost::<Sqlite>::open(&path, fast(), ReprocessPolicy::default()).await,
        );
        let mut holder = direct.connection().await.unwrap();
        holder
            .batch_execute("BEGIN IMMEDIATE; UPDATE tallies SET value = value + 100 WHERE id = 1")
            .await
            .unwrap();
        let call = tokio::spawn({
            let host = std::sync::Arc::clone(&host);
            async move { host.increment(false).await }
        });
        // The first try waits for the write lock for the busy timeout (5 s), fails BUSY, and
        // is run again.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while host.retries() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first try did not fail BUSY within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        holder.batch_execute("COMMIT").await.unwrap();
        let value = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the second try ends")
            .unwrap()
            .unwrap();
        assert_eq!(
            value, 101,
            "the second try read the other connection's write"
        );
        assert_eq!(host.tallies.runs(), 2, "the first try failed with BUSY");
        assert_eq!(host.retries(), 1);
        assert_eq!(direct.count("tallies WHERE value = 101").await, 1);
        assert_eq!(direct.count("ofx_operations").await, 1);
    }
}
