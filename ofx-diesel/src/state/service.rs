//! [`StateService`]: one projection, followed on one hub.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ofx_core::background::TaskHealth;
use ofx_core::computed::{ComputeMethodDescriptor, ComputeMethodOptions};
use ofx_core::{CommandContext, ComputeService, Hub, HubExtension, ScopeFuture, WeakHub};
use tokio::sync::{Notify, watch};

use super::apply::{Failed, apply_batch};
use super::projection::Projection;
use super::rows::NewStreamRow;
use super::settings::{SnapshotStorage, StateSettings};
use super::snapshot::{Store, to_i64};
use super::status::{Quarantined, StateStatus, StatusSource, UnavailableCause, seconds};
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::micros;
use crate::{Error, Result};

/// A projection of a stream, followed on one hub (one host): see the [module](super) docs.
///
/// Add it to its hub after its database, once per hub:
///
/// ```no_run
/// # use ofx_diesel::state::{Projection, Rejection};
/// # struct Counter;
/// # impl Projection for Counter {
/// #     type Event = u64; type State = u64;
/// #     const NAME: &'static str = "counter"; const VERSION: u32 = 1;
/// #     fn initial(&self) -> u64 { 0 }
/// #     fn apply(&self, s: &mut u64, e: u64, _: u64) -> Result<(), Rejection> { *s += e; Ok(()) }
/// # }
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use ofx_diesel::{DbHub, DbSettings, Sqlite};
/// use ofx_diesel::state::StateService;
///
/// let db = DbHub::<Sqlite>::open("app.db", DbSettings::default()).await?;
/// let counter = StateService::new(&db, Counter);
/// let hub = ofx_core::Hub::builder().with(db.clone()).with(counter.clone()).start().await?;
/// counter.ready().await?;
/// let view = counter.current_state().await?;
/// println!("{} at position {}", *view, view.position);
/// # Ok(()) }
/// ```
pub struct StateService<P: Projection, B: Backend> {
    pub(crate) inner: Arc<Inner<P, B>>,
}

impl<P: Projection, B: Backend> Clone for StateService<P, B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: Projection, B: Backend> fmt::Debug for StateService<P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateService")
            .field("projection", &P::NAME)
            .field("version", &P::VERSION)
            .field("stream", &P::STREAM)
            .field("backend", &B::NAME)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<P: Projection, B: Backend> {
    pub(crate) projection: P,
    pub(crate) db: DbHub<B>,
    pub(crate) settings: StateSettings,
    pub(crate) snapshots: Option<Store<B>>,
    /// The state readers get, its position and readiness; replaced per applied batch.
    pub(crate) published: watch::Sender<Published<P::State>>,
    pub(crate) status: Mutex<StatusData>,
    pub(crate) quarantine: Mutex<VecDeque<Quarantined>>,
    pub(crate) quarantined: AtomicU64,
    /// Wakes the follower.
    pub(crate) wake: Notify,
    /// The number of the last refresh that started (see `current_state_within`).
    pub(crate) refresh_started: AtomicU64,
    pub(crate) hub: OnceLock<WeakHub>,
    pub(crate) attached: AtomicBool,
    /// Set while a background snapshot save runs.
    pub(crate) saving: AtomicBool,
    /// Held while a snapshot is encoded and stored: saves of this host never overlap, so an
    /// older one never lands over a newer one.
    pub(crate) save_lock: tokio::sync::Mutex<()>,
    pub(crate) health: Arc<TaskHealth>,
    /// Tells state services apart in the hub's cache (the dependency of what reads them).
    pub(crate) id: u64,
}

/// What the follower publishes.
pub(crate) struct Published<S> {
    pub(crate) state: Arc<S>,
    pub(crate) position: u64,
    pub(crate) ready: bool,
    /// The number of the last refresh that reached the stream's head.
    pub(crate) refreshed: u64,
    pub(crate) stopped: bool,
    /// The identity of the event at `position` (what a snapshot of this state checks).
    pub(crate) anchor: Option<super::snapshot::Anchor>,
    /// The position up to which what read the state was invalidated (follows `position`).
    pub(crate) invalidated: u64,
}

