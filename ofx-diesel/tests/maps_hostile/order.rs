//! Redo order under attack: many concurrent writers on three hosts writing two maps, nested
//! commands (committed, failing, failing and swallowed), commands that write and then fail,
//! transactions larger than a read batch.

use std::collections::BTreeSet;
use std::time::Duration;

use ofx_diesel::maps::{MapAction, TransactionCommitted};
use rand::{Rng, SeedableRng};

use crate::kit::{
    Host, Note, OTHER, Op, Sql, Step, VALUES, assert_redo_order, deaf, fresh_gate, gate, log_head,
    other, run_on, table, values, within,
};

backend_tests! {
    three_hosts_of_concurrent_writers_see_one_order =>
        sqlite_three_hosts_of_concurrent_writers_see_one_order,
        postgres_three_hosts_of_concurrent_writers_see_one_order;
    a_nested_command_writes_in_its_parents_transaction =>
        sqlite_a_nested_command_writes_in_its_parents_transaction,
        postgres_a_nested_command_writes_in_its_parents_transaction;
    a_swallowed_nested_failure_notifies_only_the_parents_writes =>
        sqlite_a_swallowed_nested_failure_notifies_only_the_parents_writes,
        postgres_a_swallowed_nested_failure_notifies_only_the_parents_writes;
    a_command_failing_after_writes_to_two_maps_notifies_nothing =>
        sqlite_a_command_failing_after_writes_to_two_maps_notifies_nothing,
        postgres_a_command_failing_after_writes_to_two_maps_notifies_nothing;
    transactions_around_and_beyond_a_read_batch_are_delivered_whole =>
        sqlite_transactions_around_and_beyond_a_read_batch_are_delivered_whole,
        postgres_transactions_around_and_beyond_a_read_batch_are_delivered_whole;
    writes_to_two_maps_interleave_in_write_order =>
        sqlite_writes_to_two_maps_interleave_in_write_order,
        postgres_writes_to_two_maps_interleave_in_write_order;
    a_writer_paused_in_its_transaction_holds_back_later_commits =>
        sqlite_a_writer_paused_in_its_transaction_holds_back_later_commits,
        postgres_a_writer_paused_in_its_transaction_holds_back_later_commits;
    a_write_after_a_read_sees_what_committed_in_between =>
        sqlite_a_write_after_a_read_sees_what_committed_in_between,
        postgres_a_write_after_a_read_sees_what_committed_in_between;
    changes_carry_their_commands_operation_id =>
        sqlite_changes_carry_their_commands_operation_id,
        postgres_changes_carry_their_commands_operation_id;
    tiny_read_batches_and_rebuild_pages_change_nothing =>
        sqlite_tiny_read_batches_and_rebuild_pages_change_nothing,
        postgres_tiny_read_batches_and_rebuild_pages_change_nothing;
    a_host_without_the_written_maps_gets_the_same_transactions =>
        sqlite_a_host_without_the_written_maps_gets_the_same_transactions,
        postgres_a_host_without_the_written_maps_gets_the_same_transactions;
    a_writer_whose_first_map_write_was_rolled_back_still_queues_others =>
        sqlite_a_writer_whose_first_map_write_was_rolled_back_still_queues_others,
        postgres_a_writer_whose_first_map_write_was_rolled_back_still_queues_others;
}

/// Asserts that the notes of every host after its start are the same, in redo order, and give
/// the table's content; returns the transactions.
pub(crate) async fn assert_hosts_agree<B: Sql>(hosts: &[&Host<B>]) -> Vec<TransactionCommitted> {
    for host in hosts {
        host.sync().await;
    }
    let first = hosts[0].recorder.after_start();
    let transactions = assert_redo_order(&first, true);
    for (n, host) in hosts.iter().enumerate() {
        let notes = host.recorder.after_start();
        assert_eq!(
            notes.len(),
            first.len(),
            "host {n} got as many notifications as host 0"
        );
        for (at, (mine, theirs)) in notes.iter().zip(&first).enumerate() {
            assert_eq!(mine, theirs, "host {n}, notification {at}");
        }
        for map in [VALUES, OTHER] {
            assert_eq!(
                host.recorder.content(map),
                table(&host.db, map).await,
                "host {n}, map {map}"
            );
        }
    }
    // Dense over the transactions: each one's first change follows the previous one's last.
    for pair in transactions.windows(2) {
        assert_eq!(
            pair[1].sequence - pair[1].changes as u64,
            pair[0].sequence,
            "dense: {pair:?}"
        );
    }
    transactions
}

