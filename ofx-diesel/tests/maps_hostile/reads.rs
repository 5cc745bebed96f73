//! Reads under attack: `get`, `len` and `entries` are compute methods, cached on every host and
//! invalidated by the committed changes (the writer before its `call` returns, the others once
//! `sync` returned): never stale after quiescence, also after reads racing the writes, a
//! coverage loss, a restore, a clear and a map's removal.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::kit::{Host, Op, Sql, VALUES, deaf, run_on, table, values};

backend_tests! {
    reads_racing_writes_are_fresh_after_quiescence =>
        sqlite_reads_racing_writes_are_fresh_after_quiescence,
        postgres_reads_racing_writes_are_fresh_after_quiescence;
    a_writer_reads_its_write_when_its_call_returns =>
        sqlite_a_writer_reads_its_write_when_its_call_returns,
        postgres_a_writer_reads_its_write_when_its_call_returns;
    another_host_reads_a_write_once_sync_returned =>
        sqlite_another_host_reads_a_write_once_sync_returned,
        postgres_another_host_reads_a_write_once_sync_returned;
    cached_reads_are_fresh_after_a_coverage_loss =>
        sqlite_cached_reads_are_fresh_after_a_coverage_loss,
        postgres_cached_reads_are_fresh_after_a_coverage_loss;
    a_writer_far_behind_reads_its_write_when_its_call_returns =>
        sqlite_a_writer_far_behind_reads_its_write_when_its_call_returns,
        postgres_a_writer_far_behind_reads_its_write_when_its_call_returns;
    cached_reads_are_fresh_after_restore_clear_and_removal =>
        sqlite_cached_reads_are_fresh_after_restore_clear_and_removal,
        postgres_cached_reads_are_fresh_after_restore_clear_and_removal;
}

const KEYS: usize = 12;

fn key(n: usize) -> String {
    format!("k{n:02}")
}

/// Every read of `host` equals the table.
async fn assert_reads_fresh<B: Sql>(host: &Host<B>, what: &str) {
    let expected = table(&host.db, VALUES).await;
    let map = host.map(VALUES);
    for n in 0..KEYS {
        assert_eq!(
            map.get(&key(n)).await.unwrap(),
            expected.get(&key(n)).copied(),
            "{what}: get {}",
            key(n)
        );
    }
    assert_eq!(map.len().await.unwrap(), expected.len(), "{what}: len");
    assert_eq!(map.is_empty().await.unwrap(), expected.is_empty(), "{what}");
    assert_eq!(
        map.entries().await.unwrap(),
        expected.into_iter().collect::<Vec<_>>(),
        "{what}: entries"
    );
}

