//! Redo order: within a transaction in write order, across transactions in commit order, the
//! same on every host, the writer included; commit sequence numbers.

use std::time::Duration;

use ofx_diesel::Backend;
use ofx_diesel::maps::{MapAction, TransactionCommitted};

use crate::common::{Host, Op, until};

backend_tests! {
    create_delete_create_gives_three_notifications_in_order_on_both_hosts =>
        sqlite_create_delete_create_gives_three_notifications_in_order_on_both_hosts,
        postgres_create_delete_create_gives_three_notifications_in_order_on_both_hosts;
    sequence_numbers_increase_and_are_equal_across_hosts =>
        sqlite_sequence_numbers_increase_and_are_equal_across_hosts,
        postgres_sequence_numbers_increase_and_are_equal_across_hosts;
    a_failed_command_notifies_nothing =>
        sqlite_a_failed_command_notifies_nothing,
        postgres_a_failed_command_notifies_nothing;
    a_failed_nested_command_leaves_no_change_and_no_hole =>
        sqlite_a_failed_nested_command_leaves_no_change_and_no_hole,
        postgres_a_failed_nested_command_leaves_no_change_and_no_hole;
    reads_are_fresh_on_every_host =>
        sqlite_reads_are_fresh_on_every_host,
        postgres_reads_are_fresh_on_every_host;
}

/// Add(X), Remove(X), Add(X) in one transaction: three notifications in that order, with
/// consecutive positions and the transaction's sequence, then the transaction, on both hosts.
async fn create_delete_create_gives_three_notifications_in_order_on_both_hosts<B: Backend>(
    url: &str,
) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.apply(vec![
        Op::Add("x".into(), 1),
        Op::Remove("x".into()),
        Op::Add("x".into(), 2),
    ])
    .await
    .unwrap();
    // The writer has them when its call returned.
    assert_eq!(a.recorder.committed().len(), 1, "{:?}", a.recorder.notes());
    b.sync().await;
    for host in [&a, &b] {
        let changes = host.recorder.changes_since_rebuild();
        let committed = host.recorder.committed();
        assert_eq!(committed.len(), 1, "{:?}", host.recorder.notes());
        let sequence = committed[0].sequence;
        assert_eq!(committed[0].changes, 3);
        assert_eq!(
            changes,
            vec![
                (
                    MapAction::Add {
                        key: "x".into(),
                        value: 1
                    },
                    sequence,
                    sequence - 2
                ),
                (
                    MapAction::Remove {
                        key: "x".into(),
                        old: 1
                    },
                    sequence,
                    sequence - 1
                ),
                (
                    MapAction::Add {
                        key: "x".into(),
                        value: 2
                    },
                    sequence,
                    sequence
                ),
            ]
        );
        // The transaction comes after its changes.
        let notes = host.recorder.notes();
        assert!(matches!(
            notes.last(),
            Some(crate::common::Note::Committed(_))
        ));
    }
    assert_eq!(a.recorder.committed(), b.recorder.committed());
}

