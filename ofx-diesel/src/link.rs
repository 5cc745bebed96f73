//! [`HubLink`]: what one database keeps on one hub: the watcher started for it, its log reader
//! and the reader's position, its trimmer.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ofx_core::LogWatcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::EventProcessor;
use crate::reader::{LogReader, ReaderState};
use crate::trimmer::Trimmer;

/// Kept in the hub (see `Hub::attachment`), so it lives as long as the hub: a reader started
/// again on the same hub resumes from the position its predecessor reached.
#[derive(Default)]
pub(crate) struct HubLink {
    watcher: OnceLock<Arc<dyn LogWatcher>>,
    reader: Mutex<Option<LogReader>>,
    trimmer: Mutex<Option<Trimmer>>,
    processor: Mutex<Option<EventProcessor>>,
    /// Woken when events may be due: by this host's commits that added some, and (through the
    /// watcher) by other hosts' commits.
    events_wake: Arc<Notify>,
    /// Bumped when a stream may have grown: by this host's commits that appended to one, and
    /// (through the watcher) by other hosts' commits. State services follow it.
    stream_wakes: tokio::sync::watch::Sender<u64>,
    /// The state services following streams on this hub.
    followers: Mutex<Vec<std::sync::Weak<dyn crate::state::StreamFollower>>>,
    /// What forwarding the watcher's wake-ups needs, kept until something here consumes them.
    forward: OnceLock<Forward>,
    /// Whether the forwarding task runs.
    forwarding: std::sync::atomic::AtomicBool,
    /// Held while a reader starts.
    pub(crate) starting: tokio::sync::Mutex<()>,
    /// The reader's position: owned by the running reader task, handed back when it ends.
    pub(crate) state: Arc<tokio::sync::Mutex<ReaderState>>,
}

impl std::fmt::Debug for HubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLink")
            .field("watcher", &self.watcher.get().is_some())
            .finish_non_exhaustive()
    }
}

impl HubLink {
    pub(crate) fn watcher(&self) -> Option<Arc<dyn LogWatcher>> {
        self.watcher.get().cloned()
    }

    /// Keeps the watcher started for this hub. Its wake-ups go to the log reader (through the
    /// returned watcher's `wakes`), to the event processor and to the state services and map
    /// managers: a forwarding task, stopped by `stop`, hands each one to all. It runs only on a
    /// hub where one of them runs (`consumes`: a reader or processor; or once a follower
    /// registers): a host that runs none leaves the wake-ups to the hosts that do.
    pub(crate) fn set_watcher(
        &self,
        watcher: Arc<dyn LogWatcher>,
        stop: CancellationToken,
        consumes: bool,
    ) {
        let shared = Arc::new(SharedWatcher {
            inner: Arc::clone(&watcher),
            reader_wakes: Arc::new(Notify::new()),
        });
        // Attached once per hub: a second attach keeps the first watcher.
        if self
            .watcher
            .set(Arc::clone(&shared) as Arc<dyn LogWatcher>)
            .is_err()
        {
            return;
        }
        let _ = self.forward.set(Forward {
            wakes: watcher.wakes(),
            reader_wakes: Arc::clone(&shared.reader_wakes),
            stop,
        });
        if consumes {
            self.start_forwarding();
        }
    }

    /// Starts forwarding the watcher's wake-ups (once; none without a watcher).
    fn start_forwarding(&self) {
        let Some(forward) = self.forward.get() else {
            return;
        };
        if self
            .forwarding
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let events = Arc::clone(&self.events_wake);
        let streams = self.stream_wakes.clone();
        let wakes = Arc::clone(&forward.wakes);
        let reader_wakes = Arc::clone(&forward.reader_wakes);
        let stop = forward.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = wakes.notified() => {
                        reader_wakes.notify_one();
                        events.notify_one();
                        streams.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            }
        });
    }

    /// Wakes this hub's event processor.
    pub(crate) fn wake_events(&self) {
        self.events_wake.notify_one();
    }

    /// Wakes this hub's state services.
    pub(crate) fn wake_streams(&self) {
        self.stream_wakes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Registers a state service of this hub.
    pub(crate) fn register_follower(
        &self,
        follower: std::sync::Weak<dyn crate::state::StreamFollower>,
    ) {
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        followers.retain(|follower| follower.strong_count() > 0);
        followers.push(follower);
        drop(followers);
        self.start_forwarding();
    }

    /// The state services of this hub that follow `stream`.
    pub(crate) fn followers_of(&self, stream: &str) -> Vec<Arc<dyn crate::state::StreamFollower>> {
        self.followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|follower| follower.stream() == stream)
            .collect()
    }

    /// What wakes this hub's state services.
    pub(crate) fn stream_wakes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stream_wakes.subscribe()
    }

    pub(crate) fn events_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.events_wake)
    }

    pub(crate) fn processor(&self) -> Option<EventProcessor> {
        self.processor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_processor(&self, processor: EventProcessor) {
        *self
            .processor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(processor);
    }

    /// The running reader, if any.
    pub(crate) fn reader(&self) -> Option<LogReader> {
        self.reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|reader| !reader.is_stopped())
            .cloned()
    }

    pub(crate) fn set_reader(&self, reader: LogReader) {
        *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = Some(reader);
    }

    pub(crate) fn set_trimmer(&self, trimmer: Trimmer) {
        *self.trimmer.lock().unwrap_or_else(PoisonError::into_inner) = Some(trimmer);
    }
}

/// The watcher's wake-ups, where they go, and when to stop.
struct Forward {
    wakes: Arc<Notify>,
    reader_wakes: Arc<Notify>,
    stop: CancellationToken,
}

/// A watcher whose wake-ups are shared between a hub's log reader and event processor.
#[derive(Debug)]
struct SharedWatcher {
    inner: Arc<dyn LogWatcher>,
    reader_wakes: Arc<Notify>,
}

impl LogWatcher for SharedWatcher {
    fn notify(&self) {
        self.inner.notify();
    }

    fn wakes(&self) -> Arc<Notify> {
        Arc::clone(&self.reader_wakes)
    }

    fn notify_committed(&self, operation: &ofx_core::Operation) {
        self.inner.notify_committed(operation);
    }

    fn hints(&self) -> Option<Arc<ofx_core::watcher::WakeHints>> {
        self.inner.hints()
    }
}
