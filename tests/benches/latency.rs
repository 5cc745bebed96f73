//! Cross-host invalidation latency: a command commits on host A, how long until host B's cached
//! value is invalidated, per wake-up transport, next to the raw floor of that transport measured
//! in the same run.
//!
//! Two hosts (two [`Hub`]s with their own [`DbHub`], watcher and log reader) share one database
//! and run a counter service. One sample:
//!
//! 1. B reads `value(key)` through `ofx_core::capture`, keeping its `Computed`;
//! 2. A runs the command that bumps `key` (`commander.call(..).await`): `call start`, then
//!    `commit start` (just before `COMMIT`, seen by a commit hook on A's `DbHub`), then `t0`
//!    when the call returns (the commit is done, the watcher notified);
//! 3. `t1` when B's `Computed::when_invalidated()` resolves: B's watcher received A's wake-up,
//!    which carries the operation as a hint, and B's reader's replayer replayed it there (B's
//!    reader then reads the row and skips it; without the hint, the read comes first).
//!
//! The headline latency is `t1 - t0`; `t1 - commit start` and `t1 - call start` are reported
//! too. Host B also serves `value(key)` as a **live value over HTTP** (ofx-axum's SSE route),
//! with one client per key in this process: `t2` is when that client received the new value's
//! frame, and `t2 - t0` is reported against the same raw baseline (goal: p50 ≤ 5 ms, p99 ≤
//! 20 ms). Each watcher run sets `poll_period_with_watcher` to one hour, so only the watcher can
//! wake B's reader in time; a sample whose invalidation takes longer than 2 s counts as a miss.
//!
//! | run | database | wake-up |
//! |---|---|---|
//! | `fs` | one SQLite file (temporary) | `FsWatcher` on a temporary directory |
//! | `postgres` | a fresh PostgreSQL database `ofx_bench_<uuid>` | `PgWatcher` (LISTEN/NOTIFY) on it |
//! | `redis` | another fresh `ofx_bench_<uuid>` | `RedisWatcher` (pub/sub) |
//! | `polling` | one SQLite file | none: `poll_period` 50 ms (see below) |
//!
//! In the `polling` run each command first waits a random 0–50 ms, so that it lands at a random
//! phase of B's poll (right after B replayed the previous row, its next poll is a period away).
//!
//! Raw baselines, measured in rounds interleaved with the ofx samples of the same transport (so
//! both see the same machine noise), each timed from just before the sending call to the moment
//! the receiving side's task or callback gets the message:
//!
//! - `fs write`: `std::fs::write` over an existing file → first `notify`-crate event for it
//!   that `FsWatcher` counts as a write (its filter: not `Access`, so not the `Open` event,
//!   which comes ~50 µs after the call; the truncation's `Modify` comes only when ext4 has
//!   dropped the old blocks);
//! - `fs tmp+rename`: write a temporary file and rename it over the watched one (what
//!   `FsWatcher` does) → first event for the watched name;
//! - `pg NOTIFY`: `SELECT pg_notify($1, $2)` (prepared, autocommit) on one tokio-postgres
//!   connection → the notification on another, which `LISTEN`s;
//! - `redis PUBLISH`: `PUBLISH` on a multiplexed connection → the push message on a RESP3
//!   connection subscribed to the channel.
//!
//! A diagnostic phase per watcher run then splits the latency: a third watcher (an observer on
//! the same log, another host id) timestamps when the wake-up reaches another host, and the
//! steps of B's reader (pool connection, the `trimmed_through` and `read_after` queries, decoding,
//! replay) are timed one by one on a third hub of the same database.
//!
//! Everything runs on one multi-thread tokio runtime with 2 workers. PostgreSQL is taken from
//! `OFX_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`) and Redis from
//! `OFX_TEST_REDIS` (default `redis://127.0.0.1:6379`); the databases are dropped at the end
//! `WITH (FORCE)`. `OFX_BENCH_ONLY=fs,postgres,redis,polling` picks runs.
//!
//! Run: `cargo bench -p ofx-tests --bench latency` (about 75 s after the build, 55 s of it
//! the `polling` run).

