//! The trimmer: deletes operations older than the log's max age, and finished events older
//! than theirs, in bounded batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ofx_core::background::{TaskHealth, spawn_supervised};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::reader::jitter;
use crate::row::micros;

/// A running trimmer. Dropping it stops the trimmer.
#[derive(Debug)]
pub struct Trimmer {
    stop: CancellationToken,
    trimmed: Arc<AtomicU64>,
    health: Arc<TaskHealth>,
}

impl Trimmer {
    /// Rows deleted so far (operations and events).
    pub fn trimmed(&self) -> u64 {
        self.trimmed.load(Ordering::Relaxed)
    }

    /// Whether the trimmer's task runs, stopped, or ended unexpectedly (logged at error level).
    pub fn health(&self) -> &Arc<TaskHealth> {
        &self.health
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<B: Backend> DbHub<B> {
    /// Deletes the operations logged more than [`max_age`](crate::DbSettings) ago, in batches
    /// of [`trim_batch`](crate::DbSettings); returns how many rows it deleted.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn trim(&self) -> Result<u64> {
        let settings = self.settings();
        let cutoff = micros(
            self.now()
                .checked_sub(settings.max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let mut total = 0;
        loop {
            let mut connection = self.connection().await?;
            let deleted = B::trim(&mut connection, cutoff, settings.trim_batch).await?;
            total += deleted as u64;
            if i64::try_from(deleted).unwrap_or(i64::MAX) < settings.trim_batch {
                return Ok(total);
            }
        }
    }

    /// Starts trimming every [`trim_period`](crate::DbSettings) (jittered) until the returned
    /// handle or `stop`'s token is dropped / cancelled. Failures are logged and retried at the
    /// next period.
    pub fn start_trimmer(&self, stop: CancellationToken) -> Trimmer {
        let trimmed = Arc::new(AtomicU64::new(0));
        let db = self.clone();
        let task_stop = stop.clone();
        let counter = Arc::clone(&trimmed);
        let health = TaskHealth::new();
        spawn_supervised("ofx-diesel trimmer", Arc::clone(&health), async move {
            loop {
                tokio::select! {
                    () = task_stop.cancelled() => return,
                    () = tokio::time::sleep(jitter(db.settings().trim_period, 0.25)) => {}
                }
                match db.trim().await {
                    Ok(count) => {
                        counter.fetch_add(count, Ordering::Relaxed);
                        tracing::debug!(count, "trimmed the operation log");
                    }
                    Err(error) => tracing::warn!(%error, "trimming the operation log failed"),
                }
                match db.events().trim().await {
                    Ok(count) => {
                        counter.fetch_add(count, Ordering::Relaxed);
                        tracing::debug!(count, "trimmed finished events");
                    }
                    Err(error) => tracing::warn!(%error, "trimming finished events failed"),
                }
            }
        });
        Trimmer {
            stop,
            trimmed,
            health,
        }
    }
}
