//! The test service (notes in SQLite), hosts on one file, a served router and an SSE client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        notes::table
            .filter(notes::owner.eq(owner))
            .order(notes::id)
            .select((notes::id, notes::text))
            .load::<(i64, String)>(&mut *connection)
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|(id, text)| Note { id, text })
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    /// Depends on `list`.
    #[compute_method]
    pub async fn count(&self, owner: String) -> Result<usize, String> {
        Ok(self.list(owner).await?.len())
    }

    /// A large value, for coalescing: `blob_size` bytes, tagged with `blob_version`.
    #[compute_method]
    pub async fn blob(&self) -> (u64, String) {
        let version = AtomicU64::load(&self.blob_version, Ordering::SeqCst);
        (version, "x".repeat(self.blob_size))
    }

    /// Panics when asked to.
    #[compute_method]
    pub async fn fragile(&self, panic: bool) -> u64 {
        assert!(!panic, "fragile was asked to panic");
        7
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

    /// Invalidates `list(owner)` without changing anything.
    pub fn touch_list(&self, owner: &str) {
        invalidate! {
            self.list(owner.to_owned());
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
        let db = DbHub::<Sqlite>::open(path.to_str().unwrap(), DbSettings::default())
            .await
            .unwrap();
        db.set_watcher(ofx_watchers::FsWatcher::factory(watch_dir, "notes"))
            .unwrap();
        let hub = Hub::builder().with(db.clone()).start().await.unwrap();
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
        });
        hub.add_service(&notes).unwrap();
        let shutdown = CancellationToken::new();
        let ofx = Ofx::builder(&hub)
            .service(notes.clone())
            .settings(settings)
            .shutdown_on(shutdown.clone())
            .build();
        let app = Router::new()
            .nest("/commands", ofx.command_router())
            .route("/live/list", ofx.live(&notes, Notes::list_method()))
            .route("/live/count", ofx.live(&notes, Notes::count_method()))
            .route("/live/blob", ofx.live(&notes, Notes::blob_method()))
            .route("/live/fragile", ofx.live(&notes, Notes::fragile_method()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            hub,
            notes,
            ofx,
            url,
            server,
        }
    }

    /// Shuts the routes down and waits for the server's graceful shutdown to finish.
    pub async fn stop(self) -> Result<(), tokio::time::error::Elapsed> {
        self.ofx.shutdown();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .map(|joined| joined.unwrap())
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
                .unwrap();
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

    pub async fn next(&mut self) -> Frame {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("the stream ended")
    }
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
