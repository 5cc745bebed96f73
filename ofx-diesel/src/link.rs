//! [`HubLink`]: what one database keeps on one hub: the watcher started for it, its log reader
//! and the reader's position, its trimmer.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ofx_core::LogWatcher;

use crate::reader::{LogReader, ReaderState};
use crate::trimmer::Trimmer;

/// Kept in the hub (see `Hub::attachment`), so it lives as long as the hub: a reader started
/// again on the same hub resumes from the position its predecessor reached.
#[derive(Default)]
pub(crate) struct HubLink {
    watcher: OnceLock<Arc<dyn LogWatcher>>,
    reader: Mutex<Option<LogReader>>,
    trimmer: Mutex<Option<Trimmer>>,
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

    pub(crate) fn set_watcher(&self, watcher: Arc<dyn LogWatcher>) {
        // Attached once per hub: a second attach keeps the first watcher.
        let _ = self.watcher.set(watcher);
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
