//! A notes service (commands with items, nested commands, an event that always fails), a
//! tally state service (with a poison event), hosts to run them, and the `ofx` binary.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, OperationItem, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::state::{Projection, Rejection, StateService};
use ofx_diesel::{Backend, DbHub, DbSettings};
use serde::{Deserialize, Serialize};

diesel::table! {
    notes (id) {
        id -> BigInt,
        body -> Text,
    }
}

const TABLES: &str = "CREATE TABLE notes (id BIGINT PRIMARY KEY NOT NULL, body TEXT NOT NULL);";

/// The notes queries of one backend.
pub(crate) trait NoteQueries: Backend {
    fn insert_note(
        connection: &mut Self::Connection,
        id: i64,
        body: &str,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
}

macro_rules! note_queries {
    ($backend:ty) => {
        impl NoteQueries for $backend {
            async fn insert_note(
                connection: &mut Self::Connection,
                id: i64,
                body: &str,
            ) -> QueryResult<usize> {
                diesel::insert_into(notes::table)
                    .values((notes::id.eq(id), notes::body.eq(body)))
                    .execute(connection)
                    .await
            }
        }
    };
}

note_queries!(ofx_diesel::Sqlite);
note_queries!(ofx_diesel::Postgres);

/// Adds a note.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "notes.add")]
pub(crate) struct AddNote {
    pub(crate) id: i64,
    pub(crate) body: String,
}

/// Adds two notes, each through a nested `AddNote`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "notes.add_two")]
pub(crate) struct AddTwo {
    pub(crate) first: i64,
    pub(crate) second: i64,
}

/// Adds an event that always fails (permanently: dead at once).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = uuid::Uuid, name = "notes.schedule_doomed")]
pub(crate) struct ScheduleDoomed {
    pub(crate) id: i64,
}

/// The doomed event.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "notes.doomed")]
pub(crate) struct Doomed {
    pub(crate) id: i64,
}

/// Appends to the tally stream.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "tally.append")]
pub(crate) struct Append {
    pub(crate) events: Vec<TallyEvent>,
}

/// The item each `AddNote` leaves in its operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NoteLength(pub(crate) usize);

impl OperationItem for NoteLength {
    const KEY: &'static str = "notes.length";
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NoteError {
    #[error("the doomed event fails")]
    Doomed,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
}

/// The tally's domain events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TallyEvent {
    Add(i64),
    /// `apply` rejects it.
    Poison,
}

pub(crate) struct Tally;

impl Projection for Tally {
    type Event = TallyEvent;
    type State = i64;
    const NAME: &'static str = "tally";
    const VERSION: u32 = 1;

    fn initial(&self) -> i64 {
        0
    }

    fn apply(&self, state: &mut i64, event: TallyEvent, _position: u64) -> Result<(), Rejection> {
        match event {
            TallyEvent::Add(amount) => *state += amount,
            TallyEvent::Poison => return Err(Rejection::new("poison is never applied")),
        }
        Ok(())
    }
}

pub(crate) struct Notes<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<B>,
    pub(crate) tally: StateService<Tally, B>,
}

impl<B: Backend> ComputeService for Notes<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: NoteQueries> Notes<B> {
    #[compute_method]
    pub(crate) async fn count(&self) -> u64 {
        0
    }

    #[command_handler]
    pub(crate) async fn add(
        &self,
        command: AddNote,
        ctx: &CommandContext,
    ) -> Result<i64, NoteError> {
        invalidate! {
            self.count();
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        B::insert_note(&mut connection, command.id, &command.body).await?;
        ctx.items().set(NoteLength(command.body.len()))?;
        Ok(command.id)
    }

    #[command_handler]
    pub(crate) async fn add_two(
        &self,
        command: AddTwo,
        ctx: &CommandContext,
    ) -> Result<(), NoteError> {
        let commander = ctx.hub().commander();
        for id in [command.first, command.second] {
            commander
                .call(AddNote {
                    id,
                    body: format!("nested {id}"),
                })
                .await?;
        }
        Ok(())
    }

    #[command_handler]
    pub(crate) async fn schedule_doomed(
        &self,
        command: ScheduleDoomed,
        ctx: &CommandContext,
    ) -> Result<uuid::Uuid, NoteError> {
        Ok(ctx.add_event(Doomed { id: command.id })?)
    }

    #[command_handler]
    pub(crate) async fn doomed(
        &self,
        _command: Doomed,
        _ctx: &CommandContext,
    ) -> Result<(), NoteError> {
        Err(ofx_core::Error::permanent(NoteError::Doomed).into())
    }

    #[command_handler]
    pub(crate) async fn append(
        &self,
        command: Append,
        ctx: &CommandContext,
    ) -> Result<u64, NoteError> {
        let appended = self
            .tally
            .transaction(ctx, |_state: &i64, appends| {
                for event in &command.events {
                    appends.push(event.clone());
                }
                Ok::<_, NoteError>(())
            })
            .await?;
        Ok(*appended.positions.end())
    }
}

/// One host: a hub reading the log (heartbeat every 100 ms), the notes service.
pub(crate) struct Host<B: Backend> {
    pub(crate) db: DbHub<B>,
    pub(crate) notes: Arc<Notes<B>>,
}

impl<B: NoteQueries> Host<B> {
    pub(crate) async fn open(url: &str) -> Self {
        let db = DbHub::<B>::open(url, fast()).await.unwrap();
        let tally = StateService::new(&db, Tally);
        let hub = Hub::builder()
            .with(db.clone())
            .with(tally.clone())
            .start()
            .await
            .unwrap();
        let notes = Arc::new(Notes {
            hub: hub.clone(),
            db: db.clone(),
            tally,
        });
        hub.add_service(&notes).unwrap();
        Self { db, notes }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.notes.hub
    }

