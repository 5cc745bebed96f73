//! The kit of the http and hostile suites: the test service (notes in SQLite), extended with fault hooks
//! (a gate inside `list`, a computation that never ends, panics on demand, an unordered map),
//! hosts on one file, a served router, an SSE client and a raw HTTP client.

#![allow(dead_code)] // some hooks serve only the attacks of `findings.rs`

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_axum::{Ofx, OfxSettings};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use ofx_diesel::{DbHub, DbSettings, Sqlite};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

diesel::table! {
    notes (id) {
        id -> BigInt,
        owner -> Text,
        text -> Text,
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, owner TEXT NOT NULL, text TEXT NOT NULL);";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub id: i64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Note, name = "notes.add")]
pub struct AddNote {
    pub owner: String,
    pub text: String,
}

/// Writes a note, then fails: nothing may remain.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Note, name = "notes.add_then_fail")]
pub struct AddThenFail {
    pub owner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "notes.purge_all", backend)]
pub struct PurgeAll;

/// Fails for a transient reason every time (what a database that stays unreachable does).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Note, name = "notes.add_unreachable")]
pub struct AddUnreachable {
    pub owner: String,
}

/// A command of a service the hosts do not serve (a program that links more services than
/// one host runs).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "elsewhere.ping")]
pub struct Ping;

pub struct Elsewhere {
    hub: Hub,
}

impl ComputeService for Elsewhere {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Elsewhere {
    #[command_handler]
    pub async fn ping(&self, _command: Ping, _ctx: &CommandContext) -> Result<(), NoteError> {
        Ok(())
    }
}

/// See `Notes::unencodable`.
#[derive(Debug, Clone, Serialize)]
pub enum Unencodable {
    Map(HashMap<(u8, u8), u8>),
    #[serde(serialize_with = "fail")]
    Fails,
}

fn fail<S: serde::Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    let _ = serializer;
    Err(serde::ser::Error::custom("line one\r\nline two"))
}

/// An output that is not `Serialize`.
#[derive(Debug, Clone)]
pub struct Opaque;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Opaque, name = "notes.opaque")]
pub struct OpaqueOutput;

#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error("notes need text")]
    Empty,
    #[error("refused after writing")]
    Refused,
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub struct Notes {
    hub: Hub,
    db: DbHub<Sqlite>,
    /// For the coalescing test: the value `blob` reads, and its size.
    pub blob_version: AtomicU64,
    pub blob_size: usize,
    /// Computations of `list`, of `blob`, of `tags` on this service (the descriptors' counters
    /// are shared by every test of the binary).
    pub list_computations: AtomicU64,
    pub blob_computations: AtomicU64,
    pub tags_computations: AtomicU64,
    /// `list(owner)` computations per owner.
    pub list_by_owner: Mutex<HashMap<String, u64>>,
    /// A gate armed for one owner: the next `list` of that owner, after reading the rows,
    /// says so and waits to be released.
    gate: Mutex<Option<Gate>>,
    /// `slow` computations in flight (each dropped or ended decrements).
    pub slow_in_flight: Arc<AtomicUsize>,
    pub slow_started: AtomicU64,
    /// What `base` reads; `flaky(key)` panics for the keys here.
    pub base_value: AtomicU64,
    pub panic_keys: Mutex<HashSet<u64>>,
    /// How many entries `tags` has.
    pub tags_len: AtomicU64,
}

