//! [`Hub`]: one host's runtime.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::any::{Any, TypeId};
use std::sync::Weak;

use tokio_util::sync::CancellationToken;

use crate::command::CommandContext;
use crate::command::ServiceHandlers;
use crate::command::handler::{ErasedService, HandlerEntry, HandlerFns};
use crate::commander::{CommandFilter, Commander, ReprocessPolicy, TransientClassifier, pipeline};
use crate::computed::Registry;
use crate::event::{HubEvent, HubEventListener};
use crate::extension::HubExtension;
use crate::operation::{AfterCommitHook, CompletionListener, OperationCompletionNotifier};
use crate::{Error, HostId, Service};

/// How many computed values a hub caches unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// One host's runtime: its [`HostId`], its cache of computed values, its services and the
/// [`Commander`] that runs commands on them.
///
/// A `Hub` is a cheap handle (an `Arc`): services keep a clone. Two hubs in one process are two
/// hosts, with separate caches. Background work started by a hub stops when its last handle is
/// dropped.
///
/// ```
/// use ofx_core::Hub;
///
/// let hub = Hub::builder().capacity(10_000).build()?;
/// let other = Hub::new()?;
/// assert_ne!(hub.host_id(), other.host_id());
/// assert_eq!(hub.capacity(), 10_000);
/// # Ok::<(), ofx_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    host_id: HostId,
    registry: Registry,
    versions: AtomicU64,
    /// The operation log position replayed through (-1: none yet); see `Hub::log_position`.
    log_position: AtomicI64,
    /// Notified when `log_position` moves forward; see `Hub::log_position_reached`.
    log_position_moved: tokio::sync::Notify,
    /// The highest log position of an operation replayed from a hint (-1: none yet); see
    /// `Hub::hinted_position`.
    hinted_position: AtomicI64,
    shutdown: CancellationToken,
    /// The command handlers of the services added with `add_service`, by command type.
    handlers: papaya::HashMap<TypeId, HandlerEntry, foldhash::fast::RandomState>,
    /// The services added with `add_service`, by type: what consolidating compute methods
    /// recompute with.
    services: papaya::HashMap<TypeId, std::sync::Weak<dyn Any + Send + Sync>>,
    /// Held while a service is added, so that its handlers are checked and added together.
    adding: Mutex<()>,
    filters: Vec<Arc<dyn CommandFilter>>,
    after_commit: Vec<Arc<dyn AfterCommitHook>>,
    notifier: OperationCompletionNotifier,
    /// What extensions keep on this hub (a log reader's cursor, a watcher), by type and key.
    attachments: papaya::HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>,
    reprocess: ReprocessPolicy,
    /// What tells transient errors, by name (each added once).
    transient: std::sync::RwLock<Vec<(&'static str, TransientClassifier)>>,
    /// Begins the storing scope of an operation that added events but wrote nowhere.
    event_scope: std::sync::OnceLock<EventScopeStarter>,
    /// The compute methods of the services added, whose counters the hub publishes.
    methods: Mutex<Vec<&'static crate::computed::ComputeMethodDescriptor>>,
}

/// Begins the storing scope of an operation (through
/// [`CommandContext::operation_scope`]): see [`Hub::set_event_scope`].
pub type EventScopeStarter = Arc<dyn Fn(&CommandContext) -> Result<(), Error> + Send + Sync>;

impl Drop for HubInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Hub {
    /// A hub with the default settings.
    ///
    /// # Errors
    /// As [`HubBuilder::build`].
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// A builder to set the hub's capacity and host id.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// This host's id.
    pub fn host_id(&self) -> &HostId {
        &self.inner.host_id
    }

    /// How many computed values this hub caches at most.
    pub fn capacity(&self) -> usize {
        self.inner.registry.capacity()
    }

    /// How many computed values are cached now (consistent or computing).
    pub fn cached_len(&self) -> usize {
        self.inner.registry.len()
    }

    /// Invalidates every cached value on this hub, for when the hub cannot know what changed
    /// (for example after it lost part of the operation log).
    pub fn invalidate_everything(&self) {
        tracing::info!(host = %self.inner.host_id, "invalidating every cached value");
        self.inner.registry.invalidate_everything();
    }

