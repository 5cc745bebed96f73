//! Rebuilds under attack: a host behind by exactly one transaction (of one change, of two, of
//! more than a read batch) when the log is trimmed, a trim while a host catches up, restores
//! among concurrent writers, observers subscribing while changes stream in, unsubscribing, a
//! rebuild read page by page while the map is written.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofx_diesel::maps::{MapChange, MapObserver, MapSettings, Rebuild};
use rand::{Rng, SeedableRng};

use crate::kit::{
    Gate, HoldAt, Host, Note, OTHER, Op, Recorder, Sql, VALUES, assert_redo_order, content_of,
    deaf, fresh_gate, gate, run_on, table, until, values, within,
};

backend_tests! {
    behind_by_one_transaction_of_one_change_follows_on =>
        sqlite_behind_by_one_transaction_of_one_change_follows_on,
        postgres_behind_by_one_transaction_of_one_change_follows_on;
    behind_by_one_transaction_of_two_changes_rebuilds =>
        sqlite_behind_by_one_transaction_of_two_changes_rebuilds,
        postgres_behind_by_one_transaction_of_two_changes_rebuilds;
    behind_by_a_transaction_larger_than_a_batch_rebuilds =>
        sqlite_behind_by_a_transaction_larger_than_a_batch_rebuilds,
        postgres_behind_by_a_transaction_larger_than_a_batch_rebuilds;
    a_trim_while_a_host_delivers_a_large_transaction_keeps_it_whole =>
        sqlite_a_trim_while_a_host_delivers_a_large_transaction_keeps_it_whole,
        postgres_a_trim_while_a_host_delivers_a_large_transaction_keeps_it_whole;
    a_trim_while_a_host_catches_up_rebuilds_it_exactly =>
        sqlite_a_trim_while_a_host_catches_up_rebuilds_it_exactly,
        postgres_a_trim_while_a_host_catches_up_rebuilds_it_exactly;
    restores_among_concurrent_writers_keep_every_host_exact =>
        sqlite_restores_among_concurrent_writers_keep_every_host_exact,
        postgres_restores_among_concurrent_writers_keep_every_host_exact;
    observers_subscribed_while_changes_stream_in_miss_nothing =>
        sqlite_observers_subscribed_while_changes_stream_in_miss_nothing,
        postgres_observers_subscribed_while_changes_stream_in_miss_nothing;
    an_unsubscribed_observer_gets_nothing_more =>
        sqlite_an_unsubscribed_observer_gets_nothing_more,
        postgres_an_unsubscribed_observer_gets_nothing_more;
    a_rebuild_read_page_by_page_is_one_snapshot =>
        sqlite_a_rebuild_read_page_by_page_is_one_snapshot,
        postgres_a_rebuild_read_page_by_page_is_one_snapshot;
    a_host_starting_among_writers_misses_nothing =>
        sqlite_a_host_starting_among_writers_misses_nothing,
        postgres_a_host_starting_among_writers_misses_nothing;
}

/// Host B (deaf) is caught up; A commits `steps` in one transaction and trims the log (all but
/// its last change); B syncs. Returns both hosts, B's losses.
async fn behind_by_one<B: Sql>(url: &str, changes: usize) -> (Host<B>, Host<B>, u64) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |_| {}).await;
    a.run(vec![values(Op::Set("start".into(), 0))])
        .await
        .unwrap();
    b.sync().await;
    let steps = (0..changes)
        .map(|n| values(Op::Set(format!("k{n:05}"), i64::try_from(n).unwrap())))
        .collect();
    a.run(steps).await.unwrap();
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    b.sync().await;
    let losses = b.maps.status().coverage_losses;
    let notes = b.recorder.notes();
    assert_redo_order(&notes, true);
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
    assert_eq!(b.recorder.content(OTHER), table(&a.db, OTHER).await);
    // B follows on.
    a.run(vec![values(Op::Set("after".into(), 1))])
        .await
        .unwrap();
    b.sync().await;
    assert_redo_order(&b.recorder.notes(), true);
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
    assert_eq!(
        b.map(VALUES).get(&"k00000".to_owned()).await.unwrap(),
        Some(0)
    );
    (a, b, losses)
}

/// The trim keeps the transaction's only change: B loses nothing, gets the change.
async fn behind_by_one_transaction_of_one_change_follows_on<B: Sql>(url: &str) {
    let (_a, b, losses) = behind_by_one::<B>(url, 1).await;
    assert_eq!(losses, 0, "nothing B needed was trimmed");
    assert_eq!(b.recorder.committed().len(), 3);
}