struct Gate {
    owner: String,
    entered: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// Decrements a counter when dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ComputeService for Notes {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Notes {
    #[compute_method]
    pub async fn list(&self, owner: String) -> Result<Vec<Note>, String> {
        self.list_computations.fetch_add(1, Ordering::SeqCst);
        *self
            .list_by_owner
            .lock()
            .unwrap()
            .entry(owner.clone())
            .or_default() += 1;
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        let rows = notes::table
            .filter(notes::owner.eq(owner.clone()))
            .order(notes::id)
            .select((notes::id, notes::text))
            .load::<(i64, String)>(&mut *connection)
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|(id, text)| Note { id, text })
                    .collect()
            })
            .map_err(|e| e.to_string());
        drop(connection);
        let gate = {
            let mut gate = self.gate.lock().unwrap();
            if gate.as_ref().is_some_and(|gate| gate.owner == owner) {
                gate.take()
            } else {
                None
            }
        };
        if let Some(gate) = gate {
            let _ = gate.entered.send(());
            let _ = gate.release.await;
        }
        rows
    }

    /// Depends on `list`.
    #[compute_method]
    pub async fn count(&self, owner: String) -> Result<usize, String> {
        Ok(self.list(owner).await?.len())
    }

    /// A large value, for coalescing: `blob_size` bytes, tagged with `blob_version`.
    #[compute_method]
    pub async fn blob(&self) -> (u64, String) {
        self.blob_computations.fetch_add(1, Ordering::SeqCst);
        let version = AtomicU64::load(&self.blob_version, Ordering::SeqCst);
        (version, "x".repeat(self.blob_size))
    }

    /// Panics when asked to.
    #[compute_method]
    pub async fn fragile(&self, panic: bool) -> u64 {
        assert!(!panic, "fragile was asked to panic");
        7
    }

    /// Never ends (until dropped).
    #[compute_method]
    pub async fn slow(&self, key: u64) -> u64 {
        self.slow_in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(Arc::clone(&self.slow_in_flight));
        self.slow_started.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
        key
    }

    #[compute_method]
    pub async fn base(&self) -> u64 {
        AtomicU64::load(&self.base_value, Ordering::SeqCst)
    }

    /// Depends on `base`; panics for the keys in `panic_keys`.
    #[compute_method]
    pub async fn flaky(&self, key: u64) -> u64 {
        let base = self.base().await;
        let panics = self.panic_keys.lock().unwrap().contains(&key);
        assert!(!panics, "flaky({key}) was asked to panic");
        base * 1000 + key
    }

    /// An unordered map: the same map computed twice iterates in two orders.
    #[compute_method]
    pub async fn tags(&self, owner: String) -> HashMap<String, u64> {
        self.tags_computations.fetch_add(1, Ordering::SeqCst);
        let len = AtomicU64::load(&self.tags_len, Ordering::SeqCst);
        (0..len).map(|i| (format!("{owner}-tag-{i}"), i)).collect()
    }

    /// A value that cannot be encoded as JSON: 0, a map whose keys are not strings; 1, a type
    /// whose `Serialize` fails with a message over two lines.
    #[compute_method]
    pub async fn unencodable(&self, kind: u8) -> Unencodable {
        match kind {
            0 => Unencodable::Map(HashMap::from([((1, 2), 3)])),
            _ => Unencodable::Fails,
        }
    }

    #[command_handler]
    pub async fn add_unreachable(
        &self,
        command: AddUnreachable,
        _ctx: &CommandContext,
    ) -> Result<Note, NoteError> {
        invalidate! {
            self.list(command.owner.clone());
        }
        Err(NoteError::Ofx(ofx_core::Error::transient(
            "the database is unreachable",
        )))
    }

    #[command_handler]
    pub async fn add(&self, command: AddNote, ctx: &CommandContext) -> Result<Note, NoteError> {
        invalidate! {
            self.list(command.owner.clone());
        }
        if command.text.is_empty() {
            return Err(NoteError::Empty);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        let id: i64 = diesel::insert_into(notes::table)
            .values((
                notes::owner.eq(&command.owner),
                notes::text.eq(&command.text),
            ))
            .returning(notes::id)
            .get_result(&mut *connection)
            .await?;
        Ok(Note {
            id,
            text: command.text,
        })
    }

    #[command_handler]
    pub async fn add_then_fail(
        &self,
        command: AddThenFail,
        ctx: &CommandContext,
    ) -> Result<Note, NoteError> {
        invalidate! {
            self.list(command.owner.clone());
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::insert_into(notes::table)
            .values((notes::owner.eq(&command.owner), notes::text.eq("partial")))
            .execute(&mut *connection)
            .await?;
        Err(NoteError::Refused)
    }

    #[command_handler]
    pub async fn purge_all(
        &self,
        _command: PurgeAll,
        ctx: &CommandContext,
    ) -> Result<(), NoteError> {
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::delete(notes::table)
            .execute(&mut *connection)
            .await?;
        Ok(())
    }

    #[command_handler]
    pub async fn opaque(
        &self,
        _command: OpaqueOutput,
        _ctx: &CommandContext,
    ) -> Result<Opaque, NoteError> {
        Ok(Opaque)
    }
}

impl Notes {
    /// Rows in the table, read directly.
    pub async fn rows(&self) -> i64 {
        let mut connection = self.db.connection().await.unwrap();
        notes::table
            .count()
            .get_result(&mut *connection)
            .await
            .unwrap()
    }

    /// `owner`'s notes read directly from the database (no cache), as `list` encodes them.
    pub async fn direct_list(&self, owner: &str) -> serde_json::Value {
        let mut connection = self.db.connection().await.unwrap();
        let rows: Vec<(i64, String)> = notes::table
            .filter(notes::owner.eq(owner))
            .order(notes::id)
            .select((notes::id, notes::text))
            .load(&mut *connection)
            .await
            .unwrap();
        let notes: Vec<Note> = rows
            .into_iter()
            .map(|(id, text)| Note { id, text })
            .collect();
        serde_json::json!({ "Ok": notes })
    }

    /// Takes SQLite's write lock (`BEGIN IMMEDIATE` on a connection of its own) and holds it
    /// until the returned sender is used (or dropped); the task ends once it rolled back.
    pub async fn lock_database(&self) -> (tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
        let mut connection = self.db.connection().await.unwrap();
        connection.batch_execute("BEGIN IMMEDIATE").await.unwrap();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(async move {
            let _ = released.await;
            connection.batch_execute("ROLLBACK").await.unwrap();
        });
        (release, holder)
    }

    /// Invalidates `list(owner)` without changing anything.
    pub fn touch_list(&self, owner: &str) {
        invalidate! {
            self.list(owner.to_owned());
        }
    }

    /// Arms the gate of `list(owner)`: the receiver says when a computation is inside it, the
    /// sender releases it.
    pub fn arm_gate(
        &self,
        owner: &str,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        *self.gate.lock().unwrap() = Some(Gate {
            owner: owner.to_owned(),
            entered: entered_tx,
            release: release_rx,
        });
        (entered_rx, release_tx)
    }

    /// `list(owner)` computations so far.
    pub fn list_computations_of(&self, owner: &str) -> u64 {
        self.list_by_owner
            .lock()
            .unwrap()
            .get(owner)
            .copied()
            .unwrap_or(0)
    }

    /// Changes `base` and invalidates it.
    pub fn bump_base(&self) -> u64 {
        let value = self.base_value.fetch_add(1, Ordering::SeqCst) + 1;
        invalidate! {
            self.base();
        }
        value
    }

    /// Invalidates `tags(owner)` without changing it.
    pub fn touch_tags(&self, owner: &str) {
        invalidate! {
            self.tags(owner.to_owned());
        }
    }

    /// Changes the number of tags and invalidates `tags(owner)`.
    pub fn grow_tags(&self, owner: &str) {
        self.tags_len.fetch_add(1, Ordering::SeqCst);
        invalidate! {
            self.tags(owner.to_owned());
        }
    }

    /// Changes the blob and invalidates it.
    pub fn bump_blob(&self) -> u64 {
        let version = self.blob_version.fetch_add(1, Ordering::SeqCst) + 1;
        invalidate! {
            self.blob();
        }
        version
    }
}

pub fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ofx-axum-{name}-{}", uuid::Uuid::new_v4().simple()))
}