/// What the status reports beside the published state.
#[derive(Default)]
pub(crate) struct StatusData {
    pub(crate) head: u64,
    /// The start of the last refresh that reached the head.
    pub(crate) caught_up_at: Option<Instant>,
    pub(crate) last_refresh: Option<Instant>,
    pub(crate) last_error: Option<Arc<Error>>,
    pub(crate) replaying: bool,
    pub(crate) caught_up: bool,
    pub(crate) loaded_snapshot: Option<u64>,
    pub(crate) saved_snapshot: Option<u64>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The compute method every read of a state service calls: its value is invalidated when the
/// state advances, and with it every compute method that read the state.
static ADVANCED: ComputeMethodDescriptor =
    ComputeMethodDescriptor::new("StateService::advanced", ComputeMethodOptions::DEFAULT);

struct Tracker {
    hub: Hub,
}

impl ComputeService for Tracker {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// A state as a read returned it: the state (an immutable snapshot, `Deref`s to it), its
/// position in the stream, and how far behind the stream's head this host knows it is.
#[derive(Debug)]
#[non_exhaustive]
pub struct StateView<S> {
    /// The state.
    pub state: Arc<S>,
    /// The position of the last event applied to it (0: none).
    pub position: u64,
    /// The stream's head as last seen by this host.
    pub head: u64,
    /// `head - position`.
    pub lag_events: u64,
    /// It holds every append committed before `now - lag` (see
    /// [`StateStatus::lag_seconds`]).
    pub lag: Duration,
}

impl<S> Clone for StateView<S> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            position: self.position,
            head: self.head,
            lag_events: self.lag_events,
            lag: self.lag,
        }
    }
}

impl<S> Deref for StateView<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.state
    }
}

/// The events a [`transaction`](StateService::transaction)'s decision appends.
#[derive(Debug)]
pub struct Appends<E> {
    events: Vec<E>,
}

impl<E> Appends<E> {
    /// Appends `event` after the others.
    pub fn push(&mut self, event: E) {
        self.events.push(event);
    }

    /// The events so far.
    pub fn events(&self) -> &[E] {
        &self.events
    }
}

/// What a [`transaction`](StateService::transaction) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended<T> {
    /// What the decision returned.
    pub output: T,
    /// The positions of the events appended (empty when it appended none); they exist once the
    /// command's operation commits.
    pub positions: std::ops::RangeInclusive<u64>,
    /// The state's position the decision saw.
    pub decided_at: u64,
    /// How many times the decision ran (more than one after conflicts).
    pub attempts: u32,
}

impl<P: Projection, B: Backend> StateService<P, B> {
    /// A state service of `projection` over `db`, with the default settings. Add it to a hub
    /// (after `db`) to start it.
    pub fn new(db: &DbHub<B>, projection: P) -> Self {
        Self::with_settings(db, projection, StateSettings::default())
    }

