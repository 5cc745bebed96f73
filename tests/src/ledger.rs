//! The service the fault matrix runs: a command that writes one business row (keyed by the
//! caller's id of the call, with no unique key, so that an effect committed twice shows as two
//! rows) and adds to a counter, and compute methods that read the counters. Every main-branch
//! run, invalidation-branch run and completion-listener call is recorded in a [`History`].
//!
//! A command carries the [`Fault`] its main branch injects, so that the caller decides which
//! calls fail and how.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::operation::CompletionListener;
use ofx_core::{
    Command, CommandContext, ComputeService, HostId, Hub, Operation, command_handler,
    compute_method, invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, LogReader};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checker::{Effect, History, LoggedOperation, Record, Truth};

#[allow(missing_docs)]
mod tables {
    diesel::table! {
        fx_counters (key) {
            key -> BigInt,
            value -> BigInt,
        }
    }
}
use tables::fx_counters;

/// The business tables. `fx_effects` has no key: a duplicate effect is a second row.
pub const TABLES: &str = "\
CREATE TABLE IF NOT EXISTS fx_counters (key BIGINT PRIMARY KEY NOT NULL, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS fx_effects (call_id TEXT NOT NULL, operation_uuid TEXT NOT NULL, \
key BIGINT NOT NULL, host TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fx_event_effects (event_uuid TEXT NOT NULL, host TEXT NOT NULL);";

/// The name the checked command is logged under.
pub const COMMAND_NAME: &str = "faults.put";

/// What a command's main branch does wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Fault {
    /// Nothing.
    #[default]
    None,
    /// Fails after its writes, before its operation row is written: the transaction rolls back.
    FailAfterInsert,
    /// Fails at its `COMMIT` (PostgreSQL: a deferred unique constraint it violates), after its
    /// operation row took its log index: the transaction rolls back and the index is burnt,
    /// leaving a gap in the log that the readers must close.
    FailAtCommit,
    /// Fails with a serialization failure (PostgreSQL `40001`) or a deadlock (`40P01`), raised
    /// by the server, the first time it runs on a host: the commander runs it again.
    TransientOnce,
    /// Has its own server session terminated (`pg_terminate_backend`, from another connection)
    /// after its writes, before its commit: the commander runs it again on a new connection.
    TerminateOnce,
}

/// Adds `by` to counter `key`, and writes the call's business row.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "faults.put")]
pub struct Put {
    /// The caller's id of the call.
    pub call: Uuid,
    /// The counter.
    pub key: i64,
    /// How much to add.
    pub by: i64,
    /// The fault to inject.
    pub fault: Fault,
    /// Whether it also produces a [`Settle`] event.
    pub event: bool,
}

/// An event a [`Put`] may produce: its handler writes one event-effect row (no key either).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "faults.settle", backend)]
pub struct Settle {
    /// The call that produced it.
    pub call: Uuid,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database layer's error.
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    /// A query's error.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    /// The injected failure after the writes.
    #[error("refused after its writes, on purpose")]
    Refused,
    /// This backend cannot inject that fault.
    #[error("fault {0:?} is not supported on this backend")]
    Unsupported(Fault),
    /// The commander's error (adding an event).
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
    /// An event handler run outside an event.
    #[error("not run as an event")]
    NotAnEvent,
}