    /// The operation log position this hub has replayed through, as its log reader last
    /// reported it: every operation committed at or below it, by any host, is reflected in this
    /// hub's cache. `None` while no reader has reported (a hub without a database). Values
    /// computed after reading it reflect at least that position: what live values over HTTP
    /// put in their frames' ids.
    pub fn log_position(&self) -> Option<i64> {
        let position = self.inner.log_position.load(Ordering::Acquire);
        (position >= 0).then_some(position)
    }

    /// Records that this hub has replayed the operation log through `position` (what a log
    /// reader calls). The position never goes back: a lower one is ignored.
    pub fn advance_log_position(&self, position: i64) {
        let before = self
            .inner
            .log_position
            .fetch_max(position, Ordering::AcqRel);
        if position > before {
            self.inner.log_position_moved.notify_waiters();
        }
    }

    /// The highest log position of an operation this hub replayed from a hint another host's
    /// wake-up carried ([`crate::watcher`]), possibly ahead of
    /// [`log_position`](Self::log_position) until the log reader reads that far: values computed
    /// now may reflect operations above `log_position`, up to this one. `None` before the
    /// first hint.
    pub fn hinted_position(&self) -> Option<i64> {
        let position = self.inner.hinted_position.load(Ordering::Acquire);
        (position >= 0).then_some(position)
    }

    /// Records that this hub replayed, from a hint, the operation at log position `position`
    /// (what a log reader calls). The position never goes back.
    pub fn note_hinted_position(&self, position: i64) {
        self.inner
            .hinted_position
            .fetch_max(position, Ordering::AcqRel);
    }

