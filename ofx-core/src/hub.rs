//! [`Hub`]: one host's runtime.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::HostId;
use crate::computed::Registry;

/// How many computed values a hub caches unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// One host's runtime: its [`HostId`] and its cache of computed values.
///
/// A `Hub` is a cheap handle (an `Arc`): services keep a clone. Two hubs in one process are two
/// hosts, with separate caches. Background work started by a hub stops when its last handle is
/// dropped.
///
/// ```
/// use ofx_core::Hub;
///
/// let hub = Hub::builder().capacity(10_000).build();
/// let other = Hub::new();
/// assert_ne!(hub.host_id(), other.host_id());
/// assert_eq!(hub.capacity(), 10_000);
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    host_id: HostId,
    registry: Registry,
    versions: AtomicU64,
    shutdown: CancellationToken,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Hub {
    /// A hub with the default settings.
    pub fn new() -> Self {
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

    /// A token cancelled when the hub is dropped: background tasks of this hub stop on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn next_version(&self) -> u64 {
        self.inner.versions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether two handles are the same hub.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
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

/// Builds a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubBuilder {
    capacity: usize,
    host_id: Option<HostId>,
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            host_id: None,
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

    /// Builds the hub.
    pub fn build(self) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                host_id: self.host_id.unwrap_or_default(),
                registry: Registry::new(self.capacity),
                versions: AtomicU64::new(0),
                shutdown: CancellationToken::new(),
            }),
        }
    }
}