    /// A state service with these settings.
    pub fn with_settings(db: &DbHub<B>, projection: P, settings: StateSettings) -> Self {
        let snapshots = match &settings.snapshots {
            SnapshotStorage::None => None,
            SnapshotStorage::Table => Some(Store::Table(db.clone())),
            SnapshotStorage::Directory(dir) => Some(Store::Directory(dir.clone())),
        };
        let initial = projection.initial();
        let (published, _) = watch::channel(Published {
            state: Arc::new(initial),
            position: 0,
            ready: false,
            refreshed: 0,
            stopped: false,
            anchor: None,
            invalidated: 0,
        });
        Self {
            inner: Arc::new(Inner {
                projection,
                db: db.clone(),
                settings,
                snapshots,
                published,
                status: Mutex::new(StatusData::default()),
                quarantine: Mutex::new(VecDeque::new()),
                quarantined: AtomicU64::new(0),
                wake: Notify::new(),
                refresh_started: AtomicU64::new(0),
                hub: OnceLock::new(),
                attached: AtomicBool::new(false),
                saving: AtomicBool::new(false),
                save_lock: tokio::sync::Mutex::new(()),
                health: TaskHealth::new(),
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.inner.projection
    }

    /// The settings.
    pub fn settings(&self) -> &StateSettings {
        &self.inner.settings
    }

    /// The follower task's health (running, stopped, crashed).
    pub fn health(&self) -> Arc<TaskHealth> {
        Arc::clone(&self.inner.health)
    }

    /// Whether the initial catch-up finished: reads succeed.
    pub fn is_ready(&self) -> bool {
        self.inner.published.borrow().ready
    }

    /// Waits until the service is ready (see the [module](super#readiness) docs). Wrap it in
    /// a timeout: it waits as long as the initial load keeps failing.
    ///
    /// # Errors
    /// [`Error::StateStopped`] when the service stops first.
    pub async fn ready(&self) -> Result<()> {
        let mut receiver = self.inner.published.subscribe();
        let stopped = receiver
            .wait_for(|published| published.ready || published.stopped)
            .await
            .map(|published| !published.ready)
            .unwrap_or(true);
        if stopped {
            return Err(Error::StateStopped {
                projection: P::NAME,
            });
        }
        Ok(())
    }

    /// What this host has: never fails once the service is ready, never waits for the
    /// database. Inside a compute method, the method is invalidated when the state advances.
    ///
    /// # Errors
    /// [`Error::NotReady`] before the initial catch-up.
    pub async fn local_state(&self) -> Result<StateView<P::State>> {
        self.track().await;
        self.view()
    }

    /// The state as of the stream's head at the call, from any host (with
    /// [`StateSettings::current_timeout`]); see
    /// [`current_state_within`](Self::current_state_within).
    ///
    /// # Errors
    /// As [`current_state_within`](Self::current_state_within).
    pub async fn current_state(&self) -> Result<StateView<P::State>> {
        self.current_state_within(self.inner.settings.current_timeout)
            .await
    }

    /// The state once it has caught up with the stream's head as of this call: it reflects
    /// every append committed before the call, from any host. Waits for one refresh that
    /// started after the call (concurrent calls share it). Inside a compute method, the
    /// method is invalidated when the state advances.
    ///
    /// # Errors
    /// [`Error::NotReady`] before the initial catch-up; [`Error::Unavailable`] when the
    /// refresh did not finish within `timeout` (the database is slow, stalled or failing:
    /// [`local_state`](Self::local_state) still answers).
    pub async fn current_state_within(&self, timeout: Duration) -> Result<StateView<P::State>> {
        self.track().await;
        if !self.is_ready() {
            return Err(Error::NotReady {
                projection: P::NAME,
            });
        }
        // Every refresh numbered above this one starts after this point.
        let after = self.inner.refresh_started.load(Ordering::SeqCst);
        self.inner.wake.notify_one();
        let mut receiver = self.inner.published.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            receiver.wait_for(|published| published.refreshed > after || published.stopped),
        )
        .await;
        match waited {
            Ok(Ok(published)) if !published.stopped => {
                drop(published);
                self.view()
            }
            Ok(_) => Err(self.unavailable(timeout, UnavailableCause::Stopped)),
            Err(_) => {
                let cause = match self.status_data().last_error.clone() {
                    Some(error) => UnavailableCause::Failing(error),
                    None => UnavailableCause::Stalled,
                };
                Err(self.unavailable(timeout, cause))
            }
        }
    }

    fn unavailable(&self, timeout: Duration, cause: UnavailableCause) -> Error {
        Error::Unavailable {
            projection: P::NAME,
            timeout,
            cause,
        }
    }

    /// The published state as a view.
    fn view(&self) -> Result<StateView<P::State>> {
        let (state, position, ready) = {
            let published = self.inner.published.borrow();
            (
                Arc::clone(&published.state),
                published.position,
                published.ready,
            )
        };
        if !ready {
            return Err(Error::NotReady {
                projection: P::NAME,
            });
        }
        let (head, lag) = {
            let status = self.status_data();
            (status.head.max(position), lag_of(&status))
        };
        Ok(StateView {
            state,
            position,
            head,
            lag_events: head - position,
            lag,
        })
    }

    /// Registers the calling computation (if any) as a dependent of this state.
    async fn track(&self) {
        let Some(hub) = self.inner.hub.get().and_then(WeakHub::upgrade) else {
            return;
        };
        let tracker = Tracker { hub };
        ofx_core::computed::compute(&tracker, &ADVANCED, self.inner.id, None, |_| async {}).await;
    }

    /// Decides and appends, in the running command's operation: `decide` gets the state as of
    /// the stream's head (this host's state plus what the stream has beyond it, read in the
    /// command's transaction, appends of this operation included) and pushes the events to
    /// append; they are inserted at the next positions in the command's transaction, and
    /// exist once its operation commits, with its other writes. When concurrent appends took
    /// those positions first, `decide` runs again on the newer state (at most
    /// [`StateSettings::max_append_attempts`] times): keep it free of side effects.
    ///
    /// Returns what `decide` returned, with the positions appended. An `Err` from `decide`
    /// appends nothing (and fails the command if the handler returns it).
    ///
    /// # Errors
    /// `decide`'s error; [`Error::NotReady`] before the initial catch-up;
    /// [`Error::AppendConflict`] after too many conflicts; [`Error::Json`] when an event does
    /// not serialize; [`Error::PayloadTooLarge`] for an event over
    /// [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES) as JSON; the errors of [`DbHub::operation_connection`] (outside a command's main
    /// branch, or on a hub the database is not attached to).
    pub async fn transaction<T, E, F>(
        &self,
        ctx: &CommandContext,
        mut decide: F,
    ) -> std::result::Result<Appended<T>, E>
    where
        F: FnMut(&P::State, &mut Appends<P::Event>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        if !self.is_ready() {
            return Err(Error::NotReady {
                projection: P::NAME,
            }
            .into());
        }
        let attempts = self.inner.settings.max_append_attempts.max(1);
        let operation = ctx.operation_id().to_string();
        for attempt in 1..=attempts {
            let (state, position) = self.state_at_head(ctx).await?;
            let mut appends = Appends { events: Vec::new() };
            let output = decide(&state, &mut appends)?;
            if appends.events.is_empty() {
                return Ok(Appended {
                    output,
                    positions: position + 1..=position,
                    decided_at: position,
                    attempts: attempt,
                });
            }
            let bodies = appends
                .events
                .iter()
                .map(serde_json::to_string)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(Error::Json)?;
            if let Some(size) = bodies
                .iter()
                .map(String::len)
                .find(|size| *size > crate::MAX_PAYLOAD_BYTES)
            {
                return Err(Error::PayloadTooLarge {
                    operation: ctx.operation_id(),
                    size,
                    limit: crate::MAX_PAYLOAD_BYTES,
                }
                .into());
            }
            let first = position + 1;
            let last = position + bodies.len() as u64;
            let now = micros(SystemTime::now());
            let rows: Vec<NewStreamRow<'_>> = bodies
                .iter()
                .zip(first..)
                .map(|(body, at)| NewStreamRow {
                    stream: P::STREAM,
                    position: to_i64(at),
                    body,
                    operation_uuid: &operation,
                    appended_at: now,
                })
                .collect();
            let mut connection = self.inner.db.operation_connection(ctx).await?;
            let inserted = B::append_stream(&mut connection, &rows).await?;
            if inserted.len() == rows.len() {
                drop(connection);
                self.inner.db.mark_stream_appended(ctx, P::STREAM, last);
                return Ok(Appended {
                    output,
                    positions: first..=last,
                    decided_at: position,
                    attempts: attempt,
                });
            }
            if !inserted.is_empty() {
                // Only a partly conflicting append gets here: take its own rows back.
                B::delete_stream_positions(&mut connection, P::STREAM, &inserted).await?;
            }
            drop(connection);
            tracing::debug!(
                projection = P::NAME,
                stream = P::STREAM,
                attempt,
                "append conflicted with a concurrent append; deciding again"
            );
            self.inner.wake.notify_one();
        }
        Err(Error::AppendConflict {
            stream: P::STREAM.to_owned(),
            attempts,
        }
        .into())
    }

    /// The state as of the stream's head seen by the command's transaction.
    async fn state_at_head(&self, ctx: &CommandContext) -> Result<(Arc<P::State>, u64)> {
        let mut connection = self.inner.db.operation_connection(ctx).await?;
        B::lock_for_append(
            &mut connection,
            P::STREAM,
            self.inner.settings.queue_appends,
        )
        .await?;
        let head = u64::try_from(B::stream_head(&mut connection, P::STREAM).await?).unwrap_or(0);
        let (mut state, mut position) = {
            let published = self.inner.published.borrow();
            (Arc::clone(&published.state), published.position)
        };
        // Rows committed since this host's last refresh, and this operation's own appends,
        // are visible to its transaction only: apply them to a copy.
        while position < head {
            let rows = B::read_stream(
                &mut connection,
                P::STREAM,
                to_i64(position),
                to_i64(head),
                self.inner.settings.read_batch.max(1),
            )
            .await?;
            if rows.is_empty() {
                break;
            }
            let applied = apply_batch(&self.inner.projection, &state, position, &rows);
            state = Arc::new(applied.state);
            position = applied.position;
        }
        if position < head {
            // The positions up to `head` are not all there (deleted by hand): decide at the
            // head, appending after it.
            position = head;
        }
        drop(connection);
        Ok((state, position))
    }

    /// The status (see [`StateStatus`]).
    pub fn status(&self) -> StateStatus {
        // The status lock first, then the state (as the follower takes them).
        let status = self.status_data();
        let (position, ready) = {
            let published = self.inner.published.borrow();
            (published.position, published.ready)
        };
        let head = status.head.max(position);
        StateStatus {
            projection: P::NAME,
            version: P::VERSION,
            stream: P::STREAM,
            ready,
            position,
            head,
            lag_events: head - position,
            lag_seconds: status.caught_up_at.map(|at| seconds(at.elapsed())),
            caught_up: status.caught_up && head == position,
            replaying: status.replaying,
            last_error: status.last_error.as_ref().map(|error| error.to_string()),
            last_refresh_age_seconds: status.last_refresh.map(|at| seconds(at.elapsed())),
            quarantined: self.inner.quarantined.load(Ordering::Relaxed),
            loaded_snapshot: status.loaded_snapshot,
            saved_snapshot: status.saved_snapshot,
        }
    }

    /// The events this host quarantined (the last
    /// [`quarantine_memory`](StateSettings::quarantine_memory) of them), oldest first.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        lock(&self.inner.quarantine).iter().cloned().collect()
    }

    /// The events any host quarantined for this projection and version, from the
    /// `ofx_state_quarantine` table (at most `limit`), by position. Their `body` is empty (the
    /// stream keeps it).
    ///
    /// # Errors
    /// A database error.
    pub async fn stored_quarantine(&self, limit: i64) -> Result<Vec<Quarantined>> {
        let mut connection = self.inner.db.connection().await?;
        let rows =
            B::list_quarantine(&mut connection, P::NAME, i64::from(P::VERSION), limit).await?;
        Ok(rows
            .into_iter()
            .map(|row| Quarantined {
                stream: P::STREAM,
                position: u64::try_from(row.position).unwrap_or(0),
                reason: super::status::QuarantineReason::from_stored(&row.kind, row.reason),
                body: String::new(),
                at: std::time::UNIX_EPOCH
                    + Duration::from_micros(u64::try_from(row.quarantined_at).unwrap_or(0)),
            })
            .collect())
    }

    /// Saves a snapshot of the local state now (the follower also does, see
    /// [`StateSettings::snapshot_every`]); returns its position, `None` when the service has
    /// no snapshot storage or is not ready. Waits for a save of the follower in progress;
    /// when this host already saved the state at its position, stores nothing again. A save
    /// of this host never lands over a newer one of this host.
    ///
    /// # Errors
    /// A database or I/O error.
    pub async fn save_snapshot(&self) -> Result<Option<u64>> {
        super::follower::save_snapshot(&self.inner).await
    }

    pub(crate) fn status_data(&self) -> MutexGuard<'_, StatusData> {
        lock(&self.inner.status)
    }

