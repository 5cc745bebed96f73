//! Edges of the API: map names that SQL could confuse, writes that change nothing, reads of the
//! command's own writes (`get_in`) across nested commands, observers that subscribe and
//! unsubscribe from inside their notifications, a manager on two hubs, `sync` racing writers,
//! compute methods that depend on map reads.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ofx_diesel::maps::{
    ManagerObserver, MapChange, MapManager, MapObserver, Rebuild, ReliableMap, TransactionCommitted,
};
use ofx_diesel::{Backend, DbHub};

use crate::kit::{
    Host, Note, OTHER, Op, Recorder, Sql, VALUES, assert_redo_order, content_of, deaf, fast,
    log_head, on, other, run_on, table, until, values, within,
};

backend_tests! {
    map_names_sql_could_confuse_stay_apart =>
        sqlite_map_names_sql_could_confuse_stay_apart,
        postgres_map_names_sql_could_confuse_stay_apart;
    writes_that_change_nothing_notify_nothing =>
        sqlite_writes_that_change_nothing_notify_nothing,
        postgres_writes_that_change_nothing_notify_nothing;
    get_in_sees_the_transactions_own_writes =>
        sqlite_get_in_sees_the_transactions_own_writes,
        postgres_get_in_sees_the_transactions_own_writes;
    observers_may_subscribe_and_unsubscribe_from_their_notifications =>
        sqlite_observers_may_subscribe_and_unsubscribe_from_their_notifications,
        postgres_observers_may_subscribe_and_unsubscribe_from_their_notifications;
    sync_covers_every_commit_before_it =>
        sqlite_sync_covers_every_commit_before_it,
        postgres_sync_covers_every_commit_before_it;
    compute_methods_over_map_reads_are_fresh =>
        sqlite_compute_methods_over_map_reads_are_fresh,
        postgres_compute_methods_over_map_reads_are_fresh;
    a_map_removed_and_written_again_in_one_transaction =>
        sqlite_a_map_removed_and_written_again_in_one_transaction,
        postgres_a_map_removed_and_written_again_in_one_transaction;
    observers_coming_and_going_while_changes_stream_see_contiguous_changes =>
        sqlite_observers_coming_and_going_while_changes_stream_see_contiguous_changes,
        postgres_observers_coming_and_going_while_changes_stream_see_contiguous_changes;
    the_status_counts_what_was_delivered =>
        sqlite_the_status_counts_what_was_delivered,
        postgres_the_status_counts_what_was_delivered;
    a_manager_on_a_second_hub_is_refused =>
        sqlite_a_manager_on_a_second_hub_is_refused,
        postgres_a_manager_on_a_second_hub_is_refused;
}

/// Names with SQL's wildcards and quotes, a prefix of another, the empty name: each map keeps
/// its own entries and notifications through writes, a clear and a removal.
async fn map_names_sql_could_confuse_stay_apart<B: Sql>(url: &str) {
    let names = ["a", "a%", "a_", "ab", "it's \"x\" \\ %", "", "ofx.maps"];
    let prepare = |recorder: Recorder| {
        move |maps: &MapManager<B>| {
            for name in names {
                maps.map::<String, i64>(name)
                    .unwrap()
                    .subscribe(recorder.of(name));
            }
        }
    };
    let on_a = Recorder::default();
    let on_b = Recorder::default();
    let a = Host::<B>::open_with(url, Default::default(), prepare(on_a.clone())).await;
    let b = Host::<B>::open_with(url, Default::default(), prepare(on_b.clone())).await;
    for (n, name) in names.iter().enumerate() {
        let value = i64::try_from(n).unwrap();
        a.run(vec![
            on(name, Op::Set("k".into(), value)),
            on(name, Op::Set(format!("{name}-own"), value)),
        ])
        .await
        .unwrap();
    }
    b.run(vec![on("a_", Op::Clear), on("a", Op::RemoveMap)])
        .await
        .unwrap();
    a.run(vec![on("a%", Op::Remove("k".into()))]).await.unwrap();
    a.sync().await;
    b.sync().await;
    for (n, name) in names.iter().enumerate() {
        let value = i64::try_from(n).unwrap();
        let expected: std::collections::BTreeMap<String, i64> = match *name {
            "a" | "a_" => Default::default(),
            "a%" => [(format!("{name}-own"), value)].into_iter().collect(),
            _ => [("k".to_owned(), value), (format!("{name}-own"), value)]
                .into_iter()
                .collect(),
        };
        assert_eq!(table(&a.db, name).await, expected, "table of {name:?}");
        for (host, recorder) in [(&a, &on_a), (&b, &on_b)] {
            assert_eq!(recorder.content(name), expected, "observers of {name:?}");
            let map = host.map(name);
            assert_eq!(map.len().await.unwrap(), expected.len(), "len of {name:?}");
            assert_eq!(
                map.get(&"k".to_owned()).await.unwrap(),
                expected.get("k").copied()
            );
        }
    }
    // A host starting now rebuilds each map with its own entries.
    let fresh = Recorder::default();
    let c = Host::<B>::open_with(url, Default::default(), prepare(fresh.clone())).await;
    for name in names {
        assert_eq!(fresh.content(name), table(&c.db, name).await, "{name:?}");
    }
}