/// One host: a hub reading the log of the SQLite file at `path`, woken through `watch_dir`.
pub struct Host {
    pub hub: Hub,
    pub notes: Arc<Notes>,
    pub ofx: Ofx,
    pub url: String,
    pub addr: std::net::SocketAddr,
    server: JoinHandle<()>,
}

impl Host {
    pub async fn start(path: &std::path::Path, watch_dir: &std::path::Path) -> Self {
        Self::start_with(path, watch_dir, OfxSettings::default()).await
    }

    pub async fn start_with(
        path: &std::path::Path,
        watch_dir: &std::path::Path,
        settings: OfxSettings,
    ) -> Self {
        Self::start_full(path, watch_dir, settings, None).await
    }

    pub async fn start_full(
        path: &std::path::Path,
        watch_dir: &std::path::Path,
        settings: OfxSettings,
        capacity: Option<usize>,
    ) -> Self {
        let db = DbHub::<Sqlite>::open(path.to_str().unwrap(), DbSettings::default())
            .await
            .unwrap();
        db.set_watcher(ofx_watchers::FsWatcher::factory(watch_dir, "notes"))
            .unwrap();
        let mut builder = Hub::builder().with(db.clone());
        if let Some(capacity) = capacity {
            builder = builder.capacity(capacity);
        }
        let hub = builder.start().await.unwrap();
        db.connection()
            .await
            .unwrap()
            .batch_execute(SCHEMA)
            .await
            .unwrap();
        let notes = Arc::new(Notes {
            hub: hub.clone(),
            db,
            blob_version: AtomicU64::new(0),
            blob_size: 1 << 20,
            list_computations: AtomicU64::new(0),
            blob_computations: AtomicU64::new(0),
            tags_computations: AtomicU64::new(0),
            list_by_owner: Mutex::new(HashMap::new()),
            gate: Mutex::new(None),
            slow_in_flight: Arc::new(AtomicUsize::new(0)),
            slow_started: AtomicU64::new(0),
            base_value: AtomicU64::new(1),
            panic_keys: Mutex::new(HashSet::new()),
            tags_len: AtomicU64::new(32),
        });
        hub.add_service(&notes).unwrap();
        let shutdown = CancellationToken::new();
        let ofx = Ofx::builder(&hub)
            .service(notes.clone())
            .settings(settings)
            .shutdown_on(shutdown.clone())
            // What an application on ofx-diesel does: the log's "too large" is the client's.
            .classify_errors(|error| {
                matches!(
                    error.scope_error::<ofx_diesel::Error>(),
                    Some(ofx_diesel::Error::PayloadTooLarge { .. })
                )
                .then_some(ofx_axum::ErrorAnswer {
                    status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    kind: "too_large",
                })
            })
            .build();
        let app = Router::new()
            .nest("/commands", ofx.command_router())
            .route("/live/list", ofx.live(&notes, Notes::list_method()))
            .route("/live/count", ofx.live(&notes, Notes::count_method()))
            .route("/live/blob", ofx.live(&notes, Notes::blob_method()))
            .route("/live/fragile", ofx.live(&notes, Notes::fragile_method()))
            .route("/live/slow", ofx.live(&notes, Notes::slow_method()))
            .route("/live/flaky", ofx.live(&notes, Notes::flaky_method()))
            .route("/live/tags", ofx.live(&notes, Notes::tags_method()))
            .route(
                "/live/unencodable",
                ofx.live(&notes, Notes::unencodable_method()),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .unwrap();
        });
        // Frames carry a log position once the reader reported one (see findings.rs, finding
        // 10): the tests start from there.
        tokio::time::timeout(Duration::from_secs(10), hub.log_position_reached(0))
            .await
            .expect("the log reader reports a position");
        Self {
            hub,
            notes,
            ofx,
            url,
            addr,
            server,
        }
    }

    /// Shuts the routes down and waits for the server's graceful shutdown to finish.
    pub async fn stop(self) -> Result<(), tokio::time::error::Elapsed> {
        self.ofx.shutdown();
        let mut server = self.server;
        let stopped = tokio::time::timeout(Duration::from_secs(10), &mut server)
            .await
            .map(|joined| joined.unwrap());
        if stopped.is_err() {
            server.abort();
        }
        stopped
    }

    /// Waits until this host has replayed the log through `sequence`.
    pub async fn wait_position(&self, sequence: i64) {
        let reached = tokio::time::timeout(
            Duration::from_secs(10),
            self.hub.log_position_reached(sequence),
        )
        .await;
        assert!(
            reached.is_ok(),
            "the host did not replay through {sequence}: {:?}",
            self.hub.log_position()
        );
    }
}