    pub(crate) fn record_failed(inner: &Inner<P, B>, failed: Vec<Failed>) {
        if failed.is_empty() {
            return;
        }
        let mut quarantine = lock(&inner.quarantine);
        for failed in failed {
            tracing::error!(
                projection = P::NAME,
                stream = P::STREAM,
                position = failed.position,
                reason = %failed.reason,
                "stream event quarantined; the projection goes on without it"
            );
            inner.quarantined.fetch_add(1, Ordering::Relaxed);
            quarantine.push_back(Quarantined {
                stream: P::STREAM,
                position: failed.position,
                reason: failed.reason,
                body: failed.body,
                at: SystemTime::now(),
            });
            while quarantine.len() > inner.settings.quarantine_memory {
                quarantine.pop_front();
            }
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lag_of(status: &StatusData) -> Duration {
    match status.caught_up_at {
        Some(at) => at.elapsed(),
        None => Duration::MAX,
    }
}

impl<P: Projection, B: Backend> Inner<P, B> {
    /// Invalidates what read the state (after a new state was published), then says so.
    pub(crate) fn invalidate_readers(&self) {
        let position = self.published.borrow().position;
        if let Some(hub) = self.hub.get().and_then(WeakHub::upgrade) {
            let tracker = Tracker { hub };
            ofx_core::computed::invalidate::<Tracker, u64, ()>(&tracker, &ADVANCED, &self.id);
        }
        self.published
            .send_modify(|published| published.invalidated = published.invalidated.max(position));
    }
}

/// A state service as the operation scope sees it: after a commit that appended to its
/// stream, the call waits until the local state has the appends (read-your-writes).
pub(crate) trait StreamFollower: Send + Sync + 'static {
    /// The stream followed.
    fn stream(&self) -> &'static str;

    /// Wakes the follower and waits (at most the current-state timeout) until the state has
    /// `position` and what read it before was invalidated.
    fn catch_up_to(&self, position: u64) -> ScopeFuture<'_, ()>;
}

impl<P: Projection, B: Backend> StreamFollower for Inner<P, B> {
    fn stream(&self) -> &'static str {
        P::STREAM
    }

    fn catch_up_to(&self, position: u64) -> ScopeFuture<'_, ()> {
        Box::pin(async move {
            self.wake.notify_one();
            if lock(&self.status).last_error.is_some() {
                // Its refreshes fail: waiting would only delay the call by the timeout.
                return;
            }
            let mut receiver = self.published.subscribe();
            let timeout = self.settings.current_timeout;
            let waited = tokio::time::timeout(
                timeout,
                receiver
                    .wait_for(|published| published.invalidated >= position || published.stopped),
            )
            .await;
            if waited.is_err() {
                tracing::warn!(
                    projection = P::NAME,
                    position,
                    ?timeout,
                    "the local state did not reach a committed append in time; the call returns without it"
                );
            }
        })
    }
}