/// The trim removes the first of the transaction's two changes: B must rebuild, not deliver
/// the rest of the transaction.
async fn behind_by_one_transaction_of_two_changes_rebuilds<B: Sql>(url: &str) {
    let (_a, b, losses) = behind_by_one::<B>(url, 2).await;
    assert_eq!(losses, 1, "{:?}", b.recorder.notes());
    assert_eq!(b.recorder.rebuilds(VALUES).len(), 2);
}

async fn behind_by_a_transaction_larger_than_a_batch_rebuilds<B: Sql>(url: &str) {
    let (_a, b, losses) = behind_by_one::<B>(url, 2500).await;
    assert_eq!(losses, 1);
    assert_eq!(b.recorder.rebuilds(VALUES).len(), 2);
}

/// Host B (deaf, 16 changes a read) catches up with 30 transactions of 5 changes; its follower
/// is held in the middle of them while A commits 30 more and trims the log: B loses coverage,
/// rebuilds, and its notifications stay in redo order (no change again, no partial transaction)
/// and exact.
async fn a_trim_while_a_host_catches_up_rebuilds_it_exactly<B: Sql>(url: &str) {
    let hold = HoldAt::default();
    let a = Host::<B>::open(url).await;
    let mut settings = deaf();
    settings.read_batch = 16;
    let b = Host::<B>::open_with(url, settings, |maps| {
        maps.map::<String, i64>(VALUES)
            .unwrap()
            .subscribe(hold.clone());
    })
    .await;
    let start = b.sync().await;
    let write = |round: i64| {
        let hub = a.hub().clone();
        async move {
            let steps = (0..5)
                .map(|n| values(Op::Set(format!("k{n}"), round * 10 + n)))
                .collect();
            run_on(&hub, steps).await.unwrap();
        }
    };
    for round in 0..30 {
        write(round).await;
    }
    // Held at the third change of the 20th transaction; 30 more commit meanwhile, then the
    // trim.
    *hold.position.lock().unwrap() = Some(start + 19 * 5 + 3);
    let catching_up = {
        let maps = b.maps.clone();
        tokio::spawn(async move { maps.sync_within(Duration::from_secs(60)).await })
    };
    until(Duration::from_secs(30), "B is held", || {
        hold.hold.is_reached()
    })
    .await;
    for round in 30..60 {
        write(round).await;
    }
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    hold.hold.release();
    within(Duration::from_secs(60), "B catches up", catching_up)
        .await
        .unwrap()
        .unwrap();
    b.sync().await;
    assert_eq!(b.maps.status().coverage_losses, 1);
    assert_redo_order(&b.recorder.notes(), true);
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
    a.run(vec![values(Op::Set("after".into(), 1))])
        .await
        .unwrap();
    b.sync().await;
    assert_redo_order(&b.recorder.notes(), true);
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
}

/// Host B (deaf) is held delivering the 500th change of a 3000-change transaction (larger than
/// its 1024-change read batch) while A commits more and trims the log: B's notifications stay
/// in redo order (the large transaction whole, or not at all before a rebuild) and exact.
async fn a_trim_while_a_host_delivers_a_large_transaction_keeps_it_whole<B: Sql>(url: &str) {
    let hold = HoldAt::default();
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |maps| {
        maps.map::<String, i64>(VALUES)
            .unwrap()
            .subscribe(hold.clone());
    })
    .await;
    let start = b.sync().await;
    *hold.position.lock().unwrap() = Some(start + 500);
    a.run(
        (0..3000)
            .map(|n| values(Op::Set(format!("k{n:04}"), n)))
            .collect(),
    )
    .await
    .unwrap();
    let catching_up = {
        let maps = b.maps.clone();
        tokio::spawn(async move { maps.sync_within(Duration::from_secs(60)).await })
    };
    until(Duration::from_secs(30), "B is held", || {
        hold.hold.is_reached()
    })
    .await;
    for n in 0..3 {
        a.run(vec![
            values(Op::Set("after".into(), n)),
            values(Op::Remove(format!("k{n:04}"))),
        ])
        .await
        .unwrap();
    }
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    hold.hold.release();
    within(Duration::from_secs(60), "B catches up", catching_up)
        .await
        .unwrap()
        .unwrap();
    b.sync().await;
    assert_redo_order(&b.recorder.notes(), true);
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
}