    pub(crate) fn host_id(&self) -> String {
        self.hub().host_id().as_str().to_owned()
    }

    /// Runs a command; returns its output, its operation's uuid and its log index.
    pub(crate) async fn call<C: Command>(&self, command: C) -> (C::Output, uuid::Uuid, i64) {
        let executed = self
            .hub()
            .commander()
            .call_committed(command)
            .await
            .unwrap();
        let sequence = executed.committed.and_then(|c| c.sequence).unwrap();
        (executed.output, executed.operation, sequence)
    }
}

/// Settings for tests: fast polls, a heartbeat every 100 ms.
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(50);
    settings.host_heartbeat = Some(Duration::from_millis(100));
    settings
}

/// A fresh SQLite file with the notes table.
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!("ofx-cli-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(TABLES)
        .await
        .unwrap();
    path
}

/// Removes a SQLite database's files (after a test that passed).
pub(crate) fn remove_sqlite(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// A fresh PostgreSQL database with the notes table, on the server at 127.0.0.1:5432 (or
/// `OFX_TEST_POSTGRES`).
pub(crate) async fn postgres_database() -> String {
    use diesel_async::AsyncConnection;
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
    drop_leftovers(&mut admin).await;
    let name = format!(
        "ofx_cli_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    let db = DbHub::<ofx_diesel::Postgres>::open(&url, fast())
        .await
        .unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(TABLES)
        .await
        .unwrap();
    url
}

/// Drops the test databases named `ofx_cli_{pid}_…` whose process is gone; databases of running
/// processes are left alone.
async fn drop_leftovers(admin: &mut diesel_async::AsyncPgConnection) {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let names: Vec<Name> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'ofx_cli_%'")
            .load(admin)
            .await
            .unwrap_or_default();
    for Name { datname } in names {
        let pid = datname["ofx_cli_".len()..]
            .split('_')
            .next()
            .unwrap_or_default();
        let alive = !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            // Fails harmlessly if the database is still in use.
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {datname}"))
                .await;
        }
    }
}

/// What a run of `ofx` left.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts it succeeded; its output.
    #[track_caller]
    pub(crate) fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "ofx failed: {self:?}");
        assert!(self.stderr.is_empty(), "ofx wrote to stderr: {self:?}");
        self.stdout
    }

    /// Asserts it succeeded; its output as JSON.
    #[track_caller]
    pub(crate) fn json(self) -> serde_json::Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {stdout}"))
    }

    /// Asserts it failed with `code` and a message containing `needle`, without a panic.
    #[track_caller]
    pub(crate) fn fails(self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(self.stderr.contains(needle), "{needle:?} not in {self:?}");
        assert!(!self.stderr.contains("panicked"), "{self:?}");
    }
}

/// The `ofx` binary with `args`, no database URL from the environment.
pub(crate) fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ofx"));
    command
        .args(args)
        .env_remove("OFX_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `ofx` with `args` (within 60 s).
pub(crate) async fn run(args: &[&str]) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(60), command(args).output())
        .await
        .expect("ofx ends within 60 s")
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `ofx --database-url url` with `args`.
pub(crate) async fn ofx(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["--database-url", url];
    all.extend_from_slice(args);
    run(&all).await
}

/// Polls `check` until it returns `Some`, for at most `within`.
pub(crate) async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
