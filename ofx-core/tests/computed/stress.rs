//! Concurrent reads and invalidations on a multi-thread runtime: after quiescence, every cached
//! value equals a fresh computation.

use std::sync::atomic::{AtomicU64, Ordering};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};

use crate::common::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_value_survives_concurrent_writes() {
    let store = Store::new(Hub::builder().capacity(40));
    let writes = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..4_u64 {
        let store = store.clone();
        tasks.spawn(async move {
            for step in 0..2_000_u64 {
                let a = ((step * 7 + reader) % 16) as usize;
                let b = ((step * 13 + reader * 3) % 16) as usize;
                store.sum(a, b).await;
                if step % 5 == 0 {
                    store.total().await;
                }
            }
        });
    }
    for writer in 0..2_u64 {
        let store = store.clone();
        let writes = writes.clone();
        tasks.spawn(async move {
            for step in 0..1_000_u64 {
                let key = ((step * 5 + writer) % 16) as usize;
                // Write, then invalidate: what a command does.
                store.set(key, writes.fetch_add(1, Ordering::SeqCst) + 100);
                invalidate! { store.value(key); }
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    for a in 0..16 {
        for b in 0..16 {
            let expected =
                store.values[a].load(Ordering::SeqCst) + store.values[b].load(Ordering::SeqCst);
            assert_eq!(store.sum(a, b).await, expected, "sum({a}, {b}) is stale");
        }
    }
    let expected = (0..3)
        .map(|k| store.values[k].load(Ordering::SeqCst))
        .sum::<u64>();
    assert_eq!(store.total().await, expected);
}

/// `top` waits on `middle`, which waits on `source`; each yields while computing, so calls
/// often join computations in flight.
struct Layers {
    hub: Hub,
    version: AtomicU64,
}

impl ComputeService for Layers {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Layers {
    #[compute_method]
    async fn source(&self) -> u64 {
        let version = self.version.load(Ordering::SeqCst);
        tokio::task::yield_now().await;
        version
    }

    #[compute_method]
    async fn middle(&self) -> u64 {
        let version = self.source().await;
        tokio::task::yield_now().await;
        version
    }

    #[compute_method]
    async fn top(&self) -> u64 {
        tokio::task::yield_now().await;
        self.middle().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_started_after_an_invalidation_never_sees_what_it_invalidated() {
    let layers = std::sync::Arc::new(Layers {
        hub: Hub::new().unwrap(),
        version: AtomicU64::new(0),
    });
    // The last version whose invalidation has returned.
    let published = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let layers = layers.clone();
        let published = published.clone();
        tasks.spawn(async move {
            for _ in 0..3_000 {
                let floor = published.load(Ordering::SeqCst);
                let seen = layers.top().await;
                assert!(
                    seen >= floor,
                    "a call started after version {floor} was published got {seen}"
                );
            }
        });
    }
    {
        let layers = layers.clone();
        tasks.spawn(async move {
            for version in 1..=1_000 {
                layers.version.store(version, Ordering::SeqCst);
                invalidate! { layers.source(); }
                published.store(version, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
}
