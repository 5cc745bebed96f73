//! # ofx-watchers
//!
//! Wake-up signals between the hosts that share one ofx operation log: implementations of
//! [`ofx_core::LogWatcher`], which a log reader is given as a trait object.
//!
//! A log reader polls the log on a period; a watcher cuts the delay. The host that committed
//! calls [`LogWatcher::notify`] after its commit, and the watchers of the other hosts notify
//! their [`wakes`](LogWatcher::wakes), on which the readers wait next to their poll timer.
//! A lost wake-up only delays the other hosts until their next poll.
//!
//! A wake-up also carries the committed operation as a **hint** when the commit path gives it
//! ([`LogWatcher::notify_committed`], which ofx-diesel's operation scope calls) and it fits:
//! the other hosts' readers replay it as soon as it arrives, without reading the log first
//! (see [`ofx_core::watcher`]). The log stays the record: a hint lost or left out changes only
//! the delay. A watcher's channel is trusted as the log is: whoever can send on it can make the
//! other hosts invalidate (never run a command's main branch).
//!
//! ## Concepts
//!
//! | concept | what it is |
//! |---|---|
//! | message | what [`notify`](LogWatcher::notify) sends: the sending host's [`HostId`](ofx_core::HostId) (so a watcher ignores its own), then one line per hint: each operation given to `notify_committed` since the last message, as JSON, while the message stays under 7,600 bytes (PostgreSQL's `NOTIFY` limit is 8,000); the rest go without their hint (counted as `hints_omitted`). |
//! | hints | the receiving side hands each hint to [`hints`](LogWatcher::hints)`()` (the reader's replayer runs it there, or it waits in a bounded queue) before it wakes the host. |
//! | coalescing | `notify` returns at once; a background task sends. At most one message is in flight and one more pending: a burst of commits becomes one or two messages. |
//! | wake | [`wakes`](LogWatcher::wakes)`()` is a [`tokio::sync::Notify`] notified with `notify_one` (a wake-up that arrives while the reader is busy is kept for its next wait). Give it to one reader. |
//! | reconnect | when the connection (or the directory watch) is lost, the watcher re-establishes it with capped, jittered backoff (100 ms doubling to 10 s, ±25%; back to 100 ms once a connection lasted 1 s), then wakes its host once, since messages sent meanwhile were lost. |
//! | stop | each watcher's background tasks end when the [`CancellationToken`](tokio_util::sync::CancellationToken) given to its constructor is cancelled, or when the watcher is dropped. |
//! | stats | [`WatcherStats`]: messages sent, received, own ones ignored, reconnections and failures, for tests and monitoring. |
//!
//! ## Watchers
//!
//! | watcher | feature | how |
//! |---|---|---|
//! | `FsWatcher` | `fs` | rewrites `<dir>/<log name>.ofx-log` with the message; the others watch the directory (inotify, FSEvents, ReadDirectoryChangesW). For hosts on one machine, or a shared local volume. |
//! | `PgWatcher` | `postgres` | `pg_notify` after the commit, `LISTEN` on a dedicated connection. |
//! | `RedisWatcher` | `redis` | `PUBLISH` after the commit, `SUBSCRIBE` on a dedicated RESP3 connection (Redis 6 or later). |
//!
//! ## Example
//!
//! ```
//! # #[cfg(feature = "fs")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ofx_watchers::Error> {
//! use ofx_core::{HostId, LogWatcher};
//! use ofx_watchers::FsWatcher;
//! use tokio_util::sync::CancellationToken;
//!
//! let dir = std::env::temp_dir().join(format!("ofx-doc-lib-{}", std::process::id()));
//! let stop = CancellationToken::new();
//! // Two hosts sharing the log "orders".
//! let a = FsWatcher::start(&dir, "orders", HostId::new(), stop.clone()).await?;
//! let b = FsWatcher::start(&dir, "orders", HostId::new(), stop.clone()).await?;
//!
//! let woken = b.wakes();
//! a.notify(); // a committed
//! woken.notified().await; // b's log reader reads now
//! assert!(b.stats().snapshot().received >= 1);
//!
//! stop.cancel(); // ends both watchers' background tasks
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! # #[cfg(not(feature = "fs"))]
//! # fn main() {}
//! ```
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `fs` | yes | `FsWatcher`, over the `notify` crate and tokio's `fs` |
//! | `postgres` | no | `PgWatcher`, over `tokio-postgres` (no TLS) |
//! | `redis` | no | `RedisWatcher`, over the `redis` crate on tokio |
//!
//! ## Requirements
//!
//! The constructors are `async` and must run on a tokio runtime (with the time driver, and I/O
//! for PostgreSQL and Redis): the background tasks are spawned on it.

// Without a watcher feature there is nothing to use the shared parts.
#![cfg_attr(
    not(any(feature = "fs", feature = "postgres", feature = "redis")),
    allow(dead_code)
)]

mod backoff;
mod error;
mod factory;
mod shared;
mod stats;

#[cfg(feature = "fs")]
mod fs;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

pub use error::{Error, Result};
pub use factory::{StartWatcher, WatcherFactory};
pub use ofx_core::LogWatcher;
pub use stats::{NOTIFICATIONS_SENT, RECONNECTS, StatsSnapshot, WAKEUPS, WatcherStats};

#[cfg(feature = "fs")]
pub use fs::FsWatcher;
#[cfg(feature = "postgres")]
pub use postgres::PgWatcher;
#[cfg(feature = "redis")]
pub use redis::RedisWatcher;
