//! What a state service reports: [`StateStatus`], [`Quarantined`], [`UnavailableCause`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A state service's status: what a load balancer's health check and an operator look at.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StateStatus {
    /// The projection's name.
    pub projection: &'static str,
    /// Its version.
    pub version: u32,
    /// The stream it follows.
    pub stream: &'static str,
    /// Whether it finished its initial catch-up: reads succeed.
    pub ready: bool,
    /// The position of the last event applied (0: none).
    pub position: u64,
    /// The stream's head as last seen by this host.
    pub head: u64,
    /// Events this host knows of and has not applied yet (`head - position`).
    pub lag_events: u64,
    /// How far behind the local state may be, in seconds: it holds every append committed
    /// before `now - lag_seconds` (the start of its last refresh that reached the head);
    /// `None` before the first refresh reached the head.
    pub lag_seconds: Option<f64>,
    /// Whether the last refresh reached the head and nothing woke the follower since.
    pub caught_up: bool,
    /// Whether the follower is applying a backlog now (the initial load, or a large lag).
    pub replaying: bool,
    /// The last failure of a refresh or of the initial load, cleared by a success.
    pub last_error: Option<String>,
    /// Seconds since the last successful refresh (`None`: none yet).
    pub last_refresh_age_seconds: Option<f64>,
    /// Events quarantined by this host since it started.
    pub quarantined: u64,
    /// The position of the snapshot this host started from (`None`: it projected the whole
    /// stream).
    pub loaded_snapshot: Option<u64>,
    /// The position of the last snapshot this host saved.
    pub saved_snapshot: Option<u64>,
}

/// Anything with a [`StateStatus`]: what [`status_router`](super::status_router) serves.
pub trait StatusSource: Send + Sync + 'static {
    /// The current status.
    fn status(&self) -> StateStatus;
}

/// Why an event was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum QuarantineReason {
    /// Its JSON is not one of the projection's events (this program's version does not know
    /// it, or the row is corrupt).
    Undecodable(String),
    /// [`Projection::apply`](super::Projection::apply) rejected it.
    Rejected(String),
    /// `apply` panicked on it.
    Panicked(String),
    /// The positions from the record's `position` through `through` are missing from the
    /// stream (rows deleted by hand): the follower went on past them. One record per range.
    Missing {
        /// The last missing position.
        through: u64,
    },
}

impl QuarantineReason {
    /// The kind, as stored: `undecodable`, `rejected`, `panicked` or `missing`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::Rejected(_) => "rejected",
            Self::Panicked(_) => "panicked",
            Self::Missing { .. } => "missing",
        }
    }

    /// The message, without the kind (for a missing range, its last position).
    pub fn message(&self) -> String {
        match self {
            Self::Undecodable(message) | Self::Rejected(message) | Self::Panicked(message) => {
                message.clone()
            }
            Self::Missing { through } => through.to_string(),
        }
    }

    /// The reason of a stored kind and message.
    pub(crate) fn from_stored(kind: &str, message: String) -> Self {
        match kind {
            "undecodable" => Self::Undecodable(message),
            "panicked" => Self::Panicked(message),
            "missing" => Self::Missing {
                through: message.parse().unwrap_or(0),
            },
            _ => Self::Rejected(message),
        }
    }
}

impl std::fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Undecodable(reason) => write!(f, "undecodable: {reason}"),
            Self::Rejected(reason) => write!(f, "rejected: {reason}"),
            Self::Panicked(reason) => write!(f, "apply panicked: {reason}"),
            Self::Missing { through } => write!(f, "missing from the stream through {through}"),
        }
    }
}

/// A stream event a projection set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Quarantined {
    /// The stream.
    pub stream: &'static str,
    /// The event's position.
    pub position: u64,
    /// Why.
    pub reason: QuarantineReason,
    /// The event's JSON (empty for missing ones).
    pub body: String,
    /// When this host set it aside.
    pub at: SystemTime,
}

/// What kept [`current_state`](super::StateService::current_state) from catching up
/// ([`Error::Unavailable`](crate::Error::Unavailable)).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UnavailableCause {
    /// A refresh was under way and had not finished when the time ran out (a slow or stalled
    /// database).
    #[error("the refresh did not finish in time")]
    Stalled,
    /// Refreshes were failing: the last error.
    #[error("refreshes fail: {0}")]
    Failing(Arc<crate::Error>),
    /// The service stopped.
    #[error("the state service stopped")]
    Stopped,
}

pub(crate) fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