fn random_steps(rng: &mut rand::rngs::StdRng, depth: u32) -> Vec<Step> {
    let count = rng.random_range(1..=4);
    (0..count)
        .map(|_| {
            let map = if rng.random_bool(0.5) { VALUES } else { OTHER };
            let key = format!("k{:02}", rng.random_range(0..30));
            let value = rng.random_range(0..10);
            let op = match rng.random_range(0..100) {
                0..35 => Op::Set(key, value),
                35..45 => Op::Add(key, value),
                45..55 => Op::Update(key, value),
                55..70 => Op::Remove(key),
                70..75 => Op::GetOrAdd(key, value),
                75..77 => Op::Clear,
                77..80 => Op::Fail,
                80..90 if depth < 2 => Op::Nested(random_steps(rng, depth + 1)),
                90..100 if depth < 2 => Op::NestedSwallowed(random_steps(rng, depth + 1)),
                _ => Op::Set(key, value),
            };
            Step {
                map: map.to_owned(),
                op,
            }
        })
        .collect()
}

/// Three hosts, three writers each, random transactions over two maps with nested commands
/// (some failing and swallowed), refusals and failures: every host gets the same notifications
/// in redo order, with dense, strictly increasing sequence numbers, one per committed command.
async fn three_hosts_of_concurrent_writers_see_one_order<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let c = Host::<B>::open_with(url, deaf(), |_| {}).await;
    let head_before = log_head(&a.db).await;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..9_u64 {
        let hub = [&a, &b, &c][usize::try_from(writer % 3).unwrap()]
            .hub()
            .clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer);
            let mut committed = 0;
            for _ in 0..40 {
                if run_on(&hub, random_steps(&mut rng, 0)).await.is_ok() {
                    committed += 1;
                }
            }
            committed
        });
    }
    let mut committed = 0;
    while let Some(done) = tasks.join_next().await {
        committed += done.unwrap();
    }
    let transactions = assert_hosts_agree(&[&a, &b, &c]).await;
    assert!(committed > 50, "most commands commit ({committed})");
    // A committed command that wrote nothing (a swallowed nested failure only, a remove of a
    // missing key) has no transaction: at most one per committed command, every operation once.
    assert!(
        transactions.len() <= committed,
        "{} > {committed}",
        transactions.len()
    );
    let operations: BTreeSet<_> = transactions.iter().map(|t| t.operation).collect();
    assert_eq!(
        operations.len(),
        transactions.len(),
        "one transaction per operation"
    );
    assert_eq!(
        transactions.last().unwrap().sequence,
        log_head(&a.db).await,
        "the last transaction ends at the log's head"
    );
    assert_eq!(
        transactions[0].sequence - transactions[0].changes as u64,
        head_before
    );
}