/// The queries of one backend (Diesel's query types are per backend).
pub trait LedgerQueries: Backend {
    /// Whether [`Fault::FailAtCommit`] is supported (PostgreSQL).
    const FAILS_AT_COMMIT: bool;
    /// The counter's value (0 if never written).
    fn read(
        connection: &mut Self::Connection,
        key: i64,
    ) -> impl std::future::Future<Output = QueryResult<i64>> + Send;
    /// Adds to the counter; returns the new value.
    fn add(
        connection: &mut Self::Connection,
        key: i64,
        by: i64,
    ) -> impl std::future::Future<Output = QueryResult<i64>> + Send;
    /// Writes a business row.
    fn insert_effect(
        connection: &mut Self::Connection,
        effect: &Effect,
        key: i64,
        host: &str,
    ) -> impl std::future::Future<Output = QueryResult<()>> + Send;
    /// Writes an event-effect row.
    fn insert_event_effect(
        connection: &mut Self::Connection,
        event: Uuid,
        host: &str,
    ) -> impl std::future::Future<Output = QueryResult<()>> + Send;
    /// Writes what makes the transaction fail at its `COMMIT`.
    fn fail_at_commit(
        connection: &mut Self::Connection,
        call: Uuid,
    ) -> impl std::future::Future<Output = Result<(), LedgerError>> + Send;
    /// Makes the server raise a serialization failure (or, with `deadlock`, a deadlock) in the
    /// current transaction.
    fn raise_serialization_failure(
        connection: &mut Self::Connection,
        deadlock: bool,
    ) -> impl std::future::Future<Output = Result<(), LedgerError>> + Send;
    /// The server's id of this session, to terminate it from elsewhere (PostgreSQL only).
    fn session_id(
        connection: &mut Self::Connection,
    ) -> impl std::future::Future<Output = Result<i32, LedgerError>> + Send;
    /// Terminates session `pid` (PostgreSQL only).
    fn terminate(
        connection: &mut Self::Connection,
        pid: i32,
    ) -> impl std::future::Future<Output = Result<(), LedgerError>> + Send;
    /// Events not yet done (nor dead).
    fn pending_events(
        connection: &mut Self::Connection,
    ) -> impl std::future::Future<Output = QueryResult<i64>> + Send;
    /// What the database holds: the log, and the business rows.
    fn truth(
        connection: &mut Self::Connection,
    ) -> impl std::future::Future<Output = QueryResult<Truth>> + Send;
}

#[derive(QueryableByName)]
struct LogRow {
    #[diesel(sql_type = BigInt)]
    idx: i64,
    #[diesel(sql_type = Text)]
    uuid: String,
    #[diesel(sql_type = Text)]
    command_name: String,
}

#[derive(QueryableByName)]
struct EffectRow {
    #[diesel(sql_type = Text)]
    call_id: String,
    #[diesel(sql_type = Text)]
    operation_uuid: String,
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    id: String,
}

/// The uuids a query selects (as `id`).
macro_rules! ids {
    ($connection:expr, $query:expr) => {{
        let rows: Vec<Id> = diesel::sql_query($query).load($connection).await?;
        rows.iter()
            .map(|row| parse(&row.id))
            .collect::<QueryResult<Vec<Uuid>>>()
    }};
}

fn parse(text: &str) -> QueryResult<Uuid> {
    Uuid::parse_str(text).map_err(|error| diesel::result::Error::DeserializationError(error.into()))
}

macro_rules! common_queries {
    () => {
        async fn read(connection: &mut Self::Connection, key: i64) -> QueryResult<i64> {
            Ok(fx_counters::table
                .find(key)
                .select(fx_counters::value)
                .first(connection)
                .await
                .optional()?
                .unwrap_or(0))
        }

        async fn add(connection: &mut Self::Connection, key: i64, by: i64) -> QueryResult<i64> {
            diesel::insert_into(fx_counters::table)
                .values((fx_counters::key.eq(key), fx_counters::value.eq(by)))
                .on_conflict(fx_counters::key)
                .do_update()
                .set(fx_counters::value.eq(fx_counters::value + by))
                .returning(fx_counters::value)
                .get_result(connection)
                .await
        }

        async fn insert_effect(
            connection: &mut Self::Connection,
            effect: &Effect,
            key: i64,
            host: &str,
        ) -> QueryResult<()> {
            diesel::sql_query(
                "INSERT INTO fx_effects (call_id, operation_uuid, key, host) VALUES ($1, $2, $3, $4)",
            )
            .bind::<Text, _>(effect.call.to_string())
            .bind::<Text, _>(effect.operation.to_string())
            .bind::<BigInt, _>(key)
            .bind::<Text, _>(host)
            .execute(connection)
            .await
            .map(drop)
        }

        async fn insert_event_effect(
            connection: &mut Self::Connection,
            event: Uuid,
            host: &str,
        ) -> QueryResult<()> {
            diesel::sql_query("INSERT INTO fx_event_effects (event_uuid, host) VALUES ($1, $2)")
                .bind::<Text, _>(event.to_string())
                .bind::<Text, _>(host)
                .execute(connection)
                .await
                .map(drop)
        }

        async fn pending_events(connection: &mut Self::Connection) -> QueryResult<i64> {
            let row: Count = diesel::sql_query("SELECT count(*) AS n FROM ofx_events WHERE state = 0")
                .get_result(connection)
                .await?;
            Ok(row.n)
        }

        async fn truth(connection: &mut Self::Connection) -> QueryResult<Truth> {
            let operations: Vec<LogRow> = diesel::sql_query(
                "SELECT idx, uuid, command_name FROM ofx_operations ORDER BY idx",
            )
            .load(connection)
            .await?;
            let effects: Vec<EffectRow> =
                diesel::sql_query("SELECT call_id, operation_uuid FROM fx_effects")
                    .load(connection)
                    .await?;
            Ok(Truth {
                operations: operations
                    .into_iter()
                    .map(|row| {
                        Ok(LoggedOperation {
                            idx: row.idx,
                            uuid: parse(&row.uuid)?,
                            command_name: row.command_name,
                        })
                    })
                    .collect::<QueryResult<_>>()?,
                effects: effects
                    .into_iter()
                    .map(|row| {
                        Ok(Effect {
                            call: parse(&row.call_id)?,
                            operation: parse(&row.operation_uuid)?,
                        })
                    })
                    .collect::<QueryResult<_>>()?,
                command_name: COMMAND_NAME.to_owned(),
                events: ids!(connection, "SELECT uuid AS id FROM ofx_events")?,
                event_effects: ids!(connection, "SELECT event_uuid AS id FROM fx_event_effects")?,
            })
        }
    };
}

