//! The operation lifecycle against a real log: a reader stopped and started again resumes, a
//! caller waits for another host to replay its commit, a panicking invalidation branch does not
//! stop a reader, a replay is retried until its service is attached, and two databases on one
//! hub each log their own operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_core::{
    Command, CommandContext, ComputeService, EventCounter, Hub, HubEventKind, capture,
    command_handler, compute_method, invalidate, service,
};
use ofx_diesel::{Backend, DbHub, Error};
use serde::{Deserialize, Serialize};

use crate::common::{fast, invalidated};

/// Notes `id`: logged through the database scope; its invalidation branch panics when told to.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "lifecycle.note")]
pub(crate) struct Note {
    id: i64,
    panic: bool,
}

/// Notes, on any backend: one generic service.
pub(crate) struct Notes<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
    written: AtomicU64,
}

impl<B: Backend> ComputeService for Notes<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: Backend> Notes<B> {
    #[compute_method]
    async fn count(&self, id: i64) -> u64 {
        let _ = id;
        self.written.load(Ordering::SeqCst)
    }

    #[command_handler]
    async fn note(&self, command: Note, ctx: &CommandContext) -> Result<i64, Error> {
        invalidate! {
            self.count(command.id);
            if command.panic { panic!("this invalidation branch panics"); }
        }
        let _ = command.panic; // read by the invalidation branch
        drop(self.db.operation_connection(ctx).await?);
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(command.id)
    }
}

/// A host: the database attached to a hub, the notes service (attached unless told not to).
struct NotesHost<B: Backend> {
    db: DbHub<B>,
    notes: Arc<Notes<B>>,
}

impl<B: Backend> NotesHost<B> {
    async fn start(url: &str, attach_service: bool) -> Self {
        Self::start_with(url, attach_service, EventCounter::new()).await
    }

    async fn start_with(url: &str, attach_service: bool, events: EventCounter) -> Self {
        let db = DbHub::<B>::open(url, fast()).await.unwrap();
        let hub = Hub::builder()
            .event_listener(events)
            .with(db.clone())
            .start()
            .await
            .unwrap();
        let notes = Arc::new(Notes {
            hub: hub.clone(),
            db: db.clone(),
            written: AtomicU64::new(0),
        });
        if attach_service {
            hub.add_service(&notes).unwrap();
        }
        Self { db, notes }
    }

    fn hub(&self) -> &Hub {
        &self.notes.hub
    }

    /// Notes `id`; returns the operation's log sequence.
    async fn note(&self, id: i64, panic: bool) -> i64 {
        let command = Note { id, panic };
        let executed = self
            .hub()
            .commander()
            .call_committed(command)
            .await
            .unwrap();
        executed.committed.unwrap().sequence.unwrap()
    }

    fn reader(&self) -> ofx_diesel::LogReader {
        self.db.log_reader(self.hub()).unwrap()
    }
}

pub(crate) async fn a_restarted_reader_resumes_where_it_stopped<B: Backend>(url: &str) {
    let a = NotesHost::<B>::start(url, true).await;
    let b = NotesHost::<B>::start(url, true).await;
    let mut cached = Vec::new();
    for id in 0..5 {
        cached.push(capture(b.notes.count(id)).await.unwrap().1);
    }
    let reader = b.reader();
    reader.stop();
    assert_eq!(reader.stats().health.ended().await, TaskState::Stopped);
    // Committed while host B reads nothing.
    let mut last = 0;
    for id in 0..5 {
        last = a.note(id, false).await;
    }
    let restarted = b.db.start_log_reader(b.hub()).await.unwrap();
    restarted
        .wait_replayed(last, Duration::from_secs(10))
        .await
        .unwrap();
    for computed in &cached {
        assert!(!computed.is_consistent(), "{computed:?} was replayed");
    }
    assert_eq!(restarted.stats().replayed.load(Ordering::Relaxed), 5);
    assert_eq!(
        restarted
            .stats()
            .start_invalidations
            .load(Ordering::Relaxed),
        0,
        "it resumed: nothing to invalidate wholesale"
    );
}