/// A remove of a missing key, a `get_or_add` of a present one, a swallowed nested failure: a
/// command of only these appends nothing and notifies nothing; a clear of an empty map is one
/// `Clear`.
async fn writes_that_change_nothing_notify_nothing<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("k".into(), 1))]).await.unwrap();
    let head = log_head(&a.db).await;
    a.run(vec![
        values(Op::Remove("missing".into())),
        values(Op::GetOrAdd("k".into(), 5)),
        other(Op::Remove("missing".into())),
        values(Op::NestedSwallowed(vec![
            values(Op::Set("gone".into(), 1)),
            values(Op::Fail),
        ])),
    ])
    .await
    .unwrap();
    assert_eq!(log_head(&a.db).await, head, "nothing appended");
    b.run(vec![other(Op::Clear)]).await.unwrap();
    for host in [&a, &b] {
        host.sync().await;
        let notes = host.recorder.after_start();
        let transactions = assert_redo_order(&notes, true);
        assert_eq!(transactions.len(), 2, "{notes:?}");
        assert_eq!(transactions[1].changes, 1);
        assert!(notes.iter().any(|note| matches!(
            note,
            Note::Change { map, action: ofx_diesel::maps::MapAction::Clear, .. } if map == OTHER
        )));
        assert_eq!(
            host.map(VALUES).get(&"k".to_owned()).await.unwrap(),
            Some(1)
        );
    }
}

/// `get_in` sees the command's own writes, a nested command's after it returned, not a failed
/// nested command's, through clear, restore and removal.
async fn get_in_sees_the_transactions_own_writes<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    a.run(vec![
        values(Op::Set("k".into(), 1)),
        other(Op::Set("o".into(), 1)),
    ])
    .await
    .unwrap();
    let expect = |key: &str, value: Option<i64>| values(Op::Expect(key.into(), value));
    a.run(vec![
        expect("k", Some(1)),
        values(Op::Set("k".into(), 2)),
        expect("k", Some(2)),
        values(Op::Nested(vec![
            expect("k", Some(2)),
            values(Op::Set("k".into(), 3)),
            expect("k", Some(3)),
        ])),
        expect("k", Some(3)),
        values(Op::NestedSwallowed(vec![
            values(Op::Set("k".into(), 4)),
            values(Op::Add("n".into(), 4)),
            values(Op::Fail),
        ])),
        expect("k", Some(3)),
        expect("n", None),
        values(Op::Clear),
        expect("k", None),
        values(Op::Restore(vec![("r".into(), 5)])),
        expect("r", Some(5)),
        values(Op::RemoveMap),
        expect("r", None),
        values(Op::Add("r".into(), 6)),
        expect("r", Some(6)),
        on(OTHER, Op::Expect("o".into(), Some(1))),
    ])
    .await
    .unwrap();
    assert_eq!(
        table(&a.db, VALUES).await,
        [("r".to_owned(), 6)].into_iter().collect()
    );
}

