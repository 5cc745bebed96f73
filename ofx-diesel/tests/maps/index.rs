//! The materialized-view pattern: a secondary index (value → sorted keys) kept by
//! notifications stays exactly the index of the table, on two hosts with eight concurrent
//! writers, after a coverage loss and after a restore.

use std::collections::BTreeMap;
use std::time::Duration;

use ofx_diesel::Backend;
use rand::{Rng, SeedableRng};

use crate::common::{Host, Index, Op, VALUES, deaf};

backend_tests! {
    a_secondary_index_stays_exact =>
        sqlite_a_secondary_index_stays_exact,
        postgres_a_secondary_index_stays_exact;
}

fn random_ops(rng: &mut rand::rngs::StdRng) -> Vec<Op> {
    let count = rng.random_range(1..=3);
    (0..count)
        .map(|_| {
            let key = format!("k{:02}", rng.random_range(0..40));
            let value = rng.random_range(0..8);
            match rng.random_range(0..100) {
                0..40 => Op::Set(key, value),
                40..60 => Op::Add(key, value),
                60..75 => Op::Update(key, value),
                75..98 => Op::Remove(key),
                _ => Op::Clear,
            }
        })
        .collect()
}

async fn a_secondary_index_stays_exact<B: Backend>(url: &str) {
    let index_a = Index::default();
    let index_b = Index::default();
    let a = Host::<B>::open_with(url, Default::default(), |maps| {
        maps.map::<String, i64>(VALUES)
            .unwrap()
            .subscribe(index_a.clone());
    })
    .await;
    let b = Host::<B>::open_with(url, deaf(), |maps| {
        maps.map::<String, i64>(VALUES)
            .unwrap()
            .subscribe(index_b.clone());
    })
    .await;
    let writers = 8;
    let per_writer = 150;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let hub = if writer % 2 == 0 {
            a.hub().clone()
        } else {
            b.hub().clone()
        };
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer);
            let mut refused = 0;
            for _ in 0..per_writer {
                let ops = random_ops(&mut rng);
                // An Add of a present key or an Update of a missing one is refused: the whole
                // transaction with it.
                if hub
                    .commander()
                    .call(crate::common::Apply { ops })
                    .await
                    .is_err()
                {
                    refused += 1;
                }
            }
            refused
        });
    }
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        refused += done.unwrap();
    }
    assert!(refused < writers * per_writer, "some commands committed");
    a.sync().await;
    b.sync().await;
    let table = a.table().await;
    let expected = Index::of(&table);
    assert_eq!(index_a.snapshot(), expected, "host A's index");
    assert_eq!(index_b.snapshot(), expected, "host B's index");
    assert_eq!(a.recorder.committed(), b.recorder.committed());

    // A coverage loss on B: it is behind while A writes and trims.
    for n in 0..20 {
        a.apply(vec![Op::Set(format!("k{:02}", n), 100 + n)])
            .await
            .unwrap();
    }
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    b.sync().await;
    assert_eq!(b.maps.status().coverage_losses, 1);
    let table = a.table().await;
    assert_eq!(
        index_b.snapshot(),
        Index::of(&table),
        "after the coverage loss"
    );
    assert_eq!(index_a.snapshot(), Index::of(&table));

    // A restore.
    let backup: BTreeMap<String, i64> = (0..30).map(|n| (format!("r{n:02}"), n % 4)).collect();
    a.apply(vec![Op::Restore(backup.clone().into_iter().collect())])
        .await
        .unwrap();
    b.apply(vec![Op::Set("r00".into(), 50)]).await.unwrap();
    a.sync().await;
    b.sync().await;
    let table = a.table().await;
    let mut expected_table = backup;
    expected_table.insert("r00".into(), 50);
    assert_eq!(table, expected_table);
    assert_eq!(index_a.snapshot(), Index::of(&table), "A after the restore");
    assert_eq!(index_b.snapshot(), Index::of(&table), "B after the restore");
}