/// Four writers on each of two hosts: every host gets every transaction once, in strictly
/// increasing sequence order, the same list on both; each transaction's changes come before
/// it with the positions up to its sequence.
async fn sequence_numbers_increase_and_are_equal_across_hosts<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let hub = if writer % 2 == 0 {
            a.hub().clone()
        } else {
            b.hub().clone()
        };
        tasks.spawn(async move {
            for n in 0..20 {
                hub.commander()
                    .call(crate::common::Apply {
                        ops: vec![
                            Op::Set(format!("w{writer}"), n),
                            Op::Set(format!("k{}", n % 5), writer),
                        ],
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    a.sync().await;
    b.sync().await;
    let on_a = a.recorder.committed();
    let on_b = b.recorder.committed();
    assert_eq!(on_a.len(), 160);
    assert_eq!(
        on_a, on_b,
        "the same transactions, in the same order, on both hosts"
    );
    assert!(
        on_a.windows(2)
            .all(|pair| pair[0].sequence < pair[1].sequence),
        "strictly increasing"
    );
    assert!(on_a.iter().all(|committed| committed.changes == 2));
    // Dense over the transactions: each one's first change follows the previous one.
    let first = on_a[0].sequence - 2;
    for (index, committed) in on_a.iter().enumerate() {
        assert_eq!(committed.sequence, first + 2 * (index as u64 + 1));
    }
    let operations: std::collections::BTreeSet<_> = on_a
        .iter()
        .map(|committed: &TransactionCommitted| committed.operation)
        .collect();
    assert_eq!(operations.len(), 160, "one sequence number per transaction");
    assert_eq!(a.recorder.content(), a.table().await);
    assert_eq!(b.recorder.content(), a.table().await);
}

/// A command that wrote and then failed leaves no entry and no change; the next transaction's
/// sequence follows the previous one's.
async fn a_failed_command_notifies_nothing<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.apply(vec![Op::Add("kept".into(), 1)]).await.unwrap();
    let before = a.recorder.committed()[0].sequence;
    assert!(
        a.apply(vec![
            Op::Add("lost".into(), 2),
            Op::Set("kept".into(), 9),
            Op::Fail
        ])
        .await
        .is_err()
    );
    a.apply(vec![Op::Set("kept".into(), 3)]).await.unwrap();
    b.sync().await;
    for host in [&a, &b] {
        let committed = host.recorder.committed();
        assert_eq!(committed.len(), 2, "{:?}", host.recorder.notes());
        assert_eq!(committed[1].sequence, before + 1, "no hole");
        assert_eq!(
            host.recorder.content(),
            [("kept".to_owned(), 3)].into_iter().collect()
        );
    }
    assert_eq!(
        a.table().await,
        [("kept".to_owned(), 3)].into_iter().collect()
    );
}

/// `get`, `len` and `entries` are compute methods: cached, and invalidated by committed
/// changes on every host (the writer before its call returns).
async fn reads_are_fresh_on_every_host<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let key = "k".to_owned();
    assert_eq!(a.values().get(&key).await.unwrap(), None);
    assert_eq!(b.values().get(&key).await.unwrap(), None);
    assert_eq!(b.values().len().await.unwrap(), 0);
    a.apply(vec![Op::Add(key.clone(), 1)]).await.unwrap();
    assert_eq!(
        a.values().get(&key).await.unwrap(),
        Some(1),
        "read-your-writes"
    );
    b.sync().await;
    assert_eq!(b.values().get(&key).await.unwrap(), Some(1));
    assert_eq!(b.values().len().await.unwrap(), 1);
    b.apply(vec![Op::Clear]).await.unwrap();
    assert_eq!(b.values().get(&key).await.unwrap(), None);
    assert_eq!(b.values().entries().await.unwrap(), vec![]);
    a.sync().await;
    assert_eq!(a.values().get(&key).await.unwrap(), None);
    assert_eq!(a.values().len().await.unwrap(), 0);
    // A watcher-less host learns of others' commits by polling, too.
    a.apply(vec![Op::Add(key.clone(), 5)]).await.unwrap();
    until(Duration::from_secs(20), "b polls the change", || {
        b.recorder.content().get("k") == Some(&5)
    })
    .await;
}

/// Nested commands that wrote maps and failed (swallowed by the outer one): their changes are
/// rolled back with their writes, and the transaction's positions stay dense, whether the
/// transaction's first map write was in the failed one or before it.
async fn a_failed_nested_command_leaves_no_change_and_no_hole<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.apply(vec![
        Op::Add("a".into(), 1),
        Op::Nested(vec![Op::Add("b".into(), 2), Op::Fail]),
        Op::Add("c".into(), 3),
        Op::Nested(vec![Op::Add("d".into(), 4)]),
    ])
    .await
    .unwrap();
    a.apply(vec![
        Op::Nested(vec![Op::Add("x".into(), 5), Op::Fail]),
        Op::Add("y".into(), 6),
    ])
    .await
    .unwrap();
    b.sync().await;
    for host in [&a, &b] {
        let committed = host.recorder.committed();
        assert_eq!(committed.len(), 2, "{:?}", host.recorder.notes());
        assert_eq!(committed[0].changes, 3);
        assert_eq!(committed[1].changes, 1);
        assert_eq!(committed[1].sequence, committed[0].sequence + 1, "no hole");
        let positions: Vec<u64> = host
            .recorder
            .changes_since_rebuild()
            .iter()
            .map(|(_, _, position)| *position)
            .collect();
        let first = positions[0];
        assert_eq!(positions, (first..first + 4).collect::<Vec<_>>());
        assert_eq!(host.maps.status().coverage_losses, 0);
    }
    let expected: std::collections::BTreeMap<String, i64> =
        [("a", 1), ("c", 3), ("d", 4), ("y", 6)]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
    assert_eq!(a.table().await, expected);
    assert_eq!(b.recorder.content(), expected);
}
