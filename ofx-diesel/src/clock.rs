//! The wall clock of a host. Operations' commit times, events' leases and retry times, and the
//! trimmer's cutoff are stamped with it corrected to the database server's clock (PostgreSQL:
//! the offset is measured when the database opens and at each heartbeat), so hosts whose clocks
//! disagree still agree on when a lease ends. An event's first due time is the producing
//! host's own (uncorrected: it may be a debounce window's end, or a time the application gave). The log reader never reads it (it
//! follows the log by index, and measures waits on the monotonic clock). Were the correction
//! off, a host's leases would end early or late by the error; a run whose lease another host
//! took over is refused at its commit by its lease token, so its effect still happens once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The wall clock of a [`DbSettings`](crate::DbSettings): the system's by default, or a
/// function of it (a clock offset by a fixed amount, for tests of clock skew).
///
/// ```
/// use std::time::Duration;
/// use ofx_diesel::WallClock;
///
/// let ahead = WallClock::offset(Duration::from_secs(5), true);
/// assert!(ahead.now() > WallClock::system().now());
/// ```
#[derive(Clone, Default)]
pub struct WallClock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl WallClock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// The system's clock, `offset` ahead (`ahead`) or behind.
    pub fn offset(offset: Duration, ahead: bool) -> Self {
        Self::from_fn(move || {
            let now = SystemTime::now();
            if ahead {
                now + offset
            } else {
                now.checked_sub(offset).unwrap_or(SystemTime::UNIX_EPOCH)
            }
        })
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(now)))
    }

    /// Whether this is the system's clock.
    pub(crate) fn is_system(&self) -> bool {
        self.0.is_none()
    }

    /// The time now.
    pub fn now(&self) -> SystemTime {
        self.0.as_ref().map_or_else(SystemTime::now, |now| now())
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "WallClock(custom)"
        } else {
            "WallClock(system)"
        })
    }
}
