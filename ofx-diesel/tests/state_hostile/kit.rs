//! The attack kit: more projections on the bank's stream and another stream, a service whose
//! commands misbehave in every documented way, hosts that carry them, SQL on the side (the
//! stream's head read on a separate connection), and a fresh projection of the whole stream to
//! compare every host's state with.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, Commander, ComputeService, Hub, command_handler, compute_method,
    service,
};
use ofx_diesel::state::{Projection, Rejection, StateService, StateSettings};
use ofx_diesel::{Backend, DbHub, DbSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::common::{Bank, BankEvent, BankService, Ledger, fast};

// ---------------------------------------------------------------------------------------------
// SQL on the side

#[derive(QueryableByName)]
struct Scalar {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    value: Option<i64>,
}

#[derive(QueryableByName)]
struct StreamRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    position: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    body: String,
}

#[derive(QueryableByName)]
struct Blob {
    #[diesel(sql_type = diesel::sql_types::Binary)]
    value: Vec<u8>,
}

/// Raw queries of one backend.
pub(crate) trait Sql: Backend {
    /// The first column of the first row (`SELECT … AS value`).
    fn scalar(
        connection: &mut Self::Connection,
        sql: String,
    ) -> impl Future<Output = QueryResult<Option<i64>>> + Send;
    /// The first column of the first row, bytes (`SELECT … AS value`).
    fn blob(
        connection: &mut Self::Connection,
        sql: String,
    ) -> impl Future<Output = QueryResult<Vec<u8>>> + Send;
    /// Every row of `stream`, by position.
    fn stream_rows(
        connection: &mut Self::Connection,
        stream: String,
    ) -> impl Future<Output = QueryResult<Vec<(i64, String)>>> + Send;
}

