//! Caching, dependency capture and transitive invalidation.

use ofx_core::{ComputeScope, ComputedState, Hub, HubEventKind, capture, invalidate};

use crate::common::Store;

#[tokio::test]
async fn a_second_call_is_served_from_the_cache() {
    let store = Store::new(Hub::builder());
    assert_eq!(store.value(3).await, 3);
    store.set(3, 30);
    assert_eq!(store.value(3).await, 3, "the cached value is served");
    assert_eq!(store.runs("value"), 1);
    assert_eq!(store.events.cache_hits("Store::value"), 1);
    assert_eq!(store.value(4).await, 4, "other arguments are other entries");
    assert_eq!(store.runs("value"), 2);
    assert_eq!(store.events.cache_hits("Store::value"), 1);
}

#[tokio::test]
async fn calls_made_while_computing_become_dependencies_across_awaits() {
    let store = Store::new(Hub::builder());
    let (sum, computed) = capture(store.sum(0, 1)).await.unwrap();
    assert_eq!(sum, 1);
    let dependencies = computed.dependencies();
    assert_eq!(
        dependencies.len(),
        2,
        "both value(0) and value(1), across the yield"
    );
    for dependency in &dependencies {
        assert!(
            dependency.method().ends_with("Store::value"),
            "{}",
            dependency.method()
        );
        let dependents = dependency.dependents();
        assert_eq!(dependents.len(), 1);
        assert!(dependents[0].ptr_eq(&computed));
    }
}

#[tokio::test]
async fn a_dependency_called_many_times_is_recorded_once_on_both_sides() {
    // Below and above the count where recording switches from a scan to a set (16).
    for n in [3, 16, 17, 64] {
        let store = Store::new(Hub::builder());
        let (sum, computed) = capture(store.sweep(n, 5)).await.unwrap();
        assert_eq!(sum, 5 * (0..n as u64).sum::<u64>());
        let dependencies = computed.dependencies();
        assert_eq!(dependencies.len(), n, "{n} dependencies, each once");
        for dependency in &dependencies {
            let dependents = dependency.dependents();
            assert_eq!(dependents.len(), 1, "{n}: one edge back to sweep");
            assert!(dependents[0].ptr_eq(&computed));
        }
        // Every one of them, the first and the last recorded included, reaches the dependent.
        for key in [0, n / 2, n - 1] {
            let (_, computed) = capture(store.sweep(n, 5)).await.unwrap();
            invalidate! { store.value(key); }
            assert_eq!(
                computed.state(),
                ComputedState::Invalidated,
                "{n}: invalidating value({key}) reaches sweep"
            );
        }
    }
}

#[tokio::test]
async fn invalidating_a_dependency_invalidates_its_dependents_transitively() {
    let store = Store::new(Hub::builder());
    assert_eq!(store.total().await, 3);
    let (_, total) = capture(store.total()).await.unwrap();
    let (_, sum) = capture(store.sum(0, 1)).await.unwrap();
    let (_, unrelated) = capture(store.value(5)).await.unwrap();

    store.set(0, 100);
    invalidate! { store.value(0); }

    assert_eq!(sum.state(), ComputedState::Invalidated);
    assert_eq!(total.state(), ComputedState::Invalidated);
    assert_eq!(store.events.invalidated("Store::value"), 1);
    assert_eq!(store.events.invalidated("Store::sum"), 1);
    assert_eq!(store.events.invalidated("Store::total"), 1);
    assert!(
        unrelated.is_consistent(),
        "values that did not use value(0) stay"
    );
    assert_eq!(store.total().await, 103);
    assert_eq!(store.runs("total"), 2);
    assert_eq!(store.runs("sum"), 2);
    // value(1), value(2) and value(5) were not invalidated: only value(0) ran again.
    assert_eq!(store.runs("value"), 5);
}

#[tokio::test]
async fn invalidation_is_idempotent_and_names_exact_arguments() {
    let store = Store::new(Hub::builder());
    let (_, zero) = capture(store.value(0)).await.unwrap();
    let (_, one) = capture(store.value(1)).await.unwrap();
    invalidate! {
        store.value(0);
        store.value(0);
        store.value(9);
    }
    assert_eq!(zero.state(), ComputedState::Invalidated);
    assert!(one.is_consistent());
    let (_, again) = capture(store.value(0)).await.unwrap();
    assert!(
        again.version() > zero.version(),
        "a recomputed value has a newer version"
    );
}

#[tokio::test]
async fn invalidate_accepts_control_flow() {
    let store = Store::new(Hub::builder());
    for key in 0..4 {
        store.value(key).await;
    }
    let maybe = Some(2_usize);
    invalidate! {
        if let Some(key) = maybe { store.value(key); }
        for key in [0, 1] { store.value(key); }
        match maybe { Some(0) => (), Some(_) => store.value(3), None => () }
    }
    assert_eq!(store.hub.cached_len(), 0);
}

#[tokio::test]
async fn when_invalidated_wakes_the_waiter() {
    let store = Store::new(Hub::builder());
    let (_, computed) = capture(store.value(7)).await.unwrap();
    let waiter = tokio::spawn({
        let computed = computed.clone();
        async move { computed.when_invalidated().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    invalidate! { store.value(7); }
    waiter.await.unwrap();
    assert_eq!(computed.state(), ComputedState::Invalidated);
}

#[tokio::test]
async fn a_spawned_task_is_not_captured_unless_given_the_scope() {
    let store = Store::new(Hub::builder());
    let (_, computed) = capture(async {
        let uncaptured = tokio::spawn({
            let store = store.clone();
            async move { store.value(10).await }
        });
        uncaptured.await.unwrap();
        let scope = ComputeScope::current();
        let captured = tokio::spawn({
            let store = store.clone();
            scope.run(async move { store.value(11).await })
        });
        captured.await.unwrap()
    })
    .await
    .unwrap();
    assert!(computed.method().ends_with("Store::value"));
    let (_, eleven) = capture(store.value(11)).await.unwrap();
    assert!(
        computed.ptr_eq(&eleven),
        "only the call made through the scope was captured"
    );
}

#[tokio::test]
async fn capture_without_a_compute_call_is_an_error() {
    let result = capture(async { 1 }).await;
    assert!(matches!(result, Err(ofx_core::Error::NothingCaptured)));
}

#[tokio::test]
async fn invalidate_everything_clears_the_hub() {
    let store = Store::new(Hub::builder());
    store.total().await;
    assert_eq!(store.hub.cached_len(), 5);
    store.hub.invalidate_everything();
    assert_eq!(store.hub.cached_len(), 0);
    assert_eq!(store.events.count(HubEventKind::Invalidated), 5);
    store.set(2, 20);
    assert_eq!(store.total().await, 21);
    assert_eq!(store.runs("value"), 6);
}