/// Unsubscribes itself at its first change; subscribes `spawned` to `other` at its second.
struct Reentrant<B: Backend> {
    values: ReliableMap<String, i64, B>,
    other: ReliableMap<String, i64, B>,
    maps: MapManager<B>,
    id: OnceLock<u64>,
    seen: Mutex<Vec<u64>>,
    spawned: Recorder,
}

struct ReentrantHandle<B: Backend>(Arc<Reentrant<B>>);

impl<B: Backend> MapObserver<String, i64> for ReentrantHandle<B> {
    fn changed(&self, change: &MapChange<String, i64>) {
        let mut seen = self.0.seen.lock().unwrap();
        seen.push(change.position);
        match seen.len() {
            1 => {
                drop(seen);
                // A one-shot observer: away after its first change.
                assert!(self.0.values.unsubscribe(*self.0.id.get().unwrap()));
            }
            _ => unreachable!("a change after unsubscribing: {change:?}"),
        }
    }

    fn rebuild(&self, _entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Subscribes `spawned` to `other` when the first transaction after the start commits, and
/// adds the map `added` then.
struct SubscribeOnCommit<B: Backend> {
    inner: Arc<Reentrant<B>>,
    done: Arc<Mutex<bool>>,
}

impl<B: Backend> ManagerObserver for SubscribeOnCommit<B> {
    fn transaction_committed(&self, _committed: &TransactionCommitted) {
        let mut done = self.done.lock().unwrap();
        if !*done {
            *done = true;
            self.inner.other.subscribe(self.inner.spawned.of(OTHER));
            self.inner.maps.map::<String, i64>("added").unwrap();
        }
    }
}

/// Observers that unsubscribe themselves from `changed`, subscribe others and add a map from
/// `transaction_committed`: no deadlock, the follower goes on, and the observer subscribed from
/// the notification gets a rebuild then every later change.
async fn observers_may_subscribe_and_unsubscribe_from_their_notifications<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let inner = Arc::new(Reentrant {
        values: b.map(VALUES),
        other: b.map(OTHER),
        maps: b.maps.clone(),
        id: OnceLock::new(),
        seen: Mutex::new(Vec::new()),
        spawned: Recorder::default(),
    });
    let id = b.map(VALUES).subscribe(ReentrantHandle(Arc::clone(&inner)));
    inner.id.set(id).unwrap();
    b.maps.subscribe(SubscribeOnCommit {
        inner: Arc::clone(&inner),
        done: Arc::new(Mutex::new(false)),
    });
    for n in 0..5 {
        a.run(vec![
            values(Op::Set("k".into(), n)),
            other(Op::Set(format!("o{n}"), n)),
        ])
        .await
        .unwrap();
        within(
            Duration::from_secs(20),
            "B syncs",
            b.maps.sync_within(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    }
    assert_eq!(inner.seen.lock().unwrap().len(), 1);
    assert!(!b.map(VALUES).unsubscribe(id));
    assert!(b.maps.names().contains(&"added".to_owned()));
    let notes = inner.spawned.notes();
    assert!(notes[0].is_rebuild(), "{notes:?}");
    assert_eq!(content_of(&notes, OTHER), table(&a.db, OTHER).await);
    let Note::Rebuild { sequence, .. } = &notes[0] else {
        unreachable!()
    };
    assert!(
        notes[1..]
            .iter()
            .all(|note| matches!(note, Note::Change { position, .. } if position > sequence))
    );
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
}

/// Writers on two hosts; a deaf host C syncs again and again: each `sync` returns at least the
/// log's head read before it, and C has then been told of that transaction; once quiet, `sync`
/// returns the head, which is the status's position.
async fn sync_covers_every_commit_before_it<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let c = Host::<B>::open_with(url, deaf(), |_| {}).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4_i64 {
        let hub = [&a, &b][usize::try_from(writer % 2).unwrap()].hub().clone();
        let stop = stop.clone();
        writers.spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                run_on(
                    &hub,
                    vec![
                        values(Op::Set(format!("w{writer}"), n)),
                        other(Op::Set("shared".into(), n)),
                    ],
                )
                .await
                .unwrap();
                n += 1;
            }
        });
    }
    for _ in 0..40 {
        let head = log_head(&a.db).await;
        let reached = c.sync().await;
        assert!(reached >= head, "sync returned {reached} < head {head}");
        let told = c
            .recorder
            .committed()
            .last()
            .map_or(0, |committed| committed.sequence);
        assert!(told >= head, "told of {told} < head {head}");
        let w = format!("w{}", head % 4);
        c.map(VALUES).get(&w).await.unwrap();
    }
    stop.cancel();
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let head = log_head(&a.db).await;
    assert_eq!(c.sync().await, head);
    assert_eq!(c.maps.status().position, head);
    assert_redo_order(&c.recorder.notes(), true);
    for map in [VALUES, OTHER] {
        assert_eq!(c.recorder.content(map), table(&a.db, map).await);
    }
}