macro_rules! sql_impl {
    ($backend:ty) => {
        impl Sql for $backend {
            async fn scalar(connection: &mut Self::Connection, sql: String) -> QueryResult<Option<i64>> {
                Ok(diesel::sql_query(sql)
                    .get_result::<Scalar>(connection)
                    .await?
                    .value)
            }

            async fn blob(connection: &mut Self::Connection, sql: String) -> QueryResult<Vec<u8>> {
                Ok(diesel::sql_query(sql).get_result::<Blob>(connection).await?.value)
            }

            async fn stream_rows(
                connection: &mut Self::Connection,
                stream: String,
            ) -> QueryResult<Vec<(i64, String)>> {
                let rows: Vec<StreamRow> = diesel::sql_query(
                    "SELECT position, body FROM ofx_stream_events WHERE stream = $1 ORDER BY position"
                        .replace("$1", &quote(&stream)),
                )
                .load(connection)
                .await?;
                Ok(rows.into_iter().map(|row| (row.position, row.body)).collect())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
sql_impl!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
sql_impl!(ofx_diesel::Postgres);

/// A SQL string literal (the tests' own constants only).
pub(crate) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The head of `stream` (0 when empty), read on a connection of its own.
pub(crate) async fn head<B: Sql>(db: &DbHub<B>, stream: &str) -> u64 {
    let mut connection = db.connection().await.unwrap();
    let head = B::scalar(
        &mut connection,
        format!(
            "SELECT MAX(position) AS value FROM ofx_stream_events WHERE stream = {}",
            quote(stream)
        ),
    )
    .await
    .unwrap()
    .unwrap_or(0);
    u64::try_from(head).unwrap()
}

/// A number from a query (`SELECT … AS value`).
pub(crate) async fn scalar<B: Sql>(db: &DbHub<B>, sql: &str) -> Option<i64> {
    let mut connection = db.connection().await.unwrap();
    B::scalar(&mut connection, sql.to_owned()).await.unwrap()
}

/// Bytes from a query (`SELECT … AS value`).
pub(crate) async fn blob<B: Sql>(db: &DbHub<B>, sql: &str) -> Vec<u8> {
    let mut connection = db.connection().await.unwrap();
    B::blob(&mut connection, sql.to_owned()).await.unwrap()
}

/// A bytes literal of the backend's SQL.
pub(crate) fn bytes_literal<B: Backend>(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    if B::NAME == "postgres" {
        format!("decode('{hex}', 'hex')")
    } else {
        format!("X'{hex}'")
    }
}

/// Every row of `stream`.
pub(crate) async fn stream_rows<B: Sql>(db: &DbHub<B>, stream: &str) -> Vec<(i64, String)> {
    let mut connection = db.connection().await.unwrap();
    B::stream_rows(&mut connection, stream.to_owned())
        .await
        .unwrap()
}

/// Runs statements as they are.
pub(crate) async fn exec<B: Backend>(db: &DbHub<B>, statements: &str) {
    let mut connection = db.connection().await.unwrap();
    connection.batch_execute(statements).await.unwrap();
}

/// Inserts a stream row by hand.
pub(crate) async fn insert_row<B: Backend>(db: &DbHub<B>, stream: &str, position: i64, body: &str) {
    exec(
        db,
        &format!(
            "INSERT INTO ofx_stream_events (stream, position, body, operation_uuid, appended_at) \
             VALUES ({}, {position}, {}, 'by-hand', 0)",
            quote(stream),
            quote(body)
        ),
    )
    .await;
}

/// The JSON of a bank event, as a stream row holds it.
pub(crate) fn json(event: &BankEvent) -> String {
    serde_json::to_string(event).unwrap()
}

pub(crate) fn deposit(account: &str, amount: i64) -> BankEvent {
    BankEvent::Deposited {
        account: account.to_owned(),
        amount,
    }
}

// ---------------------------------------------------------------------------------------------
// Fresh projections of the whole stream

/// A projection of `rows` from scratch, skipping what does not decode, is rejected or panics
/// (undoing what it did), as the documentation says every host does.
pub(crate) fn fold<P: Projection>(projection: &P, rows: &[(i64, String)]) -> (P::State, Vec<u64>) {
    let mut state = projection.initial();
    let mut skipped = Vec::new();
    for (position, body) in rows {
        let position = u64::try_from(*position).unwrap();
        let Ok(event) = serde_json::from_str::<P::Event>(body) else {
            skipped.push(position);
            continue;
        };
        let mut next = state.clone();
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
            projection.apply(&mut next, event, position)
        }));
        match applied {
            Ok(Ok(())) => state = next,
            _ => skipped.push(position),
        }
    }
    (state, skipped)
}

/// The ledger as a fresh projection of the whole stream.
pub(crate) async fn fresh_ledger<B: Sql>(db: &DbHub<B>) -> Bank {
    quiet_panics();
    fold(&Ledger, &stream_rows(db, "ledger").await).0
}

/// Panics of `apply` (`Explode`) are expected: keeps the default hook for everything else but
/// does not print those.
pub(crate) fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            if !message.starts_with("explode") && !message.starts_with("attack:") {
                default(info);
            }
        }));
    });
}

