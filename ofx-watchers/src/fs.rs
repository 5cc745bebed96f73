//! [`FsWatcher`]: a file in a directory shared by the hosts.
//!
//! Each log has one file, `<dir>/<log name>.ofx-log`. [`notify`](LogWatcher::notify) rewrites
//! it with a message (this host's id, then the hints): it goes to a temporary file of this
//! host in the same directory, which is then renamed over the log's file, so a reader never
//! sees a half-written message.
//!
//! Every host watches the directory with the `notify` crate's recommended watcher (inotify,
//! FSEvents, ReadDirectoryChangesW; no debouncer, so no added delay). On an event for the log's
//! file it reads the file (on the watch's own thread): its own id is ignored, anything else
//! (another host's message, or a file that cannot be read) hands its hints over and wakes the
//! host. The same message read twice (a rename is reported twice) hands its hints over once.
//!
//! If the directory is deleted, moved away or replaced while the watcher runs (the watch
//! reports it, fails, or a check every 5 s finds another directory at the path), the directory
//! is created again if missing and the watch re-established with backoff; then the host is
//! woken once.
//!
//! Limits: when two hosts write within the same instant, one may read the other's id over its
//! own event and miss a wake-up (its next poll covers it). Network file systems (NFS, SMB) do
//! not report other machines' writes to inotify: there, use the PostgreSQL or Redis watcher.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use ofx_core::{HostId, LogWatcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::{self, Backoff};
use crate::shared::{self, Handle, Publish, Shared};
use crate::{Error, Result, WatcherStats};

/// The suffix of a log's file.
const SUFFIX: &str = ".ofx-log";
/// How often the watcher checks that the directory at its path is still the one it watches.
const CHECK_PERIOD: Duration = Duration::from_secs(5);
/// The most bytes read from a log's file (the file is untrusted): a message is at most
/// [`MAX_MESSAGE_BYTES`](crate::shared::MAX_MESSAGE_BYTES) long.
const MAX_CONTENT: u64 = 8192;
/// The longest log name used as is in a file name.
const MAX_PLAIN_NAME: usize = 100;

/// A [`LogWatcher`] over a file in a directory shared by the hosts.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ofx_watchers::Error> {
/// use ofx_core::{HostId, LogWatcher};
/// use ofx_watchers::FsWatcher;
/// use tokio_util::sync::CancellationToken;
///
/// let dir = std::env::temp_dir().join(format!("ofx-doc-{}", std::process::id()));
/// let stop = CancellationToken::new();
/// let a = FsWatcher::start(&dir, "orders", HostId::new(), stop.clone()).await?;
/// let b = FsWatcher::start(&dir, "orders", HostId::new(), stop.clone()).await?;
/// let woken = b.wakes();
/// a.notify(); // after each commit
/// woken.notified().await; // b learns that a committed
/// stop.cancel();
/// # let _ = std::fs::remove_dir_all(&dir);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FsWatcher {
    handle: Handle,
    path: PathBuf,
}

impl FsWatcher {
    /// Watches the file of `log_name` in `dir` (created if missing) and starts the background
    /// tasks, which stop when `stop` is cancelled or the watcher dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `dir` cannot be created, and [`Error::Watch`] when it cannot be
    /// watched. Later failures are logged and retried.
    pub async fn start(
        dir: impl AsRef<Path>,
        log_name: &str,
        host_id: HostId,
        stop: CancellationToken,
    ) -> Result<Arc<Self>> {
        let dir = dir.as_ref();
        // Events name paths under the path that is watched: make it absolute once.
        let dir = std::path::absolute(dir).map_err(io("resolve", dir))?;
        let file_name = Self::file_name_for(log_name);
        let path = dir.join(&file_name);
        let handle = Handle::new("fs", host_id, &stop);
        let session = Session::establish(&dir, &file_name).await?;
        let hash = shared::stable_hash(handle.shared.host_id.as_str().as_bytes());
        let mut temporary = OsString::from(".");
        temporary.push(&file_name);
        temporary.push(format!(".{hash:016x}.tmp"));
        let listener = Listener {
            dir: dir.clone(),
            file_name,
            shared: Arc::clone(&handle.shared),
            stop: handle.stop.clone(),
            last_hinted: std::sync::Mutex::default(),
        };
        ofx_core::background::spawn_supervised(
            "ofx watcher listener",
            Arc::clone(handle.shared.stats.listener_health()),
            listener.run(session),
        );
        handle.start_sender(Sender {
            temporary: dir.join(temporary),
            path: path.clone(),
            dir,
        });
        Ok(Arc::new(Self { handle, path }))
    }