/// A compute method over `entries` and one over `get` (on host A, kept cached) are fresh
/// after writes by B and `sync`, through a restore and a coverage loss.
async fn compute_methods_over_map_reads_are_fresh<B: Sql>(url: &str) {
    let a = Host::<B>::open_with(url, deaf(), |_| {}).await;
    let b = Host::<B>::open(url).await;
    let check = |what: String| {
        let writer = Arc::clone(&a.writer);
        let db = a.db.clone();
        async move {
            let expected = table(&db, VALUES).await;
            assert_eq!(
                writer.total().await.unwrap(),
                expected.values().sum::<i64>(),
                "{what}: total"
            );
            assert_eq!(
                writer.doubled("k".to_owned()).await.unwrap(),
                expected.get("k").map(|value| value * 2),
                "{what}: doubled"
            );
        }
    };
    check("start".into()).await;
    for n in 0..10 {
        b.run(vec![
            values(Op::Set("k".into(), n)),
            values(Op::Set(format!("j{n}"), 1)),
        ])
        .await
        .unwrap();
        a.sync().await;
        check(format!("round {n}")).await;
    }
    b.run(vec![values(Op::Restore(vec![("k".into(), 100)]))])
        .await
        .unwrap();
    a.sync().await;
    check("restore".into()).await;
    for n in 0..3 {
        b.run(vec![
            values(Op::Set("k".into(), 200 + n)),
            values(Op::Set("z".into(), n)),
        ])
        .await
        .unwrap();
    }
    b.maps.trim_changes(Duration::ZERO).await.unwrap();
    a.sync().await;
    assert_eq!(a.maps.status().coverage_losses, 1);
    check("coverage loss".into()).await;
    a.run(vec![values(Op::Remove("k".into()))]).await.unwrap();
    check("the writer's own".into()).await;
}

/// A manager already attached to a hub, added to a second hub: refused (`start` fails), and
/// the first hub's follower goes on.
async fn a_manager_on_a_second_hub_is_refused<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    let second = ofx_core::Hub::builder()
        .with(db.clone())
        .with(a.maps.clone())
        .start()
        .await;
    assert!(second.is_err(), "a second hub took the manager");
    a.run(vec![values(Op::Set("k".into(), 1))]).await.unwrap();
    until(Duration::from_secs(10), "A follows", || {
        a.recorder.content(VALUES).len() == 1
    })
    .await;
}

/// `remove_map` then writes to the same map in one transaction, and a restore after a removal:
/// on both hosts the observers' content is the table's, in redo order.
async fn a_map_removed_and_written_again_in_one_transaction<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![
        values(Op::Set("a".into(), 1)),
        values(Op::Set("b".into(), 2)),
    ])
    .await
    .unwrap();
    a.run(vec![
        values(Op::RemoveMap),
        values(Op::Add("a".into(), 10)),
        values(Op::Update("a".into(), 11)),
    ])
    .await
    .unwrap();
    b.run(vec![
        values(Op::Set("c".into(), 3)),
        values(Op::RemoveMap),
        values(Op::Restore(vec![("r".into(), 5)])),
        values(Op::Set("s".into(), 6)),
    ])
    .await
    .unwrap();
    for host in [&a, &b] {
        host.sync().await;
        assert_eq!(host.recorder.content(VALUES), table(&a.db, VALUES).await);
        assert_eq!(
            host.map(VALUES).entries().await.unwrap(),
            vec![("r".to_owned(), 5), ("s".to_owned(), 6)]
        );
    }
    assert_eq!(a.recorder.after_start(), b.recorder.after_start());
}