/// Two hosts on one SQLite file, woken by the file-system watcher.
pub async fn two_hosts() -> (Host, Host) {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Host::start(&path, &dir).await;
    let b = Host::start(&path, &dir).await;
    (a, b)
}

pub async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
    pub data: String,
}

impl Frame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A server-sent events client over a plain HTTP response: parses frames as they arrive,
/// counting keep-alive comments apart.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    pub comments: usize,
    pub status: u16,
    pub content_type: String,
}

impl SseClient {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Self {
            response,
            buffer: String::new(),
            comments: 0,
            status,
            content_type,
        }
    }

    /// The next frame, `None` when the stream ended; panics after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                let mut data = Vec::new();
                let mut any = false;
                for line in block.lines().filter(|line| !line.is_empty()) {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    any = true;
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => frame.event = Some(value.to_owned()),
                        "id" => frame.id = Some(value.to_owned()),
                        "retry" => frame.retry = Some(value.parse().unwrap()),
                        "data" => data.push(value.to_owned()),
                        other => panic!("unexpected field {other:?}"),
                    }
                }
                if !any {
                    continue; // a comment block
                }
                frame.data = data.join("\n");
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!("no frame within {timeout:?}; buffered: {:?}", self.buffer)
                })
                // A connection cut short ends the stream as well (without a frame).
                .unwrap_or(None);
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// Reads until `count` keep-alive comments arrived in all; panics after `timeout`.
    pub async fn wait_comments(&mut self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                assert!(
                    block.starts_with(':'),
                    "a frame while waiting for comments: {block:?}"
                );
                self.comments += 1;
            }
            if self.comments >= count {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("{} comments within {timeout:?}", self.comments))
                .unwrap()
                .expect("the stream ended");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads frames until one whose data is `expected`; checks on the way that every frame is an
    /// `update` whose version is greater than the last. Panics (with the frames seen) after 10 s.
    pub async fn until_json(
        &mut self,
        expected: &serde_json::Value,
        last_version: &mut u64,
    ) -> Vec<Frame> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no frame with {expected} within 10 s; last frames: {:?}",
                seen.iter().rev().take(3).collect::<Vec<_>>()
            );
            let frame = match tokio::time::timeout(left, self.next_within(left)).await {
                Ok(Some(frame)) => frame,
                Ok(None) => panic!("the stream ended; frames: {seen:?}"),
                Err(_) => panic!(
                    "no frame with {expected} within 10 s; last frames: {:?}",
                    seen.iter().rev().take(3).collect::<Vec<_>>()
                ),
            };
            assert_ne!(frame.event.as_deref(), Some("error"), "{frame:?}");
            let id: ofx_axum::LiveFrameId = frame.id.as_deref().unwrap().parse().unwrap();
            assert!(
                id.version > *last_version,
                "the version went from {last_version} to {id}"
            );
            *last_version = id.version;
            let done = &frame.json() == expected;
            seen.push(frame);
            if done {
                return seen;
            }
        }
    }

    pub async fn next(&mut self) -> Frame {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("the stream ended")
    }
}

/// Waits until `condition` holds; panics with `what` after 10 s.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends `request` as is on a fresh connection and reads the answer until the server closes
/// the connection (send `Connection: close`): the status (`None` when the server closed
/// without answering) and the whole answer.
pub async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before the whole request is written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed the connection");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, answer)
}

pub fn args(values: serde_json::Value) -> String {
    let text = values.to_string();
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