    /// The file name of `log_name`: the name itself plus `.ofx-log` when it is made of ASCII
    /// letters, digits, `-`, `_` and `.` (not first) and is at most 100 bytes long; otherwise
    /// those characters of it (others replaced by `_`, at most 100), `-`, and 16 hex digits of a
    /// stable hash of the whole name, so every name gets a file of its own.
    pub fn file_name_for(log_name: &str) -> OsString {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let name = if !log_name.is_empty()
            && log_name.len() <= MAX_PLAIN_NAME
            && !log_name.starts_with('.')
            && log_name.chars().all(plain)
        {
            log_name.to_owned()
        } else {
            let readable: String = log_name
                .chars()
                .map(|c| if plain(c) { c } else { '_' })
                .take(MAX_PLAIN_NAME)
                .collect();
            let hash = shared::stable_hash(log_name.as_bytes());
            format!("{}-{hash:016x}", readable.trim_start_matches('.'))
        };
        OsString::from(name + SUFFIX)
    }

    /// The log's file this watcher writes and watches.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This host's id, the first line of what it writes.
    pub fn host_id(&self) -> &HostId {
        &self.handle.shared.host_id
    }

    /// What this watcher did so far.
    pub fn stats(&self) -> &WatcherStats {
        &self.handle.shared.stats
    }
}

impl LogWatcher for FsWatcher {
    fn notify(&self) {
        self.handle.notify();
    }

    fn wakes(&self) -> Arc<Notify> {
        self.handle.wakes()
    }

    fn notify_committed(&self, operation: &ofx_core::Operation) {
        self.handle.notify_committed(operation);
    }

    fn hints(&self) -> Option<Arc<ofx_core::watcher::WakeHints>> {
        Some(self.handle.hints())
    }
}

// ===== watching =====

/// The most file contents read by the event handler and not yet handled by the listener task;
/// past it, the oldest is dropped and the host woken anyway.
const MAX_READ_AHEAD: usize = 64;

/// What the watch's event handler (on the `notify` crate's thread) tells the listener task.
#[derive(Debug, Default)]
struct Signals {
    /// The log's file changed: its contents as read then (or the error), oldest first.
    contents: std::sync::Mutex<Contents>,
    /// Notified with each new item in `contents`.
    file: Notify,
    /// The watch broke or the directory went away.
    lost: Notify,
}

#[derive(Debug, Default)]
struct Contents {
    read: std::collections::VecDeque<std::io::Result<Vec<u8>>>,
    /// Contents were dropped (too many waiting): wake the host anyway.
    dropped: bool,
}

/// Handles the events of one watch: reads the log's file when it may have changed, on the
/// `notify` crate's own thread (a read of a few kilobytes, without a trip to tokio's blocking
/// pool on the way from the event to the reader's wake-up), for the listener task; and signals
/// a lost watch.
struct Events {
    dir: PathBuf,
    file_name: OsString,
    path: PathBuf,
    signals: Arc<Signals>,
}

impl Events {
    /// Reads the file after an event, for the listener task.
    fn read(&self) {
        let content = read_prefix(&self.path);
        let mut contents = self
            .signals
            .contents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if contents.read.len() >= MAX_READ_AHEAD {
            contents.read.pop_front();
            contents.dropped = true;
        }
        contents.read.push_back(content);
        drop(contents);
        self.signals.file.notify_one();
    }
}

impl notify::EventHandler for Events {
    fn handle_event(&mut self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, dir = %self.dir.display(), "the directory watch failed");
                self.signals.lost.notify_one();
                return;
            }
        };
        if event.need_rescan() {
            // The operating system dropped events: one of them may have been a write.
            self.read();
        }
        for path in &event.paths {
            if *path == self.dir {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    self.signals.lost.notify_one();
                }
            } else if path.file_name() == Some(&self.file_name) && writes(&event.kind) {
                self.read();
            }
        }
    }
}