impl LedgerQueries for ofx_diesel::Postgres {
    const FAILS_AT_COMMIT: bool = true;

    common_queries!();

    async fn fail_at_commit(
        connection: &mut Self::Connection,
        call: Uuid,
    ) -> Result<(), LedgerError> {
        connection
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS fx_deferred (call_id TEXT NOT NULL, \
                 CONSTRAINT fx_deferred_once UNIQUE (call_id) DEFERRABLE INITIALLY DEFERRED); \
                 INSERT INTO fx_deferred VALUES ('{call}'), ('{call}')"
            ))
            .await?;
        Ok(())
    }

    async fn raise_serialization_failure(
        connection: &mut Self::Connection,
        deadlock: bool,
    ) -> Result<(), LedgerError> {
        // The server raises it: the error reaches the handler as PostgreSQL's own.
        connection
            .batch_execute(if deadlock {
                "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"
            } else {
                "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access due to concurrent update' \
                 USING ERRCODE = '40001'; END $$"
            })
            .await?;
        Ok(())
    }

    async fn session_id(connection: &mut Self::Connection) -> Result<i32, LedgerError> {
        let row: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result(connection)
            .await?;
        Ok(row.pid)
    }

    async fn terminate(connection: &mut Self::Connection, pid: i32) -> Result<(), LedgerError> {
        diesel::sql_query("SELECT pg_terminate_backend($1)")
            .bind::<diesel::sql_types::Integer, _>(pid)
            .execute(connection)
            .await?;
        Ok(())
    }
}

impl LedgerQueries for ofx_diesel::Sqlite {
    const FAILS_AT_COMMIT: bool = false;

    common_queries!();

    async fn fail_at_commit(
        _connection: &mut Self::Connection,
        _call: Uuid,
    ) -> Result<(), LedgerError> {
        // SQLite's deferred checks are foreign keys only, and a rolled-back insert gives its
        // sequence value back anyway.
        Err(LedgerError::Unsupported(Fault::FailAtCommit))
    }

    async fn raise_serialization_failure(
        _connection: &mut Self::Connection,
        _deadlock: bool,
    ) -> Result<(), LedgerError> {
        Err(LedgerError::Unsupported(Fault::TransientOnce))
    }

    async fn session_id(_connection: &mut Self::Connection) -> Result<i32, LedgerError> {
        Err(LedgerError::Unsupported(Fault::TerminateOnce))
    }

    async fn terminate(_connection: &mut Self::Connection, _pid: i32) -> Result<(), LedgerError> {
        Err(LedgerError::Unsupported(Fault::TerminateOnce))
    }
}

/// The service of one host.
#[allow(missing_debug_implementations)]
pub struct Ledger<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
    history: Arc<History>,
    host: String,
    /// Calls whose once-only fault already happened on this host.
    tripped: Mutex<HashSet<Uuid>>,
    hooks: Hooks,
}