    /// Takes back a hinted position the log did not reach: sets it to `through` if it is still
    /// `hinted` (what a log reader calls when a read that started after the hint reached the
    /// log's end at `through`: the hint's sequence was no committed operation's).
    pub fn retract_hinted_position(&self, hinted: i64, through: i64) {
        let _ = self.inner.hinted_position.compare_exchange(
            hinted,
            through,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Waits until this hub has replayed the operation log through `position` or beyond
    /// ([`log_position`](Self::log_position)), and returns where it is. Wrap it in a timeout
    /// if the position may never come (a hub without a log reader).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let hub = ofx_core::Hub::new().unwrap();
    /// hub.advance_log_position(7);
    /// assert_eq!(hub.log_position_reached(5).await, 7);
    /// # }
    /// ```
    pub async fn log_position_reached(&self, position: i64) -> i64 {
        loop {
            let moved = self.inner.log_position_moved.notified();
            tokio::pin!(moved);
            // Registered before the check: a move after it wakes this waiter.
            moved.as_mut().enable();
            if let Some(reached) = self.log_position().filter(|reached| *reached >= position) {
                return reached;
            }
            moved.await;
        }
    }

    /// A token cancelled when the hub is dropped: background tasks of this hub stop on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Tells `event` to the hub's event listener, if it has one. `event` is called only then:
    /// without a listener, emitting costs one check and builds nothing.
    #[inline]
    pub(crate) fn emit(&self, event: impl FnOnce() -> HubEvent) {
        self.inner.registry.emit(event);
    }

    pub(crate) fn next_version(&self) -> u64 {
        self.inner.versions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The commander that runs commands on this hub.
    pub fn commander(&self) -> Commander {
        Commander::new(self.clone())
    }

    /// Adds a service to this hub: the commands its `#[command_handler]`s take are routed to
    /// this instance, on this hub (a generic service's instance, `Todos<Sqlite>`, brings the
    /// handlers of its type). The hub keeps a weak reference (the service holds the hub): keep
    /// the `Arc` alive.
    ///
    /// Adding another instance of a type already added replaces it (the handlers of a type are
    /// the same for every instance). Adding a service that handles a command another service
    /// of this hub handles is an error, and adds nothing; a service that was dropped does not
    /// count.
    ///
    /// # Errors
    /// [`Error::DuplicateHandler`] naming both service types, and
    /// [`Error::ServiceOfAnotherHub`] when the service's [`hub`](crate::ComputeService::hub)
    /// is another hub.
    pub fn add_service<S: Service>(&self, service: &Arc<S>) -> Result<(), Error> {
        if !service.hub().ptr_eq(self) {
            return Err(Error::ServiceOfAnotherHub {
                service: std::any::type_name::<S>(),
            });
        }
        let mut handlers = ServiceHandlers::new(service);
        S::handlers(&mut handlers);
        let entries = handlers.into_entries();
        let _adding = self
            .inner
            .adding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let map = self.inner.handlers.pin();
        for (command, entry) in &entries {
            if let Some(existing) = map.get(command)
                && existing.fns.service_type != entry.fns.service_type
                && existing.service.strong_count() > 0
            {
                return Err(Error::DuplicateHandler {
                    command: entry.fns.command_name,
                    first: existing.fns.service_name,
                    second: entry.fns.service_name,
                });
            }
        }
        for (command, entry) in entries {
            map.insert(command, entry);
        }
        crate::telemetry::remember(&self.inner.methods, S::compute_methods());
        let weak: std::sync::Weak<dyn Any + Send + Sync> = Arc::downgrade(service) as _;
        self.inner.services.pin().insert(TypeId::of::<S>(), weak);
        Ok(())
    }

    /// The service of type `S` added to this hub, if it was and is still alive.
    pub(crate) fn service<S: Send + Sync + 'static>(&self) -> Option<Arc<S>> {
        let weak = self.inner.services.pin().get(&TypeId::of::<S>())?.clone();
        weak.upgrade()?.downcast::<S>().ok()
    }

    /// Publishes the hub's metrics now through the [`metrics`] facade (see
    /// [`telemetry`](crate::telemetry)): the counters of the compute methods of the services
    /// added to it (`ofx_compute_*_total{method}`, absolute values; a method's counters are
    /// per process, shared by every hub) and its gauges (`ofx_compute_cached_entries{host}`,
    /// `ofx_compute_capacity{host}`). The hub also does it every
    /// [`metrics_interval`](HubBuilder::metrics_interval); call it right before rendering a
    /// `/metrics` page for values of that instant. Without a recorder installed, does nothing
    /// of note.
    pub fn record_metrics(&self) {
        let methods = self
            .inner
            .methods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        crate::telemetry::record_hub(self, &methods);
    }

    /// The compute methods whose counters [`record_metrics`](Self::record_metrics) publishes:
    /// those of the services added to the hub.
    pub fn compute_methods(&self) -> Vec<&'static crate::computed::ComputeMethodDescriptor> {
        self.inner
            .methods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The handler of the command type `command` on this hub, and its service; `name` names the
    /// command in the error when there is none.
    #[inline]
    pub(crate) fn handler(
        &self,
        command: TypeId,
        name: impl FnOnce() -> &'static str,
    ) -> Result<(HandlerFns, Arc<ErasedService>), Error> {
        let map = self.inner.handlers.pin();
        let Some(entry) = map.get(&command) else {
            return Err(Error::NoHandler { command: name() });
        };
        match entry.service.upgrade() {
            Some(service) => Ok((entry.fns, service)),
            None => Err(Error::ServiceDropped {
                command: entry.fns.command_name,
                service: entry.fns.service_name,
            }),
        }
    }

    /// How outermost commands that failed for a transient reason are run again.
    pub fn reprocess_policy(&self) -> ReprocessPolicy {
        self.inner.reprocess
    }

    /// Adds what tells a transient error (see [`commander::reprocess`](crate::commander::reprocess)):
    /// storages add theirs when they attach. One classifier per `name`: adding a name twice
    /// keeps the first.
    pub fn add_transient_classifier(&self, name: &'static str, classifier: TransientClassifier) {
        let mut classifiers = self
            .inner
            .transient
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !classifiers.iter().any(|(added, _)| *added == name) {
            classifiers.push((name, classifier));
        }
    }

    /// Whether `error` is transient: the command that failed with it may run again.
    pub fn is_transient(&self, error: &Error) -> bool {
        let classifiers: Vec<TransientClassifier> = self
            .inner
            .transient
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, classifier)| *classifier)
            .collect();
        error.is_transient_by(&classifiers)
    }

    /// Sets what begins the storing scope of an operation that added events
    /// ([`CommandContext::add_event`]) but wrote to no storage, so that its events are stored
    /// anyway: the first storage attached to the hub that stores events sets it. Returns
    /// whether it was set (`false`: another one was set first).
    pub fn set_event_scope(&self, starter: EventScopeStarter) -> bool {
        self.inner.event_scope.set(starter).is_ok()
    }

    pub(crate) fn event_scope(&self) -> Option<&EventScopeStarter> {
        self.inner.event_scope.get()
    }

    pub(crate) fn filters(&self) -> &[Arc<dyn CommandFilter>] {
        &self.inner.filters
    }

    pub(crate) fn after_commit_hooks(&self) -> &[Arc<dyn AfterCommitHook>] {
        &self.inner.after_commit
    }