/// Three hosts write at random, some transactions restoring the map from a "backup" among
/// other writes: every host's observer content equals the table, in redo order.
async fn restores_among_concurrent_writers_keep_every_host_exact<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let c = Host::<B>::open_with(url, deaf(), |_| {}).await;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..6_u64 {
        let hub = [&a, &b, &c][usize::try_from(writer % 3).unwrap()]
            .hub()
            .clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + writer);
            for _ in 0..30 {
                let mut steps = Vec::new();
                for _ in 0..rng.random_range(1..4) {
                    let key = format!("k{:02}", rng.random_range(0..20));
                    let value = rng.random_range(0..100);
                    steps.push(values(match rng.random_range(0..10) {
                        0 => Op::Restore(
                            (0..rng.random_range(0..15))
                                .map(|n| (format!("k{n:02}"), value + n))
                                .collect(),
                        ),
                        1..3 => Op::Remove(key),
                        _ => Op::Set(key, value),
                    }));
                }
                let _ = run_on(&hub, steps).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let expected = table(&a.db, VALUES).await;
    for host in [&a, &b, &c] {
        host.sync().await;
        assert_redo_order(&host.recorder.notes(), false);
        assert_eq!(host.recorder.content(VALUES), expected);
        assert_eq!(
            host.map(VALUES).entries().await.unwrap(),
            expected.clone().into_iter().collect::<Vec<_>>()
        );
    }
    assert_eq!(a.recorder.committed(), b.recorder.committed());
    assert_eq!(a.recorder.committed(), c.recorder.committed());
}

/// Observers of `values` subscribed on B one after another while A commits a stream of
/// transactions: each gets a rebuild as of some sequence s, then exactly the changes of `values`
/// after s that B's first recorder got, none at or before s.
async fn observers_subscribed_while_changes_stream_in_miss_nothing<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let writing = {
        let hub = a.hub().clone();
        tokio::spawn(async move {
            for n in 0..150_i64 {
                run_on(
                    &hub,
                    vec![
                        values(Op::Set(format!("k{}", n % 13), n)),
                        values(Op::Remove(format!("k{}", (n + 5) % 13))),
                        values(Op::Set(format!("j{}", n % 7), n)),
                    ],
                )
                .await
                .unwrap();
            }
        })
    };
    let mut late = Vec::new();
    let map = b.map(VALUES);
    while !writing.is_finished() {
        let recorder = Recorder::default();
        map.subscribe(recorder.of(VALUES));
        late.push(recorder);
        // The next one once this one got its rebuild and the stream moved on.
        let seen = b.recorder.len();
        until(Duration::from_secs(30), "progress", || {
            b.recorder.len() > seen + 8 || writing.is_finished()
        })
        .await;
    }
    writing.await.unwrap();
    b.sync().await;
    assert!(late.len() > 3, "subscribed while writing: {}", late.len());
    let reference = b.recorder.notes();
    let expected_table = table(&a.db, VALUES).await;
    for (n, recorder) in late.iter().enumerate() {
        let notes = recorder.notes();
        let Some(Note::Rebuild { sequence, .. }) = notes.first() else {
            panic!("observer {n}: a rebuild first: {notes:?}");
        };
        let sequence = *sequence;
        assert_eq!(
            notes.iter().filter(|note| note.is_rebuild()).count(),
            1,
            "observer {n}: one rebuild"
        );
        let after: Vec<&Note> = reference
            .iter()
            .filter(|note| matches!(note, Note::Change { position, .. } if *position > sequence))
            .collect();
        let got: Vec<&Note> = notes[1..].iter().collect();
        assert_eq!(got, after, "observer {n}: the changes after {sequence}");
        assert_eq!(content_of(&notes, VALUES), expected_table, "observer {n}");
    }
}

/// Records until unsubscribed; a rebuild waits at a gate when one is set.
#[derive(Clone, Default)]
struct Slow {
    recorder: Recorder,
    gate: Arc<Mutex<Option<Arc<Gate>>>>,
}

impl MapObserver<String, i64> for Slow {
    fn changed(&self, change: &MapChange<String, i64>) {
        self.recorder.of(VALUES).changed(change);
    }

    fn rebuild(&self, mut entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move {
            let sequence = entries.sequence();
            let mut content = Vec::new();
            let first = entries.next().await;
            content.extend(first);
            let gate = self.gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.pass().await;
            }
            while let Some(entry) = entries.next().await {
                content.push(entry);
            }
            self.recorder.notes.lock().unwrap().push(Note::Rebuild {
                map: VALUES.to_owned(),
                sequence,
                entries: content,
            });
        })
    }
}

