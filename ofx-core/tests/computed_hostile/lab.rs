//! A service with consolidating methods whose computations tests can hold mid-flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ofx_core::{ComputeService, Computed, EventCounter, Hub, capture, compute_method, service};
use tokio::sync::Semaphore;

/// How long a test waits for something that must happen before it calls it a failure.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Gate `k`: a computation that passes it while it is held signals `entered[k]` and waits for
/// a permit of `gates[k]`. Shared, so that a test can drive it after dropping the service.
pub(crate) struct Gates {
    holds: Vec<AtomicBool>,
    entered: Vec<Semaphore>,
    gates: Vec<Semaphore>,
}

/// Gate of `parity(k)`: `k`; of `bucket(k)`: `BUCKET + k`; of `slow_label(k)`: `SLOW + k`.
pub(crate) const BUCKET: usize = 16;
pub(crate) const SLOW: usize = 32;

impl Gates {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            holds: (0..64).map(|_| AtomicBool::new(false)).collect(),
            entered: (0..64).map(|_| Semaphore::new(0)).collect(),
            gates: (0..64).map(|_| Semaphore::new(0)).collect(),
        })
    }

    /// The next computation to pass gate `k` waits there.
    pub(crate) fn hold(&self, k: usize) {
        self.holds[k].store(true, Ordering::SeqCst);
    }

    /// Waits until a computation waits at gate `k`; later ones pass.
    pub(crate) async fn entered(&self, k: usize) {
        tokio::time::timeout(PATIENCE, self.entered[k].acquire())
            .await
            .expect("a computation reaches the gate")
            .unwrap()
            .forget();
        self.holds[k].store(false, Ordering::SeqCst);
    }

    /// Lets the computation waiting at gate `k` go on.
    pub(crate) fn release(&self, k: usize) {
        self.gates[k].add_permits(1);
    }

    pub(crate) async fn pass(&self, k: usize) {
        if self.holds[k].swap(false, Ordering::SeqCst) {
            self.entered[k].add_permits(1);
            self.gates[k].acquire().await.unwrap().forget();
        }
    }
}

/// A value that counts its live copies in `live`; equal when `parity` is.
pub(crate) struct Tracked {
    pub(crate) parity: u64,
    live: Arc<AtomicU64>,
}

impl Tracked {
    fn new(parity: u64, live: &Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            parity,
            live: Arc::clone(live),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Self::new(self.parity, &self.live)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.parity == other.parity
    }
}

pub(crate) struct Lab {
    pub(crate) hub: Hub,
    /// Live `Tracked` values.
    pub(crate) live: Arc<AtomicU64>,
    pub(crate) events: EventCounter,
    pub(crate) values: Vec<AtomicU64>,
    pub(crate) gates: Arc<Gates>,
}

impl ComputeService for Lab {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// What `label(k)` is for `value(k) == v`.
pub(crate) fn label_of(k: usize, v: u64) -> String {
    if v.is_multiple_of(2) {
        format!("{k} is even")
    } else {
        format!("{k} is odd")
    }
}

/// What `top(k)` is for `value(k) == v`.
pub(crate) fn top_of(k: usize, v: u64) -> String {
    format!("{k}: bucket parity {}", (v / 10) % 2)
}

/// What `checked_label(k)` is for `value(k) == v`.
pub(crate) fn checked_label_of(k: usize, v: u64) -> String {
    match v {
        0 => format!("{k}: zero"),
        v => format!("{k}: {}", v % 2),
    }
}

#[service]
impl Lab {
    /// A leaf: reads the "database".
    #[compute_method]
    pub(crate) async fn value(&self, k: usize) -> u64 {
        self.values[k].load(Ordering::SeqCst)
    }

    /// Consolidating: `value(k) % 2`, with gate `k` after reading `value(k)`.
    #[compute_method(consolidate)]
    pub(crate) async fn parity(&self, k: usize) -> u64 {
        let v = self.value(k).await;
        self.gates.pass(k).await;
        v % 2
    }

    #[compute_method]
    pub(crate) async fn label(&self, k: usize) -> String {
        let parity = self.parity(k).await;
        label_of(k, parity)
    }

    /// `parity(k)` as a `Tracked`.
    #[compute_method(consolidate)]
    pub(crate) async fn tracked_parity(&self, k: usize) -> Tracked {
        Tracked::new(self.value(k).await % 2, &self.live)
    }

    #[compute_method]
    pub(crate) async fn tracked_label(&self, k: usize) -> String {
        let parity = self.tracked_parity(k).await.parity;
        label_of(k, parity)
    }

    /// `parity(k)`, also delayed (no gate).
    #[compute_method(consolidate, invalidation_delay = "1s")]
    pub(crate) async fn delayed_parity(&self, k: usize) -> u64 {
        self.value(k).await % 2
    }