impl<P: Projection, B: Backend> From<StateService<P, B>> for Arc<dyn StatusSource> {
    fn from(service: StateService<P, B>) -> Self {
        Arc::new(service)
    }
}

impl<P: Projection, B: Backend> StatusSource for StateService<P, B> {
    fn status(&self) -> StateStatus {
        StateService::status(self)
    }
}

impl<P: Projection, B: Backend> HubExtension for StateService<P, B> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn attach<'a>(&'a self, hub: &'a Hub) -> ScopeFuture<'a, ofx_core::Result<()>> {
        Box::pin(async move {
            let refuse = |reason: &'static str| ofx_core::Error::Extension {
                extension: P::NAME,
                source: Arc::new(Error::StateAttach {
                    projection: P::NAME,
                    reason,
                }),
            };
            let Some(link) = self.inner.db.existing_link(hub) else {
                return Err(refuse(
                    "its database is not attached to this hub: add the DbHub with `HubBuilder::with` before the state service",
                ));
            };
            if self.inner.attached.swap(true, Ordering::AcqRel) {
                return Err(refuse(
                    "it is attached to a hub already: create one state service per hub",
                ));
            }
            let _ = self.inner.hub.set(hub.downgrade());
            let follower: Arc<dyn StreamFollower> = self.inner.clone();
            link.register_follower(Arc::downgrade(&follower));
            super::follower::start(Arc::clone(&self.inner), hub, link.stream_wakes());
            Ok(())
        })
    }
}