/// `unsubscribe` stops the notifications (once it returned `true`; a second time it returns
/// `false`), also when it happens while the observer's rebuild is under way.
async fn an_unsubscribed_observer_gets_nothing_more<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let map = b.map(VALUES);
    let plain = Slow::default();
    let id = map.subscribe(plain.clone());
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    b.sync().await;
    assert_eq!(plain.recorder.content(VALUES).len(), 1);
    assert!(map.unsubscribe(id));
    assert!(!map.unsubscribe(id));
    let count = plain.recorder.len();
    a.run(vec![values(Op::Set("b".into(), 1))]).await.unwrap();
    b.sync().await;
    assert_eq!(plain.recorder.len(), count, "{:?}", plain.recorder.notes());

    // Unsubscribed while its rebuild waits.
    let name = fresh_gate();
    let slow = Slow::default();
    *slow.gate.lock().unwrap() = Some(gate(&name));
    let id = map.subscribe(slow.clone());
    gate(&name).reached(1).await;
    assert!(map.unsubscribe(id));
    gate(&name).open();
    a.run(vec![values(Op::Set("c".into(), 1))]).await.unwrap();
    b.sync().await;
    let changes = slow
        .recorder
        .notes()
        .into_iter()
        .filter(|note| matches!(note, Note::Change { .. }))
        .count();
    assert_eq!(changes, 0, "{:?}", slow.recorder.notes());
    // The others go on.
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
}

/// Host B reads rebuilds two entries a page. An observer's rebuild stops after its first
/// entry while A moves entries across the pages (removes the last key, adds one after the
/// first, updates one in the middle): the rebuild is the content as of its sequence (before or
/// after that transaction, not a mix), and the changes after it fit.
async fn a_rebuild_read_page_by_page_is_one_snapshot<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let mut settings = MapSettings::default();
    settings.rebuild_page = 2;
    let b = Host::<B>::open_with(url, settings, |_| {}).await;
    let initial: Vec<(String, i64)> = (0..20).map(|n| (format!("k{n:02}"), n)).collect();
    a.run(vec![values(Op::Restore(initial.clone()))])
        .await
        .unwrap();
    b.sync().await;
    let name = fresh_gate();
    let slow = Slow::default();
    *slow.gate.lock().unwrap() = Some(gate(&name));
    b.map(VALUES).subscribe(slow.clone());
    gate(&name).reached(1).await;
    within(
        Duration::from_secs(30),
        "a write while a rebuild is read",
        a.run(vec![
            values(Op::Remove("k19".into())),
            values(Op::Add("k00a".into(), 100)),
            values(Op::Update("k10".into(), 110)),
        ]),
    )
    .await
    .unwrap();
    let after: BTreeMap<String, i64> = table(&a.db, VALUES).await;
    gate(&name).open();
    b.sync().await;
    let notes = slow.recorder.notes();
    let Some(Note::Rebuild {
        sequence, entries, ..
    }) = notes.iter().find(|note| note.is_rebuild())
    else {
        panic!("a rebuild: {notes:?}");
    };
    let rebuilt: BTreeMap<String, i64> = entries.iter().cloned().collect();
    let before: BTreeMap<String, i64> = initial.into_iter().collect();
    let write_sequence = b.recorder.committed().last().unwrap().sequence;
    if *sequence >= write_sequence {
        assert_eq!(rebuilt, after, "as of {sequence}: after the write");
    } else {
        assert_eq!(rebuilt, before, "as of {sequence}: before the write");
    }
    assert_eq!(content_of(&notes, VALUES), after);
}

/// Host B starts while A's writers commit: its notifications begin with the manager's
/// `Rebuild` and each map's rebuild, then every later transaction in redo order, whole.
async fn a_host_starting_among_writers_misses_nothing<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..3_i64 {
        let hub = a.hub().clone();
        tasks.spawn(async move {
            for n in 0..80 {
                run_on(
                    &hub,
                    vec![
                        values(Op::Set(format!("w{writer}"), n)),
                        crate::kit::other(Op::Set(format!("k{}", n % 9), writer)),
                        values(Op::Remove(format!("w{}", (writer + 1) % 3))),
                    ],
                )
                .await
                .unwrap();
            }
        });
    }
    // Wait until some were written.
    crate::kit::until_async(Duration::from_secs(30), "writes", || async {
        crate::kit::log_head(&a.db).await > 30
    })
    .await;
    let b = Host::<B>::open(url).await;
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    b.sync().await;
    a.sync().await;
    let notes = b.recorder.notes();
    assert!(matches!(
        notes[0],
        Note::Manager(ofx_diesel::maps::ManagerChange::Rebuild { .. })
    ));
    let committed = assert_redo_order(&notes, false);
    // The maps' rebuilds may be as of different sequences: every transaction after the later.
    let rebuilt_at = b.recorder.rebuilds(VALUES)[0].max(b.recorder.rebuilds(OTHER)[0]);
    let committed: Vec<_> = committed
        .into_iter()
        .filter(|t| t.sequence > rebuilt_at)
        .collect();
    let on_a: Vec<_> = a
        .recorder
        .committed()
        .into_iter()
        .filter(|t| t.sequence > rebuilt_at)
        .collect();
    assert_eq!(committed, on_a, "every transaction after the rebuild, once");
    for map in [VALUES, OTHER] {
        assert_eq!(b.recorder.content(map), table(&a.db, map).await);
    }
}
