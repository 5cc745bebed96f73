//! [`FsWatcher`]: a file in a directory shared by the hosts.
//!
//! Each log has one file, `<dir>/<log name>.ofx-log`. [`notify`](LogWatcher::notify) rewrites
//! it with this host's id: the id goes to a temporary file of this host in the same directory,
//! which is then renamed over the log's file, so a reader never sees a half-written id.
//!
//! Every host watches the directory with the `notify` crate's recommended watcher (inotify,
//! FSEvents, ReadDirectoryChangesW; no debouncer, so no added delay). On an event for the log's
//! file it reads the file: its own id is ignored, anything else (another id, or a file that
//! cannot be read) wakes the host.
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
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::{self, Backoff};
use crate::shared::{self, Handle, Publish, Shared};
use crate::{Error, Result, WatcherStats};

/// The suffix of a log's file.
const SUFFIX: &str = ".ofx-log";
/// How often the watcher checks that the directory at its path is still the one it watches.
const CHECK_PERIOD: Duration = Duration::from_secs(5);
/// The most bytes read from a log's file (a host id is far shorter; the file is untrusted).
const MAX_CONTENT: u64 = 4096;
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
            path: path.clone(),
            shared: Arc::clone(&handle.shared),
            stop: handle.stop.clone(),
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
            payload: handle.shared.host_id.to_string(),
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

    /// This host's id, the content it writes.
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
}

// ===== watching =====

/// What the watch's event handler (on the `notify` crate's thread) tells the listener task.
#[derive(Debug, Default)]
struct Signals {
    /// The log's file changed (or events may have been dropped).
    file: Notify,
    /// The watch broke or the directory went away.
    lost: Notify,
}

/// Sorts the events of one watch into [`Signals`].
struct Events {
    dir: PathBuf,
    file_name: OsString,
    signals: Arc<Signals>,
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
            self.signals.file.notify_one();
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
                self.signals.file.notify_one();
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
    path: PathBuf,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Listener {
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
                () = session.signals.file.notified() => self.read().await,
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

    /// Reads the file after an event: another host's id (or no readable id) wakes this host.
    async fn read(&self) {
        match read_prefix(&self.path).await {
            Ok(content) => self.shared.on_message(&content),
            Err(error) => {
                tracing::debug!(%error, path = %self.path.display(), "the log's file cannot be read; waking anyway");
                self.shared.on_foreign_message();
            }
        }
    }
}

/// The first [`MAX_CONTENT`] bytes of `path`.
async fn read_prefix(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut content = Vec::new();
    file.take(MAX_CONTENT).read_to_end(&mut content).await?;
    Ok(content)
}

// ===== writing =====

/// Writes this host's id to its temporary file, then renames it over the log's file.
struct Sender {
    dir: PathBuf,
    temporary: PathBuf,
    path: PathBuf,
    payload: String,
}

impl Sender {
    async fn write(&self) -> Result<()> {
        tokio::fs::write(&self.temporary, &self.payload)
            .await
            .map_err(io("write", &self.temporary))?;
        tokio::fs::rename(&self.temporary, &self.path)
            .await
            .map_err(io("rename into", &self.path))
    }
}

impl Publish for Sender {
    async fn publish(&mut self) -> Result<()> {
        match self.write().await {
            // The directory was deleted: create it again (the listener will re-watch it).
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(&self.dir)
                    .await
                    .map_err(io("create", &self.dir))?;
                self.write().await
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
