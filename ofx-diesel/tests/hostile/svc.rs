//! The hostile service: writes a `hlog (tag, payload)` row and adds events, in many shapes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::operation::{EventOptions, KeyConflict};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, EventInfo};
use serde::{Deserialize, Serialize};

diesel::table! {
    hlog (tag, payload) {
        tag -> Text,
        payload -> Text,
    }
}

pub const HLOG: &str = "CREATE TABLE hlog (tag TEXT NOT NULL, payload TEXT NOT NULL);";

pub trait HQ: crate::common::JobQueries {
    fn log(
        connection: &mut Self::Connection,
        tag: &str,
        payload: &str,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    fn payloads(
        connection: &mut Self::Connection,
        tag: &str,
    ) -> impl std::future::Future<Output = QueryResult<Vec<String>>> + Send;
}

macro_rules! hq {
    ($backend:ty) => {
        impl HQ for $backend {
            async fn log(
                connection: &mut Self::Connection,
                tag: &str,
                payload: &str,
            ) -> QueryResult<usize> {
                diesel::insert_into(hlog::table)
                    .values((hlog::tag.eq(tag), hlog::payload.eq(payload)))
                    .execute(connection)
                    .await
            }
            async fn payloads(
                connection: &mut Self::Connection,
                tag: &str,
            ) -> QueryResult<Vec<String>> {
                hlog::table
                    .filter(hlog::tag.eq(tag))
                    .select(hlog::payload)
                    .load(connection)
                    .await
            }
        }
    };
}

#[cfg(feature = "sqlite")]
hq!(ofx_diesel::Sqlite);
#[cfg(feature = "postgres")]
hq!(ofx_diesel::Postgres);

/// Serializable event options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Opts {
    pub key: Option<String>,
    /// 0 keep (default), 1 replace, 2 fail
    pub conflict: u8,
    pub delay_ms: Option<u64>,
    pub delay_max: bool,
    /// Seconds relative to the Unix epoch (negative: before it).
    pub due_secs: Option<i64>,
    pub debounce_ms: Option<u64>,
}

impl Opts {
    pub fn options(&self) -> EventOptions {
        let mut options = EventOptions::new();
        if let Some(ms) = self.delay_ms {
            options = options.delay(Duration::from_millis(ms));
        }
        if self.delay_max {
            options = options.delay(Duration::MAX);
        }
        if let Some(secs) = self.due_secs {
            let at = if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            };
            options = options.due_at(at);
        }
        if let Some(key) = &self.key {
            options = match self.debounce_ms {
                Some(ms) => options.debounce(key.clone(), Duration::from_millis(ms)),
                None => options.key(key.clone()),
            };
        }
        match self.conflict {
            1 => options.on_conflict(KeyConflict::Replace),
            2 => options.on_conflict(KeyConflict::Fail),
            _ => options.on_conflict(KeyConflict::Keep),
        }
    }
}

/// What an event does.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Logs (tag, payload).
    #[default]
    Log,
    /// Panics.
    Panic,
    /// Sleeps, then logs.
    Sleep(u64),
    /// Logs, then adds an event `Chain(n - 1)` while n > 0.
    Chain(u32),
    /// Logs its n, then adds its replacement (same key, Replace) with n - 1 while n > 0.
    SelfReplace(u32, String),
    /// Waits at the gate of the job, then logs.
    Gated(i64),
    /// Fails with this error shape (see `shaped_error`).
    Fail(u8),
    /// Logs, then fails with a transient error on its first n runs (in-memory count).
    TransientRuns(u32),
    /// Logs, then sleeps (holding its write transaction).
    LogThenSleep(u64),
}

/// Writes `hlog(tag, "w")` (unless `no_write`), adds `events` events `HEvent`, then waits
/// `hold_ms` (u64::MAX: forever), then fails if `fail`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Command)]
#[command(output = Vec<uuid::Uuid>, name = "h.write")]
pub struct HWrite {
    pub tag: String,
    pub events: u32,
    pub payload: String,
    pub payload_size: usize,
    pub opts: Opts,
    pub mode: Mode,
    pub no_write: bool,
    pub hold_ms: u64,
    pub fail: bool,
}

/// The event.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "h.ev", backend)]
pub struct HEvent {
    pub tag: String,
    pub payload: String,
    pub mode: Mode,
}

/// Adds an event in its invalidation branch.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "h.inval")]
pub struct HInval {
    pub tag: String,
}

