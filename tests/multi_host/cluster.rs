//! A counter service on one database, and a cluster of hosts running it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, LogReader};
use serde::{Deserialize, Serialize};

diesel::table! {
    counters (key) {
        key -> BigInt,
        value -> BigInt,
    }
}

/// Counter keys the tests use.
pub(crate) const KEYS: i64 = 16;

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS counters (key BIGINT PRIMARY KEY NOT NULL, value BIGINT NOT NULL)";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CounterError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub(crate) struct Counters<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
    /// Main branches run, shared by every host of a cluster (exactly once per command).
    main_runs: Arc<AtomicU64>,
}

impl<B: Backend> ComputeService for Counters<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Reading and bumping counters, whatever the backend.
pub(crate) trait CounterService: ComputeService {
    fn value_of(&self, key: i64) -> impl std::future::Future<Output = Result<i64, String>> + Send;
    fn pair_of(
        &self,
        a: i64,
        b: i64,
    ) -> impl std::future::Future<Output = Result<i64, String>> + Send;
    fn fresh(&self, key: i64) -> impl std::future::Future<Output = i64> + Send;
    fn bump(
        &self,
        key: i64,
        by: i64,
    ) -> impl std::future::Future<Output = Result<i64, ofx_core::Error>> + Send;
}

/// The counter queries of one backend: Diesel's query types are per backend, so the queries
/// are written once per backend; the service over them is one generic `#[service]`.
pub(crate) trait CounterQueries: Backend {
    /// The counter's value, if it was ever bumped.
    fn read(
        connection: &mut Self::Connection,
        key: i64,
    ) -> impl std::future::Future<Output = QueryResult<Option<i64>>> + Send;
    /// Adds `by` to the counter; returns its new value.
    fn add(
        connection: &mut Self::Connection,
        key: i64,
        by: i64,
    ) -> impl std::future::Future<Output = QueryResult<i64>> + Send;
}

macro_rules! counter_queries {
    ($backend:ty) => {
        impl CounterQueries for $backend {
            async fn read(connection: &mut Self::Connection, key: i64) -> QueryResult<Option<i64>> {
                counters::table
                    .find(key)
                    .select(counters::value)
                    .first(connection)
                    .await
                    .optional()
            }

            async fn add(connection: &mut Self::Connection, key: i64, by: i64) -> QueryResult<i64> {
                diesel::insert_into(counters::table)
                    .values((counters::key.eq(key), counters::value.eq(by)))
                    .on_conflict(counters::key)
                    .do_update()
                    .set(counters::value.eq(counters::value + by))
                    .returning(counters::value)
                    .get_result(connection)
                    .await
            }
        }
    };
}

counter_queries!(ofx_diesel::Sqlite);
counter_queries!(ofx_diesel::Postgres);

/// Adds to a counter.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "multi_host.bump")]
pub(crate) struct Bump {
    key: i64,
    by: i64,
}

/// One service for every backend.
#[service]
impl<B: CounterQueries> Counters<B> {
    #[compute_method]
    async fn value(&self, key: i64) -> Result<i64, String> {
        let mut connection = self
            .db
            .connection()
            .await
            .map_err(|error| error.to_string())?;
        let value = B::read(&mut connection, key)
            .await
            .map_err(|error| error.to_string())?;
        Ok(value.unwrap_or(0))
    }

    /// Depends on two values: stale if either is.
    #[compute_method]
    async fn pair(&self, a: i64, b: i64) -> Result<i64, String> {
        Ok(self.value(a).await? * 1000 + self.value(b).await?)
    }

    #[command_handler]
    async fn bump(&self, command: Bump, ctx: &CommandContext) -> Result<i64, CounterError> {
        invalidate! {
            self.value(command.key);
        }
        self.main_runs.fetch_add(1, Ordering::SeqCst);
        let mut connection = self.db.operation_connection(ctx).await?;
        Ok(B::add(&mut connection, command.key, command.by).await?)
    }
}

impl<B: CounterQueries> CounterService for Counters<B> {
    async fn value_of(&self, key: i64) -> Result<i64, String> {
        self.value(key).await
    }

    async fn pair_of(&self, a: i64, b: i64) -> Result<i64, String> {
        self.pair(a, b).await
    }

    async fn fresh(&self, key: i64) -> i64 {
        let mut connection = self.db.connection().await.unwrap();
        B::read(&mut connection, key).await.unwrap().unwrap_or(0)
    }

    async fn bump(&self, key: i64, by: i64) -> Result<i64, ofx_core::Error> {
        self.hub.commander().call(Bump { key, by }).await
    }
}

/// One host of a cluster.
pub(crate) struct Host<B: Backend> {
    pub(crate) counters: Arc<Counters<B>>,
    pub(crate) reader: LogReader,
}

/// Hosts sharing one database.
pub(crate) struct Cluster<B: Backend> {
    pub(crate) hosts: Vec<Host<B>>,
    pub(crate) main_runs: Arc<AtomicU64>,
}

/// How the hosts of a cluster wake each other.
#[derive(Debug, Clone)]
pub(crate) enum Wakeup {
    /// No watcher: polling every `Duration`.
    Polling(Duration),
    /// A file-system watcher on this directory.
    Fs(std::path::PathBuf),
    /// PostgreSQL LISTEN/NOTIFY on this server.
    Postgres(String),
    /// Redis pub/sub on this server.
    Redis(String),
}

/// The polling period of hosts that have a watcher: long, so that the test shows the watcher
/// does the work (it still bounds the delay of a lost wake-up).
pub(crate) const SAFETY_NET_POLL: Duration = Duration::from_secs(2);

impl<B: CounterQueries> Cluster<B> {
    /// `count` hosts on the database at `url`, woken as `wakeup` says.
    pub(crate) async fn start(url: &str, count: usize, wakeup: &Wakeup) -> Self {
        let main_runs = Arc::new(AtomicU64::new(0));
        let mut hosts = Vec::with_capacity(count);
        let log = format!("multi-host-{}", uuid::Uuid::new_v4().simple());
        for _ in 0..count {
            let mut settings = DbSettings::default();
            settings.poll_period_with_watcher = SAFETY_NET_POLL;
            if let Wakeup::Polling(period) = wakeup {
                settings.poll_period = *period;
            }
            let db = DbHub::<B>::open(url, settings).await.unwrap();
            db.connection()
                .await
                .unwrap()
                .batch_execute(SCHEMA)
                .await
                .unwrap();
            match wakeup {
                Wakeup::Polling(_) => {}
                Wakeup::Fs(dir) => db
                    .set_watcher(ofx_watchers::FsWatcher::factory(dir, &log))
                    .unwrap(),
                Wakeup::Postgres(server) => db
                    .set_watcher(ofx_watchers::PgWatcher::factory(
                        &format!("{server}/postgres"),
                        &log,
                    ))
                    .unwrap(),
                Wakeup::Redis(server) => db
                    .set_watcher(ofx_watchers::RedisWatcher::factory(server, &log))
                    .unwrap(),
            }
            // One step: the watcher, the log reader and the trimmer start with the hub.
            let hub = Hub::builder().with(db.clone()).start().await.unwrap();
            let counters = Arc::new(Counters {
                hub: hub.clone(),
                db: db.clone(),
                main_runs: Arc::clone(&main_runs),
            });
            hub.add_service(&counters).unwrap();
            let reader = db.log_reader(&hub).unwrap();
            hosts.push(Host { counters, reader });
        }
        Self { hosts, main_runs }
    }
}
