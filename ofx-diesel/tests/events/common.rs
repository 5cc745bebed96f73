//! A jobs service whose commands produce events, and whose event handler records each run's
//! effect in a table keyed by the event's uuid (`UNIQUE`), so that a duplicated effect fails
//! loudly and a count proves exactly-once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::operation::{EventOptions, KeyConflict};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, EventInfo, EventProcessor, EventStats};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

diesel::table! {
    effects (event_uuid) {
        event_uuid -> Text,
        job -> BigInt,
        payload -> Text,
        attempt -> Integer,
        host -> Text,
    }
}

diesel::table! {
    produced (id) {
        id -> BigInt,
        job -> BigInt,
    }
}

/// The business tables: `effects` is keyed by the event's uuid, so an effect that happened twice
/// is a constraint violation, never a silent duplicate.
pub(crate) const TABLES: &str = "CREATE TABLE effects (event_uuid TEXT PRIMARY KEY NOT NULL, \
     job BIGINT NOT NULL, payload TEXT NOT NULL, attempt INTEGER NOT NULL, host TEXT NOT NULL); \
     CREATE TABLE produced (id BIGINT PRIMARY KEY NOT NULL, job BIGINT NOT NULL);";

/// The jobs queries of one backend.
pub(crate) trait JobQueries: Backend {
    fn insert_effect(
        connection: &mut Self::Connection,
        event: &str,
        job: i64,
        payload: &str,
        attempt: i32,
        host: &str,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    fn count_effects(
        connection: &mut Self::Connection,
        job: i64,
    ) -> impl std::future::Future<Output = QueryResult<i64>> + Send;
    fn insert_produced(
        connection: &mut Self::Connection,
        id: i64,
        job: i64,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    fn effect_rows(
        connection: &mut Self::Connection,
        job: i64,
    ) -> impl std::future::Future<Output = QueryResult<Vec<Effect>>> + Send;
    fn produced_exists(
        connection: &mut Self::Connection,
        id: i64,
    ) -> impl std::future::Future<Output = QueryResult<bool>> + Send;
}

/// One effect row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub(crate) struct Effect {
    pub(crate) event_uuid: String,
    pub(crate) job: i64,
    pub(crate) payload: String,
    pub(crate) attempt: i32,
    pub(crate) host: String,
}

macro_rules! job_queries {
    ($backend:ty) => {
        impl JobQueries for $backend {
            async fn insert_effect(
                connection: &mut Self::Connection,
                event: &str,
                job: i64,
                payload: &str,
                attempt: i32,
                host: &str,
            ) -> QueryResult<usize> {
                diesel::insert_into(effects::table)
                    .values((
                        effects::event_uuid.eq(event),
                        effects::job.eq(job),
                        effects::payload.eq(payload),
                        effects::attempt.eq(attempt),
                        effects::host.eq(host),
                    ))
                    .execute(connection)
                    .await
            }

            async fn count_effects(
                connection: &mut Self::Connection,
                job: i64,
            ) -> QueryResult<i64> {
                effects::table
                    .filter(effects::job.eq(job))
                    .count()
                    .get_result(connection)
                    .await
            }

            async fn insert_produced(
                connection: &mut Self::Connection,
                id: i64,
                job: i64,
            ) -> QueryResult<usize> {
                diesel::insert_into(produced::table)
                    .values((produced::id.eq(id), produced::job.eq(job)))
                    .execute(connection)
                    .await
            }

            async fn effect_rows(
                connection: &mut Self::Connection,
                job: i64,
            ) -> QueryResult<Vec<Effect>> {
                effects::table
                    .filter(effects::job.eq(job))
                    .order(effects::event_uuid)
                    .load(connection)
                    .await
            }

            async fn produced_exists(
                connection: &mut Self::Connection,
                id: i64,
            ) -> QueryResult<bool> {
                let count: i64 = produced::table
                    .filter(produced::id.eq(id))
                    .count()
                    .get_result(connection)
                    .await?;
                Ok(count > 0)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
job_queries!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
job_queries!(ofx_diesel::Postgres);

/// What an event's handler does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) enum Behavior {
    /// Records its effect.
    #[default]
    Succeed,
    /// Fails (a plain error: retried) while its attempt is at most this, then records its effect.
    FailUntil(u32),
    /// Fails with a permanent error.
    Permanent,
    /// Waits at the job's gate (see [`gate`]) until the test lets it through, then records its
    /// effect. It waits *before* it writes: a held SQLite write transaction would keep every
    /// other writer (claims, produces, other runs) waiting, so a run held after writing could
    /// not be overtaken on SQLite.
    Gated,
    /// Writes its effect, then fails with a transient error on its first this many runs of one
    /// delivery (reprocessing runs it again at once, in the same claim).
    TransientRuns(u32),
    /// Fails (a plain error: retried) until the job's gate is opened (the cause "fixed"), then
    /// records its effect.
    FailUntilOpened,
}

/// How a produced event is stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct EventSpec {
    pub(crate) delay_ms: Option<u64>,
    pub(crate) key: Option<String>,
    pub(crate) debounce_ms: Option<u64>,
    /// "fail", "keep" or "replace".
    pub(crate) conflict: Option<String>,
    pub(crate) behavior: Behavior,
    pub(crate) payload: String,
}

impl EventSpec {
    fn options(&self) -> EventOptions {
        let mut options = EventOptions::new();
        if let Some(delay) = self.delay_ms {
            options = options.delay(Duration::from_millis(delay));
        }
        if let Some(key) = &self.key {
            options = match self.debounce_ms {
                Some(window) => options.debounce(key.clone(), Duration::from_millis(window)),
                None => options.key(key.clone()),
            };
        }
        match self.conflict.as_deref() {
            Some("fail") => options.on_conflict(KeyConflict::Fail),
            Some("replace") => options.on_conflict(KeyConflict::Replace),
            Some("keep") => options.on_conflict(KeyConflict::Keep),
            _ => options,
        }
    }
}

/// Produces `count` events for `job` (optionally writing a row first, and failing after).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Vec<uuid::Uuid>, name = "jobs.produce")]
pub(crate) struct Produce {
    pub(crate) job: i64,
    pub(crate) count: u32,
    pub(crate) spec: EventSpec,
    /// Writes a `produced` row with this id first.
    pub(crate) write: Option<i64>,
    /// Fails after adding the events.
    pub(crate) fail: bool,
}

/// Adds an event (`outer`), then calls `Produce` as a nested command (`inner_count` events of
/// `inner`, writing a `produced` row `inner_write`, failing if `inner_fails`), swallowing the
/// nested command's failure when it was asked to fail.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "jobs.nest")]
pub(crate) struct Nest {
    pub(crate) job: i64,
    pub(crate) outer: EventSpec,
    pub(crate) inner: EventSpec,
    pub(crate) inner_count: u32,
    pub(crate) inner_write: Option<i64>,
    pub(crate) inner_fails: bool,
}

/// The event: records its effect, keyed by its own uuid.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "jobs.run", backend)]
pub(crate) struct RunJob {
    pub(crate) job: i64,
    pub(crate) behavior: Behavior,
    pub(crate) payload: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("refused after producing")]
    Refused,
    #[error("failing on attempt {0}")]
    Flaky(u32),
    #[error("not run as an event")]
    NotAnEvent,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
}

pub(crate) struct Jobs<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<B>,
}

impl<B: Backend> ComputeService for Jobs<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: JobQueries> Jobs<B> {
    /// How many effects `job` has: cached, invalidated by every run of its events.
    #[compute_method]
    pub(crate) async fn effect_count(&self, job: i64) -> Result<i64, String> {
        let mut connection = self
            .db
            .connection()
            .await
            .map_err(|error| error.to_string())?;
        B::count_effects(&mut connection, job)
            .await
            .map_err(|error| error.to_string())
    }