/// A hook: something a test runs at a point of the service's work (a fail point).
pub type Hook = Arc<dyn Fn() + Send + Sync>;

/// Hooks at the fail points of the service's work.
#[derive(Clone, Default)]
#[allow(missing_debug_implementations)]
pub struct Hooks {
    /// After each commit on this host, before its invalidation pass.
    pub after_commit: Option<Hook>,
    /// In each run of the invalidation branch, before it invalidates.
    pub mid_invalidation: Option<Hook>,
    /// In each run of the event handler, after its write, before its commit.
    pub mid_event: Option<Hook>,
    /// How long each run of the event handler takes, after its write (none by default).
    pub event_duration: Option<Duration>,
}

/// Calls the after-commit hook.
struct AfterCommit(Hook);

impl ofx_core::AfterCommitHook for AfterCommit {
    fn after_commit(&self, _hub: &Hub, _operation: &Operation) {
        (self.0)();
    }
}

impl<B: Backend> ComputeService for Ledger<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Records the invalidation branch's run (a macro: `invalidate!` keeps macro calls).
macro_rules! record_invalidation {
    ($ledger:expr, $ctx:expr) => {
        $ledger.invalidated($ctx)
    };
}

#[service]
impl<B: LedgerQueries> Ledger<B> {
    /// A counter's value.
    #[compute_method]
    pub async fn value(&self, key: i64) -> Result<i64, String> {
        let mut connection = self
            .db
            .connection()
            .await
            .map_err(|error| error.to_string())?;
        B::read(&mut connection, key)
            .await
            .map_err(|error| error.to_string())
    }

    /// Two counters' values, combined: stale if either is.
    #[compute_method]
    pub async fn pair(&self, a: i64, b: i64) -> Result<i64, String> {
        Ok(self.value(a).await? * 1_000_000 + self.value(b).await?)
    }

    /// Runs [`Put`].
    #[command_handler]
    pub async fn put(&self, command: Put, ctx: &CommandContext) -> Result<i64, LedgerError> {
        invalidate! {
            record_invalidation!(self, ctx);
            self.value(command.key);
        }
        let operation = ctx.operation_id();
        self.history.record(Record::MainRun {
            call: command.call,
            operation,
            host: self.host.clone(),
        });
        let mut connection = self.db.operation_connection(ctx).await?;
        let effect = Effect {
            call: command.call,
            operation,
        };
        B::insert_effect(&mut connection, &effect, command.key, &self.host).await?;
        let value = B::add(&mut connection, command.key, command.by).await?;
        if command.event {
            ctx.add_event(Settle { call: command.call })?;
        }
        match command.fault {
            Fault::None => {}
            Fault::FailAfterInsert => return Err(LedgerError::Refused),
            Fault::FailAtCommit => B::fail_at_commit(&mut connection, command.call).await?,
            Fault::TransientOnce => {
                if self.trip(command.call) {
                    let deadlock = command.call.as_bytes()[0] % 2 == 1;
                    B::raise_serialization_failure(&mut connection, deadlock).await?;
                }
            }
            Fault::TerminateOnce => {
                if self.trip(command.call) {
                    let pid = B::session_id(&mut connection).await?;
                    let mut other = self.db.connection().await?;
                    B::terminate(&mut other, pid).await?;
                }
            }
        }
        Ok(value)
    }

    /// Runs the [`Settle`] event: writes its effect.
    #[command_handler]
    pub async fn settle(&self, _command: Settle, ctx: &CommandContext) -> Result<(), LedgerError> {
        let delivery = ctx.event_delivery().ok_or(LedgerError::NotAnEvent)?;
        let mut connection = self.db.operation_connection(ctx).await?;
        B::insert_event_effect(&mut connection, delivery.event, &self.host).await?;
        if let Some(hook) = &self.hooks.mid_event {
            hook();
        }
        if let Some(duration) = self.hooks.event_duration {
            tokio::time::sleep(duration).await;
        }
        Ok(())
    }
}

impl<B: LedgerQueries> Ledger<B> {
    fn invalidated(&self, ctx: &CommandContext) {
        if let Some(hook) = &self.hooks.mid_invalidation {
            hook();
        }
        self.history.record(Record::Invalidation {
            operation: ctx.operation_id(),
            host: self.host.clone(),
        });
    }

