//! Services shared by the tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ofx_core::{ComputeService, EventCounter, Hub, HubBuilder, compute_method};
use tokio::sync::Semaphore;

/// A `Result` under another name: its errors still expire.
pub(crate) type Fallible<T> = Result<T, String>;

/// A service whose values come from atomics the test changes; its hub's events are counted.
pub(crate) struct Store {
    pub(crate) hub: Hub,
    /// The hub's events: `events.computed("Store::value")` counts the runs of `value`'s body.
    pub(crate) events: EventCounter,
    /// The "database": `value(k)` reads `values[k]`.
    pub(crate) values: Vec<AtomicU64>,
    /// Released permits let `gated` finish; `gated` waits for one after reading `value(k)`.
    pub(crate) gate: Semaphore,
    /// When set, `fallible` returns `Err`.
    pub(crate) failing: AtomicBool,
    /// When set, `panicky` panics.
    pub(crate) panicking: AtomicBool,
    pub(crate) ticks: AtomicU64,
}

impl ComputeService for Store {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Store {
    /// A store on a hub built by `hub`, with an event counter as its listener.
    pub(crate) fn new(hub: HubBuilder) -> Arc<Self> {
        let events = EventCounter::new();
        Arc::new(Self {
            hub: hub.event_listener(events.clone()).build().unwrap(),
            events,
            values: (0..64).map(AtomicU64::new).collect(),
            gate: Semaphore::new(0),
            failing: AtomicBool::new(false),
            panicking: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        })
    }

    pub(crate) fn set(&self, key: usize, value: u64) {
        self.values[key].store(value, Ordering::SeqCst);
    }

    /// How many times the body of `Store::{method}` ran.
    pub(crate) fn runs(&self, method: &str) -> u64 {
        self.events.computed(&format!("Store::{method}"))
    }

    /// A leaf: reads the "database".
    #[compute_method]
    pub(crate) async fn value(&self, key: usize) -> u64 {
        self.values[key].load(Ordering::SeqCst)
    }

    /// Depends on `value(a)` and `value(b)`, with an `.await` point between the two calls.
    #[compute_method]
    pub(crate) async fn sum(&self, a: usize, b: usize) -> u64 {
        let first = self.value(a).await;
        tokio::task::yield_now().await;
        first + self.value(b).await
    }

    /// Depends on `sum(0, 1)` and `value(2)`: a second level.
    #[compute_method]
    pub(crate) async fn total(&self) -> u64 {
        self.sum(0, 1).await + self.value(2).await
    }

    /// Reads `value(0)` to `value(n - 1)`, `rounds` times over: `n` dependencies, each called
    /// `rounds` times.
    #[compute_method]
    pub(crate) async fn sweep(&self, n: usize, rounds: usize) -> u64 {
        let mut total = 0;
        for _ in 0..rounds {
            for key in 0..n {
                total += self.value(key).await;
            }
        }
        total
    }

    /// Fails with an error marked permanent while `failing` is set.
    #[compute_method]
    pub(crate) async fn guarded(&self, key: usize) -> Result<u64, ofx_core::Error> {
        if self.failing.load(Ordering::SeqCst) {
            Err(ofx_core::Error::permanent(Denied))
        } else {
            Ok(self.values[key].load(Ordering::SeqCst))
        }
    }

    /// Fails with a plain `std::error::Error`, not marked, while `failing` is set.
    #[compute_method]
    pub(crate) async fn denied(&self) -> Result<u64, Denied> {
        if self.failing.load(Ordering::SeqCst) {
            Err(Denied)
        } else {
            Ok(0)
        }
    }

    /// `values[key]`, except 0 (missing: permanent) and 1 (busy: transient).
    #[compute_method(is_transient = LookupError::is_transient, permanent_error_lifetime = "10s")]
    pub(crate) async fn lookup(&self, key: usize) -> Result<u64, LookupError> {
        match self.values[key].load(Ordering::SeqCst) {
            0 => Err(LookupError::Missing),
            1 => Err(LookupError::Busy),
            value => Ok(value),
        }
    }

    /// `value(key)`, its invalidations put off by a second.
    #[compute_method(invalidation_delay = "1s")]
    pub(crate) async fn debounced(&self, key: usize) -> u64 {
        self.value(key).await
    }

    /// Reads `debounced(key)`.
    #[compute_method]
    pub(crate) async fn above_debounced(&self, key: usize) -> u64 {
        self.debounced(key).await + 1
    }

    /// `value(key)`, kept through eviction for ten seconds after it is computed.
    #[compute_method(min_cache_duration = "10s")]
    pub(crate) async fn kept(&self, key: usize) -> u64 {
        self.values[key].load(Ordering::SeqCst)
    }

    /// Reads `value(key)`, then waits for a permit of `gate`: lets tests act mid-computation.
    #[compute_method]
    pub(crate) async fn gated(&self, key: usize) -> u64 {
        let value = self.value(key).await;
        self.gate.acquire().await.unwrap().forget();
        value
    }

    #[compute_method]
    pub(crate) async fn fallible(&self, key: usize) -> Result<u64, String> {
        if self.failing.load(Ordering::SeqCst) {
            Err(format!("no value for {key}"))
        } else {
            Ok(self.values[key].load(Ordering::SeqCst))
        }
    }

    #[compute_method(error_lifetime = "5s")]
    pub(crate) async fn fallible_longer(&self) -> Result<u64, String> {
        Err("still failing".to_owned())
    }

    #[compute_method]
    pub(crate) async fn aliased(&self) -> Fallible<u64> {
        Err("aliased failure".to_owned())
    }

    #[compute_method(auto_invalidate = "2s")]
    pub(crate) async fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::SeqCst)
    }

    #[compute_method]
    pub(crate) async fn panicky(&self, key: usize) -> u64 {
        assert!(
            !self.panicking.load(Ordering::SeqCst),
            "panicky({key}) was told to panic"
        );
        key as u64
    }
}

/// An error `guarded` marks permanent.
#[derive(Debug, Clone)]
pub(crate) struct Denied;

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("denied")
    }
}

impl std::error::Error for Denied {}

/// `lookup`'s errors: `Busy` is transient, `Missing` is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupError {
    Busy,
    Missing,
}

impl LookupError {
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Self::Busy)
    }
}