    #[command_handler]
    pub(crate) async fn produce(
        &self,
        command: Produce,
        ctx: &CommandContext,
    ) -> Result<Vec<uuid::Uuid>, JobError> {
        if let Some(id) = command.write {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::insert_produced(&mut connection, id, command.job).await?;
        }
        let mut uuids = Vec::new();
        for _ in 0..command.count {
            let event = RunJob {
                job: command.job,
                behavior: command.spec.behavior,
                payload: command.spec.payload.clone(),
            };
            uuids.push(ctx.add_event_with(event, command.spec.options())?);
        }
        if command.fail {
            return Err(JobError::Refused);
        }
        Ok(uuids)
    }

    #[command_handler]
    pub(crate) async fn run_job(
        &self,
        command: RunJob,
        ctx: &CommandContext,
    ) -> Result<(), JobError> {
        invalidate! {
            self.effect_count(command.job);
        }
        let delivery = ctx.event_delivery().ok_or(JobError::NotAnEvent)?;
        match command.behavior {
            Behavior::FailUntil(attempts) if delivery.attempt <= attempts => {
                return Err(JobError::Flaky(delivery.attempt));
            }
            Behavior::Permanent => {
                return Err(ofx_core::Error::permanent(JobError::Flaky(delivery.attempt)).into());
            }
            Behavior::FailUntilOpened if !gate::<B>(command.job).is_open() => {
                return Err(JobError::Flaky(delivery.attempt));
            }
            Behavior::Gated => gate::<B>(command.job).pass().await,
            _ => {}
        }
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::insert_effect(
                &mut connection,
                &delivery.event.to_string(),
                command.job,
                &command.payload,
                i32::try_from(delivery.attempt).unwrap_or(i32::MAX),
                &self.hub.host_id().to_string(),
            )
            .await?;
        }
        if let Behavior::TransientRuns(failing) = command.behavior
            && count_run(delivery.event) <= failing
        {
            return Err(ofx_core::Error::transient(JobError::Flaky(delivery.attempt)).into());
        }
        Ok(())
    }