    /// `label(k)` over `delayed_parity(k)`.
    #[compute_method]
    pub(crate) async fn delayed_label(&self, k: usize) -> String {
        let parity = self.delayed_parity(k).await;
        label_of(k, parity)
    }

    /// `label(k)` with gate `SLOW + k` after reading `parity(k)`.
    #[compute_method]
    pub(crate) async fn slow_label(&self, k: usize) -> String {
        let parity = self.parity(k).await;
        self.gates.pass(SLOW + k).await;
        label_of(k, parity)
    }

    /// Reads two consolidating values.
    #[compute_method]
    pub(crate) async fn both(&self, a: usize, b: usize) -> (u64, u64) {
        (self.parity(a).await, self.parity(b).await)
    }

    /// Consolidating: `value(k) / 10`, with gate `BUCKET + k`.
    #[compute_method(consolidate)]
    pub(crate) async fn bucket(&self, k: usize) -> u64 {
        let v = self.value(k).await;
        self.gates.pass(BUCKET + k).await;
        v / 10
    }

    /// Consolidating, reading a consolidating value.
    #[compute_method(consolidate)]
    pub(crate) async fn bucket_parity(&self, k: usize) -> u64 {
        self.bucket(k).await % 2
    }

    #[compute_method]
    pub(crate) async fn top(&self, k: usize) -> String {
        format!("{k}: bucket parity {}", self.bucket_parity(k).await)
    }

    /// Consolidating and fallible: `Err` for 0.
    #[compute_method(consolidate, error_lifetime = "100ms")]
    pub(crate) async fn checked(&self, k: usize) -> Result<u64, String> {
        match self.value(k).await {
            0 => Err("zero".to_owned()),
            v => Ok(v % 2),
        }
    }

    #[compute_method]
    pub(crate) async fn checked_label(&self, k: usize) -> String {
        match self.checked(k).await {
            Ok(parity) => format!("{k}: {parity}"),
            Err(error) => format!("{k}: {error}"),
        }
    }
}

impl Lab {
    /// A lab on a hub of its own, added to it; `value(k) == k`.
    pub(crate) fn new() -> Arc<Self> {
        Self::small(ofx_core::DEFAULT_CAPACITY)
    }

    /// A lab on a hub of `capacity`.
    pub(crate) fn small(capacity: usize) -> Arc<Self> {
        let events = EventCounter::new();
        let lab = Arc::new(Self {
            hub: Hub::builder()
                .capacity(capacity)
                .event_listener(events.clone())
                .build()
                .unwrap(),
            events,
            live: Arc::new(AtomicU64::new(0)),
            values: (0..64).map(AtomicU64::new).collect(),
            gates: Gates::new(),
        });
        lab.hub.add_service(&lab).unwrap();
        lab
    }

    pub(crate) fn set(&self, k: usize, v: u64) {
        self.values[k].store(v, Ordering::SeqCst);
    }

    pub(crate) fn get(&self, k: usize) -> u64 {
        self.values[k].load(Ordering::SeqCst)
    }

    /// Waits until `Lab::{method}` told `count` consolidations.
    pub(crate) async fn consolidations(&self, method: &str, count: u64) {
        let name = format!("Lab::{method}");
        tokio::time::timeout(
            PATIENCE,
            self.events
                .wait_until(|events| events.consolidated(&name) >= count),
        )
        .await
        .unwrap_or_else(|_| panic!("{count} consolidations of {name}"));
    }
}

impl Lab {
    /// Waits until `delayed_parity` told `count` consolidations.
    pub(crate) async fn delayed_consolidations(&self, count: u64) {
        self.consolidations("delayed_parity", count).await;
    }
}

/// Reads `read()` until it returns `expected`: each value that differs must be invalidated (a
/// consolidation may still be on its way), or the dependent was left stale for good. Returns
/// the handle of the value that is right.
pub(crate) async fn settle<F, Fut>(mut read: F, expected: &str) -> Computed
where
    F: FnMut() -> Fut,
    Fut: Future<Output = String>,
{
    loop {
        let (value, computed) = capture(read()).await.unwrap();
        if value == expected {
            return computed;
        }
        tokio::time::timeout(PATIENCE, computed.when_invalidated())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} serves {value:?}, a fresh computation returns {expected:?}, and it is \
                     never invalidated ({computed:?})",
                    computed.method()
                )
            });
    }
}

/// `computed`, which was computed as `served`, must not stay consistent if `served` is not what
/// a fresh computation returns: it is invalidated within `PATIENCE`.
pub(crate) async fn not_left_stale(computed: &Computed, served: &str, fresh: &str) {
    if served != fresh {
        tokio::time::timeout(PATIENCE, computed.when_invalidated())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{computed:?} serves {served:?} while a fresh computation returns \
                     {fresh:?}, and it is never invalidated"
                )
            });
    }
}