/// Writers on two hosts while readers on both hosts call `get`, `len` and `entries` without
/// pause (so that computations race invalidations): once the writers stopped and each host
/// synced, every read equals the table.
async fn reads_racing_writes_are_fresh_after_quiescence<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for reader in 0..4_u64 {
        let map = [&a, &b][usize::try_from(reader % 2).unwrap()].map(VALUES);
        let stop = stop.clone();
        readers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(reader);
            let mut reads = 0_u64;
            while !stop.is_cancelled() {
                match rng.random_range(0..4) {
                    0 => drop(map.len().await),
                    1 => drop(map.entries().await),
                    _ => drop(map.get(&key(rng.random_range(0..KEYS))).await),
                }
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        });
    }
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4_u64 {
        let hub = [&a, &b][usize::try_from(writer % 2).unwrap()].hub().clone();
        writers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(50 + writer);
            for _ in 0..60 {
                let k = key(rng.random_range(0..KEYS));
                let op = match rng.random_range(0..10) {
                    0..6 => Op::Set(k, rng.random_range(0..1000)),
                    6..9 => Op::Remove(k),
                    _ => Op::Clear,
                };
                let _ = run_on(&hub, vec![values(op)]).await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    stop.cancel();
    let mut reads = 0;
    while let Some(done) = readers.join_next().await {
        reads += done.unwrap();
    }
    assert!(reads > 100, "the readers read ({reads})");
    a.sync().await;
    b.sync().await;
    assert_reads_fresh(&a, "host A").await;
    assert_reads_fresh(&b, "host B").await;
}

/// Writers on one host, each with keys of its own, and a reader keeping every key's `get`
/// and `len` cached: when a writer's call returned, its host reads what it wrote.
async fn a_writer_reads_its_write_when_its_call_returns<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let _b = Host::<B>::open(url).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let map = a.map(VALUES);
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for n in 0..KEYS {
                    drop(map.get(&key(n)).await);
                }
                drop(map.len().await);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..3_usize {
        let hub = a.hub().clone();
        let map = a.map(VALUES);
        writers.spawn(async move {
            for n in 0..40_i64 {
                let k = key(writer * 4 + usize::try_from(n).unwrap() % 4);
                if n % 5 == 4 {
                    run_on(&hub, vec![values(Op::Remove(k.clone()))])
                        .await
                        .unwrap();
                    assert_eq!(map.get(&k).await.unwrap(), None, "removed {k}");
                } else {
                    run_on(&hub, vec![values(Op::Set(k.clone(), n))])
                        .await
                        .unwrap();
                    assert_eq!(map.get(&k).await.unwrap(), Some(n), "set {k}");
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    stop.cancel();
    reader.await.unwrap();
    assert_reads_fresh(&a, "host A").await;
}

/// Host B (deaf: it learns only from `sync`) keeps reads cached while A writes: after
/// `sync()` each of them is fresh, every time.
async fn another_host_reads_a_write_once_sync_returned<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |_| {}).await;
    let map = b.map(VALUES);
    for n in 0..40_i64 {
        let k = key(usize::try_from(n).unwrap() % 3);
        assert_eq!(
            map.get(&k).await.unwrap(),
            table(&a.db, VALUES).await.get(&k).copied()
        );
        let before = map.len().await.unwrap();
        let op = if n % 4 == 3 {
            Op::Remove(k.clone())
        } else {
            Op::Set(k.clone(), n)
        };
        a.run(vec![values(op)]).await.unwrap();
        b.sync().await;
        let expected = table(&a.db, VALUES).await;
        assert_eq!(
            map.get(&k).await.unwrap(),
            expected.get(&k).copied(),
            "round {n}"
        );
        let len = map.len().await.unwrap();
        assert_eq!(len, expected.len(), "round {n} (len was {before})");
    }
}

/// Host B (deaf) caches reads; A changes those keys in transactions of several changes and
/// trims the log, so that B loses coverage: after `sync()` its reads are fresh.
async fn cached_reads_are_fresh_after_a_coverage_loss<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |_| {}).await;
    a.run((0..KEYS).map(|n| values(Op::Set(key(n), 1))).collect())
        .await
        .unwrap();
    b.sync().await;
    assert_reads_fresh(&b, "before").await;
    for round in 0..5 {
        a.run(vec![
            values(Op::Set(key(0), 10 + round)),
            values(Op::Remove(key(1 + usize::try_from(round).unwrap()))),
            values(Op::Set("extra".into(), round)),
        ])
        .await
        .unwrap();
    }
    assert!(a.maps.trim_changes(Duration::ZERO).await.unwrap() > 0);
    b.sync().await;
    assert_eq!(b.maps.status().coverage_losses, 1);
    assert_reads_fresh(&b, "after the coverage loss").await;
    assert_eq!(
        b.map(VALUES).get(&"extra".to_owned()).await.unwrap(),
        Some(4)
    );
}

/// Cached reads on both hosts through a restore, a clear, a removal of the map and writes
/// after it: fresh on the writer when its call returned, on the other host after `sync`.
async fn cached_reads_are_fresh_after_restore_clear_and_removal<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let rounds: Vec<Vec<crate::kit::Step>> = vec![
        (0..KEYS).map(|n| values(Op::Set(key(n), 1))).collect(),
        vec![values(Op::Restore(
            (0..KEYS / 2).map(|n| (key(n * 2), 7)).collect(),
        ))],
        vec![values(Op::Set(key(1), 3)), values(Op::Clear)],
        vec![values(Op::Set(key(2), 4))],
        vec![values(Op::RemoveMap)],
        vec![values(Op::Set(key(3), 5)), values(Op::Set(key(4), 6))],
        vec![
            values(Op::Restore(vec![(key(5), 8)])),
            values(Op::Set(key(6), 9)),
        ],
        vec![values(Op::RemoveMap), values(Op::Set(key(7), 10))],
    ];
    for (n, steps) in rounds.into_iter().enumerate() {
        assert_reads_fresh(&a, &format!("A before round {n}")).await;
        assert_reads_fresh(&b, &format!("B before round {n}")).await;
        let (writer, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        writer.run(steps).await.unwrap();
        assert_reads_fresh(writer, &format!("the writer after round {n}")).await;
        other.sync().await;
        assert_reads_fresh(other, &format!("the other host after round {n}")).await;
    }
}

/// Host B (deaf) caches reads, falls far behind (A commits 40 transactions, then trims the log,
/// so B's follower must lose coverage and rebuild to reach B's own commit), then writes: when
/// B's call returns, B reads its write, and every read is fresh (B's follower went through
/// everything before B's commit, in order).
async fn a_writer_far_behind_reads_its_write_when_its_call_returns<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |_| {}).await;
    assert_reads_fresh(&b, "before").await;
    let mine = "mine".to_owned();
    assert_eq!(b.map(VALUES).get(&mine).await.unwrap(), None);
    for n in 0..40 {
        a.run(vec![
            values(Op::Set(key(usize::try_from(n).unwrap() % KEYS), n)),
            values(Op::Remove(key(usize::try_from(n + 3).unwrap() % KEYS))),
        ])
        .await
        .unwrap();
    }
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    b.run(vec![values(Op::Set(mine.clone(), 1))]).await.unwrap();
    assert_eq!(
        b.map(VALUES).get(&mine).await.unwrap(),
        Some(1),
        "read-your-writes"
    );
    assert_reads_fresh(&b, "right after B's call").await;
    assert_eq!(b.maps.status().coverage_losses, 1);
}