    #[command_handler]
    pub(crate) async fn nest(&self, command: Nest, ctx: &CommandContext) -> Result<(), JobError> {
        let event = RunJob {
            job: command.job,
            behavior: command.outer.behavior,
            payload: command.outer.payload.clone(),
        };
        ctx.add_event_with(event, command.outer.options())?;
        // Called from inside a handler: a nested command of this operation.
        let inner = self
            .hub
            .commander()
            .call(Produce {
                job: command.job,
                count: command.inner_count,
                spec: command.inner,
                write: command.inner_write,
                fail: command.inner_fails,
            })
            .await;
        match inner {
            Ok(_) => Ok(()),
            // Swallowed: the outer command goes on and commits.
            Err(_) if command.inner_fails => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Counts a run of `event`'s handler that got past its effect; returns how many so far.
fn count_run(event: uuid::Uuid) -> u32 {
    let mut runs = RUNS.get_or_init(Default::default).lock().unwrap();
    let count = runs.entry(event).or_default();
    *count += 1;
    *count
}

static RUNS: OnceLock<Mutex<HashMap<uuid::Uuid, u32>>> = OnceLock::new();

/// How many runs of `event`'s handler got past its effect.
pub(crate) fn runs_of(event: uuid::Uuid) -> u32 {
    RUNS.get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(&event)
        .copied()
        .unwrap_or(0)
}

/// A gate gated events' handlers wait at: each arrival takes the next ticket (1 for the first);
/// the test sees them arrive, then lets them through one by one ([`release`](Self::release)) or
/// all at once ([`open`](Self::open)).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct GateState {
    arrivals: u32,
    released: HashSet<u32>,
    opened: bool,
}

impl Gate {
    async fn pass(&self) {
        let ticket = {
            let mut state = self.state.lock().unwrap();
            state.arrivals += 1;
            state.arrivals
        };
        self.changed.notify_waiters();
        loop {
            let changed = self.changed.notified();
            {
                let state = self.state.lock().unwrap();
                if state.opened || state.released.contains(&ticket) {
                    return;
                }
            }
            changed.await;
        }
    }

    /// Waits until `count` handlers arrived.
    pub(crate) async fn arrivals(&self, count: u32) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let changed = self.changed.notified();
                if self.state.lock().unwrap().arrivals >= count {
                    return;
                }
                changed.await;
            }
        })
        .await
        .expect("the gated handlers did not arrive");
    }

    /// Lets the handler with this ticket through.
    pub(crate) fn release(&self, ticket: u32) {
        self.state.lock().unwrap().released.insert(ticket);
        self.changed.notify_waiters();
    }

    /// Lets every handler waiting (and every later one) through.
    pub(crate) fn open(&self) {
        self.state.lock().unwrap().opened = true;
        self.changed.notify_waiters();
    }

    /// Whether it was opened.
    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().unwrap().opened
    }
}