pub(crate) async fn a_caller_waits_until_another_host_replayed_its_commit<B: Backend>(url: &str) {
    let a = NotesHost::<B>::start(url, true).await;
    let b = NotesHost::<B>::start(url, true).await;
    let (_, cached) = capture(b.notes.count(1)).await.unwrap();
    let sequence = a.note(1, false).await;
    b.db.wait_replayed(b.hub(), sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!cached.is_consistent(), "replayed when the wait returned");
    let error =
        b.db.wait_replayed(b.hub(), sequence + 1_000, Duration::from_millis(50))
            .await
            .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ReplayTimeout {
                sequence: s,
                blocked_by: ofx_diesel::ReplayBlock::NotRead { .. },
                ..
            } if s == sequence + 1_000
        ),
        "{error:?}"
    );
}

pub(crate) async fn a_panicking_invalidation_branch_does_not_stop_the_reader<B: Backend>(
    url: &str,
) {
    let a = NotesHost::<B>::start(url, true).await;
    let b = NotesHost::<B>::start(url, true).await;
    let (_, first) = capture(b.notes.count(1)).await.unwrap();
    let (_, second) = capture(b.notes.count(2)).await.unwrap();
    a.note(1, true).await; // host A's own pass panics too: the caller still gets its result
    assert_eq!(a.hub().notifier().panic_count(), 1);
    invalidated(&first).await;
    let sequence = a.note(2, false).await;
    b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        !second.is_consistent(),
        "later operations are still replayed"
    );
    assert_eq!(b.hub().notifier().panic_count(), 1);
    assert_eq!(b.reader().stats().health.state(), TaskState::Running);
}

