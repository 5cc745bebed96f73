//! [`ComputeMethodDescriptor`]: the static description of one `#[compute_method]`.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long an `Err` result stays cached when a method does not say otherwise.
pub const DEFAULT_ERROR_LIFETIME: Duration = Duration::from_secs(1);

/// The options of one compute method, set with `#[compute_method(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ComputeMethodOptions {
    /// Invalidate every result this long after it was computed (`auto_invalidate = "5s"`).
    /// `None`: results stay until invalidated or evicted.
    pub auto_invalidate: Option<Duration>,
    /// Invalidate an `Err` result this long after it was computed (`error_lifetime = "1s"`).
    pub error_lifetime: Duration,
}

impl ComputeMethodOptions {
    /// The defaults: no auto-invalidation, errors cached for [`DEFAULT_ERROR_LIFETIME`].
    pub const DEFAULT: Self = Self {
        auto_invalidate: None,
        error_lifetime: DEFAULT_ERROR_LIFETIME,
    };

    /// Sets [`auto_invalidate`](Self::auto_invalidate).
    pub const fn with_auto_invalidate(mut self, delay: Duration) -> Self {
        self.auto_invalidate = Some(delay);
        self
    }

    /// Sets [`error_lifetime`](Self::error_lifetime).
    pub const fn with_error_lifetime(mut self, lifetime: Duration) -> Self {
        self.error_lifetime = lifetime;
        self
    }
}

impl Default for ComputeMethodOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The static description of one compute method: its name, its options and its slot in every
/// hub's cache. `#[compute_method]` makes one per method.
pub struct ComputeMethodDescriptor {
    name: &'static str,
    /// `Service::method`, set when the method is first called.
    full_name: OnceLock<Box<str>>,
    options: ComputeMethodOptions,
    /// Slot index + 1, or 0 until the first use assigns one.
    slot: AtomicUsize,
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

impl ComputeMethodDescriptor {
    /// A descriptor for a method called `name` (for logs: `Type::method`).
    pub const fn new(name: &'static str, options: ComputeMethodOptions) -> Self {
        Self {
            name,
            full_name: OnceLock::new(),
            options,
            slot: AtomicUsize::new(0),
        }
    }

    /// The method's name with its service type's path (`todos::Todos::get`) once it has been
    /// called, its bare name (`get`) before.
    pub fn name(&self) -> &str {
        self.full_name.get().map_or(self.name, |name| name)
    }

    /// Records the service type that owns the method, for [`name`](Self::name).
    pub(crate) fn set_service<S: 'static>(&self) {
        if self.full_name.get().is_none() {
            let _ = self
                .full_name
                .set(format!("{}::{}", std::any::type_name::<S>(), self.name).into());
        }
    }

    /// The method's options.
    pub fn options(&self) -> &ComputeMethodOptions {
        &self.options
    }

    /// This method's slot in the hubs' method tables, assigned on first use, stable for the
    /// process's lifetime.
    #[inline]
    pub(crate) fn slot(&self) -> usize {
        match self.slot.load(Ordering::Acquire) {
            0 => self.assign_slot(),
            assigned => assigned - 1,
        }
    }

    #[cold]
    fn assign_slot(&self) -> usize {
        let candidate = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .slot
            .compare_exchange(0, candidate, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => candidate - 1,
            // Another thread assigned first; the candidate index stays unused.
            Err(assigned) => assigned - 1,
        }
    }
}

impl fmt::Debug for ComputeMethodDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComputeMethodDescriptor")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}
