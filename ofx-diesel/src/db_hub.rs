//! [`DbHub`]: one database's pool and settings, the door to the operation scope, the log reader
//! and the trimmer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ofx_core::{CommandContext, LogWatcher};

use crate::backend::Backend;
use crate::scope::{DbOperationScope, OperationConnection, ScopeState};
use crate::{Error, Result};
use std::future::Future;

/// Settings of a [`DbHub`]; every field has a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbSettings {
    /// Connections in the pool (default 8).
    pub pool_size: usize,
    /// Apply the embedded migrations when the hub opens (default true).
    pub migrate: bool,
    /// How often the log reader polls when the hub has no watcher, ±10 % jitter (default
    /// 500 ms).
    pub poll_period: Duration,
    /// How often the log reader polls when a watcher wakes it after commits, ±10 % jitter: the
    /// safety net for lost wake-ups (default 5 s).
    pub poll_period_with_watcher: Duration,
    /// Rows the reader reads per query (default 256).
    pub read_batch: i64,
    /// How long a reader waits for a row that a gap says may still commit (a transaction that
    /// took an index and has not committed yet); after it, the gap is given up (default 5 min).
    /// Operations whose transactions last longer than this may be missed by other hosts.
    pub gap_retention: Duration,
    /// A fresh reader starts at the rows logged this long before it started (default 3 s); older
    /// rows cannot concern a cache that is empty.
    pub start_offset: Duration,
    /// Operations older than this are trimmed (default 30 min).
    pub max_age: Duration,
    /// How often the trimmer runs, ±25 % jitter (default 5 min).
    pub trim_period: Duration,
    /// Rows the trimmer deletes per statement (default 4096).
    pub trim_batch: i64,
    /// How long commit verification (after a failed `COMMIT`) keeps asking whether the operation
    /// committed, before it reports the commit in doubt (default 3 s).
    pub commit_verification: Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            pool_size: 8,
            migrate: true,
            poll_period: Duration::from_millis(500),
            poll_period_with_watcher: Duration::from_secs(5),
            read_batch: 256,
            gap_retention: Duration::from_secs(5 * 60),
            start_offset: Duration::from_secs(3),
            max_age: Duration::from_secs(30 * 60),
            trim_period: Duration::from_secs(5 * 60),
            trim_batch: 4096,
            commit_verification: Duration::from_secs(3),
        }
    }
}

/// A hook called just before `COMMIT`, with the scope's connection: lets tests break the
/// connection at the worst moment. Not for production use.
pub type CommitFaultHook<B> = Arc<
    dyn for<'a> Fn(
            &'a mut <B as Backend>::Connection,
        ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>
        + Send
        + Sync,
>;

/// One database: its connection pool, its settings, and what the operation log does on it.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use ofx_diesel::{DbHub, DbSettings, Sqlite};
///
/// let db = DbHub::<Sqlite>::open("todos.db", DbSettings::default()).await?;
/// let hub = ofx_core::Hub::builder().filter(db.operation_scope()).build()?;
/// let _reader = db.start_log_reader(&hub);
/// # Ok(()) }
/// ```
pub struct DbHub<B: Backend> {
    pub(crate) inner: Arc<DbInner<B>>,
}

pub(crate) struct DbInner<B: Backend> {
    pub(crate) pool: B::Pool,
    pub(crate) url: String,
    pub(crate) settings: DbSettings,
    pub(crate) fault: std::sync::RwLock<Option<CommitFaultHook<B>>>,
    pub(crate) watcher: std::sync::RwLock<Option<Arc<dyn LogWatcher>>>,
}

impl<B: Backend> Clone for DbHub<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: Backend> fmt::Debug for DbHub<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbHub")
            .field("backend", &B::NAME)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> DbHub<B> {
    /// Opens the database at `url` (a file path for SQLite, a `postgres://` URL), applying the
    /// migrations if the settings say so.
    ///
    /// # Errors
    /// [`Error::Migration`] or [`Error::Connect`].
    pub async fn open(url: &str, settings: DbSettings) -> Result<Self> {
        if settings.migrate {
            B::migrate(url).await?;
        }
        let pool = B::pool(url, settings.pool_size.max(2))?;
        Ok(Self {
            inner: Arc::new(DbInner {
                pool,
                url: url.to_owned(),
                settings,
                fault: std::sync::RwLock::new(None),
                watcher: std::sync::RwLock::new(None),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &DbSettings {
        &self.inner.settings
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// A connection from the pool, outside any operation (for queries and tests).
    ///
    /// # Errors
    /// [`Error::Connect`] when no connection can be had.
    pub async fn connection(&self) -> Result<B::Pooled> {
        B::get(&self.inner.pool).await
    }

    /// The filter that makes every outermost command an operation on this database: add it to
    /// the hub with `HubBuilder::filter`. See [`DbOperationScope`].
    pub fn operation_scope(&self) -> DbOperationScope<B> {
        DbOperationScope::new(self.clone())
    }

    /// The connection of the running command's operation, in its transaction (begun by the
    /// first call). Every command of the operation, nested ones included, shares it; the scope
    /// commits it with the operation's row, or rolls it back. Drop the returned guard before
    /// calling a nested command: while it is held, asking again fails with
    /// [`Error::ConnectionInUse`].
    ///
    /// # Errors
    /// [`Error::NoScope`] outside a command run through [`operation_scope`](Self::operation_scope);
    /// [`Error::Connect`] or [`Error::Database`] if the transaction cannot begin.
    pub async fn operation_connection(
        &self,
        ctx: &CommandContext,
    ) -> Result<OperationConnection<B>> {
        let state = ctx
            .context_items()
            .get::<Arc<ScopeState<B>>>()
            .filter(|state| Arc::ptr_eq(&state.db, &self.inner))
            .ok_or(Error::NoScope)?;
        state.connection().await
    }

    /// Wakes other hosts' readers after every commit, and this host's reader when others
    /// commit, through `watcher` (see `ofx-watchers`); readers then poll only every
    /// [`poll_period_with_watcher`](DbSettings::poll_period_with_watcher), as a safety net.
    pub fn set_watcher(&self, watcher: Arc<dyn LogWatcher>) {
        *self
            .inner
            .watcher
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(watcher);
    }

    /// The watcher, if any.
    pub fn watcher(&self) -> Option<Arc<dyn LogWatcher>> {
        self.inner
            .watcher
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Installs (or with `None` removes) a hook run just before every `COMMIT`. For fault
    /// injection in tests.
    #[doc(hidden)]
    pub fn set_commit_fault(&self, hook: Option<CommitFaultHook<B>>) {
        *self
            .inner
            .fault
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
    }
}
