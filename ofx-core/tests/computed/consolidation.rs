//! Consolidation: an invalidated value of a consolidating method is recomputed at once, and what
//! was computed from it is invalidated only if the new value differs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ofx_core::{
    ComputeService, ComputedState, EventCounter, Hub, capture, compute_method, invalidate, service,
};

/// `parity(k)` is `value(k) % 2`, consolidating; `label(k)` reads it.
struct Numbers {
    hub: Hub,
    events: EventCounter,
    values: Vec<AtomicU64>,
    /// When set, `parity` panics.
    panicking: AtomicBool,
}

impl ComputeService for Numbers {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Numbers {
    #[compute_method]
    async fn value(&self, key: usize) -> u64 {
        self.values[key].load(Ordering::SeqCst)
    }

    #[compute_method(consolidate)]
    async fn parity(&self, key: usize) -> u64 {
        assert!(!self.panicking.load(Ordering::SeqCst), "told to panic");
        self.value(key).await % 2
    }

    #[compute_method]
    async fn label(&self, key: usize) -> String {
        match self.parity(key).await {
            0 => format!("{key} is even"),
            _ => format!("{key} is odd"),
        }
    }
}

impl Numbers {
    /// A service on a hub of its own; `added`: added to the hub (consolidation needs it).
    fn new(added: bool) -> Arc<Self> {
        let events = EventCounter::new();
        let numbers = Arc::new(Self {
            hub: Hub::builder()
                .event_listener(events.clone())
                .build()
                .unwrap(),
            events,
            values: (0..8).map(AtomicU64::new).collect(),
            panicking: AtomicBool::new(false),
        });
        if added {
            numbers.hub.add_service(&numbers).unwrap();
        }
        numbers
    }

    fn set(&self, key: usize, value: u64) {
        self.values[key].store(value, Ordering::SeqCst);
    }

    fn runs(&self, method: &str) -> u64 {
        self.events.computed(&format!("Numbers::{method}"))
    }

    async fn consolidations(&self, count: u64) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.events
                .wait_until(|events| events.consolidated("Numbers::parity") >= count),
        )
        .await
        .expect("the consolidation ends");
    }
}

#[tokio::test]
async fn an_unchanged_value_keeps_its_dependents_and_a_changed_one_invalidates_them() {
    let numbers = Numbers::new(true);
    let (label, computed) = capture(numbers.label(1)).await.unwrap();
    assert_eq!(label, "1 is odd");

    // 1 → 3: still odd.
    numbers.set(1, 3);
    invalidate! { numbers.value(1); }
    numbers.consolidations(1).await;
    assert_eq!(numbers.runs("parity"), 2, "parity was computed again");
    assert!(computed.is_consistent(), "the label did not change: kept");
    assert_eq!(numbers.label(1).await, "1 is odd");
    assert_eq!(numbers.runs("label"), 1);

    // The label now depends on the new parity: asking for that one again, unchanged, keeps it;
    // a change reaches it.
    invalidate! { numbers.parity(1); }
    numbers.consolidations(2).await;
    assert!(computed.is_consistent());
    numbers.set(1, 4);
    invalidate! { numbers.value(1); }
    numbers.consolidations(3).await;
    assert_eq!(
        computed.state(),
        ComputedState::Invalidated,
        "1 → 4: now even"
    );
    assert_eq!(numbers.label(1).await, "1 is even");
    assert_eq!(numbers.runs("label"), 2);
}

#[tokio::test]
async fn a_service_not_added_to_its_hub_invalidates_the_dependents_at_once() {
    let numbers = Numbers::new(false);
    let (_, computed) = capture(numbers.label(2)).await.unwrap();
    invalidate! { numbers.value(2); }
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(numbers.events.consolidated("Numbers::parity"), 0);
}

#[tokio::test]
async fn a_recomputation_that_panics_invalidates_the_dependents() {
    let numbers = Numbers::new(true);
    let (_, computed) = capture(numbers.label(3)).await.unwrap();
    numbers.panicking.store(true, Ordering::SeqCst);
    invalidate! { numbers.value(3); }
    tokio::time::timeout(Duration::from_secs(10), computed.when_invalidated())
        .await
        .expect("the dependents are invalidated when the recomputation panics");
    numbers.panicking.store(false, Ordering::SeqCst);
    assert_eq!(numbers.label(3).await, "3 is odd");
}

#[tokio::test]
async fn invalidate_everything_does_not_wait_for_a_consolidation() {
    let numbers = Numbers::new(true);
    let (_, computed) = capture(numbers.label(4)).await.unwrap();
    numbers.hub.invalidate_everything();
    assert_eq!(computed.state(), ComputedState::Invalidated);
}

#[test]
fn without_a_runtime_the_dependents_are_invalidated_at_once() {
    let numbers = Numbers::new(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (_, computed) = runtime.block_on(capture(numbers.label(5))).unwrap();
    invalidate! { numbers.value(5); }
    assert_eq!(computed.state(), ComputedState::Invalidated);
}