/// Observers subscribed and unsubscribed on B all the time while A streams transactions: each
/// gets one rebuild as of s, then the changes after s as B's first recorder got them, without
/// a gap, until it was unsubscribed.
async fn observers_coming_and_going_while_changes_stream_see_contiguous_changes<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let writing = {
        let hub = a.hub().clone();
        tokio::spawn(async move {
            for n in 0..200_i64 {
                run_on(
                    &hub,
                    vec![
                        values(Op::Set(format!("k{}", n % 17), n)),
                        values(Op::Remove(format!("k{}", (n + 8) % 17))),
                    ],
                )
                .await
                .unwrap();
            }
        })
    };
    let map = b.map(VALUES);
    let mut live: Vec<(u64, Recorder)> = Vec::new();
    let mut gone: Vec<Recorder> = Vec::new();
    let mut round = 0_usize;
    while !writing.is_finished() {
        let recorder = Recorder::default();
        live.push((map.subscribe(recorder.of(VALUES)), recorder));
        if round % 2 == 1 {
            let (id, recorder) = live.remove(round % live.len());
            assert!(map.unsubscribe(id));
            gone.push(recorder);
        }
        round += 1;
        let seen = b.recorder.len();
        until(Duration::from_secs(30), "progress", || {
            b.recorder.len() > seen + 3 || writing.is_finished()
        })
        .await;
    }
    writing.await.unwrap();
    b.sync().await;
    assert!(round > 5, "{round} rounds");
    let reference: Vec<Note> = b
        .recorder
        .notes()
        .into_iter()
        .filter(|note| matches!(note, Note::Change { .. }))
        .collect();
    let expected_table = table(&a.db, VALUES).await;
    for (n, recorder) in live
        .iter()
        .map(|(_, recorder)| recorder)
        .chain(gone.iter())
        .enumerate()
    {
        let notes = recorder.notes();
        if notes.is_empty() {
            continue;
        }
        let Note::Rebuild { sequence, .. } = &notes[0] else {
            panic!("observer {n}: a rebuild first: {notes:?}");
        };
        let from = reference
            .iter()
            .position(|note| matches!(note, Note::Change { position, .. } if position > sequence))
            .unwrap_or(reference.len());
        let got = &notes[1..];
        assert!(got.iter().all(|note| !note.is_rebuild()), "observer {n}");
        assert_eq!(
            got,
            &reference[from..from + got.len()],
            "observer {n}: contiguous from {sequence}"
        );
    }
    for (_, recorder) in &live {
        assert_eq!(content_of(&recorder.notes(), VALUES), expected_table);
    }
}

/// The status counts the transactions, changes and rebuilds delivered.
async fn the_status_counts_what_was_delivered<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let start = a.maps.status();
    assert!(start.ready);
    assert_eq!(start.rebuilds, 2, "one per observer: {start:?}");
    assert_eq!((start.changes, start.transactions), (0, 0));
    a.run(vec![
        values(Op::Set("a".into(), 1)),
        other(Op::Set("b".into(), 1)),
    ])
    .await
    .unwrap();
    a.run(vec![values(Op::Set("c".into(), 1))]).await.unwrap();
    a.run(vec![
        other(Op::Remove("b".into())),
        values(Op::Clear),
        values(Op::Set("d".into(), 1)),
    ])
    .await
    .unwrap();
    a.sync().await;
    let status = a.maps.status();
    assert_eq!(status.transactions, 3, "{status:?}");
    assert_eq!(status.changes, 6, "{status:?}");
    assert_eq!(status.position, log_head(&a.db).await);
    a.run(vec![values(Op::Restore(vec![("r".into(), 1)]))])
        .await
        .unwrap();
    a.sync().await;
    let status = a.maps.status();
    assert_eq!(status.rebuilds, 3, "the restore's: {status:?}");
    assert_eq!(status.transactions, 4, "{status:?}");
    assert_eq!(
        (status.coverage_losses, status.skipped, status.last_error),
        (0, 0, None)
    );
}