use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, HostId, Hub, LogWatcher, capture, command_handler,
    compute_method, invalidate, service,
};
use ofx_diesel::{Backend, CommitFaultHook, DbHub, DbSettings, LogReader, Postgres, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

#[path = "support/mod.rs"]
mod support;
use support::{admin_client, postgres_server};

/// Samples dropped at the start of each measurement (connections, caches, branch predictors).
const WARMUP: usize = 50;
/// Rounds of interleaved raw and ofx samples.
const ROUNDS: usize = 10;
/// Samples per round and kind: `ROUNDS * PER_ROUND` measured samples each.
const PER_ROUND: usize = 100;
/// Samples of the diagnostic phase.
const DIAGNOSTIC: usize = 300;
/// The polling period of the `polling` run.
const POLL_PERIOD: Duration = Duration::from_millis(50);
/// The safety-net poll of the watcher runs: long enough never to fire during a run.
const WATCHER_POLL: Duration = Duration::from_secs(3600);
/// A sample slower than this is a missed wake-up.
const MISS_AFTER: Duration = Duration::from_secs(2);
/// The target: the invalidation on B at most this long (µs) after the transport's raw latency,
/// at p50.
const P50_OVER_RAW: f64 = 150.0;
/// Counter keys, used in turn.
const KEYS: i64 = 16;

// ===== the counter service =====

diesel::table! {
    /// The counters.
    bench_counters (key) {
        /// The counter's key.
        key -> BigInt,
        /// Its value.
        value -> BigInt,
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bench_counters \
                      (key BIGINT PRIMARY KEY NOT NULL, value BIGINT NOT NULL)";

#[derive(Debug, thiserror::Error)]
enum CounterError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

struct Counters<B: Backend> {
    hub: Hub,
    db: DbHub<B>,
}

impl<B: Backend> ComputeService for Counters<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Reading and bumping counters, whatever the backend.
trait CounterService: ComputeService + Send + Sync + 'static {
    fn value_of(&self, key: i64) -> impl Future<Output = Result<i64, String>> + Send;
    fn bump(&self, key: i64) -> impl Future<Output = Result<i64, ofx_core::Error>> + Send;
}

/// The counter queries of one backend (Diesel's query types are per backend); the service
/// over them is one generic `#[service]`.
trait CounterQueries: Backend {
    fn read(
        connection: &mut Self::Connection,
        key: i64,
    ) -> impl Future<Output = diesel::QueryResult<Option<i64>>> + Send;
    fn increment(
        connection: &mut Self::Connection,
        key: i64,
    ) -> impl Future<Output = diesel::QueryResult<i64>> + Send;
}

macro_rules! counter_queries {
    ($backend:ty) => {
        impl CounterQueries for $backend {
            async fn read(
                connection: &mut Self::Connection,
                key: i64,
            ) -> diesel::QueryResult<Option<i64>> {
                bench_counters::table
                    .find(key)
                    .select(bench_counters::value)
                    .first(connection)
                    .await
                    .optional()
            }

            async fn increment(
                connection: &mut Self::Connection,
                key: i64,
            ) -> diesel::QueryResult<i64> {
                diesel::insert_into(bench_counters::table)
                    .values((bench_counters::key.eq(key), bench_counters::value.eq(1)))
                    .on_conflict(bench_counters::key)
                    .do_update()
                    .set(bench_counters::value.eq(bench_counters::value + 1))
                    .returning(bench_counters::value)
                    .get_result(connection)
                    .await
            }
        }
    };
}

counter_queries!(Sqlite);
counter_queries!(Postgres);

/// Bumps a counter.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "latency_bench.bump")]
struct Bump {
    key: i64,
}

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

    #[command_handler]
    async fn apply_bump(&self, command: Bump, ctx: &CommandContext) -> Result<i64, CounterError> {
        invalidate! {
            self.value(command.key);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        Ok(B::increment(&mut connection, command.key).await?)
    }
}

impl<B: CounterQueries> CounterService for Counters<B> {
    async fn value_of(&self, key: i64) -> Result<i64, String> {
        self.value(key).await
    }

    async fn bump(&self, key: i64) -> Result<i64, ofx_core::Error> {
        self.hub.commander().call(Bump { key }).await
    }
}

// ===== hosts =====

/// How the hosts of a run wake each other.
#[derive(Debug, Clone)]
enum Wakeup {
    Polling,
    Fs(PathBuf),
    Postgres(String),
    Redis(String),
}

impl Wakeup {
    /// Sets this wake-up's watcher (if it has one) on `db`, for the log `log`.
    fn set_watcher<B: Backend>(&self, db: &DbHub<B>, log: &str) {
        match self {
            Self::Polling => Ok(()),
            Self::Fs(dir) => db.set_watcher(ofx_watchers::FsWatcher::factory(dir, log)),
            Self::Postgres(url) => db.set_watcher(ofx_watchers::PgWatcher::factory(url, log)),
            Self::Redis(url) => db.set_watcher(ofx_watchers::RedisWatcher::factory(url, log)),
        }
        .expect("the watcher is set before the hub starts");
    }

    /// A watcher for `host_id` on the log `log`, if this wake-up has one.
    async fn watcher(
        &self,
        log: &str,
        host_id: HostId,
        stop: CancellationToken,
    ) -> Option<Arc<dyn LogWatcher>> {
        use ofx_core::LogWatcherFactory;
        let started = match self {
            Self::Polling => return None,
            Self::Fs(dir) => {
                ofx_watchers::FsWatcher::factory(dir, log)
                    .start(host_id, stop)
                    .await
            }
            Self::Postgres(url) => {
                ofx_watchers::PgWatcher::factory(url, log)
                    .start(host_id, stop)
                    .await
            }
            Self::Redis(url) => {
                ofx_watchers::RedisWatcher::factory(url, log)
                    .start(host_id, stop)
                    .await
            }
        };
        Some(started.expect("the watcher starts"))
    }
}

/// One host: a hub with the counter service on its own `DbHub`.
struct Host<B: Backend> {
    counters: Arc<Counters<B>>,
    /// Kept: dropping it stops the reader.
    _reader: Option<LogReader>,
}

impl<B: CounterQueries> Host<B> {
    /// A host on `url`; with a log reader (woken as `wakeup` says) when `read` is set.
    async fn start(url: &str, wakeup: &Wakeup, log: &str, read: bool) -> Self {
        let mut settings = DbSettings::default();
        settings.poll_period = POLL_PERIOD;
        settings.poll_period_with_watcher = WATCHER_POLL;
        settings.read_log = read;
        let db = DbHub::<B>::open(url, settings)
            .await
            .expect("the database opens");
        db.connection()
            .await
            .expect("a connection")
            .batch_execute(SCHEMA)
            .await
            .expect("the counters table is created");
        wakeup.set_watcher(&db, log);
        let hub = Hub::builder()
            .with(db.clone())
            .start()
            .await
            .expect("the hub starts");
        let counters = Arc::new(Counters {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&counters).expect("the service is added");
        let reader = db.log_reader(&hub);
        Self {
            counters,
            _reader: reader,
        }
    }

    fn stop(&self) {
        self.counters.hub.shutdown_token().cancel();
    }
}

/// Host A (commits), host B (is invalidated), and when A's last commit started.
struct Pair<B: Backend> {
    a: Host<B>,
    b: Host<B>,
    commit_started: Arc<Mutex<Option<Instant>>>,
    log: String,
    wakeup: Wakeup,
    url: String,
    /// Host B's live values over HTTP: per key, when each frame reached the client.
    live: LiveClients,
}

/// Host B serves `value(key)` as live values (ofx-axum); one SSE client per key, in this
/// process, timestamps each frame as it arrives.
struct LiveClients {
    frames: Vec<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>,
    ofx: ofx_axum::Ofx,
}

impl LiveClients {
    async fn start<B: CounterQueries>(b: &Host<B>) -> Self
    where
        Counters<B>: CounterService,
    {
        let stop = CancellationToken::new();
        let ofx = ofx_axum::Ofx::builder(&b.counters.hub)
            .shutdown_on(stop.clone())
            .build();
        let app = axum::Router::new().route(
            "/live/value",
            ofx.live(&b.counters, Counters::<B>::value_method()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for host B");
        let address = listener.local_addr().expect("the port");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        let client = reqwest::Client::new();
        let mut frames = Vec::new();
        let mut started = Vec::new();
        for key in 0..KEYS {
            let (sender, receiver) = mpsc::unbounded_channel();
            let mut response = client
                .get(format!("http://{address}/live/value?args=[{key}]"))
                .send()
                .await
                .expect("the live stream opens");
            assert!(response.status().is_success(), "the live stream opens");
            let (first, first_frame) = tokio::sync::oneshot::channel();
            started.push(first_frame);
            tokio::spawn(async move {
                let mut first = Some(first);
                let mut buffer = Vec::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    let arrived = Instant::now();
                    buffer.extend_from_slice(&chunk);
                    // One timestamp per complete frame (`event:` block); comments skipped.
                    while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
                        let block: Vec<u8> = buffer.drain(..end + 2).collect();
                        if !block.starts_with(b"event:") {
                            continue;
                        }
                        if let Some(first) = first.take() {
                            let _ = first.send(());
                        } else if sender.send(arrived).is_err() {
                            return;
                        }
                    }
                }
            });
            frames.push(tokio::sync::Mutex::new(receiver));
        }
        for first in started {
            first
                .await
                .expect("every live stream sends its first frame");
        }
        Self { frames, ofx }
    }

    /// Forgets the frames received so far for `key`.
    async fn drain(&self, key: i64) {
        let mut frames = self.frames[usize::try_from(key).expect("a small key")]
            .lock()
            .await;
        while frames.try_recv().is_ok() {}
    }

    /// When the next frame for `key` arrived.
    async fn next(&self, key: i64) -> Option<Instant> {
        let mut frames = self.frames[usize::try_from(key).expect("a small key")]
            .lock()
            .await;
        tokio::time::timeout(MISS_AFTER, frames.recv()).await.ok()?
    }
}

/// One ofx sample, in µs.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// `t1 - t0`: the call returned → B invalidated.
    after_return: f64,
    /// `t1 - commit start`.
    after_commit_start: f64,
    /// `t1 - call start`.
    after_call_start: f64,
    /// `t0 - call start`: the command itself.
    command: f64,
    /// `t2 - t0`: the call returned → the SSE client of B received the new value's frame
    /// (`NaN`: missed).
    frame_after_return: f64,
}

impl<B: CounterQueries> Pair<B> {
    async fn start(url: &str, wakeup: Wakeup) -> Self {
        let log = format!("latency-{}", uuid::Uuid::new_v4().simple());
        let a = Host::<B>::start(url, &wakeup, &log, true).await;
        let b = Host::<B>::start(url, &wakeup, &log, true).await;
        let commit_started = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&commit_started);
        let hook: CommitFaultHook<B> = Arc::new(move |_connection: &mut B::Connection| {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            Box::pin(std::future::ready(())) as Pin<Box<dyn Future<Output = ()> + Send>>
        });
        a.counters.db.set_commit_fault(Some(hook));
        let live = LiveClients::start(&b).await;
        Self {
            a,
            b,
            commit_started,
            log,
            wakeup,
            url: url.to_owned(),
            live,
        }
    }

    /// B captures `value(key)`; A bumps `key`; until B's value is invalidated. `None`: missed.
    async fn sample(&self, key: i64) -> Option<Sample> {
        let (value, computed) = capture(self.b.counters.value_of(key))
            .await
            .expect("B's value is captured");
        value.expect("B reads its counter");
        if matches!(self.wakeup, Wakeup::Polling) {
            // Commit at a random phase of B's poll: right after B's reader replayed the previous
            // sample's row, its next poll is a whole period away.
            let phase = rand::random_range(0..POLL_PERIOD.as_micros());
            let phase = u64::try_from(phase).expect("a short period");
            tokio::time::sleep(Duration::from_micros(phase)).await;
        }
        self.live.drain(key).await;
        let call_start = Instant::now();
        self.a
            .counters
            .bump(key)
            .await
            .expect("A's command commits");
        let t0 = Instant::now();
        let commit_start = self
            .commit_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the commit hook ran");
        tokio::time::timeout(MISS_AFTER, computed.when_invalidated())
            .await
            .ok()?;
        let t1 = Instant::now();
        let frame_after_return = self
            .live
            .next(key)
            .await
            .map_or(f64::NAN, |t2| micros(t2.saturating_duration_since(t0)));
        Some(Sample {
            after_return: micros(t1 - t0),
            after_commit_start: micros(t1 - commit_start),
            after_call_start: micros(t1 - call_start),
            command: micros(t0 - call_start),
            frame_after_return,
        })
    }

    /// Like [`sample`](Self::sample), with `observer` (another host's watcher) timestamping when
    /// the wake-up arrives: (commit start → commit done, → observer woken, → B invalidated).
    async fn observed_sample(&self, key: i64, observer: &Notify) -> Option<[f64; 3]> {
        // A permit left by an earlier message would fake an instant wake-up.
        tokio::select! {
            biased;
            () = observer.notified() => {}
            () = std::future::ready(()) => {}
        }
        let (value, computed) = capture(self.b.counters.value_of(key))
            .await
            .expect("B's value is captured");
        value.expect("B reads its counter");
        self.a
            .counters
            .bump(key)
            .await
            .expect("A's command commits");
        let t0 = Instant::now();
        let commit_start = self
            .commit_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the commit hook ran");
        let woken = async {
            observer.notified().await;
            Instant::now()
        };
        let invalidated = async {
            computed.when_invalidated().await;
            Instant::now()
        };
        let (woken, invalidated) =
            tokio::time::timeout(MISS_AFTER, async { tokio::join!(woken, invalidated) })
                .await
                .ok()?;
        Some([
            micros(t0 - commit_start),
            micros(woken - commit_start),
            micros(invalidated - commit_start),
        ])
    }

    fn stop(&self) {
        self.live.ofx.shutdown();
        self.a.stop();
        self.b.stop();
    }
}

// ===== raw baselines =====

/// A raw transport: one message from a sender to a receiver, timed.
enum Raw {
    Fs(FsRaw),
    Postgres(PgRaw),
    Redis(RedisRaw),
}

impl Raw {
    /// One message's latency in µs; `None` when it did not arrive within 2 s.
    async fn sample(&mut self) -> Option<f64> {
        match self {
            Self::Fs(raw) => raw.sample().await,
            Self::Postgres(raw) => raw.sample().await,
            Self::Redis(raw) => raw.sample().await,
        }
    }
}

/// A file rewritten (or replaced by a rename), watched with the `notify` crate.
struct FsRaw {
    path: PathBuf,
    temporary: PathBuf,
    rename: bool,
    events: mpsc::UnboundedReceiver<Instant>,
    /// Kept: dropping it ends the watch.
    _watcher: notify::RecommendedWatcher,
    sequence: u64,
}

impl FsRaw {
    fn start(dir: &Path, rename: bool) -> Self {
        use notify::Watcher;
        std::fs::create_dir_all(dir).expect("the raw directory is created");
        let name = if rename { "renamed.log" } else { "written.log" };
        let path = dir.join(name);
        let temporary = dir.join(format!(".{name}.tmp"));
        std::fs::write(&path, "initial").expect("the raw file is written");
        let (sender, events) = mpsc::unbounded_channel();
        let target = std::ffi::OsString::from(name);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let now = Instant::now();
                if let Ok(event) = event
                    && writes(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|path| path.file_name() == Some(&target))
                {
                    let _ = sender.send(now);
                }
            })
            .expect("the raw watcher starts");
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .expect("the raw directory is watched");
        Self {
            path,
            temporary,
            rename,
            events,
            _watcher: watcher,
            sequence: 0,
        }
    }

    async fn sample(&mut self) -> Option<f64> {
        while self.events.try_recv().is_ok() {} // the rest of the previous write's events
        self.sequence += 1;
        let payload = format!("host-{:032}", self.sequence);
        let start = Instant::now();
        if self.rename {
            std::fs::write(&self.temporary, &payload).expect("the temporary file is written");
            std::fs::rename(&self.temporary, &self.path).expect("the file is replaced");
        } else {
            std::fs::write(&self.path, &payload).expect("the file is written");
        }
        let event = tokio::time::timeout(MISS_AFTER, self.events.recv())
            .await
            .ok()??;
        // Let this write's later events (close, rename halves) arrive; the next sample drains them.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some(micros(event.saturating_duration_since(start)))
    }
}