/// Outer: counts its runs, adds an event "outer", calls `HInner`; swallows its error or
/// propagates it (wrapped in `HError::Core`).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "h.outer")]
pub struct HOuter {
    pub tag: String,
    pub swallow: bool,
    pub inner_transient_runs: u32,
}

/// Inner: logs "inner", adds an event "inner", fails transiently on its first n runs.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "h.inner")]
pub struct HInner {
    pub tag: String,
    pub transient_runs: u32,
}

/// Outermost: counts its runs, logs, adds an event, fails with `shape` on its first
/// `fail_runs` runs.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "h.shaped")]
pub struct HShaped {
    pub tag: String,
    pub shape: u8,
    pub fail_runs: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum HError {
    #[error("wrapped: {0}")]
    Wrapped(#[source] ofx_core::Error),
    #[error("opaque: {0}")]
    Opaque(String),
    #[error("plain failure")]
    Plain,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("leaf failure")]
pub struct Leaf;

/// Error shapes:
/// 0 plain; 1 Core(transient); 2 Core(permanent); 3 Wrapped(transient) (non-transparent
/// source); 4 Wrapped(permanent); 5 Core(transient(permanent)); 6 Core(permanent(transient));
/// 7 Wrapped(Wrapped-in-transient(permanent)) ; 8 Core(transient(HError::Wrapped(permanent)))
pub fn shaped_error(shape: u8) -> HError {
    use ofx_core::Error;
    match shape {
        1 => HError::Core(Error::transient(Leaf)),
        2 => HError::Core(Error::permanent(Leaf)),
        3 => HError::Wrapped(Error::transient(Leaf)),
        4 => HError::Wrapped(Error::permanent(Leaf)),
        5 => HError::Core(Error::transient(Error::permanent(Leaf))),
        6 => HError::Core(Error::permanent(Error::transient(Leaf))),
        7 => HError::Wrapped(Error::transient(HError::Wrapped(Error::permanent(Leaf)))),
        8 => HError::Core(Error::transient(HError::Wrapped(Error::permanent(Leaf)))),
        _ => HError::Plain,
    }
}

/// How many runs of `tag` were counted.
pub fn runs(tag: &str) -> u32 {
    PEEK.get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(tag)
        .copied()
        .unwrap_or(0)
}

static PEEK: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();

/// Counts a run of `tag` (readable with `runs`).
pub fn count(tag: &str) -> u32 {
    let mut peek = PEEK.get_or_init(Default::default).lock().unwrap();
    let count = peek.entry(tag.to_owned()).or_default();
    *count += 1;
    *count
}

/// What `add_event` returned in invalidation branches, by tag.
pub static INVAL: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();

pub struct H<B: Backend> {
    pub hub: Hub,
    pub db: DbHub<B>,
}

impl<B: Backend> ComputeService for H<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: HQ> H<B> {
    #[command_handler]
    pub async fn write(
        &self,
        command: HWrite,
        ctx: &CommandContext,
    ) -> Result<Vec<uuid::Uuid>, HError> {
        if ctx.is_invalidating() {
            return Ok(Vec::new());
        }
        count(&format!("write/{}/{}", self.db.url(), command.tag));
        if !command.no_write {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::log(&mut connection, &command.tag, "w").await?;
        }
        let payload = if command.payload_size > 0 {
            "p".repeat(command.payload_size)
        } else {
            command.payload.clone()
        };
        let mut uuids = Vec::new();
        for _ in 0..command.events {
            let event = HEvent {
                tag: command.tag.clone(),
                payload: payload.clone(),
                mode: command.mode.clone(),
            };
            uuids.push(ctx.add_event_with(event, command.opts.options())?);
        }
        if command.hold_ms == u64::MAX {
            std::future::pending::<()>().await;
        } else if command.hold_ms > 0 {
            // A slow main branch: the window a cancellation test cuts into.
            tokio::time::sleep(Duration::from_millis(command.hold_ms)).await;
        }
        if command.fail {
            return Err(HError::Plain);
        }
        Ok(uuids)
    }

    #[command_handler]
    pub async fn ev(&self, command: HEvent, ctx: &CommandContext) -> Result<(), HError> {
        if ctx.is_invalidating() {
            return Ok(());
        }
        count(&format!("ev/{}/{}", self.db.url(), command.tag));
        match &command.mode {
            Mode::Panic => panic!("hostile panic in an event handler"),
            // A slow handler (longer than its lease): the behaviour under test.
            Mode::Sleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Mode::Gated(job) => hgate_pass(&format!("{}/{job}", self.db.url())).await,
            Mode::Fail(shape) => return Err(shaped_error(*shape)),
            _ => {}
        }
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::log(&mut connection, &command.tag, &command.payload).await?;
        }
        match &command.mode {
            Mode::Chain(n) if *n > 0 => {
                ctx.add_event(HEvent {
                    tag: command.tag.clone(),
                    payload: format!("{}", n - 1),
                    mode: Mode::Chain(n - 1),
                })?;
            }
            Mode::LogThenSleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Mode::SelfReplace(n, key) if *n > 0 => {
                ctx.add_event_with(
                    HEvent {
                        tag: command.tag.clone(),
                        payload: format!("{}", n - 1),
                        mode: Mode::SelfReplace(n - 1, key.clone()),
                    },
                    EventOptions::new()
                        .key(key.clone())
                        .on_conflict(KeyConflict::Replace),
                )?;
            }
            Mode::TransientRuns(n) => {
                ctx.add_event(HEvent {
                    tag: command.tag.clone(),
                    payload: "child".to_owned(),
                    mode: Mode::Log,
                })?;
                if count(&format!("tr/{}/{}", self.db.url(), command.tag)) <= *n {
                    return Err(ofx_core::Error::transient(Leaf).into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    #[command_handler]
    pub async fn inval(&self, command: HInval, ctx: &CommandContext) -> Result<(), HError> {
        invalidate! {
            let _answers = record_inval(
                &format!("{}/{}", self.db.url(), command.tag),
                format!("{:?}", ctx.add_event(HEvent {
                    tag: command.tag.clone(),
                    payload: "from-invalidation".to_owned(),
                    mode: Mode::Log,
                })),
            );
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        B::log(&mut connection, &command.tag, "w").await?;
        Ok(())
    }

    #[command_handler]
    pub async fn outer(&self, command: HOuter, ctx: &CommandContext) -> Result<(), HError> {
        if ctx.is_invalidating() {
            return Ok(());
        }
        count(&format!("outer/{}/{}", self.db.url(), command.tag));
        ctx.add_event(HEvent {
            tag: command.tag.clone(),
            payload: "outer".to_owned(),
            mode: Mode::Log,
        })?;
        let inner = self
            .hub
            .commander()
            .call(HInner {
                tag: command.tag.clone(),
                transient_runs: command.inner_transient_runs,
            })
            .await;
        match inner {
            Ok(()) => Ok(()),
            Err(_) if command.swallow => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    #[command_handler]
    pub async fn inner(&self, command: HInner, ctx: &CommandContext) -> Result<(), HError> {
        if ctx.is_invalidating() {
            return Ok(());
        }
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::log(&mut connection, &command.tag, "inner").await?;
        }
        ctx.add_event(HEvent {
            tag: command.tag.clone(),
            payload: "inner".to_owned(),
            mode: Mode::Log,
        })?;
        if count(&format!("inner/{}/{}", self.db.url(), command.tag)) <= command.transient_runs {
            return Err(ofx_core::Error::transient(Leaf).into());
        }
        Ok(())
    }

    #[command_handler]
    pub async fn shaped(&self, command: HShaped, ctx: &CommandContext) -> Result<(), HError> {
        if ctx.is_invalidating() {
            return Ok(());
        }
        let run = count(&format!("shaped/{}/{}", self.db.url(), command.tag));
        {
            let mut connection = self.db.operation_connection(ctx).await?;
            B::log(&mut connection, &command.tag, "w").await?;
        }
        ctx.add_event(HEvent {
            tag: command.tag.clone(),
            payload: "shaped".to_owned(),
            mode: Mode::Log,
        })?;
        if run <= command.fail_runs {
            return Err(shaped_error(command.shape));
        }
        Ok(())
    }
}

/// One host with the hostile service (and the jobs service of `tests/events`).
pub struct HHost<B: Backend> {
    pub svc: Arc<H<B>>,
    pub jobs: Arc<crate::common::Jobs<B>>,
    pub db: DbHub<B>,
}

impl<B: HQ> HHost<B> {
    pub async fn open(url: &str, settings: DbSettings) -> Self {
        Self::open_with(url, settings, |builder| builder).await
    }

    pub async fn open_with(
        url: &str,
        mut settings: DbSettings,
        build: impl FnOnce(ofx_core::HubBuilder) -> ofx_core::HubBuilder,
    ) -> Self {
        let process = std::mem::replace(&mut settings.events.process, false);
        let db = DbHub::<B>::open(url, settings).await.unwrap();
        // The hostile table, once per database.
        let _ = db.connection().await.unwrap().batch_execute(HLOG).await;
        let hub = build(Hub::builder().with(db.clone()))
            .start()
            .await
            .unwrap();
        let svc = Arc::new(H {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&svc).unwrap();
        let jobs = Arc::new(crate::common::Jobs {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&jobs).unwrap();
        if process {
            db.start_event_processor(&hub).unwrap();
        }
        Self { svc, jobs, db }
    }

    pub fn hub(&self) -> &Hub {
        &self.svc.hub
    }

    pub fn processor(&self) -> ofx_diesel::EventProcessor {
        self.db.event_processor(self.hub()).unwrap()
    }

    pub async fn payloads(&self, tag: &str) -> Vec<String> {
        let mut connection = self.db.connection().await.unwrap();
        let mut payloads = B::payloads(&mut connection, tag).await.unwrap();
        payloads.sort();
        payloads
    }

    /// Stored events whose command mentions `tag` (quoted).
    pub async fn events_of(&self, tag: &str) -> Vec<EventInfo> {
        let needle = format!("\"tag\":\"{tag}\"");
        self.db
            .events()
            .list(None, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|event| event.command_json.contains(&needle))
            .collect()
    }

    /// Waits until `condition` holds for the payloads of `tag`, at most `timeout`.
    pub async fn wait_payloads(
        &self,
        tag: &str,
        condition: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let payloads = self.payloads(tag).await;
            if condition(&payloads) || start.elapsed() > timeout {
                return payloads;
            }
            self.next_change().await;
        }
    }

    /// Waits until no event is pending, at most `timeout`; returns whether so.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            if self.db.events().counts().await.unwrap().pending == 0 {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            self.next_change().await;
        }
    }

    /// Waits until the event `uuid` is dead, at most `timeout`; returns it as it is then.
    pub async fn wait_dead(&self, uuid: uuid::Uuid, timeout: Duration) -> EventInfo {
        let start = std::time::Instant::now();
        loop {
            let event = self.db.events().get(uuid).await.unwrap().unwrap();
            if event.state == Some(ofx_diesel::EventState::Dead) || start.elapsed() > timeout {
                return event;
            }
            self.next_change().await;
        }
    }

    /// Until this host's processor did something, at most 50 ms (other hosts work too).
    async fn next_change(&self) {
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
}

/// Settings for tests: a short poll period.
pub fn fast() -> DbSettings {
    crate::common::fast()
}

/// Now, as seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A simple gate for `Mode::Gated`, by name: arrivals, whether open, and a notification on
/// every change.
#[derive(Default)]
struct HGate {
    state: Mutex<(u32, bool)>,
    changed: tokio::sync::Notify,
}

fn hgate(name: &str) -> std::sync::Arc<HGate> {
    static HGATES: OnceLock<Mutex<HashMap<String, std::sync::Arc<HGate>>>> = OnceLock::new();
    std::sync::Arc::clone(
        HGATES
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default(),
    )
}

async fn hgate_pass(name: &str) {
    let gate = hgate(name);
    gate.state.lock().unwrap().0 += 1;
    gate.changed.notify_waiters();
    loop {
        let changed = gate.changed.notified();
        if gate.state.lock().unwrap().1 {
            return;
        }
        changed.await;
    }
}

/// Waits until `count` handlers arrived at the gate of `job` on `url`.
pub async fn hgate_arrivals(url: &str, job: i64, count: u32) {
    let gate = hgate(&format!("{url}/{job}"));
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let changed = gate.changed.notified();
            if gate.state.lock().unwrap().0 >= count {
                return;
            }
            changed.await;
        }
    })
    .await
    .expect("gated handlers did not arrive");
}

/// Opens the gate of `job` on `url`.
pub fn hgate_open(url: &str, job: i64) {
    let gate = hgate(&format!("{url}/{job}"));
    gate.state.lock().unwrap().1 = true;
    gate.changed.notify_waiters();
}

/// Records what `add_event` answered in an invalidation branch; returns how many answers `name`
/// has (a value, so that `invalidate!` can bind it with `let`).
fn record_inval(name: &str, result: String) -> usize {
    let mut answers = INVAL.get_or_init(Default::default).lock().unwrap();
    let answers = answers.entry(name.to_owned()).or_default();
    answers.push(result);
    answers.len()
}

/// What a processor has done so far, as one number that changes with each thing it does.
fn activity(stats: &ofx_diesel::EventStats) -> u64 {
    stats.claimed() + stats.completed() + stats.retried() + stats.dead() + stats.fenced()
}
