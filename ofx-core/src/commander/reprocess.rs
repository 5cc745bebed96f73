//! Reprocessing: an outermost command that failed for a transient reason (a serialization
//! failure, a deadlock, a busy database, a connection lost before its commit) runs again as a
//! whole, with a fresh context and operation items, a bounded number of times.
//!
//! A command is run again only when it certainly did not commit: after its main branch failed,
//! or after its scope reported it [not committed](crate::CommitOutcome::NotCommitted). A commit
//! in doubt ([`Error::CommitInDoubt`]) is never run again: the scope verified it already, and a
//! verified commit is a success. So a retried command's **main branch may run more than once,
//! its committed effects happen once**.
//!
//! Which errors are transient:
//! - an error wrapped in [`Transient`] anywhere in the handler's error chain ([`Error::transient`]);
//! - an error a classifier recognizes: storages add theirs when they attach (ofx-diesel:
//!   PostgreSQL `40001` and `40P01`, a connection closed or lost before `COMMIT`, SQLite
//!   `BUSY`/`LOCKED`), and [`HubBuilder::transient_if`](crate::HubBuilder::transient_if) adds
//!   the application's;
//! - never an error wrapped in [`Permanent`], which wins over everything else.

use std::time::Duration;

use crate::{Error, HandlerError};