    /// The value of type `T` an extension keeps on this hub under `key`, made by `init` on
    /// first use (for example ofx-diesel keeps each database's log reader here, so that a
    /// reader started again resumes from its cursor).
    pub fn attachment<T: Any + Send + Sync>(&self, key: &str, init: impl FnOnce() -> T) -> Arc<T> {
        let map = self.inner.attachments.pin();
        let value = map.get_or_insert_with((TypeId::of::<T>(), key.to_owned()), || {
            Arc::new(init()) as Arc<dyn Any + Send + Sync>
        });
        match Arc::clone(value).downcast::<T>() {
            Ok(value) => value,
            Err(_) => unreachable!("attachments are keyed by their type"),
        }
    }

    /// The value of type `T` kept under `key`, if any.
    pub fn existing_attachment<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let map = self.inner.attachments.pin();
        let value = map.get(&(TypeId::of::<T>(), key.to_owned()))?;
        Arc::clone(value).downcast::<T>().ok()
    }

    /// The hub's completion notifier.
    pub fn notifier(&self) -> &OperationCompletionNotifier {
        &self.inner.notifier
    }

    /// A weak handle, for background tasks that must not keep the hub alive.
    pub fn downgrade(&self) -> WeakHub {
        WeakHub {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Whether two handles are the same hub.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("host_id", &self.inner.host_id)
            .field("cached", &self.cached_len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A weak handle to a [`Hub`]: does not keep it alive.
#[derive(Clone, Debug)]
pub struct WeakHub {
    inner: Weak<HubInner>,
}

impl WeakHub {
    /// The hub, if it is still alive.
    pub fn upgrade(&self) -> Option<Hub> {
        self.inner.upgrade().map(|inner| Hub { inner })
    }
}

impl fmt::Debug for HubInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubInner")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Hub`].
#[derive(Clone)]
pub struct HubBuilder {
    capacity: usize,
    host_id: Option<HostId>,
    filters: Vec<Arc<dyn CommandFilter>>,
    listeners: Vec<Arc<dyn CompletionListener>>,
    after_commit: Vec<Arc<dyn AfterCommitHook>>,
    extensions: Vec<Arc<dyn HubExtension>>,
    event_listener: Option<Arc<dyn HubEventListener>>,
    reprocess: ReprocessPolicy,
    transient: Vec<(&'static str, TransientClassifier)>,
    metrics_interval: Option<std::time::Duration>,
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("capacity", &self.capacity)
            .field("host_id", &self.host_id)
            .field("filters", &self.filters.len())
            .field("listeners", &self.listeners.len())
            .field("after_commit", &self.after_commit.len())
            .field(
                "extensions",
                &self
                    .extensions
                    .iter()
                    .map(|ext| ext.name())
                    .collect::<Vec<_>>(),
            )
            .field("event_listener", &self.event_listener.is_some())
            .field("reprocess", &self.reprocess)
            .field("metrics_interval", &self.metrics_interval)
            .finish_non_exhaustive()
    }
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            host_id: None,
            filters: Vec::new(),
            listeners: Vec::new(),
            after_commit: Vec::new(),
            extensions: Vec::new(),
            event_listener: None,
            reprocess: ReprocessPolicy::default(),
            transient: Vec::new(),
            metrics_interval: Some(crate::telemetry::DEFAULT_METRICS_INTERVAL),
        }
    }
}

impl HubBuilder {
    /// The most computed values the hub caches ([`DEFAULT_CAPACITY`] by default, at least 1).
    /// Past it, the least recently read values are evicted, which invalidates them.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The hub's host id (a new unique one by default).
    pub fn host_id(mut self, host_id: HostId) -> Self {
        self.host_id = Some(host_id);
        self
    }

    /// Adds a command filter; see [`pipeline`] for where its priority puts it.
    pub fn filter(mut self, filter: impl CommandFilter) -> Self {
        self.filters.push(Arc::new(filter));
        self
    }

    /// Adds a listener told of every completed operation (after its invalidation).
    pub fn completion_listener(mut self, listener: impl CompletionListener) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Adds a hook run after every operation this hub commits (in the order added).
    pub fn after_commit(mut self, hook: impl AfterCommitHook) -> Self {
        self.after_commit.push(Arc::new(hook));
        self
    }

    /// Adds an extension (a storage such as ofx-diesel's `DbHub`, with its log reader,
    /// trimmer and watcher), attached in the order added by [`start`](Self::start).
    pub fn with(mut self, extension: impl HubExtension) -> Self {
        self.extensions.push(Arc::new(extension));
        self
    }

    /// Sets the listener told of every [`HubEvent`] of the hub (none by default). A hub has one
    /// event listener: a second call replaces the first (to tell several, give one listener
    /// that forwards to them). See [`HubEventListener`] for what a listener may do.
    pub fn event_listener(mut self, listener: impl HubEventListener) -> Self {
        self.event_listener = Some(Arc::new(listener));
        self
    }

    /// How an outermost command that failed for a transient reason runs again
    /// ([`ReprocessPolicy::default`] unless told otherwise; [`ReprocessPolicy::disabled`] turns
    /// it off). See [`commander::reprocess`](crate::commander::reprocess).
    pub fn reprocessing(mut self, policy: ReprocessPolicy) -> Self {
        self.reprocess = policy;
        self
    }

    /// Adds what tells the application's transient errors: `classifier` is asked about each
    /// error of a failed command's error chain (downcast it to your type).
    ///
    /// ```
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the payment provider is busy")]
    /// struct ProviderBusy;
    ///
    /// let hub = ofx_core::Hub::builder()
    ///     .transient_if("payments", |error| error.is::<ProviderBusy>())
    ///     .build()?;
    /// assert!(hub.is_transient(&ofx_core::Error::handler(ProviderBusy)));
    /// # Ok::<(), ofx_core::Error>(())
    /// ```
    pub fn transient_if(mut self, name: &'static str, classifier: TransientClassifier) -> Self {
        self.transient.push((name, classifier));
        self
    }

    /// How often the hub publishes its compute metrics ([`Hub::record_metrics`]) in the
    /// background: every second by default; `None` or zero turns it off (call
    /// `record_metrics` yourself then). The task starts with the hub when a tokio runtime runs
    /// (a hub built outside one publishes on `record_metrics` only) and stops with the hub.
    pub fn metrics_interval(mut self, interval: impl Into<Option<std::time::Duration>>) -> Self {
        self.metrics_interval = interval.into().filter(|interval| !interval.is_zero());
        self
    }

    /// Builds a hub without extensions.
    ///
    /// # Errors
    /// [`Error::DuplicateCommandName`] when the program's commands are ambiguous: two types
    /// with one name; [`Error::ExtensionsNeedStart`] when extensions were added: they attach in
    /// [`start`](Self::start).
    pub fn build(self) -> Result<Hub, Error> {
        if !self.extensions.is_empty() {
            return Err(Error::ExtensionsNeedStart {
                extensions: self
                    .extensions
                    .iter()
                    .map(|ext| ext.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.build_hub()
    }

    /// Builds the hub, then attaches its extensions in the order they were added (each starts
    /// its background work: log readers, trimmers, watchers, with the hub's host id and
    /// shutdown token). Add services after: a replay that reaches a service not attached yet
    /// is retried.
    ///
    /// # Errors
    /// As [`build`](Self::build), and [`Error::Extension`] when an extension cannot start (the
    /// hub is dropped then, stopping what the others started).
    pub async fn start(mut self) -> Result<Hub, Error> {
        let extensions = std::mem::take(&mut self.extensions);
        let hub = self.build_hub()?;
        for extension in extensions {
            extension.attach(&hub).await?;
        }
        Ok(hub)
    }

    fn build_hub(self) -> Result<Hub, Error> {
        crate::command::registry::registry()?;
        let hub = Hub {
            inner: Arc::new(HubInner {
                host_id: self.host_id.unwrap_or_default(),
                registry: Registry::new(self.capacity, self.event_listener),
                versions: AtomicU64::new(0),
                log_position: AtomicI64::new(-1),
                log_position_moved: tokio::sync::Notify::new(),
                hinted_position: AtomicI64::new(-1),
                shutdown: CancellationToken::new(),
                handlers: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
                adding: Mutex::new(()),
                filters: pipeline::sorted(self.filters),
                after_commit: self.after_commit,
                notifier: OperationCompletionNotifier::new(self.listeners),
                attachments: papaya::HashMap::new(),
                reprocess: self.reprocess,
                transient: std::sync::RwLock::new(self.transient),
                event_scope: std::sync::OnceLock::new(),
                methods: Mutex::new(Vec::new()),
                services: papaya::HashMap::new(),
            }),
        };
        if let Some(interval) = self.metrics_interval {
            crate::telemetry::start_publisher(&hub, interval);
        }
        Ok(hub)
    }
}
