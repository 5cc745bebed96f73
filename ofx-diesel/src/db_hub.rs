//! [`DbHub`]: one database's pool and settings, the door to the operation scope, the log reader
//! and the trimmer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ofx_core::{CommandContext, Hub, HubExtension, LogWatcher, LogWatcherFactory, ScopeFuture};

use crate::backend::Backend;
use crate::link::HubLink;
use crate::scope::{DbOperationScope, OperationConnection};
use crate::{Error, Result};

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
    /// The safety net for gaps (PostgreSQL, default 5 min). A reader closes a gap as soon as
    /// every log writer that was running when it found the gap has finished (see
    /// [`LogReader`](crate::LogReader#gaps)); transactions that never wrote to the log do not
    /// count. A gap older than this is given up anyway: an operation whose own transaction stays
    /// open longer than this after taking its index may then be missed by other hosts.
    pub gap_retention: Duration,
    /// How long a reader keeps retrying an operation whose replay failed for a reason that may
    /// pass (its service not attached yet), with capped backoff, before it counts it as failed
    /// (default 60 s). Rows after it are not held up meanwhile.
    pub replay_retry_window: Duration,
    /// Whether attaching the database to a hub starts its trimmer (default true).
    pub trim: bool,
    /// Whether attaching the database to a hub starts its log reader there (default true; a
    /// host that only writes, such as a command-line tool, may turn it off).
    pub read_log: bool,
    /// Operations older than this are trimmed (default 30 min).
    pub max_age: Duration,
    /// How often the trimmer runs, ±25 % jitter (default 5 min).
    pub trim_period: Duration,
    /// Rows the trimmer deletes per statement (default 4096).
    pub trim_batch: i64,
    /// How long commit verification (after a failed `COMMIT`) keeps asking whether the operation
    /// committed, before it reports the commit in doubt (default 3 s).
    pub commit_verification: Duration,
    /// PostgreSQL: run operations' transactions at the `SERIALIZABLE` isolation level (default
    /// false: the server's default, `READ COMMITTED`). A serialization failure (`40001`) is
    /// transient: the command runs again (see `ofx_core::commander::reprocess`). SQLite's
    /// transactions are serializable anyway.
    pub serializable: bool,
    /// Events with guaranteed delivery: processing, leases, retries, retention.
    pub events: crate::EventSettings,
    /// How often a hub that runs this database's log reader writes its row of `ofx_hosts`
    /// (its reader's position; see [`DbHub::hosts`]), ±10 % jitter; at start, then every
    /// period, and marked stopped when the hub shuts down (default 5 s; `None`: no heartbeat,
    /// no row).
    pub host_heartbeat: Option<Duration>,
    /// Rows of `ofx_hosts` whose heartbeat is older than this are deleted by the other hosts'
    /// heartbeats (hourly) and by [`DbHub::trim_hosts`] (default 7 days). Until then a silent
    /// host shows as stale.
    pub host_retention: Duration,
    /// This host's wall clock (the system's by default; see [`WallClock`](crate::WallClock)).
    /// Rows are stamped with it corrected to the database server's clock (PostgreSQL; measured
    /// when the database opens and at each heartbeat): operations' commit times, events' leases
    /// and retry times, the trimmer's cutoff. An event's first due time is the host's own.
    pub clock: crate::WallClock,
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
            replay_retry_window: Duration::from_secs(60),
            trim: true,
            read_log: true,
            max_age: Duration::from_secs(30 * 60),
            trim_period: Duration::from_secs(5 * 60),
            trim_batch: 4096,
            commit_verification: Duration::from_secs(3),
            serializable: false,
            events: crate::EventSettings::default(),
            host_heartbeat: Some(Duration::from_secs(5)),
            host_retention: Duration::from_secs(7 * 24 * 3600),
            clock: crate::WallClock::system(),
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
/// Added to a hub with [`HubBuilder::with`](ofx_core::HubBuilder::with), it starts, for that
/// hub, its watcher (if one was set), its log reader and its trimmer:
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use ofx_diesel::{DbHub, DbSettings, Sqlite};
///
/// let db = DbHub::<Sqlite>::open("todos.db", DbSettings::default()).await?;
/// // db.set_watcher(ofx_watchers::FsWatcher::factory(dir, "todos"))?;
/// let hub = ofx_core::Hub::builder().with(db.clone()).start().await?;
/// // handlers: `let mut conn = db.operation_connection(ctx).await?;`
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
    pub(crate) watcher: std::sync::RwLock<Option<Arc<dyn LogWatcherFactory>>>,
    /// Set once the database attached to a hub: a watcher set later would be ignored there.
    pub(crate) attached: AtomicBool,
    /// Tells this database apart from others on one hub.
    pub(crate) id: u64,
    /// `backend:url`, for errors.
    pub(crate) label: &'static str,
    /// The writer turn of a one-writer database (SQLite): one operation's transaction at a
    /// time in this process (see `DbOperationScope::begin`).
    pub(crate) writer: Arc<tokio::sync::Semaphore>,
    /// How far the database server's clock is ahead of this host's `settings.clock`, in µs
    /// (0 for an embedded database): measured at open and at each heartbeat.
    pub(crate) clock_offset: std::sync::atomic::AtomicI64,
}

