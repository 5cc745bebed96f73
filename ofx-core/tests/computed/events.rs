//! The hub's event listener: what the computed module tells it.

use std::sync::{Arc, Mutex};

use ofx_core::{
    ComputeService, EventCounter, Hub, HubEvent, HubEventKind, capture, compute_method, invalidate,
};

use crate::common::Store;

#[tokio::test]
async fn misses_hits_invalidations_and_evictions_are_told() {
    let store = Store::new(Hub::builder().capacity(8));
    let events = &store.events;
    store.sum(0, 1).await;
    assert_eq!(events.computed("Store::sum"), 1);
    assert_eq!(events.computed("Store::value"), 2);
    assert_eq!(events.count(HubEventKind::CacheHit), 0);

    store.sum(0, 1).await;
    assert_eq!(events.cache_hits("Store::sum"), 1);
    assert_eq!(
        events.cache_hits("Store::value"),
        0,
        "a hit on sum reads no dependency"
    );

    invalidate! { store.value(0); }
    assert_eq!(events.invalidated("Store::value"), 1);
    assert_eq!(
        events.invalidated("Store::sum"),
        1,
        "told for the dependent too"
    );
    invalidate! { store.value(0); }
    assert_eq!(
        events.count(HubEventKind::Invalidated),
        2,
        "a value is invalidated once"
    );

    // Eviction: more values than the capacity, none read twice.
    for key in 10..30 {
        store.value(key).await;
    }
    assert!(store.hub.cached_len() <= 8);
    assert_eq!(
        events.evicted("Store::value"),
        events.count(HubEventKind::Evicted)
    );
    assert_eq!(
        events.count(HubEventKind::Evicted) + store.hub.cached_len() as u64,
        // value(1) and the 20 new values; value(0) and sum(0, 1) were invalidated.
        21,
        "every value that left the cache without an invalidation was evicted"
    );
}

/// A service on a hub given by the test, whose listener the test chooses.
struct Echo {
    hub: Hub,
}

impl ComputeService for Echo {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Echo {
    #[compute_method]
    async fn echo(&self, value: u64) -> u64 {
        value
    }
}

#[tokio::test]
async fn a_closure_is_a_listener_and_events_carry_the_full_method_name() {
    let seen: Arc<Mutex<Vec<HubEvent>>> = Arc::default();
    let echo = Echo {
        hub: Hub::builder()
            .event_listener({
                let seen = Arc::clone(&seen);
                move |event: &HubEvent| seen.lock().unwrap().push(event.clone())
            })
            .build()
            .unwrap(),
    };
    let (_, computed) = capture(echo.echo(1)).await.unwrap();
    echo.echo(1).await;
    computed.invalidate();
    let method = computed.method();
    assert!(method.ends_with("::Echo::echo"), "{method}");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            HubEvent::Computed { method },
            HubEvent::CacheHit { method },
            HubEvent::Invalidated { method },
        ]
    );
}

#[tokio::test]
async fn a_second_listener_replaces_the_first() {
    let first = EventCounter::new();
    let second = EventCounter::new();
    let echo = Echo {
        hub: Hub::builder()
            .event_listener(first.clone())
            .event_listener(second.clone())
            .build()
            .unwrap(),
    };
    echo.echo(1).await;
    assert_eq!(first.count(HubEventKind::Computed), 0);
    assert_eq!(second.computed("Echo::echo"), 1);
}

#[tokio::test]
async fn wait_until_awaits_a_computation_in_another_task() {
    let store = Store::new(Hub::builder());
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.gated(7).await }
    });
    store
        .events
        .wait_until(|events| events.computed("Store::gated") == 1 && events.computed("value") == 1)
        .await;
    assert!(!task.is_finished(), "gated(7) waits at its gate");
    store.gate.add_permits(1);
    assert_eq!(task.await.unwrap(), 7);
}
