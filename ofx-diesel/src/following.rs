//! What the stream followers (state services, map managers) share: their poll period and
//! their backoff.

use std::time::Duration;

use ofx_core::Hub;

use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::reader::jitter;

/// `configured`, or the database's log-reader poll period (the one with a watcher when this
/// hub has one).
pub(crate) fn poll_period<B: Backend>(
    db: &DbHub<B>,
    hub: &Hub,
    configured: Option<Duration>,
) -> Duration {
    let settings = db.settings();
    configured.unwrap_or(
        if db
            .existing_link(hub)
            .and_then(|link| link.watcher())
            .is_some()
        {
            settings.poll_period_with_watcher
        } else {
            settings.poll_period
        },
    )
}

/// Capped exponential backoff with ±25 % jitter.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    pub(crate) fn step(&mut self) -> Duration {
        let delay = jitter(self.next, 0.25);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}
