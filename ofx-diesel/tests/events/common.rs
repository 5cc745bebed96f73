//! A jobs service whose commands produce events, and whose event handler records each run's
//! effect in a table keyed by the event's uuid (`UNIQUE`), so that a duplicated effect fails
//! loudly and a count proves exactly-once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::operation::{EventOptions, KeyConflict};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, EventProcessor};
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
    /// Waits at the job's gate (see [`gate`]) after writing its effect, before returning.
    Gated,
    /// Waits at the job's gate before writing anything (on SQLite, holding no write lock).
    GatedFirst,
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
            Behavior::GatedFirst => gate(command.job).pass().await,
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
        if command.behavior == Behavior::Gated {
            gate(command.job).pass().await;
        }
        Ok(())
    }
}

/// A gate a gated event's handler waits at: the test sees it arrive, then opens it.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    arrived: Notify,
    arrivals: Mutex<u32>,
    open: Notify,
    opened: Mutex<bool>,
}

impl Gate {
    async fn pass(&self) {
        *self.arrivals.lock().unwrap() += 1;
        self.arrived.notify_waiters();
        loop {
            let open = self.open.notified();
            if *self.opened.lock().unwrap() {
                return;
            }
            open.await;
        }
    }

    /// Waits until `count` handlers arrived.
    pub(crate) async fn arrivals(&self, count: u32) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let arrived = self.arrived.notified();
                if *self.arrivals.lock().unwrap() >= count {
                    return;
                }
                arrived.await;
            }
        })
        .await
        .expect("the gated handlers did not arrive");
    }

    /// Lets every handler waiting (and every later one) through.
    pub(crate) fn open(&self) {
        *self.opened.lock().unwrap() = true;
        self.open.notify_waiters();
    }
}

/// The gate of `job`.
pub(crate) fn gate(job: i64) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<i64, Arc<Gate>>>> = OnceLock::new();
    Arc::clone(
        GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(job)
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
    pub(crate) async fn open(url: &str, settings: DbSettings) -> Self {
        let db = DbHub::<B>::open(url, settings).await.unwrap();
        let hub = Hub::builder().with(db.clone()).start().await.unwrap();
        let jobs = Arc::new(Jobs {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&jobs).unwrap();
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
    let name = format!("ofx_events_{}", uuid::Uuid::new_v4().simple());
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