/// A parent writes, a nested command writes both maps, the parent writes again: one
/// transaction, its four changes in write order with one operation, on both hosts.
async fn a_nested_command_writes_in_its_parents_transaction<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![
        values(Op::Add("a".into(), 1)),
        values(Op::Nested(vec![
            other(Op::Set("b".into(), 2)),
            values(Op::Set("c".into(), 3)),
            values(Op::Nested(vec![values(Op::Remove("a".into()))])),
        ])),
        values(Op::Set("d".into(), 4)),
    ])
    .await
    .unwrap();
    let transactions = assert_hosts_agree(&[&a, &b]).await;
    assert_eq!(transactions.len(), 1, "{transactions:?}");
    assert_eq!(transactions[0].changes, 5);
    let maps: Vec<String> = a
        .recorder
        .after_start()
        .into_iter()
        .filter_map(|note| match note {
            Note::Change { map, action, .. } => Some(format!("{map}:{action:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        maps,
        vec![
            "values:Add { key: \"a\", value: 1 }",
            "other:Add { key: \"b\", value: 2 }",
            "values:Add { key: \"c\", value: 3 }",
            "values:Remove { key: \"a\", old: 1 }",
            "values:Add { key: \"d\", value: 4 }",
        ]
    );
}

/// A nested command writes both maps and fails; its parent swallows the failure and writes
/// on: only the parent's writes are in the table and notified, with no hole in the positions.
async fn a_swallowed_nested_failure_notifies_only_the_parents_writes<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("before".into(), 0))])
        .await
        .unwrap();
    a.run(vec![
        values(Op::Add("a".into(), 1)),
        values(Op::NestedSwallowed(vec![
            values(Op::Set("x".into(), 9)),
            other(Op::Set("y".into(), 9)),
            values(Op::Remove("a".into())),
            values(Op::Fail),
        ])),
        // A nested command that fails on a refusal (an add of a present key).
        values(Op::NestedSwallowed(vec![
            other(Op::Set("z".into(), 9)),
            values(Op::Add("a".into(), 5)),
        ])),
        values(Op::Set("d".into(), 4)),
    ])
    .await
    .unwrap();
    let transactions = assert_hosts_agree(&[&a, &b]).await;
    assert_eq!(transactions.len(), 2, "{transactions:?}");
    assert_eq!(transactions[1].changes, 2, "only the parent's two writes");
    assert_eq!(
        transactions[1].sequence,
        transactions[0].sequence + 2,
        "no hole"
    );
    assert_eq!(
        table(&a.db, VALUES).await,
        [
            ("a".to_owned(), 1),
            ("before".to_owned(), 0),
            ("d".to_owned(), 4)
        ]
        .into_iter()
        .collect()
    );
    assert!(table(&a.db, OTHER).await.is_empty());
}

/// A command writes both maps (and a nested command's writes), then fails: no notification
/// anywhere, no entry, and the next transaction's sequence follows the previous one.
async fn a_command_failing_after_writes_to_two_maps_notifies_nothing<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("kept".into(), 1))])
        .await
        .unwrap();
    let head = log_head(&a.db).await;
    for failing in [
        vec![
            values(Op::Set("lost".into(), 1)),
            other(Op::Set("lost".into(), 1)),
            values(Op::Nested(vec![values(Op::Clear)])),
            values(Op::Fail),
        ],
        // The nested command fails, and so does its parent (the failure propagates).
        vec![
            other(Op::Set("lost".into(), 2)),
            values(Op::Nested(vec![
                values(Op::Restore(vec![("r".into(), 1)])),
                values(Op::Fail),
            ])),
        ],
        // A refusal after writes.
        vec![
            values(Op::Set("kept".into(), 5)),
            values(Op::Update("missing".into(), 1)),
        ],
    ] {
        assert!(a.run(failing).await.is_err());
    }
    assert_eq!(log_head(&a.db).await, head, "nothing appended");
    b.run(vec![other(Op::Set("next".into(), 2))]).await.unwrap();
    let transactions = assert_hosts_agree(&[&a, &b]).await;
    assert_eq!(transactions.len(), 2);
    assert_eq!(transactions[1].sequence, head + 1);
    assert_eq!(
        table(&a.db, VALUES).await,
        [("kept".to_owned(), 1)].into_iter().collect()
    );
    assert_eq!(
        table(&a.db, OTHER).await,
        [("next".to_owned(), 2)].into_iter().collect()
    );
}

/// Transactions of 1023, 1024, 1025 and 3000 changes (the read batch is 1024), written while
/// host B does not follow, then caught up by B at once: on both hosts each is delivered whole,
/// its changes then its `Committed`.
async fn transactions_around_and_beyond_a_read_batch_are_delivered_whole<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |_| {}).await;
    let mut expected = Vec::new();
    for (round, size) in [1023_usize, 1024, 1025, 3000].into_iter().enumerate() {
        let steps = (0..size)
            .map(|n| {
                let key = format!("r{round}-{n:04}");
                if n % 7 == 3 {
                    other(Op::Set(key, i64::try_from(n).unwrap()))
                } else {
                    values(Op::Set(key, i64::try_from(n).unwrap()))
                }
            })
            .collect();
        a.run(steps).await.unwrap();
        expected.push(size);
    }
    let transactions = within(
        Duration::from_secs(120),
        "the hosts agree",
        assert_hosts_agree(&[&a, &b]),
    )
    .await;
    let sizes: Vec<usize> = transactions.iter().map(|t| t.changes).collect();
    assert_eq!(sizes, expected);
}