/// Whether an event of this kind may mean the file has new content. Reads (opening and closing
/// it, which the watcher itself does) and metadata changes do not.
fn writes(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(_)
            | EventKind::Modify(ModifyKind::Metadata(_) | ModifyKind::Name(RenameMode::From))
    )
}

/// A directory as the file system identifies it, to notice another one at the same path: its
/// device and inode (on Unix) and its creation time (where the file system records it, since
/// a directory created after one was deleted may get the same inode number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId {
    #[cfg(unix)]
    inode: (u64, u64),
    created: Option<SystemTime>,
}

async fn dir_id(dir: &Path) -> std::io::Result<DirId> {
    let metadata = tokio::fs::metadata(dir).await?;
    Ok(DirId {
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (metadata.dev(), metadata.ino())
        },
        created: metadata.created().ok(),
    })
}

/// A watch of the directory, with what it signals and which directory it is.
struct Session {
    /// Kept: dropping it ends the watch.
    _watcher: RecommendedWatcher,
    signals: Arc<Signals>,
    dir_id: DirId,
    since: Instant,
}

impl Session {
    /// Creates `dir` if missing and watches it.
    async fn establish(dir: &Path, file_name: &OsString) -> Result<Self> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create", dir))?;
        let signals = Arc::new(Signals::default());
        let events = Events {
            dir: dir.to_owned(),
            file_name: file_name.clone(),
            path: dir.join(file_name),
            signals: Arc::clone(&signals),
        };
        let watch_error = |source| Error::Watch {
            path: dir.to_owned(),
            source,
        };
        let mut watcher = notify::recommended_watcher(events).map_err(watch_error)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        // After the watch: if another directory took the path meanwhile, this is its id.
        let dir_id = dir_id(dir).await.map_err(io("inspect", dir))?;
        Ok(Self {
            _watcher: watcher,
            signals,
            dir_id,
            since: Instant::now(),
        })
    }
}

/// The task that reads the file on its events and re-establishes the watch.
struct Listener {
    dir: PathBuf,
    file_name: OsString,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// The last message with hints handled.
    last_hinted: std::sync::Mutex<Vec<u8>>,
}

impl Listener {
    /// Handles what the event handler read: another host's message (or a file that could
    /// not be read) wakes this host.
    fn handle_contents(&self, signals: &Signals) {
        let contents = std::mem::take(
            &mut *signals
                .contents
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for content in contents.read {
            match content {
                Ok(content) => {
                    // A rename is reported twice, and the file read twice: a message with
                    // hints (each one's uuid its own) read again is that message again. (One
                    // without hints may be another host's next wake-up: it wakes again.)
                    let mut last = self
                        .last_hinted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if content.contains(&b'\n') {
                        if *last == content {
                            continue;
                        }
                        last.clone_from(&content);
                    }
                    drop(last);
                    self.shared.on_message(&content);
                }
                Err(error) => {
                    tracing::debug!(%error, dir = %self.dir.display(), "the log's file cannot be read; waking anyway");
                    self.shared.on_foreign_message();
                }
            }
        }
        if contents.dropped {
            self.shared.on_foreign_message();
        }
    }

    async fn run(self, mut session: Session) {
        let mut backoff = Backoff::new();
        loop {
            if !self.watch(&session).await {
                return; // stopped
            }
            backoff.connection_ended(session.since.elapsed());
            drop(session);
            let reestablished = shared::reconnect(
                "directory watch",
                &self.shared,
                &self.stop,
                &mut backoff,
                || Session::establish(&self.dir, &self.file_name),
            )
            .await;
            match reestablished {
                Some(reestablished) => session = reestablished,
                None => return,
            }
        }
    }

    /// Handles the session's signals until it is lost (`true`) or the watcher stops (`false`).
    async fn watch(&self, session: &Session) -> bool {
        let check = tokio::time::sleep(backoff::jitter(CHECK_PERIOD, 0.1));
        tokio::pin!(check);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = session.signals.file.notified() => self.handle_contents(&session.signals),
                () = session.signals.lost.notified() => {
                    tracing::warn!(dir = %self.dir.display(), "lost the directory watch; re-establishing");
                    return true;
                }
                () = &mut check => {
                    match dir_id(&self.dir).await {
                        Ok(id) if id == session.dir_id => {
                            let next = tokio::time::Instant::now() + backoff::jitter(CHECK_PERIOD, 0.1);
                            check.as_mut().reset(next);
                        }
                        Ok(_) => {
                            tracing::warn!(dir = %self.dir.display(), "the directory was replaced; re-establishing the watch");
                            return true;
                        }
                        Err(error) => {
                            tracing::warn!(%error, dir = %self.dir.display(), "the directory is gone; re-establishing the watch");
                            return true;
                        }
                    }
                }
            }
        }
    }
}