/// How an outermost command that failed for a transient reason is run again. The default: at
/// most 3 tries in all, waiting 20 ms then 40 ms (each ±50 %, at most 1 s): transient conflicts
/// between concurrent transactions clear in milliseconds, and a caller waits for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReprocessPolicy {
    /// Tries in all, the first included (1: never run again).
    pub max_tries: u32,
    /// The wait before the second try; doubled for each next one.
    pub initial_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for ReprocessPolicy {
    fn default() -> Self {
        Self {
            max_tries: 3,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl ReprocessPolicy {
    /// Never run a command again.
    pub fn disabled() -> Self {
        Self {
            max_tries: 1,
            ..Self::default()
        }
    }

    /// At most `max_tries` tries in all, with the default waits.
    pub fn tries(max_tries: u32) -> Self {
        Self {
            max_tries: max_tries.max(1),
            ..Self::default()
        }
    }

    /// The wait before try `next` (2 for the first retry), ±50 %.
    pub(crate) fn delay(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(30);
        let delay = self
            .initial_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        // Saturating: a delay near `Duration::MAX` times the jitter would overflow.
        Duration::try_from_secs_f64(delay.as_secs_f64() * (0.5 + rand::random::<f64>()))
            .unwrap_or(Duration::MAX)
    }
}

/// Marks an error as transient: the outermost command that failed with it runs again (see the
/// [module](self)). Build it with [`Error::transient`], or return it from a handler whose error
/// type converts from it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Transient(pub HandlerError);

/// Marks an error as permanent: never retried, not by reprocessing and not as an event (an
/// event whose handler fails with it is dead at once). Wins over every transient mark and
/// classifier. Build it with [`Error::permanent`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Permanent(pub HandlerError);

/// Tells whether one error of a chain is transient (see
/// [`Hub::add_transient_classifier`](crate::Hub::add_transient_classifier)).
pub type TransientClassifier = fn(&(dyn std::error::Error + 'static)) -> bool;

impl Error {
    /// A handler error marked [`Transient`].
    pub fn transient<E: Into<Box<dyn std::error::Error + Send + Sync>>>(error: E) -> Self {
        Self::Handler(std::sync::Arc::new(Transient(std::sync::Arc::from(
            error.into(),
        ))))
    }

    /// A handler error marked [`Permanent`].
    pub fn permanent<E: Into<Box<dyn std::error::Error + Send + Sync>>>(error: E) -> Self {
        Self::Handler(std::sync::Arc::new(Permanent(std::sync::Arc::from(
            error.into(),
        ))))
    }

    /// Whether this error, or one in its chain, is marked [`Permanent`].
    pub fn is_permanent(&self) -> bool {
        self.chain().any(|link| link.is::<Permanent>())
    }

    /// Whether the error is transient by a mark or by one of `classifiers` (and not permanent).
    /// A commit in doubt never is.
    pub fn is_transient_by(&self, classifiers: &[TransientClassifier]) -> bool {
        if matches!(self, Self::CommitInDoubt { .. }) {
            return false;
        }
        let mut transient = false;
        for link in self.chain() {
            if link.is::<Permanent>() {
                return false;
            }
            transient = transient
                || link.is::<Transient>()
                || classifiers.iter().any(|classify| classify(link));
        }
        transient
    }

    /// The handler's or scope's error and its sources, each seen through the shared handler
    /// errors ([`HandlerError`]) that wrap them.
    fn chain(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let first: Option<&(dyn std::error::Error + 'static)> = match self {
            Self::Handler(error) | Self::Scope(error) => Some(&**error),
            _ => None,
        };
        std::iter::successors(first.map(unshared), |error| error.source().map(unshared))
    }
}

/// The error a [`HandlerError`] shares, when `error` is one. An error that carries an
/// [`Error`] as its source (a handler's error type wrapping what a nested call or
/// [`Error::transient`] returned) reaches the marked error through an `Arc`, whose own type
/// would hide it from `is::<Transient>()` and from the classifiers' downcasts.
fn unshared<'a>(
    mut error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    while let Some(shared) = error.downcast_ref::<HandlerError>() {
        error = &**shared;
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("busy")]
    struct Busy;

    #[test]
    fn marks_and_classifiers_decide() {
        assert!(Error::transient(Busy).is_transient_by(&[]));
        assert!(!Error::handler(Busy).is_transient_by(&[]));
        let busy: TransientClassifier = |error| error.is::<Busy>();
        assert!(Error::handler(Busy).is_transient_by(&[busy]));
        assert!(!Error::permanent(Busy).is_transient_by(&[busy]));
        assert!(Error::permanent(Busy).is_permanent());
        // Returned by a handler (wrapped again), or inside the handler's own error.
        assert!(Error::handler(Error::permanent(Busy)).is_permanent());
        assert!(Error::handler(Error::transient(Busy)).is_transient_by(&[]));
        #[derive(Debug, thiserror::Error)]
        #[error("the handler's error")]
        struct Own(#[source] Error);
        assert!(Error::handler(Own(Error::permanent(Busy))).is_permanent());
        assert!(Error::handler(Own(Error::handler(Busy))).is_transient_by(&[busy]));
        assert!(!Error::handler(Own(Error::handler(Busy))).is_permanent());
        let doubt = Error::CommitInDoubt {
            operation: uuid::Uuid::nil(),
            source: std::sync::Arc::new(Error::transient(Busy)),
        };
        assert!(!doubt.is_transient_by(&[busy]));
    }

    #[test]
    fn marks_and_classified_errors_are_seen_through_a_handler_error_that_wraps_them() {
        // What a handler returns when it passes on a nested call's error, or `Error::transient`
        // itself: the marked error is a source behind an `Arc`.
        let nested = Error::handler(Error::transient(Busy));
        assert!(nested.is_transient_by(&[]));
        let busy: TransientClassifier = |error| error.is::<Busy>();
        assert!(Error::handler(Error::handler(Busy)).is_transient_by(&[busy]));
        let permanent = Error::handler(Error::handler(Error::permanent(Busy)));
        assert!(permanent.is_permanent());
        assert!(!permanent.is_transient_by(&[busy]));
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = ReprocessPolicy::default();
        for _ in 0..100 {
            let first = policy.delay(2);
            assert!(first >= Duration::from_millis(10) && first <= Duration::from_millis(30));
            assert!(policy.delay(40) <= Duration::from_millis(1_500));
        }
    }
}