impl<B: Backend> DbInner<B> {
    /// How far this host's clock ([`DbSettings::clock`]) is from the system clock, in µs: 0
    /// unless a test injects a skewed clock.
    pub(crate) fn clock_skew(&self) -> i64 {
        if self.settings.clock.is_system() {
            0
        } else {
            crate::row::micros(self.settings.clock.now())
                - crate::row::micros(std::time::SystemTime::now())
        }
    }

    /// The time to stamp rows with: this host's clock, corrected to the database server's.
    pub(crate) fn now(&self) -> std::time::SystemTime {
        let now = self.settings.clock.now();
        let offset = self.clock_offset.load(Ordering::Relaxed);
        let shift = Duration::from_micros(offset.unsigned_abs());
        if offset >= 0 {
            now + shift
        } else {
            now.checked_sub(shift)
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
    /// [`Error::Settings`] for settings that cannot work, [`Error::Migration`] or
    /// [`Error::Connect`].
    pub async fn open(url: &str, settings: DbSettings) -> Result<Self> {
        if settings.events.lease < crate::events::MIN_LEASE {
            return Err(Error::Settings(format!(
                "events.lease is {:?}; it must be at least {:?} (a claim must outlive a claim's round trip)",
                settings.events.lease,
                crate::events::MIN_LEASE
            )));
        }
        if settings.migrate {
            B::migrate(url).await?;
        }
        let pool = B::pool(url, settings.pool_size.max(2))?;
        let db = Self {
            inner: Arc::new(DbInner {
                pool,
                url: url.to_owned(),
                settings,
                fault: std::sync::RwLock::new(None),
                watcher: std::sync::RwLock::new(None),
                attached: AtomicBool::new(false),
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                // One small string per database opened, for error messages that must be
                // `'static` (`ofx_core::Error::ScopeConflict`).
                label: Box::leak(format!("{}:{url}", B::NAME).into_boxed_str()),
                writer: Arc::new(tokio::sync::Semaphore::new(1)),
                clock_offset: std::sync::atomic::AtomicI64::new(0),
            }),
        };
        // Best effort, and bounded (opening never waited for the server when not migrating): a
        // database that cannot be reached now is measured at the first heartbeat that reaches
        // it.
        let _ = tokio::time::timeout(Duration::from_secs(1), db.measure_clock()).await;
        Ok(db)
    }

    /// The time this host stamps rows with: its clock ([`DbSettings::clock`]), corrected to
    /// the database server's (PostgreSQL), so that hosts whose clocks disagree agree on leases
    /// and due times.
    pub(crate) fn now(&self) -> std::time::SystemTime {
        self.inner.now()
    }

    /// Measures how far the database server's clock is from this host's (half the round trip
    /// counted on each side), and corrects [`now`](Self::now) by it.
    pub(crate) async fn measure_clock(&self) -> Result<()> {
        let mut connection = self.connection().await?;
        let before = crate::row::micros(self.inner.settings.clock.now());
        let Some(server) = B::server_time(&mut connection).await? else {
            return Ok(());
        };
        let after = crate::row::micros(self.inner.settings.clock.now());
        let offset = server - before / 2 - after / 2;
        self.inner.clock_offset.store(offset, Ordering::Relaxed);
        Ok(())
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

    /// The connection of the running command's operation, in its transaction (begun by the
    /// first call, which makes this database the operation's scope). Every command of the
    /// operation, nested ones included, shares it; after the outermost command succeeded, the
    /// operation's row is inserted in it and it commits, or everything rolls back. Drop the
    /// returned guard before calling a nested command: while it is held, asking again fails
    /// with [`Error::ConnectionInUse`].
    ///
    /// A nested command's writes are kept in a savepoint taken when it first asks for the
    /// connection: if it fails, they are undone, even when the outer handler goes on. So nested
    /// commands that write run one after the other (not in a `tokio::join!`), and the
    /// transaction is the scope's: never run `COMMIT` or `ROLLBACK` on it yourself (a handler
    /// that ends it through the transaction manager is refused at commit).
    ///
    /// # Errors
    /// [`Error::NotAttached`] when this database was not added to the command's hub (with
    /// `HubBuilder::with`); [`Error::Scope`] in an invalidation branch, or when the operation
    /// already writes to another database (one operation commits to one database);
    /// [`Error::ConcurrentNestedWrites`] when another nested command of the operation, running
    /// at the same time, holds a savepoint; [`Error::Connect`] or [`Error::Database`] if the
    /// transaction or a savepoint cannot begin.
    pub async fn operation_connection(
        &self,
        ctx: &CommandContext,
    ) -> Result<OperationConnection<B>> {
        if self.existing_link(ctx.hub()).is_none() {
            return Err(Error::NotAttached);
        }
        let scope = self
            .scope_of(ctx, || DbOperationScope::new(Arc::clone(&self.inner)))
            .map_err(Error::Scope)?;
        scope.connection(ctx.nested_frames()).await
    }

    /// The operation's scope on this database, begun with `begin` if it has none.
    fn scope_of(
        &self,
        ctx: &CommandContext,
        begin: impl FnOnce() -> DbOperationScope<B>,
    ) -> ofx_core::Result<Arc<DbOperationScope<B>>> {
        let key = usize::try_from(self.inner.id).unwrap_or(usize::MAX);
        ctx.operation_scope(key, self.inner.label, || {
            let scope = Arc::new(begin());
            (Arc::clone(&scope), scope)
        })
    }

    /// Begins the scope of an operation that runs a claimed event: its transaction marks the
    /// event done (see [`EventProcessor`](crate::EventProcessor)).
    pub(crate) fn begin_event_scope(
        &self,
        ctx: &CommandContext,
        claim: crate::events::store::EventClaim,
    ) -> ofx_core::Result<()> {
        self.scope_of(ctx, || {
            DbOperationScope::completing(Arc::clone(&self.inner), claim)
        })
        .map(drop)
    }

    /// Notes that the running operation appended to `stream` up to `position`: once it
    /// commits, the call waits until this hub's state services following `stream` have it.
    pub(crate) fn mark_stream_appended(&self, ctx: &CommandContext, stream: &str, position: u64) {
        let link = self.existing_link(ctx.hub());
        let followers = link
            .as_ref()
            .map(|link| link.followers_of(stream))
            .unwrap_or_default();
        if let Ok(scope) = self.scope_of(ctx, || DbOperationScope::new(Arc::clone(&self.inner))) {
            scope.note_append(link, followers, position);
        }
    }

    /// The running operation's scope (begun if it was not).
    pub(crate) fn operation_scope(&self, ctx: &CommandContext) -> Result<Arc<DbOperationScope<B>>> {
        self.scope_of(ctx, || DbOperationScope::new(Arc::clone(&self.inner)))
            .map_err(Error::Scope)
    }

    /// Sets the watcher that wakes other hosts' readers after every commit, and this host's
    /// reader when others commit (see `ofx-watchers`). It is started for each hub this database
    /// attaches to, with the hub's host id and shutdown token; readers then poll only every
    /// [`poll_period_with_watcher`](DbSettings::poll_period_with_watcher), as a safety net.
    ///
    /// # Errors
    /// [`Error::AlreadyAttached`] once the database is attached to a hub (the watcher would be
    /// ignored there): set it before `HubBuilder::start`.
    pub fn set_watcher(&self, factory: impl LogWatcherFactory) -> Result<()> {
        let mut watcher = self
            .inner
            .watcher
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.inner.attached.load(Ordering::Acquire) {
            return Err(Error::AlreadyAttached);
        }
        *watcher = Some(Arc::new(factory));
        Ok(())
    }

    /// The watcher started for `hub`, if any.
    pub fn watcher_of(&self, hub: &Hub) -> Option<Arc<dyn LogWatcher>> {
        self.existing_link(hub)?.watcher()
    }

    /// What this database keeps on `hub`: its watcher, reader and cursor.
    pub(crate) fn link(&self, hub: &Hub) -> Arc<HubLink> {
        hub.attachment(&self.link_key(), HubLink::default)
    }

    pub(crate) fn existing_link(&self, hub: &Hub) -> Option<Arc<HubLink>> {
        hub.existing_attachment(&self.link_key())
    }

    fn link_key(&self) -> String {
        format!("ofx-diesel/{}", self.inner.id)
    }

    /// Attaches to `hub`: starts the watcher, the log reader and (if the settings say so) the
    /// trimmer. What [`HubBuilder::start`](ofx_core::HubBuilder::start) calls.
    async fn attach_to(&self, hub: &Hub) -> Result<()> {
        let factory = {
            let watcher = self
                .inner
                .watcher
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.inner.attached.store(true, Ordering::Release);
            watcher.clone()
        };
        let link = self.link(hub);
        if let Some(factory) = factory {
            let watcher = factory
                .start(hub.host_id().clone(), hub.shutdown_token())
                .await
                .map_err(Error::Watcher)?;
            // Forwarded to the reader and the event processor if they run here; state
            // services attach after the database and start the forwarding then.
            let consumes = self.settings().read_log || self.settings().events.process;
            link.set_watcher(watcher, hub.shutdown_token(), consumes);
        }
        hub.add_transient_classifier("ofx-diesel", crate::transient::is_transient);
        // An operation that added events but wrote nowhere stores them here (the first
        // database attached to the hub).
        let db = self.clone();
        hub.set_event_scope(Arc::new(move |ctx| {
            db.scope_of(ctx, || DbOperationScope::new(Arc::clone(&db.inner)))
                .map(drop)
        }));
        if self.settings().read_log {
            self.start_log_reader(hub).await?;
            if let Some(period) = self.settings().host_heartbeat {
                self.start_heartbeat(hub, period);
            }
        }
        if self.settings().events.process {
            self.start_event_processor(hub)?;
        }
        if self.settings().trim {
            link.set_trimmer(self.start_trimmer(hub.shutdown_token()));
        }
        Ok(())
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

impl<B: Backend> HubExtension for DbHub<B> {
    fn name(&self) -> &'static str {
        self.inner.label
    }

    fn attach<'a>(&'a self, hub: &'a Hub) -> ScopeFuture<'a, ofx_core::Result<()>> {
        Box::pin(async move {
            self.attach_to(hub)
                .await
                .map_err(|error| ofx_core::Error::Extension {
                    extension: self.inner.label,
                    source: Arc::new(error),
                })
        })
    }
}