/// The gate of `job` on backend `B` (a scenario's SQLite and PostgreSQL tests run at the same
/// time, with the same job ids).
pub(crate) fn gate<B: Backend>(job: i64) -> Arc<Gate> {
    type Gates = HashMap<(&'static str, i64), Arc<Gate>>;
    static GATES: OnceLock<Mutex<Gates>> = OnceLock::new();
    Arc::clone(
        GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry((B::NAME, job))
            .or_default(),
    )
}

/// One host: a hub with the database attached (its processor running unless the settings say
/// otherwise) and the jobs service.
pub(crate) struct Host<B: Backend> {
    pub(crate) jobs: Arc<Jobs<B>>,
    pub(crate) db: DbHub<B>,
}

impl<B: JobQueries> Host<B> {
    pub(crate) async fn open(url: &str, mut settings: DbSettings) -> Self {
        // The processor starts once the service is added: started when the database attaches,
        // it could claim a pending event before the hub has its handler, which gives it back
        // for a second (without counting an attempt; see `no_processor`): the tests' timings
        // would depend on it.
        let process = std::mem::replace(&mut settings.events.process, false);
        let db = DbHub::<B>::open(url, settings).await.unwrap();
        let hub = Hub::builder().with(db.clone()).start().await.unwrap();
        let jobs = Arc::new(Jobs {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&jobs).unwrap();
        if process {
            db.start_event_processor(&hub).unwrap();
        }
        Self { jobs, db }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.jobs.hub
    }

    pub(crate) fn processor(&self) -> EventProcessor {
        self.db.event_processor(self.hub()).unwrap()
    }

    pub(crate) async fn produce(
        &self,
        job: i64,
        count: u32,
        spec: EventSpec,
    ) -> Result<Vec<uuid::Uuid>, ofx_core::Error> {
        self.hub()
            .commander()
            .call(Produce {
                job,
                count,
                spec,
                write: None,
                fail: false,
            })
            .await
    }

    /// Effects of `job` in the table.
    pub(crate) async fn effects(&self, job: i64) -> i64 {
        let mut connection = self.db.connection().await.unwrap();
        B::count_effects(&mut connection, job).await.unwrap()
    }

    /// The effect rows of `job`, by event uuid.
    pub(crate) async fn effect_rows(&self, job: i64) -> Vec<Effect> {
        let mut connection = self.db.connection().await.unwrap();
        B::effect_rows(&mut connection, job).await.unwrap()
    }

    /// Whether a `produced` row with this id committed.
    pub(crate) async fn produced(&self, id: i64) -> bool {
        let mut connection = self.db.connection().await.unwrap();
        B::produced_exists(&mut connection, id).await.unwrap()
    }

    /// The stored event.
    pub(crate) async fn event(&self, uuid: uuid::Uuid) -> EventInfo {
        self.db
            .events()
            .get(uuid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no event {uuid}"))
    }

    /// Waits until the stored event meets `condition`, at most `timeout`; returns it.
    pub(crate) async fn wait_event(
        &self,
        uuid: uuid::Uuid,
        condition: impl Fn(&EventInfo) -> bool,
        timeout: Duration,
    ) -> EventInfo {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(event) = self.db.events().get(uuid).await.unwrap()
                    && condition(&event)
                {
                    return event;
                }
                self.next_change().await;
            }
        })
        .await;
        match waited {
            Ok(event) => event,
            Err(_) => panic!(
                "event {uuid} did not reach the expected state: {:?}",
                self.db.events().get(uuid).await
            ),
        }
    }

    /// Until this host's processor did something, at most 50 ms (other hosts work too).
    pub(crate) async fn next_change(&self) {
        match self.db.event_processor(self.hub()) {
            Some(processor) => {
                let seen = activity(processor.stats());
                processor
                    .wait_until(|stats| activity(stats) != seen, Duration::from_millis(50))
                    .await;
            }
            // No processor here: only other hosts change the table, and nothing here hears of
            // it; poll.
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }

    /// Runs SQL statements as they are (the tests' own, on the events table).
    pub(crate) async fn sql(&self, statements: &str) {
        let mut connection = self.db.connection().await.unwrap();
        connection.batch_execute(statements).await.unwrap();
    }

    /// Waits until no event is pending, at most `timeout`.
    pub(crate) async fn drained(&self, timeout: Duration) {
        let events = self.db.events();
        tokio::time::timeout(timeout, async {
            loop {
                let counts = events.counts().await.unwrap();
                if counts.pending == 0 {
                    return;
                }
                // Woken by the next completion here, or polled (other hosts complete too).
                let processor = self.processor();
                let completed = processor.stats().completed() + processor.stats().dead();
                processor
                    .wait_until(
                        |stats| stats.completed() + stats.dead() > completed,
                        Duration::from_millis(50),
                    )
                    .await;
            }
        })
        .await
        .expect("events were still pending");
    }
}

/// Everything a processor's stats count.
fn activity(stats: &EventStats) -> u64 {
    stats.claimed() + stats.completed() + stats.retried() + stats.dead() + stats.fenced()
}

/// Settings for tests: a short poll period.
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings
}

/// A fresh SQLite file with the business tables.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> String {
    let path =
        std::env::temp_dir().join(format!("ofx-events-{}.db", uuid::Uuid::new_v4().simple()));
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

/// A fresh PostgreSQL database with the business tables, on the server at 127.0.0.1:5432.
#[cfg(feature = "postgres")]
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
    drop_leftovers(&mut admin, "ofx_events_").await;
    let name = format!(
        "ofx_events_{}_{}",
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

/// Drops the test databases named `{prefix}{pid}_…` whose process is gone (a test that failed
/// before it could drop its own); databases of running processes are left alone.
async fn drop_leftovers(admin: &mut diesel_async::AsyncPgConnection, prefix: &str) {
    use diesel::QueryableByName;
    use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection as _};
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let names: Vec<Name> = diesel::sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'"
    ))
    .load(admin)
    .await
    .unwrap_or_default();
    for Name { datname } in names {
        let pid = datname[prefix.len()..]
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