/// Asserts that positions `1..=n` are all there, once each.
pub(crate) async fn assert_dense<B: Sql>(db: &DbHub<B>, stream: &str) -> u64 {
    let rows = stream_rows(db, stream).await;
    for (index, (position, _)) in rows.iter().enumerate() {
        assert_eq!(
            *position,
            i64::try_from(index).unwrap() + 1,
            "stream `{stream}` is not dense from 1: {:?}",
            rows.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        );
    }
    u64::try_from(rows.len()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// More projections

/// Every event of the bank's stream, by position: a second projection of the same stream. It
/// accepts what the ledger rejects (`Poison`), and does not panic.
pub(crate) struct Audit;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuditLog {
    pub(crate) positions: Vec<u64>,
}

impl Projection for Audit {
    type Event = BankEvent;
    type State = AuditLog;
    const NAME: &'static str = "audit";
    const VERSION: u32 = 1;
    const STREAM: &'static str = "ledger";

    fn initial(&self) -> AuditLog {
        AuditLog::default()
    }

    fn apply(
        &self,
        state: &mut AuditLog,
        _event: BankEvent,
        position: u64,
    ) -> Result<(), Rejection> {
        state.positions.push(position);
        Ok(())
    }
}

/// Notes on another stream.
pub(crate) struct Notes;

impl Projection for Notes {
    type Event = String;
    type State = Vec<String>;
    const NAME: &'static str = "notes";
    const VERSION: u32 = 1;

    fn initial(&self) -> Vec<String> {
        Vec::new()
    }

    fn apply(
        &self,
        state: &mut Vec<String>,
        event: String,
        _position: u64,
    ) -> Result<(), Rejection> {
        state.push(event);
        Ok(())
    }
}

/// A gate `apply` can be held at: lets a test keep a follower in the middle of a batch.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<(bool, u64)>,
    changed: Condvar,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Called by `apply`: waits while the gate is closed (at most 20 s, so that a broken test
    /// cannot hang the suite), counting the waiters that arrived.
    fn pass(&self) {
        let mut guard = self.state.lock().unwrap();
        guard.1 += 1;
        self.changed.notify_all();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !guard.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = self.changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub(crate) fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    /// How many times `apply` arrived at the gate.
    pub(crate) fn arrivals(&self) -> u64 {
        self.state.lock().unwrap().1
    }
}

/// The ledger's stream counted, with `apply` held at the gate by a deposit to `"gate"`.
pub(crate) struct Gated(pub(crate) Arc<Gate>);

impl Projection for Gated {
    type Event = BankEvent;
    type State = u64;
    const NAME: &'static str = "gated";
    const VERSION: u32 = 1;
    const STREAM: &'static str = "ledger";

    fn initial(&self) -> u64 {
        0
    }

    fn apply(&self, state: &mut u64, event: BankEvent, _position: u64) -> Result<(), Rejection> {
        if matches!(&event, BankEvent::Deposited { account, .. } if account == "gate") {
            self.0.pass();
        }
        *state += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The attack service

/// How a [`Mark`] command ends once it wrote and appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum End {
    Succeed,
    Fail,
    Panic,
    /// Waits forever (the caller drops the call).
    Hang,
}

/// Writes a mark to the `marks` table, appends to the ledger and the notes, then ends as told.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (Vec<u64>, Vec<u64>), name = "atk.mark")]
pub(crate) struct Mark {
    pub(crate) mark: String,
    pub(crate) ledger: Vec<BankEvent>,
    pub(crate) notes: Vec<String>,
    pub(crate) end: End,
}

/// Two appends to the ledger in one command; the second decision says what it saw.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Twice, name = "atk.twice")]
pub(crate) struct TwiceCommand {
    pub(crate) account: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Twice {
    pub(crate) first: Vec<u64>,
    pub(crate) seen_balance: i64,
    pub(crate) seen_last_position: u64,
    pub(crate) decided_at: u64,
    pub(crate) second: Vec<u64>,
}

/// The outer command appends, a nested one appends and (maybe) fails, the outer one swallows
/// its error and appends again, saying what its decision saw.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Twice, name = "atk.outer")]
pub(crate) struct Outer {
    pub(crate) account: String,
    pub(crate) inner_fails: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "atk.inner")]
pub(crate) struct Inner {
    pub(crate) account: String,
    pub(crate) fail: bool,
}

/// Appends to the ledger, then through the audit (same stream) in the same command.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = SameStream, name = "atk.same_stream")]
pub(crate) struct SameStreamCommand;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SameStream {
    pub(crate) ledger: Vec<u64>,
    pub(crate) audit_seen: Vec<u64>,
    pub(crate) audit_decided_at: u64,
    pub(crate) audit: Vec<u64>,
}

/// A decision that records what it saw, and appends `events`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Seen, name = "atk.record")]
pub(crate) struct Record {
    pub(crate) events: Vec<BankEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) state: Bank,
    pub(crate) decided_at: u64,
    pub(crate) positions: Vec<u64>,
    pub(crate) attempts: u32,
}

/// A decision that calls the service's synchronous accessors.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "atk.status_inside")]
pub(crate) struct StatusInside;

/// A decision that panics.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "atk.panic_inside")]
pub(crate) struct PanicInside;

/// `count` deposits whose account names are `size` bytes long.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Vec<u64>, name = "atk.many")]
pub(crate) struct Many {
    pub(crate) count: u32,
    pub(crate) size: usize,
}

/// Reads the stream through the operation's connection first, then appends.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "atk.read_first")]
pub(crate) struct ReadFirst {
    pub(crate) account: String,
}

/// A decision during which another host appends (every attempt).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u32, name = "atk.interfere")]
pub(crate) struct Interfere;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AttackError {
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// What an [`Interfere`] decision calls: another host's commander, run to completion from
/// inside the (synchronous) decision.
pub(crate) type Interferer = (tokio::runtime::Handle, Commander);

pub(crate) struct Attack<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<B>,
    pub(crate) ledger: StateService<Ledger, B>,
    pub(crate) audit: StateService<Audit, B>,
    pub(crate) notes: StateService<Notes, B>,
    /// Releases [`End::Hang`] commands.
    pub(crate) hang: Arc<Notify>,
    /// How many [`End::Hang`] commands reached their wait.
    pub(crate) hung: Arc<AtomicU64>,
    pub(crate) interferer: Mutex<Option<Interferer>>,
    /// How many more decisions of [`Interfere`] let the interferer append first.
    pub(crate) interfere_left: AtomicU32,
    pub(crate) decisions: AtomicU32,
    pub(crate) local_computations: AtomicU64,
    pub(crate) current_computations: AtomicU64,
}

impl<B: Backend> ComputeService for Attack<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

fn positions(range: &std::ops::RangeInclusive<u64>) -> Vec<u64> {
    range.clone().collect()
}

#[service]
impl<B: Sql> Attack<B> {
    /// A balance from this host's state.
    #[compute_method]
    pub(crate) async fn local_balance(&self, account: String) -> Result<(i64, u64), String> {
        self.local_computations.fetch_add(1, Ordering::Relaxed);
        let view = self.ledger.local_state().await.map_err(|e| e.to_string())?;
        Ok((
            view.balances.get(&account).copied().unwrap_or(0),
            view.position,
        ))
    }

    /// A balance from the current state.
    #[compute_method]
    pub(crate) async fn current_balance(&self, account: String) -> Result<(i64, u64), String> {
        self.current_computations.fetch_add(1, Ordering::Relaxed);
        let view = self
            .ledger
            .current_state()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            view.balances.get(&account).copied().unwrap_or(0),
            view.position,
        ))
    }

    #[command_handler]
    pub(crate) async fn mark(
        &self,
        command: Mark,
        ctx: &CommandContext,
    ) -> Result<(Vec<u64>, Vec<u64>), AttackError> {
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            connection
                .batch_execute(&format!(
                    "INSERT INTO marks (id) VALUES ({})",
                    quote(&command.mark)
                ))
                .await?;
        }
        let mut ledger = Vec::new();
        if !command.ledger.is_empty() {
            let appended = self
                .ledger
                .transaction(ctx, |_bank: &Bank, appends| {
                    for event in &command.ledger {
                        appends.push(event.clone());
                    }
                    Ok::<_, AttackError>(())
                })
                .await?;
            ledger = positions(&appended.positions);
        }
        let mut notes = Vec::new();
        if !command.notes.is_empty() {
            let appended = self
                .notes
                .transaction(ctx, |_notes: &Vec<String>, appends| {
                    for note in &command.notes {
                        appends.push(note.clone());
                    }
                    Ok::<_, AttackError>(())
                })
                .await?;
            notes = positions(&appended.positions);
        }
        match command.end {
            End::Succeed => Ok((ledger, notes)),
            End::Fail => Err(AttackError::Refused("told to fail".into())),
            End::Panic => panic!("attack: told to panic"),
            End::Hang => {
                let released = self.hang.notified();
                self.hung.fetch_add(1, Ordering::SeqCst);
                released.await;
                Ok((ledger, notes))
            }
        }
    }

    #[command_handler]
    pub(crate) async fn twice(
        &self,
        command: TwiceCommand,
        ctx: &CommandContext,
    ) -> Result<Twice, AttackError> {
        let first = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(deposit(&command.account, 1));
                Ok::<_, AttackError>(())
            })
            .await?;
        let second = self
            .ledger
            .transaction(ctx, |bank: &Bank, appends| {
                appends.push(deposit(&command.account, 10));
                Ok::<_, AttackError>((
                    bank.balances.get(&command.account).copied().unwrap_or(0),
                    bank.last_position,
                ))
            })
            .await?;
        Ok(Twice {
            first: positions(&first.positions),
            seen_balance: second.output.0,
            seen_last_position: second.output.1,
            decided_at: second.decided_at,
            second: positions(&second.positions),
        })
    }

    #[command_handler]
    pub(crate) async fn outer(
        &self,
        command: Outer,
        ctx: &CommandContext,
    ) -> Result<Twice, AttackError> {
        let first = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(deposit(&command.account, 1));
                Ok::<_, AttackError>(())
            })
            .await?;
        let inner = self
            .hub
            .commander()
            .call(Inner {
                account: command.account.clone(),
                fail: command.inner_fails,
            })
            .await;
        match inner {
            Ok(()) => {}
            // Swallowed: the outer command goes on and commits.
            Err(_) if command.inner_fails => {}
            Err(error) => return Err(error.into()),
        }
        let second = self
            .ledger
            .transaction(ctx, |bank: &Bank, appends| {
                appends.push(deposit(&command.account, 10));
                Ok::<_, AttackError>((
                    bank.balances.get(&command.account).copied().unwrap_or(0),
                    bank.last_position,
                ))
            })
            .await?;
        Ok(Twice {
            first: positions(&first.positions),
            seen_balance: second.output.0,
            seen_last_position: second.output.1,
            decided_at: second.decided_at,
            second: positions(&second.positions),
        })
    }

    #[command_handler]
    pub(crate) async fn inner(
        &self,
        command: Inner,
        ctx: &CommandContext,
    ) -> Result<(), AttackError> {
        self.ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(deposit(&command.account, 100));
                Ok::<_, AttackError>(())
            })
            .await?;
        if command.fail {
            return Err(AttackError::Refused("inner fails".into()));
        }
        Ok(())
    }

    #[command_handler]
    pub(crate) async fn same_stream(
        &self,
        _command: SameStreamCommand,
        ctx: &CommandContext,
    ) -> Result<SameStream, AttackError> {
        let ledger = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(deposit("same", 1));
                Ok::<_, AttackError>(())
            })
            .await?;
        let audit = self
            .audit
            .transaction(ctx, |log: &AuditLog, appends| {
                appends.push(deposit("same", 2));
                Ok::<_, AttackError>(log.positions.clone())
            })
            .await?;
        Ok(SameStream {
            ledger: positions(&ledger.positions),
            audit_seen: audit.output,
            audit_decided_at: audit.decided_at,
            audit: positions(&audit.positions),
        })
    }

    #[command_handler]
    pub(crate) async fn record(
        &self,
        command: Record,
        ctx: &CommandContext,
    ) -> Result<Seen, AttackError> {
        let appended = self
            .ledger
            .transaction(ctx, |bank: &Bank, appends| {
                for event in &command.events {
                    appends.push(event.clone());
                }
                Ok::<_, AttackError>(bank.clone())
            })
            .await?;
        Ok(Seen {
            state: appended.output,
            decided_at: appended.decided_at,
            positions: positions(&appended.positions),
            attempts: appended.attempts,
        })
    }

    #[command_handler]
    pub(crate) async fn status_inside(
        &self,
        _command: StatusInside,
        ctx: &CommandContext,
    ) -> Result<u64, AttackError> {
        let appended = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                let status = self.ledger.status();
                let quarantined = self.ledger.quarantined().len();
                let ready = self.ledger.is_ready();
                let _ = self.ledger.health().state();
                appends.push(deposit("inside", 1));
                Ok::<_, AttackError>((status.position, quarantined, ready))
            })
            .await?;
        Ok(*appended.positions.end())
    }

    #[command_handler]
    pub(crate) async fn panic_inside(
        &self,
        _command: PanicInside,
        ctx: &CommandContext,
    ) -> Result<u64, AttackError> {
        let appended = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(deposit("panic", 1));
                if appends.events().len() == 1 {
                    panic!("attack: the decision panics");
                }
                Ok::<_, AttackError>(())
            })
            .await?;
        Ok(*appended.positions.end())
    }

    #[command_handler]
    pub(crate) async fn many(
        &self,
        command: Many,
        ctx: &CommandContext,
    ) -> Result<Vec<u64>, AttackError> {
        let account = "m".repeat(command.size.max(1));
        let appended = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                for _ in 0..command.count {
                    appends.push(deposit(&account, 1));
                }
                Ok::<_, AttackError>(())
            })
            .await?;
        Ok(positions(&appended.positions))
    }

    #[command_handler]
    pub(crate) async fn read_first(
        &self,
        command: ReadFirst,
        ctx: &CommandContext,
    ) -> Result<u64, AttackError> {
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::scalar(
                &mut connection,
                "SELECT COUNT(*) AS value FROM ofx_stream_events".to_owned(),
            )
            .await?;
        }
        let appended = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(deposit(&command.account, 1));
                Ok::<_, AttackError>(())
            })
            .await?;
        Ok(*appended.positions.end())
    }

    #[command_handler]
    pub(crate) async fn interfere(
        &self,
        _command: Interfere,
        ctx: &CommandContext,
    ) -> Result<u32, AttackError> {
        let interferer = self.interferer.lock().unwrap().clone();
        let appended = self
            .ledger
            .transaction(ctx, |_bank: &Bank, appends| {
                self.decisions.fetch_add(1, Ordering::SeqCst);
                let interfere = self
                    .interfere_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok();
                if let (true, Some((handle, commander))) = (interfere, &interferer) {
                    // Another host appends while this decision runs: its positions are taken.
                    tokio::task::block_in_place(|| {
                        handle.block_on(commander.call(crate::common::Deposit {
                            account: "interferer".into(),
                            amount: 1,
                        }))
                    })
                    .map_err(AttackError::from)?;
                }
                appends.push(deposit("interfered", 1));
                Ok::<_, AttackError>(())
            })
            .await?;
        Ok(appended.attempts)
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts

/// The `marks` table the attack service writes to.
pub(crate) const MARKS: &str = "CREATE TABLE IF NOT EXISTS marks (id TEXT PRIMARY KEY NOT NULL)";

/// One host: its database handle, the ledger, the audit (same stream), the notes (another
/// stream), the bank service of `tests/state` and the attack service.
pub(crate) struct Rig<B: Sql> {
    pub(crate) db: DbHub<B>,
    pub(crate) bank: Arc<BankService<B>>,
    pub(crate) attack: Arc<Attack<B>>,
}

impl<B: Sql> Rig<B> {
    pub(crate) async fn open(url: &str, settings: StateSettings) -> Self {
        Self::open_with(url, fast(), settings).await
    }

    pub(crate) async fn open_with(
        url: &str,
        db_settings: DbSettings,
        settings: StateSettings,
    ) -> Self {
        Self::open_with_policy(
            url,
            db_settings,
            settings,
            ofx_core::ReprocessPolicy::default(),
        )
        .await
    }

    pub(crate) async fn open_with_policy(
        url: &str,
        db_settings: DbSettings,
        settings: StateSettings,
        policy: ofx_core::ReprocessPolicy,
    ) -> Self {
        let db = DbHub::<B>::open(url, db_settings).await.unwrap();
        exec(&db, MARKS).await;
        let ledger = StateService::with_settings(&db, Ledger, settings.clone());
        let audit = StateService::with_settings(&db, Audit, settings.clone());
        let notes = StateService::with_settings(&db, Notes, settings);
        let hub = Hub::builder()
            .reprocessing(policy)
            .with(db.clone())
            .with(ledger.clone())
            .with(audit.clone())
            .with(notes.clone())
            .start()
            .await
            .unwrap();
        let bank = Arc::new(BankService {
            hub: hub.clone(),
            state: ledger.clone(),
            balance_computations: AtomicU64::new(0),
        });
        hub.add_service(&bank).unwrap();
        let attack = Arc::new(Attack {
            hub: hub.clone(),
            db: db.clone(),
            ledger,
            audit,
            notes,
            hang: Arc::new(Notify::new()),
            hung: Arc::new(AtomicU64::new(0)),
            interferer: Mutex::new(None),
            interfere_left: AtomicU32::new(0),
            decisions: AtomicU32::new(0),
            local_computations: AtomicU64::new(0),
            current_computations: AtomicU64::new(0),
        });
        hub.add_service(&attack).unwrap();
        Self { db, bank, attack }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.bank.hub
    }

    pub(crate) fn commander(&self) -> Commander {
        self.hub().commander()
    }

    pub(crate) fn ledger(&self) -> &StateService<Ledger, B> {
        &self.attack.ledger
    }

    pub(crate) fn audit(&self) -> &StateService<Audit, B> {
        &self.attack.audit
    }

    pub(crate) fn notes(&self) -> &StateService<Notes, B> {
        &self.attack.notes
    }

    /// Waits until every state service of the host is ready (30 s at most).
    pub(crate) async fn ready(&self) {
        within(Duration::from_secs(30), "ready", async {
            self.ledger().ready().await.unwrap();
            self.audit().ready().await.unwrap();
            self.notes().ready().await.unwrap();
        })
        .await;
    }

    pub(crate) async fn marks(&self, mark: &str) -> i64 {
        scalar(
            &self.db,
            &format!(
                "SELECT COUNT(*) AS value FROM marks WHERE id = {}",
                quote(mark)
            ),
        )
        .await
        .unwrap_or(0)
    }
}

/// Settings for hosts that only learn of others' appends when asked (`current_state`) or by
/// their own commits: the follower's safety-net poll is an hour away.
pub(crate) fn deaf() -> StateSettings {
    let mut settings = StateSettings::default();
    settings.poll_period = Some(Duration::from_secs(3600));
    settings
}

/// An append's result, where `AppendConflict` (the documented end of too many optimistic
/// retries, PostgreSQL) is allowed: `None` then.
pub(crate) fn allow_conflict<T>(result: Result<T, ofx_core::Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) if error.to_string().contains("conflicted") => None,
        Err(error) => panic!("{error}"),
    }
}