/// Writes alternating between the two maps in one transaction: the changes come in write order
/// across the maps (consecutive positions), with the same operation.
async fn writes_to_two_maps_interleave_in_write_order<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let steps: Vec<Step> = (0..40)
        .map(|n| {
            let key = format!("k{}", n / 4);
            match n % 4 {
                0 => values(Op::Set(key, n)),
                1 => other(Op::Set(key, n)),
                2 => values(Op::Remove(key)),
                _ => other(Op::Update(key, -n)),
            }
        })
        .collect();
    b.run(steps.clone()).await.unwrap();
    let transactions = assert_hosts_agree(&[&a, &b]).await;
    assert_eq!(transactions.len(), 1);
    let changes: Vec<(String, MapAction<String, i64>)> = a
        .recorder
        .after_start()
        .into_iter()
        .filter_map(|note| match note {
            Note::Change { map, action, .. } => Some((map, action)),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 40);
    for (n, (map, action)) in changes.iter().enumerate() {
        let expected_map = if n % 2 == 0 { VALUES } else { OTHER };
        assert_eq!(map, expected_map, "change {n}: {action:?}");
    }
}

/// The kinds of the locks that connections to this database wait for (PostgreSQL; `None` on
/// SQLite, whose writers wait in a busy handler, unseen).
pub(crate) async fn lock_waits<B: Sql>(db: &ofx_diesel::DbHub<B>) -> Option<Vec<String>> {
    if B::NAME != "postgres" {
        return None;
    }
    let mut connection = db.connection().await.unwrap();
    let waits = B::pairs(
        &mut connection,
        "SELECT l.locktype AS first, l.mode AS second FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE NOT l.granted AND a.datname = current_database()"
            .to_owned(),
    )
    .await
    .unwrap();
    Some(waits.into_iter().map(|(kind, _)| kind).collect())
}