/// What `FsWatcher` counts as a write (its filter, copied): not reads, not metadata, not the
/// "from" half of a rename.
fn writes(kind: &notify::EventKind) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    !matches!(
        kind,
        notify::EventKind::Access(_)
            | notify::EventKind::Modify(
                ModifyKind::Metadata(_) | ModifyKind::Name(RenameMode::From)
            )
    )
}

/// `pg_notify` on one connection, `LISTEN` on another.
struct PgRaw {
    sender: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
    /// Kept: dropping it ends the listening connection.
    _listener: tokio_postgres::Client,
    received: mpsc::UnboundedReceiver<(Instant, String)>,
    sequence: u64,
}

/// The channel of the raw NOTIFY baseline.
const RAW_CHANNEL: &str = "ofx_bench_raw";

impl PgRaw {
    async fn start(url: &str) -> Self {
        let (listener, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the raw listener connects");
        let (forward, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                let now = Instant::now();
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                        let _ = forward.send((now, notification.payload().to_owned()));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        listener
            .batch_execute(&format!("LISTEN {RAW_CHANNEL}"))
            .await
            .expect("LISTEN");
        let (sender, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the raw sender connects");
        tokio::spawn(connection);
        let statement = sender
            .prepare("SELECT pg_notify($1, $2)")
            .await
            .expect("pg_notify is prepared");
        Self {
            sender,
            statement,
            _listener: listener,
            received,
            sequence: 0,
        }
    }

    async fn sample(&mut self) -> Option<f64> {
        self.sequence += 1;
        let payload = self.sequence.to_string();
        let start = Instant::now();
        // Qualified: diesel's `RunQueryDsl::execute` is in scope too.
        tokio_postgres::Client::execute(&self.sender, &self.statement, &[&RAW_CHANNEL, &payload])
            .await
            .expect("pg_notify");
        loop {
            let (at, received) = tokio::time::timeout(MISS_AFTER, self.received.recv())
                .await
                .ok()??;
            if received == payload {
                return Some(micros(at.saturating_duration_since(start)));
            }
        }
    }
}

/// `PUBLISH` on a multiplexed connection, `SUBSCRIBE` on a RESP3 one.
struct RedisRaw {
    publisher: redis::aio::MultiplexedConnection,
    /// Kept: dropping it ends the subscription.
    _subscriber: redis::aio::MultiplexedConnection,
    channel: String,
    received: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    sequence: u64,
}

impl RedisRaw {
    async fn start(url: &str) -> Self {
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().expect("a Redis URL");
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let subscribing =
            redis::Client::open(info.clone().set_redis_settings(resp3)).expect("a Redis client");
        let publishing = redis::Client::open(info).expect("a Redis client");
        let channel = format!("ofx:bench:raw:{}", uuid::Uuid::new_v4().simple());
        let (pushes_to, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(pushes_to);
        let mut subscriber = subscribing
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("the raw subscriber connects");
        subscriber.subscribe(&channel).await.expect("SUBSCRIBE");
        let (forward, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(push) = pushes.recv().await {
                let now = Instant::now();
                if let (redis::PushKind::Message, [_, redis::Value::BulkString(payload)]) =
                    (&push.kind, push.data.as_slice())
                {
                    let _ = forward.send((now, payload.clone()));
                }
            }
        });
        let publisher = publishing
            .get_multiplexed_async_connection()
            .await
            .expect("the raw publisher connects");
        Self {
            publisher,
            _subscriber: subscriber,
            channel,
            received,
            sequence: 0,
        }
    }

    async fn sample(&mut self) -> Option<f64> {
        self.sequence += 1;
        let payload = self.sequence.to_string();
        let start = Instant::now();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(&payload)
            .query_async::<i64>(&mut self.publisher)
            .await
            .expect("PUBLISH");
        loop {
            let (at, received) = tokio::time::timeout(MISS_AFTER, self.received.recv())
                .await
                .ok()??;
            if received == payload.as_bytes() {
                return Some(micros(at.saturating_duration_since(start)));
            }
        }
    }
}

// ===== statistics =====

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Percentiles of samples in µs.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if sorted.is_empty() {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Self {
            count: sorted.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn pair(&self) -> String {
        format!("{} / {}", us(self.p50), us(self.p99))
    }
}

/// µs, readable.
fn us(value: f64) -> String {
    if value.is_nan() {
        "–".to_owned()
    } else if value >= 10_000.0 {
        format!("{:.1} ms", value / 1000.0)
    } else {
        format!("{value:.0} µs")
    }
}

// ===== runs =====

/// What one run measured.
#[derive(Debug, Default)]
struct Report {
    name: &'static str,
    /// p99 target in µs (`None`: no target).
    p99_target: Option<f64>,
    raws: Vec<(&'static str, Stats, usize)>,
    after_return: Stats,
    after_commit_start: Stats,
    after_call_start: Stats,
    command: Stats,
    misses: usize,
    /// The call returned → the frame reached B's SSE client.
    frame_after_return: Stats,
    /// Frames that did not arrive within the miss limit.
    frame_misses: usize,
    /// Per series (each raw, then ofx): the smallest and largest of the per-round medians.
    round_medians: Vec<(&'static str, f64, f64)>,
    diagnostic: Option<Diagnostic>,
}

/// Where the time goes, for one watcher run.
#[derive(Debug, Default)]
struct Diagnostic {
    /// From commit start: commit done, observer woken, B invalidated.
    commit_done: Stats,
    observer_woken: Stats,
    invalidated: Stats,
    /// Per sample: B invalidated − observer woken.
    after_wake: Stats,
    misses: usize,
    /// The reader's steps, timed one by one on a third hub.
    pool: Stats,
    trimmed_through: Stats,
    read_after: Stats,
    decode: Stats,
    replay: Stats,
}

/// `raws` and the ofx samples of `pair`, in interleaved rounds.
async fn measure<B: CounterQueries>(
    name: &'static str,
    p99_target: Option<f64>,
    pair: &Pair<B>,
    raws: &mut [(&'static str, Raw)],
) -> Report
where
    Counters<B>: CounterService,
{
    let mut raw_samples: Vec<Vec<f64>> = vec![Vec::new(); raws.len()];
    let mut raw_misses = vec![0; raws.len()];
    let mut ofx: Vec<Sample> = Vec::new();
    let mut misses = 0;
    let mut key = 0;
    // Per series (each raw, then ofx): the median of each kept round.
    let mut medians: Vec<Vec<f64>> = vec![Vec::new(); raws.len() + 1];
    for round in 0..=ROUNDS {
        let before: Vec<usize> = raw_samples
            .iter()
            .map(Vec::len)
            .chain([ofx.len()])
            .collect();
        let (count, keep) = if round == 0 {
            (WARMUP, false)
        } else {
            (PER_ROUND, true)
        };
        // Alternate which side goes first, so that neither always follows the other.
        for side in 0..2 {
            if (side + round) % 2 == 0 {
                for (index, (_, raw)) in raws.iter_mut().enumerate() {
                    for _ in 0..count {
                        match raw.sample().await {
                            Some(sample) if keep => raw_samples[index].push(sample),
                            Some(_) => {}
                            None => raw_misses[index] += 1,
                        }
                    }
                }
            } else {
                for _ in 0..count {
                    key = (key + 1) % KEYS;
                    match pair.sample(key).await {
                        Some(sample) if keep => ofx.push(sample),
                        Some(_) => {}
                        None => misses += 1,
                    }
                }
            }
        }
        if keep {
            let ofx_round: Vec<f64> = ofx[before[raws.len()]..]
                .iter()
                .map(|sample| sample.after_return)
                .collect();
            let rounds = raw_samples
                .iter()
                .zip(&before)
                .map(|(samples, from)| &samples[*from..])
                .chain([ofx_round.as_slice()]);
            for (series, round) in medians.iter_mut().zip(rounds) {
                series.push(Stats::of(round).p50);
            }
        }
        eprint!(".");
    }
    eprintln!();
    let labels = raws.iter().map(|(label, _)| *label).chain(["ofx"]);
    let round_medians = labels
        .zip(&medians)
        .map(|(label, series)| {
            let range = Stats::of(series);
            let min = series.iter().copied().fold(f64::INFINITY, f64::min);
            (label, min, range.max)
        })
        .collect();
    let stats = |pick: fn(&Sample) -> f64| Stats::of(&ofx.iter().map(pick).collect::<Vec<_>>());
    Report {
        name,
        p99_target,
        raws: raws
            .iter()
            .zip(&raw_samples)
            .zip(&raw_misses)
            .map(|(((label, _), samples), misses)| (*label, Stats::of(samples), *misses))
            .collect(),
        after_return: stats(|sample| sample.after_return),
        after_commit_start: stats(|sample| sample.after_commit_start),
        after_call_start: stats(|sample| sample.after_call_start),
        command: stats(|sample| sample.command),
        misses,
        frame_after_return: Stats::of(
            &ofx.iter()
                .map(|sample| sample.frame_after_return)
                .filter(|value| !value.is_nan())
                .collect::<Vec<_>>(),
        ),
        frame_misses: ofx
            .iter()
            .filter(|sample| sample.frame_after_return.is_nan())
            .count(),
        round_medians,
        diagnostic: None,
    }
}

/// The diagnostic phase of a watcher run (see the module's documentation).
async fn diagnose<B: CounterQueries>(pair: &Pair<B>) -> Diagnostic
where
    Counters<B>: CounterService,
{
    // An observer: one more host's watcher on the same log, whose wake-ups this task awaits.
    let stop = CancellationToken::new();
    let observer = pair
        .wakeup
        .watcher(&pair.log, HostId::new(), stop.clone())
        .await
        .expect("a watcher run");
    let wakes = observer.wakes();
    let mut columns: [Vec<f64>; 4] = Default::default();
    let mut misses = 0;
    for index in 0..WARMUP + DIAGNOSTIC {
        let key = i64::try_from(index).expect("few samples") % KEYS;
        match pair.observed_sample(key, &wakes).await {
            Some(sample) if index >= WARMUP => {
                for (column, value) in columns.iter_mut().zip(sample) {
                    column.push(value);
                }
                columns[3].push(sample[2] - sample[1]);
            }
            Some(_) => {}
            None => misses += 1,
        }
    }
    stop.cancel();

    // The reader's steps, one by one, on a third hub (no reader) replaying the logged rows.
    let third = Host::<B>::start(&pair.url, &pair.wakeup, &pair.log, false).await;
    let counters = &third.counters;
    let rows = {
        let mut connection = counters.db.connection().await.expect("a connection");
        B::read_after(&mut connection, 0, 1_000_000)
            .await
            .expect("the log is read")
    };
    let mut steps: [Vec<f64>; 5] = Default::default();
    for row in rows.iter().rev().take(DIAGNOSTIC) {
        for key in 0..KEYS {
            // Something to invalidate (cached after the first pass, recomputed after a replay).
            let _ = counters.value_of(key).await;
        }
        let start = Instant::now();
        let mut connection = counters.db.connection().await.expect("a connection");
        let pooled = Instant::now();
        B::trimmed_through(&mut connection)
            .await
            .expect("trimmed_through");
        let trimmed = Instant::now();
        let read = B::read_after(&mut connection, row.idx - 1, 1)
            .await
            .expect("read_after");
        let queried = Instant::now();
        drop(connection);
        let operation = read
            .as_slice()
            .first()
            .expect("the row is there")
            .to_operation()
            .expect("the row decodes");
        let decoded = Instant::now();
        counters
            .hub
            .commander()
            .replay(operation.clone())
            .await
            .expect("the operation replays");
        let replayed = Instant::now();
        for (step, (from, to)) in steps.iter_mut().zip([
            (start, pooled),
            (pooled, trimmed),
            (trimmed, queried),
            (queried, decoded),
            (decoded, replayed),
        ]) {
            step.push(micros(to - from));
        }
    }
    third.stop();
    Diagnostic {
        commit_done: Stats::of(&columns[0]),
        observer_woken: Stats::of(&columns[1]),
        invalidated: Stats::of(&columns[2]),
        after_wake: Stats::of(&columns[3]),
        misses,
        pool: Stats::of(&steps[0]),
        trimmed_through: Stats::of(&steps[1]),
        read_after: Stats::of(&steps[2]),
        decode: Stats::of(&steps[3]),
        replay: Stats::of(&steps[4]),
    }
}

/// A temporary SQLite file's path.
fn sqlite_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "ofx-bench-latency-{name}-{}.db",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Removes a SQLite file with its WAL and shared-memory files.
fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

async fn fs_run() -> Report {
    let root = std::env::temp_dir().join(format!(
        "ofx-bench-latency-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let file = sqlite_file("fs");
    let pair = Pair::<Sqlite>::start(
        file.to_str().expect("a UTF-8 path"),
        Wakeup::Fs(root.join("watch")),
    )
    .await;
    let mut raws = [
        ("fs write", Raw::Fs(FsRaw::start(&root.join("raw"), false))),
        (
            "fs tmp+rename",
            Raw::Fs(FsRaw::start(&root.join("raw"), true)),
        ),
    ];
    let mut report = measure("fs (SQLite + FsWatcher)", Some(10_000.0), &pair, &mut raws).await;
    report.diagnostic = Some(diagnose(&pair).await);
    pair.stop();
    drop((pair, raws));
    tokio::time::sleep(Duration::from_millis(100)).await;
    remove_sqlite(&file);
    let _ = std::fs::remove_dir_all(&root);
    report
}

async fn postgres_run(url: String) -> Report {
    let pair = Pair::<Postgres>::start(&url, Wakeup::Postgres(url.clone())).await;
    let mut raws = [("pg NOTIFY", Raw::Postgres(PgRaw::start(&url).await))];
    let mut report = measure(
        "postgres (PostgreSQL + PgWatcher)",
        Some(5_000.0),
        &pair,
        &mut raws,
    )
    .await;
    report.diagnostic = Some(diagnose(&pair).await);
    pair.stop();
    report
}

async fn redis_run(url: String, redis: String) -> Report {
    let pair = Pair::<Postgres>::start(&url, Wakeup::Redis(redis.clone())).await;
    let mut raws = [("redis PUBLISH", Raw::Redis(RedisRaw::start(&redis).await))];
    let mut report = measure(
        "redis (PostgreSQL + RedisWatcher)",
        Some(5_000.0),
        &pair,
        &mut raws,
    )
    .await;
    report.diagnostic = Some(diagnose(&pair).await);
    pair.stop();
    report
}

async fn polling_run() -> Report {
    let file = sqlite_file("polling");
    let pair = Pair::<Sqlite>::start(file.to_str().expect("a UTF-8 path"), Wakeup::Polling).await;
    let report = measure("polling (SQLite, 50 ms)", None, &pair, &mut []).await;
    pair.stop();
    drop(pair);
    tokio::time::sleep(Duration::from_millis(100)).await;
    remove_sqlite(&file);
    report
}

// ===== PostgreSQL databases =====

fn redis_server() -> String {
    std::env::var("OFX_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh database `ofx_bench_<uuid>`: its URL and name.
async fn create_database() -> (String, String) {
    let name = format!("ofx_bench_{}", uuid::Uuid::new_v4().simple());
    admin_client()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    (format!("{}/{name}", postgres_server()), name)
}

async fn drop_database(name: &str) {
    let result = admin_client()
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Err(error) = result {
        eprintln!("could not drop {name}: {error}");
    }
}

// ===== the report =====

fn print(reports: &[Report]) {
    eprintln!();
    eprintln!(
        "## Commit on host A → invalidation observed on host B ({} samples each after {WARMUP} warm-up; µs)",
        ROUNDS * PER_ROUND
    );
    eprintln!();
    eprintln!(
        "| run | raw baseline: p50 / p99 | ofx, call returned → B invalidated: p50 / p99 | p90 | max | Δ p50 vs raw | commit start → invalidated: p50 / p99 | call start → invalidated: p50 / p99 | the command: p50 / p99 | misses | target met? |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|");
    for report in reports {
        let raw = report.raws.as_slice().first().map(|(_, stats, _)| *stats);
        let raw_text = if report.raws.is_empty() {
            "–".to_owned()
        } else {
            report
                .raws
                .iter()
                .map(|(label, stats, misses)| {
                    let missed = if *misses > 0 {
                        format!(" ({misses} lost)")
                    } else {
                        String::new()
                    };
                    format!("{label}: {}{missed}", stats.pair())
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let delta = raw.map_or(f64::NAN, |raw| report.after_return.p50 - raw.p50);
        let met = match (raw, report.p99_target) {
            (Some(raw), Some(target)) => {
                let p50_ok = report.after_return.p50 <= raw.p50 + P50_OVER_RAW;
                let p99_ok = report.after_return.p99 <= target;
                let verdict = match (p50_ok && report.misses == 0, p99_ok) {
                    (true, true) => "yes",
                    (true, false) => "no (p99)",
                    (false, true) => "no (p50)",
                    (false, false) => "no (p50, p99)",
                };
                format!(
                    "{verdict}: p50 ≤ raw + {P50_OVER_RAW:.0} µs, p99 ≤ {:.0} ms",
                    target / 1000.0
                )
            }
            _ => "no target".to_owned(),
        };
        eprintln!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            report.name,
            raw_text,
            report.after_return.pair(),
            us(report.after_return.p90),
            us(report.after_return.max),
            if delta.is_nan() {
                "–".to_owned()
            } else {
                format!("{delta:+.0} µs")
            },
            report.after_commit_start.pair(),
            report.after_call_start.pair(),
            report.command.pair(),
            report.misses,
            met,
        );
    }
    eprintln!();
    eprintln!(
        "## Commit on host A → live value frame received by an SSE client of host B (ofx-axum; same samples; µs)"
    );
    eprintln!();
    eprintln!(
        "| run | raw baseline p50 / p99 | frame received: p50 / p99 | p90 | max | Δ p50 vs raw | frame − B invalidated (p50) | missed frames | goal p50 ≤ 5 ms, p99 ≤ 20 ms |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for report in reports {
        let raw = report.raws.as_slice().first().map(|(_, stats, _)| *stats);
        let frame = report.frame_after_return;
        let met = if frame.p50 <= 5_000.0 && frame.p99 <= 20_000.0 && report.frame_misses == 0 {
            "yes"
        } else {
            "no"
        };
        eprintln!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            report.name,
            raw.map_or("–".to_owned(), |raw| raw.pair()),
            frame.pair(),
            us(frame.p90),
            us(frame.max),
            raw.map_or("–".to_owned(), |raw| format!(
                "{:+.0} µs",
                frame.p50 - raw.p50
            )),
            us(frame.p50 - report.after_return.p50),
            report.frame_misses,
            met,
        );
    }
    eprintln!();
    eprintln!(
        "## Where the time goes ({DIAGNOSTIC} observed samples per watcher run; times from commit start; µs p50 / p99)"
    );
    eprintln!();
    eprintln!(
        "| run | commit done | observer watcher woken | B invalidated | B invalidated − observer woken | misses | reader steps on an idle hub: pool get | trimmed_through | read_after | decode | replay |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|");
    for report in reports {
        if let Some(diagnostic) = &report.diagnostic {
            eprintln!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                report.name,
                diagnostic.commit_done.pair(),
                diagnostic.observer_woken.pair(),
                diagnostic.invalidated.pair(),
                diagnostic.after_wake.pair(),
                diagnostic.misses,
                diagnostic.pool.pair(),
                diagnostic.trimmed_through.pair(),
                diagnostic.read_after.pair(),
                diagnostic.decode.pair(),
                diagnostic.replay.pair(),
            );
        }
    }
    eprintln!();
    eprintln!("Per-round medians (the spread between rounds of {PER_ROUND}; machine noise):");
    for report in reports {
        let ranges: Vec<String> = report
            .round_medians
            .iter()
            .map(|(label, min, max)| format!("{label} {}–{}", us(*min), us(*max)))
            .collect();
        eprintln!("- {}: {}", report.name, ranges.join("; "));
    }
    let counts: Vec<String> = reports
        .iter()
        .map(|report| {
            format!(
                "{}: {} ofx, {} raw",
                report.name,
                report.after_return.count,
                report
                    .raws
                    .iter()
                    .map(|(_, stats, _)| stats.count.to_string())
                    .collect::<Vec<_>>()
                    .join("+")
            )
        })
        .collect();
    eprintln!();
    eprintln!("samples kept: {}", counts.join("; "));
}

/// Runs `run` as its own task, so that a panic in it is reported and the others still run.
async fn guarded(name: &str, run: impl Future<Output = Report> + Send + 'static) -> Option<Report> {
    let started = Instant::now();
    eprintln!("{name}: running");
    match tokio::spawn(run).await {
        Ok(report) => {
            eprintln!("{name}: done in {:.1} s", started.elapsed().as_secs_f64());
            Some(report)
        }
        Err(error) => {
            eprintln!("{name}: failed: {error}");
            None
        }
    }
}

async fn run() {
    let only = std::env::var("OFX_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|part| part.trim() == name);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "latency bench: {} workers, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut databases = Vec::new();
    if wanted("fs") {
        reports.extend(guarded("fs", fs_run()).await);
    }
    if wanted("postgres") {
        let (url, name) = create_database().await;
        databases.push(name);
        reports.extend(guarded("postgres", postgres_run(url)).await);
    }
    if wanted("redis") {
        let (url, name) = create_database().await;
        databases.push(name);
        reports.extend(guarded("redis", redis_run(url, redis_server())).await);
    }
    if wanted("polling") {
        reports.extend(guarded("polling", polling_run()).await);
    }
    // Let the stopped hosts' tasks close their connections, then drop whatever is left.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for name in &databases {
        drop_database(name).await;
    }
    print(&reports);
    eprintln!("\ntotal: {:.1} s", started.elapsed().as_secs_f64());
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run());
}
