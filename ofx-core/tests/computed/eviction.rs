//! Eviction keeps what is in use: a dependency of a cached value is in use, and eviction takes
//! the values nobody reads (and is still invalidation for them).

use ofx_core::{ComputeService, Computed, EventCounter, Hub, capture, compute_method};

/// Dependents, each computed from its own dependencies, and cold values read once.
struct Catalog {
    hub: Hub,
    events: EventCounter,
}

impl ComputeService for Catalog {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Dependencies per dependent.
const FAN_IN: u64 = 3;

impl Catalog {
    fn new(capacity: usize) -> Self {
        let events = EventCounter::new();
        Self {
            hub: Hub::builder()
                .capacity(capacity)
                .event_listener(events.clone())
                .build()
                .unwrap(),
            events,
        }
    }

    /// Read only by `dependent(id)`.
    #[compute_method]
    async fn dependency(&self, id: u64, part: u64) -> u64 {
        id * 100 + part
    }

    #[compute_method]
    async fn dependent(&self, id: u64) -> u64 {
        let mut sum = 0;
        for part in 0..FAN_IN {
            sum += self.dependency(id, part).await;
        }
        sum
    }

    #[compute_method]
    async fn cold(&self, id: u64) -> u64 {
        id
    }

    /// `chain(i)` is computed from `chain(i - 1)`: every value but the last is a dependency.
    #[compute_method]
    async fn chain(&self, i: u64) -> u64 {
        if i == 0 {
            0
        } else {
            Box::pin(self.chain(i - 1)).await + 1
        }
    }
}

/// Eviction is invalidation: no value is consistent while one it was computed from is not.
fn assert_no_consistent_value_outlives_a_dependency(computeds: &[Computed]) {
    for computed in computeds.iter().filter(|computed| computed.is_consistent()) {
        for dependency in computed.dependencies() {
            assert!(
                dependency.is_consistent(),
                "{computed:?} is cached, but its dependency {dependency:?} is not"
            );
        }
    }
}

#[tokio::test]
async fn dependents_in_use_keep_their_dependencies_cached() {
    let catalog = Catalog::new(100);
    let mut hot = Vec::new();
    for id in 0..10 {
        hot.push(capture(catalog.dependent(id)).await.unwrap().1);
    }
    for key in 0..10_000 {
        catalog.cold(key).await;
        for id in 0..10 {
            catalog.dependent(id).await;
        }
    }
    let survivors = hot
        .iter()
        .filter(|computed| computed.is_consistent())
        .count();
    assert_eq!(survivors, 10, "every dependent read on every step is kept");
    assert_eq!(
        catalog.events.computed("Catalog::dependent"),
        10,
        "no dependent was recomputed"
    );
    assert_eq!(
        catalog.events.computed("Catalog::dependency"),
        10 * FAN_IN,
        "no dependency was evicted"
    );
    assert!(catalog.hub.cached_len() <= 100);
    assert!(
        catalog.events.evicted("Catalog::cold") >= 10_000 - 100,
        "the cold values were evicted instead"
    );
}

#[tokio::test]
async fn a_dependent_nobody_reads_is_evicted_and_then_its_dependencies() {
    let catalog = Catalog::new(16);
    let (_, dependent) = capture(catalog.dependent(1)).await.unwrap();
    let dependencies = dependent.dependencies();
    assert_eq!(dependencies.len(), FAN_IN as usize);
    for key in 0..40 {
        catalog.cold(key).await;
        assert!(catalog.hub.cached_len() <= 16);
    }
    assert!(!dependent.is_consistent(), "nobody read it: evicted");
    assert_eq!(catalog.events.evicted("Catalog::dependent"), 1);
    for dependency in &dependencies {
        assert!(
            !dependency.is_consistent(),
            "its dependencies, unused once it went, were evicted too"
        );
    }
    assert_eq!(catalog.events.evicted("Catalog::dependency"), FAN_IN);

    // Recomputed on the next call, and invalidation reaches the new value.
    let (_, fresh) = capture(catalog.dependent(1)).await.unwrap();
    assert_eq!(catalog.events.computed("Catalog::dependent"), 2);
    let (_, dependency) = capture(catalog.dependency(1, 0)).await.unwrap();
    dependency.invalidate();
    assert!(!fresh.is_consistent());
}

#[tokio::test]
async fn the_cache_stays_bounded_when_every_value_is_a_dependency() {
    let catalog = Catalog::new(16);
    let mut seen = Vec::new();
    // Bottom up: chain(i) reads chain(i - 1), cached unless evicted; all but the top are
    // dependencies of a cached value, and a recomputation runs several links at once.
    for i in 0..300 {
        let (value, computed) = capture(catalog.chain(i)).await.unwrap();
        assert_eq!(value, i);
        seen.push(computed);
    }
    // The sweeps ended (none loops) and evicted: values nothing depends on, and then what
    // they depended on, from the top of the chain down.
    assert!(catalog.events.evicted("Catalog::chain") > 0);
    assert_no_consistent_value_outlives_a_dependency(&seen);
    // The cache may hold more than its capacity while a computation runs (what it read is in
    // use) and for an eighth of the capacity of computations after a sweep that could not get
    // under it; settled, it is within it.
    for key in 0..2 {
        catalog.cold(key).await;
    }
    assert!(catalog.hub.cached_len() <= 16);
}

#[tokio::test]
async fn values_in_use_beyond_the_capacity_are_evicted_with_their_dependents() {
    // 6 dependents over 3 dependencies each: 24 values in use, at a capacity of 16.
    let catalog = Catalog::new(16);
    let mut seen = Vec::new();
    for key in 0..200 {
        for id in 0..6 {
            seen.push(capture(catalog.dependent(id)).await.unwrap().1);
        }
        catalog.cold(key).await;
        assert!(catalog.hub.cached_len() <= 16);
        assert_no_consistent_value_outlives_a_dependency(&seen);
        seen.retain(Computed::is_consistent);
    }
    assert!(
        catalog.events.computed("Catalog::dependent") > 6,
        "they do not all fit"
    );
}