/// A runtime of its own for a hub whose projection's `apply` blocks (a [`Gate`]): a worker
/// blocked in `apply` must not starve the test's runtime (a task in a blocked worker's LIFO
/// slot cannot be stolen). Shut down in the background when dropped.
pub(crate) struct SideRuntime(Option<tokio::runtime::Runtime>);

impl SideRuntime {
    pub(crate) fn new() -> Self {
        Self(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ))
    }

    /// Runs `future` on this runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        self.0.as_ref().unwrap().spawn(future).await.unwrap()
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A hub on `side` that follows the ledger's stream with a [`Gated`] projection.
pub(crate) async fn gated_hub<B: Backend>(
    side: &SideRuntime,
    url: &str,
    gate: &Arc<Gate>,
) -> (Hub, StateService<Gated, B>) {
    let url = url.to_owned();
    let gate = Arc::clone(gate);
    side.run(async move {
        let db = DbHub::<B>::open(&url, fast()).await.unwrap();
        let gated = StateService::new(&db, Gated(gate));
        let hub = Hub::builder()
            .with(db)
            .with(gated.clone())
            .start()
            .await
            .unwrap();
        (hub, gated)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// `future`, which must finish within `limit`.
pub(crate) async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Polls `condition` every 10 ms until it holds, at most `limit` (a deadline loop: the
/// condition is something a background task will do).
pub(crate) async fn until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As [`until`], with an async condition.
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