/// The first [`MAX_CONTENT`] bytes of `path`.
fn read_prefix(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut content = Vec::new();
    file.take(MAX_CONTENT).read_to_end(&mut content)?;
    Ok(content)
}

// ===== writing =====

/// Writes a message (this host's id and the hints) to its temporary file, then renames it over
/// the log's file.
struct Sender {
    dir: PathBuf,
    temporary: PathBuf,
    path: PathBuf,
}

impl Sender {
    /// Writes and renames in one trip to tokio's blocking pool.
    async fn write(&self, message: &str) -> Result<()> {
        let (temporary, path, message) = (
            self.temporary.clone(),
            self.path.clone(),
            message.to_owned(),
        );
        let written = tokio::task::spawn_blocking(move || {
            std::fs::write(&temporary, message).map_err(io("write", &temporary))?;
            std::fs::rename(&temporary, &path).map_err(io("rename into", &path))
        })
        .await;
        written.unwrap_or_else(|error| {
            Err(Error::Io {
                action: "write",
                path: self.temporary.clone(),
                source: std::io::Error::other(error),
            })
        })
    }
}

impl Publish for Sender {
    async fn publish(&mut self, message: &str) -> Result<()> {
        match self.write(message).await {
            // The directory was deleted: create it again (the listener will re-watch it).
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(&self.dir)
                    .await
                    .map_err(io("create", &self.dir))?;
                self.write(message).await
            }
            result => result,
        }
    }
}

/// Wraps an I/O error with what was being done to which path.
fn io(action: &'static str, path: &Path) -> impl Fn(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path: path.clone(),
        source,
    }
}

crate::factory::watcher_factory!(FsWatcher, std::path::PathBuf, dir: impl AsRef<Path> => dir.as_ref().to_path_buf(), "the directory `dir`");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(FsWatcher::file_name_for("orders"), "orders.ofx-log");
        assert_eq!(
            FsWatcher::file_name_for("app.orders-2"),
            "app.orders-2.ofx-log"
        );
    }

    #[test]
    fn other_names_are_made_safe_and_distinct() {
        let long = "x".repeat(300);
        let names = ["a/b", "a_b/", "../etc", ".hidden", "", "é", long.as_str()];
        let files: Vec<String> = names
            .iter()
            .map(|name| {
                FsWatcher::file_name_for(name)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        for file in &files {
            assert!(file.ends_with(SUFFIX));
            assert!(!file.starts_with('.'), "{file} is hidden");
            assert!(!file.contains('/'), "{file} is a path");
            assert!(file.len() <= MAX_PLAIN_NAME + 17 + SUFFIX.len());
        }
        assert_ne!(files[0], files[1]);
        assert_ne!(
            FsWatcher::file_name_for("a/b"),
            FsWatcher::file_name_for("a_b")
        );
    }

    #[test]
    fn reads_and_metadata_changes_are_not_writes() {
        use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind};
        assert!(!writes(&EventKind::Access(AccessKind::Any)));
        assert!(!writes(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Any
        ))));
        assert!(writes(&EventKind::Create(CreateKind::File)));
        assert!(writes(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(writes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(writes(&EventKind::Remove(notify::event::RemoveKind::File)));
    }
}