    /// Whether this is the first time `call`'s once-only fault happens here.
    fn trip(&self, call: Uuid) -> bool {
        self.tripped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(call)
    }

    /// The database.
    pub fn db(&self) -> &DbHub<B> {
        &self.db
    }

    /// This host's name in the history.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Calls [`Put`] (adding `by` to `key`), records the call in the history, and returns the
    /// operation's log sequence.
    ///
    /// # Errors
    /// The call's.
    pub async fn call_sequence(&self, key: i64, by: i64) -> Result<i64, ofx_core::Error> {
        self.call_put(key, by, Fault::None, false)
            .await
            .map(|(_, sequence)| sequence.unwrap_or(0))
    }

    /// Calls [`Put`] and records the call in the history.
    ///
    /// # Errors
    /// The call's.
    pub async fn call(&self, key: i64, by: i64, fault: Fault) -> Result<i64, ofx_core::Error> {
        self.call_with_event(key, by, fault, false).await
    }

    /// Calls [`Put`], with a [`Settle`] event if `event`, and records the call in the history.
    ///
    /// # Errors
    /// The call's.
    pub async fn call_with_event(
        &self,
        key: i64,
        by: i64,
        fault: Fault,
        event: bool,
    ) -> Result<i64, ofx_core::Error> {
        self.call_put(key, by, fault, event)
            .await
            .map(|(output, _)| output)
    }

    /// Calls [`Put`] and records the call: its output and log sequence.
    async fn call_put(
        &self,
        key: i64,
        by: i64,
        fault: Fault,
        event: bool,
    ) -> Result<(i64, Option<i64>), ofx_core::Error> {
        let call = Uuid::new_v4();
        let start_us = self.history.now_us();
        let result = self
            .hub
            .commander()
            .call_committed(Put {
                call,
                key,
                by,
                fault,
                event,
            })
            .await
            .map(|executed| {
                let sequence = executed.committed.and_then(|committed| committed.sequence);
                (executed.operation, (executed.output, sequence))
            });
        self.history
            .call_ended(call, &self.host, start_us, &result, |error| match error {
                ofx_core::Error::CommitInDoubt { operation, .. } => Some(*operation),
                _ => None,
            });
        result.map(|(_, output)| output)
    }

    /// After quiescence: records what this host serves for each key (and pair) beside a direct
    /// read.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn record_reads(&self, keys: i64) -> Result<(), ofx_diesel::Error> {
        let mut direct = Vec::with_capacity(usize::try_from(keys).unwrap_or(0));
        {
            let mut connection = self.db.connection().await?;
            for key in 0..keys {
                direct.push(
                    B::read(&mut connection, key)
                        .await
                        .map_err(ofx_diesel::Error::from)?,
                );
            }
        }
        for key in 0..keys {
            let index = usize::try_from(key).unwrap_or(0);
            let served = self.value(key).await.unwrap_or(i64::MIN);
            self.history.record(Record::Read {
                host: self.host.clone(),
                key: format!("value({key})"),
                served,
                direct: direct[index],
            });
            let next = (key + 1) % keys;
            let served = self.pair(key, next).await.unwrap_or(i64::MIN);
            self.history.record(Record::Read {
                host: self.host.clone(),
                key: format!("pair({key},{next})"),
                served,
                direct: direct[index] * 1_000_000 + direct[usize::try_from(next).unwrap_or(0)],
            });
        }
        Ok(())
    }
}

/// Records each listener call in the history.
struct Listener {
    history: Arc<History>,
    host: String,
}

impl CompletionListener for Listener {
    fn on_operation_completed(&self, operation: &Operation, local: bool) {
        self.history.record(Record::Listener {
            operation: operation.uuid,
            host: self.host.clone(),
            local,
            at_us: self.history.now_us(),
        });
    }
}

/// How the hosts wake each other.
#[derive(Debug, Clone)]
pub enum Wakeup {
    /// Polling only, every `Duration`.
    Polling(Duration),
    /// A file-system watcher on this directory.
    Fs(std::path::PathBuf),
    /// PostgreSQL LISTEN/NOTIFY on the database at this URL.
    Postgres(String),
    /// Redis pub/sub on this server.
    Redis(String),
}

