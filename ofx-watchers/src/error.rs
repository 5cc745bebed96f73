//! The errors of ofx-watchers.
//!
//! A watcher returns them only from its constructor. Once it runs, a failure is logged and
//! counted in its [`WatcherStats`](crate::WatcherStats) instead: sending is retried at the next
//! commit, and receiving reconnects with backoff.

#[cfg(feature = "fs")]
use std::path::PathBuf;
use std::time::Duration;

/// Why a watcher could not start, or why one step of its background work failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL failed: the URL could not be parsed, connecting failed, or `LISTEN` or
    /// `pg_notify` was refused. Check the URL, that the server runs, and that the user may
    /// connect to the database.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: cannot {action}: {source}")]
    Postgres {
        /// What was being done: `parse the URL`, `connect`, `LISTEN`, `send pg_notify`.
        action: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Redis failed: the URL could not be parsed, connecting failed (Redis 6 or later is needed
    /// for RESP3), or `SUBSCRIBE`, `PING` or `PUBLISH` was refused. Check the URL and that the
    /// server runs.
    #[cfg(feature = "redis")]
    #[error("Redis: cannot {action}: {source}")]
    Redis {
        /// What was being done: `parse the URL`, `connect`, `SUBSCRIBE`, `PING`, `PUBLISH`.
        action: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },

    /// The shared directory could not be watched: the operating system's watch limit was
    /// reached (on Linux, raise `fs.inotify.max_user_watches` / `max_user_instances`), or the
    /// directory vanished while the watch was being set up.
    #[cfg(feature = "fs")]
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The shared directory.
        path: PathBuf,
        /// The `notify` crate's error.
        #[source]
        source: notify::Error,
    },

    /// The shared directory or the log's file could not be created, read or written. Check that
    /// the path is a directory this process may write to.
    #[cfg(feature = "fs")]
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: `create`, `write`, `rename into`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The server did not answer in time: it is overloaded or unreachable.
    #[error("{action} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        action: &'static str,
        /// How long it was given.
        after: Duration,
    },

    /// The server closed the connection (it restarted, or an administrator ended the session).
    #[error("the {server} connection closed")]
    Closed {
        /// `PostgreSQL` or `Redis`.
        server: &'static str,
    },
}

/// `Result` with ofx-watchers' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