/// Waits until a connection to the database waits for a lock (PostgreSQL), and returns the
/// kinds waited for; on SQLite returns at once.
pub(crate) async fn a_lock_wait<B: Sql>(db: &ofx_diesel::DbHub<B>) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match lock_waits(db).await {
            None => return Vec::new(),
            Some(waits) if !waits.is_empty() => return waits,
            Some(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no writer waits for a lock"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs `parent` on host A (it ends with a pause, in its transaction), then a writer of
/// `values` on host B once A is paused: B waits for the maps' lock (on PostgreSQL an advisory
/// lock, seen waiting), both commit, A's transaction first on both hosts.
async fn second_writer_queues_behind<B: Sql>(url: &str, mut parent: Vec<Step>) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let name = fresh_gate();
    parent.push(values(Op::Pause(name.clone())));
    let first = {
        let hub = a.hub().clone();
        tokio::spawn(async move { run_on(&hub, parent).await })
    };
    gate(&name).reached(1).await;
    let second = {
        let hub = b.hub().clone();
        tokio::spawn(async move { run_on(&hub, vec![values(Op::Set("second".into(), 2))]).await })
    };
    let waits = a_lock_wait(&a.db).await;
    gate(&name).open();
    within(Duration::from_secs(30), "the first writer", first)
        .await
        .unwrap()
        .unwrap();
    let second = within(Duration::from_secs(30), "the second writer", second)
        .await
        .unwrap();
    if B::NAME == "postgres" {
        assert_eq!(
            waits,
            vec!["advisory".to_owned()],
            "the second writer waits for the maps' advisory lock"
        );
    }
    second.unwrap();
    let transactions = assert_hosts_agree(&[&a, &b]).await;
    assert_eq!(transactions.len(), 2, "{transactions:?}");
    let last_key = a
        .recorder
        .after_start()
        .into_iter()
        .rev()
        .find_map(|note| match note {
            Note::Change {
                action: MapAction::Add { key, .. },
                ..
            } => Some(key),
            _ => None,
        });
    assert_eq!(
        last_key.as_deref(),
        Some("second"),
        "the second writer commits second"
    );
}

/// Writer 1 (host A) writes and stays in its transaction; writer 2 (host B) starts after and
/// writes: it queues (it cannot commit first), and on both hosts writer 1's transaction comes
/// first.
async fn a_writer_paused_in_its_transaction_holds_back_later_commits<B: Sql>(url: &str) {
    second_writer_queues_behind::<B>(url, vec![values(Op::Set("first".into(), 1))]).await;
}

/// As above, but writer 1's first map write was in a nested command that failed (its parent
/// swallowed the failure, so that write was rolled back to a savepoint) before it wrote again:
/// writer 1 still holds the maps' lock for its later write.
async fn a_writer_whose_first_map_write_was_rolled_back_still_queues_others<B: Sql>(url: &str) {
    second_writer_queues_behind::<B>(
        url,
        vec![
            values(Op::NestedSwallowed(vec![
                values(Op::Set("rolled back".into(), 0)),
                values(Op::Fail),
            ])),
            values(Op::Set("first".into(), 1)),
        ],
    )
    .await;
}

/// Command 1 (host A) reads keys with `get_in` (before any map write: it may not hold the maps'
/// lock yet) and pauses; command 2 (host B) adds, updates and removes those keys and commits;
/// command 1 then writes them: its writes see command 2's (the changes fit: no `Add` of a
/// present key, no `Update` from a stale value), or it fails; either way every host's
/// notifications replay to the table.
async fn a_write_after_a_read_sees_what_committed_in_between<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![
        values(Op::Set("u".into(), 1)),
        values(Op::Set("r".into(), 1)),
    ])
    .await
    .unwrap();
    let name = fresh_gate();
    let first = {
        let hub = a.hub().clone();
        let name = name.clone();
        tokio::spawn(async move {
            run_on(
                &hub,
                vec![
                    values(Op::Expect("n".into(), None)),
                    values(Op::Expect("u".into(), Some(1))),
                    values(Op::Expect("r".into(), Some(1))),
                    values(Op::Pause(name)),
                    values(Op::Set("n".into(), 10)),
                    values(Op::Set("u".into(), 10)),
                    values(Op::Set("r".into(), 10)),
                    values(Op::Remove("gone".into())),
                ],
            )
            .await
        })
    };
    gate(&name).reached(1).await;
    // The second command commits while the first is paused (if the first holds the maps'
    // lock already, it waits: then open the gate first).
    let mut second = {
        let hub = b.hub().clone();
        tokio::spawn(async move {
            run_on(
                &hub,
                vec![
                    values(Op::Add("n".into(), 2)),
                    values(Op::Update("u".into(), 2)),
                    values(Op::Remove("r".into())),
                    values(Op::Set("gone".into(), 2)),
                ],
            )
            .await
        })
    };
    // Done within 2 s unless it waits for the first (which then holds the maps' lock).
    let second_first = tokio::time::timeout(Duration::from_secs(2), &mut second)
        .await
        .ok();
    let second_was_first = second_first.is_some();
    gate(&name).open();
    let first = within(Duration::from_secs(30), "the first", first)
        .await
        .unwrap();
    let second = match second_first {
        Some(second) => second.unwrap(),
        None => within(Duration::from_secs(30), "the second", second)
            .await
            .unwrap(),
    };
    first.unwrap();
    if second_was_first {
        // The first wrote after the second committed: its `set`s update the second's values.
        second.unwrap();
    } else {
        // The second waited for the first (which held the maps' lock from its `get_in`, or
        // its transaction's start): the first commits, then the second's `add` of `n` is
        // refused.
        assert!(second.is_err());
    }
    assert_eq!(
        table(&a.db, VALUES).await,
        [
            ("n".to_owned(), 10),
            ("r".to_owned(), 10),
            ("u".to_owned(), 10)
        ]
        .into_iter()
        .collect()
    );
    assert_hosts_agree(&[&a, &b]).await;
}