/// One host: its service and its reader.
#[allow(missing_debug_implementations)]
pub struct LedgerHost<B: LedgerQueries> {
    /// The service.
    pub ledger: Arc<Ledger<B>>,
    /// The hub.
    pub hub: Hub,
}

impl<B: LedgerQueries> LedgerHost<B> {
    /// Starts a host on the database at `url`, its log `log` woken as `wakeup` says, with
    /// `settings` (`None`: [`default_settings`]). Records `HostStarted`.
    ///
    /// # Errors
    /// When the database cannot be opened or the hub cannot start.
    pub async fn start(
        url: &str,
        log: &str,
        wakeup: &Wakeup,
        settings: Option<DbSettings>,
        history: &Arc<History>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with(url, log, wakeup, settings, Hooks::default(), history).await
    }

    /// [`start`](Self::start), with hooks at the service's fail points.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with(
        url: &str,
        log: &str,
        wakeup: &Wakeup,
        settings: Option<DbSettings>,
        hooks: Hooks,
        history: &Arc<History>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let settings = settings.unwrap_or_else(default_settings);
        let db = DbHub::<B>::open(url, settings.clone()).await?;
        db.connection().await?.batch_execute(TABLES).await?;
        match wakeup {
            Wakeup::Polling(_) => {}
            Wakeup::Fs(dir) => db.set_watcher(ofx_watchers::FsWatcher::factory(dir, log))?,
            Wakeup::Postgres(url) => db.set_watcher(ofx_watchers::PgWatcher::factory(url, log))?,
            Wakeup::Redis(url) => db.set_watcher(ofx_watchers::RedisWatcher::factory(url, log))?,
        }
        let host_id = HostId::new();
        let host = host_id.to_string();
        let mut builder = Hub::builder()
            .host_id(host_id)
            .completion_listener(Listener {
                history: Arc::clone(history),
                host: host.clone(),
            })
            .with(db.clone());
        if let Some(hook) = &hooks.after_commit {
            builder = builder.after_commit(AfterCommit(Arc::clone(hook)));
        }
        let hub = builder.start().await?;
        let ledger = Arc::new(Ledger {
            hub: hub.clone(),
            db,
            history: Arc::clone(history),
            host: host.clone(),
            tripped: Mutex::new(HashSet::new()),
            hooks,
        });
        hub.add_service(&ledger)?;
        if settings.read_log {
            // A reader that started while transactions were in flight knows its position once
            // they ended: what committed up to there is not expected of this host.
            let after = tokio::time::timeout(Duration::from_secs(30), hub.log_position_reached(0))
                .await
                .map_err(|_| "the reader's start position is not known after 30 s")?;
            history.record(Record::HostStarted { host, after });
        }
        Ok(Self { ledger, hub })
    }

    /// This host's log reader.
    pub fn reader(&self) -> Option<LogReader> {
        self.ledger.db.log_reader(&self.hub)
    }

    /// Stops the host (its hub shuts down) and records `HostStopped`.
    pub fn stop(&self, history: &History) {
        history.record(Record::HostStopped {
            host: self.ledger.host.clone(),
        });
        self.hub.shutdown_token().cancel();
    }
}

/// The settings of a fault-matrix host: no trimming (the checker reads the whole log), a 2 s
/// safety-net poll beside the watcher, and a 2 s event lease (a killed host's events are run
/// elsewhere soon).
pub fn default_settings() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period_with_watcher = Duration::from_secs(2);
    settings.trim = false;
    settings.events.lease = Duration::from_secs(2);
    settings
}

/// Waits until no event is pending, failing after `timeout`.
///
/// # Errors
/// When the database cannot be read, or events are still pending after `timeout`.
pub async fn events_settled<B: LedgerQueries>(
    db: &DbHub<B>,
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pending = B::pending_events(&mut *db.connection().await?).await?;
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{pending} events still pending after {timeout:?}").into());
        }
        // Nothing signals another host's event runs here: the table is polled.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the database at `url` holds.
///
/// # Errors
/// When it cannot be read.
pub async fn truth<B: LedgerQueries>(db: &DbHub<B>) -> Result<Truth, ofx_diesel::Error> {
    let mut connection = db.connection().await?;
    Ok(B::truth(&mut connection).await?)
}