pub(crate) async fn a_replay_is_retried_until_its_service_is_attached<B: Backend>(url: &str) {
    let a = NotesHost::<B>::start(url, true).await;
    // Host B's reader runs; its service is not attached yet (it still computes).
    let events = EventCounter::new();
    let b = NotesHost::<B>::start_with(url, false, events.clone()).await;
    let (_, cached) = capture(b.notes.count(3)).await.unwrap();
    let sequence = a.note(3, false).await;
    let reader = b.reader();
    tokio::time::timeout(
        Duration::from_secs(10),
        events.wait_until(|events| events.count(HubEventKind::ReplayFailed) >= 2),
    )
    .await
    .expect("the replay fails, and is tried again");
    assert!(cached.is_consistent(), "not replayed yet");
    let error = reader
        .wait_replayed(sequence, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ReplayTimeout {
                blocked_by: ofx_diesel::ReplayBlock::Retry { .. },
                ..
            }
        ),
        "not counted as replayed while it is retried: {error}"
    );
    b.hub().add_service(&b.notes).unwrap();
    reader
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!cached.is_consistent());
    assert!(reader.stats().replay_retries.load(Ordering::Relaxed) >= 2);
    assert_eq!(reader.stats().replay_failures.load(Ordering::Relaxed), 0);
    assert_eq!(reader.stats().bad_rows.load(Ordering::Relaxed), 0);
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use ofx_diesel::Sqlite;

    use crate::common::sqlite_file;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_reader_resumes_where_it_stopped() {
        super::a_restarted_reader_resumes_where_it_stopped::<Sqlite>(&sqlite_file().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_waits_until_another_host_replayed_its_commit() {
        super::a_caller_waits_until_another_host_replayed_its_commit::<Sqlite>(
            &sqlite_file().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_invalidation_branch_does_not_stop_the_reader() {
        super::a_panicking_invalidation_branch_does_not_stop_the_reader::<Sqlite>(
            &sqlite_file().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_is_retried_until_its_service_is_attached() {
        super::a_replay_is_retried_until_its_service_is_attached::<Sqlite>(&sqlite_file().await)
            .await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use ofx_diesel::Postgres;

    use crate::common::postgres_database;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_reader_resumes_where_it_stopped() {
        super::a_restarted_reader_resumes_where_it_stopped::<Postgres>(&postgres_database().await)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_waits_until_another_host_replayed_its_commit() {
        super::a_caller_waits_until_another_host_replayed_its_commit::<Postgres>(
            &postgres_database().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_invalidation_branch_does_not_stop_the_reader() {
        super::a_panicking_invalidation_branch_does_not_stop_the_reader::<Postgres>(
            &postgres_database().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_is_retried_until_its_service_is_attached() {
        super::a_replay_is_retried_until_its_service_is_attached::<Postgres>(
            &postgres_database().await,
        )
        .await;
    }
}

/// Two databases on one hub: each operation is logged in the database its handler wrote to,
/// and each database's reader replays its own.
#[cfg(feature = "sqlite")]
mod two_databases {
    use std::sync::Arc;
    use std::time::Duration;

    use diesel_async::SimpleAsyncConnection;
    use ofx_core::{
        Command, CommandContext, ComputeService, Hub, capture, command_handler, compute_method,
        invalidate, service,
    };
    use ofx_diesel::{DbHub, Error, Sqlite};
    use serde::{Deserialize, Serialize};

    use crate::common::{RawSql, fast, sqlite_file};

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.ledger_write")]
    struct LedgerWrite {
        /// 0 or 1: which database; 2: both (refused).
        target: u8,
    }

    struct Ledger {
        hub: Hub,
        dbs: [DbHub<Sqlite>; 2],
    }

    impl ComputeService for Ledger {
        fn hub(&self) -> &Hub {
            &self.hub
        }
    }

    #[service]
    impl Ledger {
        #[compute_method]
        async fn rows(&self, target: u8) -> i64 {
            self.dbs[usize::from(target)].count("entries").await
        }

        #[command_handler]
        async fn write(&self, command: LedgerWrite, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.rows(command.target);
            }
            for target in 0..2_u8 {
                if command.target == target || command.target == 2 {
                    let mut connection = self.dbs[usize::from(target)]
                        .operation_connection(ctx)
                        .await?;
                    connection
                        .batch_execute("INSERT INTO entries (note) VALUES ('x')")
                        .await
                        .map_err(ofx_diesel::Error::Database)?;
                }
            }
            Ok(())
        }
    }

    async fn host(paths: &[String; 2]) -> Arc<Ledger> {
        let dbs = [
            DbHub::<Sqlite>::open(&paths[0], fast()).await.unwrap(),
            DbHub::<Sqlite>::open(&paths[1], fast()).await.unwrap(),
        ];
        let hub = Hub::builder()
            .with(dbs[0].clone())
            .with(dbs[1].clone())
            .start()
            .await
            .unwrap();
        let ledger = Arc::new(Ledger {
            hub: hub.clone(),
            dbs,
        });
        hub.add_service(&ledger).unwrap();
        ledger
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_databases_on_one_hub_each_log_their_own_operations() {
        let paths = [sqlite_file().await, sqlite_file().await];
        for path in &paths {
            let db = DbHub::<Sqlite>::open(path, fast()).await.unwrap();
            db.exec("CREATE TABLE entries (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
                .await;
        }
        let a = host(&paths).await;
        let b = host(&paths).await;
        let (_, first_on_b) = capture(b.rows(0)).await.unwrap();
        let (_, second_on_b) = capture(b.rows(1)).await.unwrap();

        let one = a
            .hub
            .commander()
            .call_committed(LedgerWrite { target: 0 })
            .await
            .unwrap();
        let two = a
            .hub
            .commander()
            .call_committed(LedgerWrite { target: 1 })
            .await
            .unwrap();
        let (one, two) = (
            one.committed.unwrap().sequence.unwrap(),
            two.committed.unwrap().sequence.unwrap(),
        );
        assert_eq!(a.dbs[0].count("ofx_operations").await, 1);
        assert_eq!(a.dbs[1].count("ofx_operations").await, 1);
        for (db, sequence) in [(&b.dbs[0], one), (&b.dbs[1], two)] {
            db.wait_replayed(&b.hub, sequence, Duration::from_secs(10))
                .await
                .unwrap();
        }
        assert!(!first_on_b.is_consistent());
        assert!(!second_on_b.is_consistent());

        // One operation writes to one database: a second one is refused, and nothing of it
        // remains in either.
        let error = a
            .hub
            .commander()
            .call(LedgerWrite { target: 2 })
            .await
            .unwrap_err();
        let source = error.handler_error::<Error>();
        assert!(
            matches!(
                source,
                Some(Error::Scope(ofx_core::Error::ScopeConflict { .. }))
            ),
            "{error:?}"
        );
        for db in &a.dbs {
            assert_eq!(db.count("entries").await, 1);
            assert_eq!(db.count("ofx_operations").await, 1);
        }
    }
}

/// Wiring mistakes are errors, never a silently ignored watcher or reader.
#[cfg(feature = "sqlite")]
mod wiring {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use ofx_core::{Hub, capture};
    use ofx_diesel::{DbHub, Error, Sqlite};

    use super::{Note, Notes};
    use crate::common::{Started, fast, sqlite_file};

    #[derive(Debug, Default)]
    struct Quiet(Arc<tokio::sync::Notify>);

    impl ofx_core::LogWatcher for Quiet {
        fn notify(&self) {}

        fn wakes(&self) -> Arc<tokio::sync::Notify> {
            Arc::clone(&self.0)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_set_after_the_hub_started_is_refused() {
        let db = DbHub::<Sqlite>::open(&sqlite_file().await, fast())
            .await
            .unwrap();
        let _hub = Hub::builder().with(db.clone()).start().await.unwrap();
        let error = db
            .set_watcher(Started(Arc::new(Quiet::default())))
            .unwrap_err();
        assert!(matches!(error, Error::AlreadyAttached), "{error:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_on_a_hub_the_database_is_not_attached_to_is_refused() {
        let db = DbHub::<Sqlite>::open(&sqlite_file().await, fast())
            .await
            .unwrap();
        let hub = Hub::new().unwrap();
        let notes = Arc::new(Notes {
            hub: hub.clone(),
            db: db.clone(),
            written: AtomicU64::new(0),
        });
        hub.add_service(&notes).unwrap();
        let error = hub
            .commander()
            .call(Note {
                id: 1,
                panic: false,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(error.handler_error::<Error>(), Some(Error::NotAttached)),
            "{error:?}"
        );
        assert_eq!(notes.written.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_reader_on_a_hub_with_cached_values_invalidates_them_and_says_so() {
        let mut settings = fast();
        settings.read_log = false;
        let db = DbHub::<Sqlite>::open(&sqlite_file().await, settings)
            .await
            .unwrap();
        let hub = Hub::builder().with(db.clone()).start().await.unwrap();
        let notes = Arc::new(Notes {
            hub: hub.clone(),
            db: db.clone(),
            written: AtomicU64::new(0),
        });
        // Computed before any reader followed the log: what committed meanwhile is unknown.
        let (_, cached) = capture(notes.count(1)).await.unwrap();
        let reader = db.start_log_reader(&hub).await.unwrap();
        assert!(!cached.is_consistent());
        assert_eq!(
            reader.stats().start_invalidations.load(Ordering::Relaxed),
            1
        );
    }
}

/// A nested command that fails leaves no write, even when the outer handler swallows its error.
mod nested {
    use std::sync::Arc;

    use diesel_async::SimpleAsyncConnection;
    use ofx_core::{
        Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
        service,
    };
    use ofx_diesel::{DbHub, Error};
    use serde::{Deserialize, Serialize};

    use crate::common::{AccountQueries, RawSql, fast};

    /// Credits `id` in the outer command, then credits `id + 1` in a nested one that may fail
    /// or panic after writing; the outer handler ignores the nested outcome.
    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.transfer")]
    pub(crate) struct Transfer {
        pub(crate) id: i64,
        pub(crate) nested: Outcome,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.credit")]
    pub(crate) struct Credit {
        id: i64,
        outcome: Outcome,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub(crate) enum Outcome {
        Succeed,
        Fail,
        Panic,
    }

    pub(crate) struct Bank<B: AccountQueries> {
        hub: Hub,
        db: DbHub<B>,
        /// Orders two nested commands running at the same time.
        first_wrote: tokio::sync::Notify,
        second_done: tokio::sync::Notify,
        /// What the second of them got.
        second_error: std::sync::Mutex<Option<String>>,
    }

    /// Runs two nested `Step`s at the same time: the first writes, then fails once the second
    /// tried to write.
    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.pair")]
    pub(crate) struct Pair {
        id: i64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.step")]
    pub(crate) struct Step {
        id: i64,
        first: bool,
    }

    /// Writes `id`, then (in a nested command) writes `id + 1` and hits a unique violation on
    /// `id`, which the nested command swallows; then writes `id + 2`.
    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.swallow")]
    pub(crate) struct Swallow {
        id: i64,
    }

    /// Writes `id`, then rolls the operation's transaction back itself (a misuse).
    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.ends_transaction")]
    pub(crate) struct EndsTransaction {
        id: i64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(output = (), name = "lifecycle.clash")]
    pub(crate) struct Clash {
        id: i64,
    }

    impl<B: AccountQueries> ComputeService for Bank<B> {
        fn hub(&self) -> &Hub {
            &self.hub
        }
    }

    #[service]
    impl<B: AccountQueries> Bank<B> {
        #[compute_method]
        pub(crate) async fn balance(&self, id: i64) -> i64 {
            let mut connection = self.db.connection().await.unwrap();
            B::read_balance(&mut connection, id)
                .await
                .unwrap()
                .unwrap_or(0)
        }

        #[command_handler]
        async fn transfer(&self, command: Transfer, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id);
            }
            credit(&self.db, ctx, command.id).await?;
            // Whatever the nested command did, this one carries on.
            let _ = ctx
                .hub()
                .commander()
                .call(Credit {
                    id: command.id + 1,
                    outcome: command.nested,
                })
                .await;
            Ok(())
        }

        #[command_handler]
        async fn pair(&self, command: Pair, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id);
            }
            let commander = ctx.hub().commander();
            let (first, second) = tokio::join!(
                commander.call(Step {
                    id: command.id,
                    first: true
                }),
                commander.call(Step {
                    id: command.id + 1,
                    first: false
                }),
            );
            assert!(first.is_err(), "the first step fails");
            *self.second_error.lock().unwrap() = second.err().map(|error| error.to_string());
            Ok(())
        }

        #[command_handler]
        async fn step(&self, command: Step, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id);
            }
            if command.first {
                credit(&self.db, ctx, command.id).await?;
                self.first_wrote.notify_one();
                self.second_done.notified().await;
                return Err(Error::ConnectionInUse); // any error
            }
            self.first_wrote.notified().await;
            let written = credit(&self.db, ctx, command.id).await;
            self.second_done.notify_one();
            written
        }

        #[command_handler]
        async fn swallow(&self, command: Swallow, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id);
            }
            credit(&self.db, ctx, command.id).await?;
            let nested = ctx.hub().commander().call(Clash { id: command.id }).await;
            assert!(nested.is_err(), "the nested command failed at its release");
            credit(&self.db, ctx, command.id + 2).await
        }

        #[command_handler]
        async fn ends_transaction(
            &self,
            command: EndsTransaction,
            ctx: &CommandContext,
        ) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id);
            }
            credit(&self.db, ctx, command.id).await?;
            let mut connection = self.db.operation_connection(ctx).await?;
            <<B::Connection as diesel_async::AsyncConnection>::TransactionManager as diesel_async::TransactionManager<B::Connection>>::rollback_transaction(
                &mut connection,
            )
            .await
            .map_err(Error::Database)?;
            Ok(())
        }

        #[command_handler]
        async fn clash(&self, command: Clash, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id + 1);
            }
            credit(&self.db, ctx, command.id + 1).await?;
            // A unique violation, swallowed: the transaction is aborted on PostgreSQL.
            let _ = credit(&self.db, ctx, command.id).await;
            Ok(())
        }

        #[command_handler]
        async fn credit(&self, command: Credit, ctx: &CommandContext) -> Result<(), Error> {
            invalidate! {
                self.balance(command.id);
            }
            credit(&self.db, ctx, command.id).await?;
            match command.outcome {
                Outcome::Succeed => Ok(()),
                Outcome::Fail => Err(Error::ConnectionInUse), // any error
                Outcome::Panic => panic!("the nested command panics after writing"),
            }
        }
    }

    async fn credit<B: AccountQueries>(
        db: &DbHub<B>,
        ctx: &CommandContext,
        id: i64,
    ) -> Result<(), Error> {
        let mut connection = db.operation_connection(ctx).await?;
        connection
            .batch_execute(&format!(
                "INSERT INTO accounts (id, balance) VALUES ({id}, 5)"
            ))
            .await
            .map_err(Error::Database)?;
        Ok(())
    }

    async fn bank<B: AccountQueries>(url: &str) -> Arc<Bank<B>> {
        let db = DbHub::<B>::open(url, fast()).await.unwrap();
        let hub = Hub::builder().with(db.clone()).start().await.unwrap();
        let bank = Arc::new(Bank {
            hub: hub.clone(),
            db,
            first_wrote: tokio::sync::Notify::new(),
            second_done: tokio::sync::Notify::new(),
            second_error: std::sync::Mutex::new(None),
        });
        hub.add_service(&bank).unwrap();
        bank
    }

    pub(crate) async fn a_failed_nested_command_leaves_no_write<B: AccountQueries>(url: &str)
    where
        DbHub<B>: RawSql,
    {
        let a = bank::<B>(url).await;
        let b = bank::<B>(url).await;
        for (round, nested) in [Outcome::Fail, Outcome::Panic, Outcome::Succeed]
            .into_iter()
            .enumerate()
        {
            let id = 10 * i64::try_from(round).unwrap();
            assert_eq!(b.balance(id + 1).await, 0);
            let executed = a
                .hub
                .commander()
                .call_committed(Transfer { id, nested })
                .await
                .unwrap();
            let kept = a.db.count(&format!("accounts WHERE id = {}", id + 1)).await;
            assert_eq!(a.db.count(&format!("accounts WHERE id = {id}")).await, 1);
            assert_eq!(
                kept,
                i64::from(nested == Outcome::Succeed),
                "{nested:?}: the nested write is kept only if it succeeded"
            );
            b.db.wait_replayed(
                &b.hub,
                executed.committed.unwrap().sequence.unwrap(),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap();
            // Every host serves what the database holds.
            assert_eq!(a.balance(id + 1).await, 5 * kept);
            assert_eq!(b.balance(id + 1).await, 5 * kept);
        }
    }

    pub(crate) async fn nested_commands_at_the_same_time_cannot_both_write<B: AccountQueries>(
        url: &str,
    ) where
        DbHub<B>: RawSql,
    {
        let a = bank::<B>(url).await;
        a.hub.commander().call(Pair { id: 100 }).await.unwrap();
        let refused = a.second_error.lock().unwrap().clone().unwrap();
        assert!(refused.contains("one after the other"), "{refused}");
        // The first step's write was rolled back with it; the second never wrote.
        assert_eq!(a.db.count("accounts WHERE id IN (100, 101)").await, 0);
        assert_eq!(a.db.count("ofx_operations").await, 1);
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nested_commands_at_the_same_time_cannot_both_write_on_sqlite() {
        nested_commands_at_the_same_time_cannot_both_write::<ofx_diesel::Sqlite>(
            &crate::common::sqlite_file().await,
        )
        .await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nested_commands_at_the_same_time_cannot_both_write_on_postgres() {
        nested_commands_at_the_same_time_cannot_both_write::<ofx_diesel::Postgres>(
            &crate::common::postgres_database().await,
        )
        .await;
    }

    /// A handler that ends the operation's transaction itself gets a typed error at commit, and
    /// nothing of the operation is stored.
    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_that_ends_the_operations_transaction_is_refused_at_commit() {
        let url = crate::common::sqlite_file().await;
        let a = bank::<ofx_diesel::Sqlite>(&url).await;
        let error = a
            .hub
            .commander()
            .call(EndsTransaction { id: 300 })
            .await
            .unwrap_err();
        assert!(
            matches!(error.scope_error::<Error>(), Some(Error::Savepoint(_))),
            "{error:?}"
        );
        assert_eq!(a.db.count("accounts WHERE id = 300").await, 0);
        assert_eq!(a.db.count("ofx_operations").await, 0);
        // The next command works.
        a.hub
            .commander()
            .call(Transfer {
                id: 310,
                nested: Outcome::Succeed,
            })
            .await
            .unwrap();
    }

    /// A nested command that swallows its own database error fails at its end, its writes
    /// undone, and the outer command goes on and commits.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nested_command_that_swallows_its_own_database_error_is_undone() {
        let url = crate::common::postgres_database().await;
        let a = bank::<ofx_diesel::Postgres>(&url).await;
        a.hub.commander().call(Swallow { id: 200 }).await.unwrap();
        assert_eq!(a.db.count("accounts WHERE id = 200").await, 1);
        assert_eq!(a.db.count("accounts WHERE id = 201").await, 0, "undone");
        assert_eq!(a.db.count("accounts WHERE id = 202").await, 1);
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_nested_command_leaves_no_write_on_sqlite() {
        a_failed_nested_command_leaves_no_write::<ofx_diesel::Sqlite>(
            &crate::common::sqlite_file().await,
        )
        .await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_nested_command_leaves_no_write_on_postgres() {
        a_failed_nested_command_leaves_no_write::<ofx_diesel::Postgres>(
            &crate::common::postgres_database().await,
        )
        .await;
    }
}
