//! Services shared by the tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ofx_core::{ComputeService, Hub, compute_method};
use tokio::sync::Semaphore;

/// A `Result` under another name: its errors still expire.
pub(crate) type Fallible<T> = Result<T, String>;

/// A service whose values come from atomics the test changes, and which counts body runs.
pub(crate) struct Store {
    pub(crate) hub: Hub,
    /// The "database": `value(k)` reads `values[k]`.
    pub(crate) values: Vec<AtomicU64>,
    pub(crate) value_runs: AtomicU64,
    pub(crate) sum_runs: AtomicU64,
    pub(crate) total_runs: AtomicU64,
    /// Released permits let `gated` finish; `gated` waits for one after reading `value(k)`.
    pub(crate) gate: Semaphore,
    pub(crate) gated_runs: AtomicU64,
    /// When set, `fallible` returns `Err`.
    pub(crate) failing: AtomicBool,
    pub(crate) fallible_runs: AtomicU64,
    /// When set, `panicky` panics.
    pub(crate) panicking: AtomicBool,
    pub(crate) panicky_runs: AtomicU64,
    pub(crate) ticks: AtomicU64,
}

impl ComputeService for Store {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Store {
    pub(crate) fn new(hub: Hub) -> Arc<Self> {
        Arc::new(Self {
            hub,
            values: (0..64).map(AtomicU64::new).collect(),
            value_runs: AtomicU64::new(0),
            sum_runs: AtomicU64::new(0),
            total_runs: AtomicU64::new(0),
            gate: Semaphore::new(0),
            gated_runs: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            fallible_runs: AtomicU64::new(0),
            panicking: AtomicBool::new(false),
            panicky_runs: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        })
    }

    pub(crate) fn set(&self, key: usize, value: u64) {
        self.values[key].store(value, Ordering::SeqCst);
    }

    pub(crate) fn runs(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    /// A leaf: reads the "database".
    #[compute_method]
    pub(crate) async fn value(&self, key: usize) -> u64 {
        self.value_runs.fetch_add(1, Ordering::SeqCst);
        self.values[key].load(Ordering::SeqCst)
    }

    /// Depends on `value(a)` and `value(b)`, with an `.await` point between the two calls.
    #[compute_method]
    pub(crate) async fn sum(&self, a: usize, b: usize) -> u64 {
        self.sum_runs.fetch_add(1, Ordering::SeqCst);
        let first = self.value(a).await;
        tokio::task::yield_now().await;
        first + self.value(b).await
    }

    /// Depends on `sum(0, 1)` and `value(2)`: a second level.
    #[compute_method]
    pub(crate) async fn total(&self) -> u64 {
        self.total_runs.fetch_add(1, Ordering::SeqCst);
        self.sum(0, 1).await + self.value(2).await
    }

    /// Reads `value(key)`, then waits for a permit of `gate`: lets tests act mid-computation.
    #[compute_method]
    pub(crate) async fn gated(&self, key: usize) -> u64 {
        self.gated_runs.fetch_add(1, Ordering::SeqCst);
        let value = self.value(key).await;
        self.gate.acquire().await.unwrap().forget();
        value
    }

    #[compute_method]
    pub(crate) async fn fallible(&self, key: usize) -> Result<u64, String> {
        self.fallible_runs.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            Err(format!("no value for {key}"))
        } else {
            Ok(self.values[key].load(Ordering::SeqCst))
        }
    }

    #[compute_method(error_lifetime = "5s")]
    pub(crate) async fn fallible_longer(&self) -> Result<u64, String> {
        self.fallible_runs.fetch_add(1, Ordering::SeqCst);
        Err("still failing".to_owned())
    }

    #[compute_method]
    pub(crate) async fn aliased(&self) -> Fallible<u64> {
        self.fallible_runs.fetch_add(1, Ordering::SeqCst);
        Err("aliased failure".to_owned())
    }

    #[compute_method(auto_invalidate = "2s")]
    pub(crate) async fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::SeqCst)
    }

    #[compute_method]
    pub(crate) async fn panicky(&self, key: usize) -> u64 {
        self.panicky_runs.fetch_add(1, Ordering::SeqCst);
        assert!(
            !self.panicking.load(Ordering::SeqCst),
            "panicky({key}) was told to panic"
        );
        key as u64
    }
}