/// Each change, and each transaction, carries the operation id of the command that made it
/// (the outermost command's for a nested one), on every host.
async fn changes_carry_their_commands_operation_id<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let tag = format!("tag-{}", uuid::Uuid::new_v4().simple());
    let nested_tag = format!("{tag}-nested");
    a.run(vec![
        values(Op::Tag(tag.clone())),
        values(Op::Set("a".into(), 1)),
        values(Op::Nested(vec![
            values(Op::Tag(nested_tag.clone())),
            other(Op::Set("b".into(), 2)),
        ])),
    ])
    .await
    .unwrap();
    let operation = crate::kit::tagged(&tag).unwrap();
    assert_eq!(crate::kit::tagged(&nested_tag), Some(operation));
    assert_hosts_agree(&[&a, &b]).await;
    for host in [&a, &b] {
        for note in host.recorder.after_start() {
            match note {
                Note::Change { operation: id, .. } => assert_eq!(id, operation),
                Note::Committed(committed) => assert_eq!(committed.operation, operation),
                _ => {}
            }
        }
    }
}

/// A host reading one change at a time and rebuilding one entry a page, another that does so
/// and polls only hourly, and a third with the defaults, under random writers with restores and
/// nested commands: they agree.
async fn tiny_read_batches_and_rebuild_pages_change_nothing<B: Sql>(url: &str) {
    let mut tiny = ofx_diesel::maps::MapSettings::default();
    tiny.read_batch = 1;
    tiny.rebuild_page = 1;
    let mut tiny_deaf = deaf();
    tiny_deaf.read_batch = 1;
    tiny_deaf.rebuild_page = 1;
    let a = Host::<B>::open_with(url, tiny, |_| {}).await;
    let b = Host::<B>::open_with(url, tiny_deaf, |_| {}).await;
    let c = Host::<B>::open(url).await;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..6_u64 {
        let hub = [&a, &b, &c][usize::try_from(writer % 3).unwrap()]
            .hub()
            .clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(300 + writer);
            for round in 0..25 {
                let mut steps = random_steps(&mut rng, 0);
                if round % 10 == 9 {
                    steps.push(values(Op::Restore(
                        (0..rng.random_range(0..8))
                            .map(|n| (format!("k{n:02}"), n))
                            .collect(),
                    )));
                }
                let _ = run_on(&hub, steps).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let d = Host::<B>::open_with(
        url,
        {
            let mut settings = ofx_diesel::maps::MapSettings::default();
            settings.rebuild_page = 1;
            settings
        },
        |_| {},
    )
    .await;
    for host in [&a, &b, &c, &d] {
        host.sync().await;
        assert_redo_order(&host.recorder.notes(), false);
        for map in [VALUES, OTHER] {
            assert_eq!(host.recorder.content(map), table(&a.db, map).await, "{map}");
        }
    }
    assert_eq!(a.recorder.committed(), b.recorder.committed());
    assert_eq!(a.recorder.committed(), c.recorder.committed());
}

/// A host whose manager has only `values` (no `other`, no observer of it) gets the same
/// `transaction_committed` notifications (sequence, operation, number of changes) as a host
/// with both maps, also for transactions that write only `other`.
async fn a_host_without_the_written_maps_gets_the_same_transactions<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let db = ofx_diesel::DbHub::<B>::open(url, crate::kit::fast())
        .await
        .unwrap();
    let maps = ofx_diesel::maps::MapManager::new(&db);
    let recorder = crate::kit::Recorder::default();
    maps.subscribe(recorder.clone());
    maps.map::<String, i64>(VALUES)
        .unwrap()
        .subscribe(recorder.of(VALUES));
    let _hub = ofx_core::Hub::builder()
        .with(db.clone())
        .with(maps.clone())
        .start()
        .await
        .unwrap();
    maps.ready().await.unwrap();
    a.run(vec![
        values(Op::Set("v".into(), 1)),
        other(Op::Set("o".into(), 1)),
    ])
    .await
    .unwrap();
    a.run(vec![
        other(Op::Set("p".into(), 2)),
        other(Op::Remove("o".into())),
    ])
    .await
    .unwrap();
    a.run(vec![values(Op::Set("w".into(), 3))]).await.unwrap();
    a.sync().await;
    maps.sync_within(Duration::from_secs(20)).await.unwrap();
    assert_eq!(recorder.committed(), a.recorder.committed());
    assert_eq!(recorder.committed().len(), 3);
    assert_eq!(recorder.content(VALUES), table(&a.db, VALUES).await);
}
