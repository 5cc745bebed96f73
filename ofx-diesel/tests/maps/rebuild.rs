//! Rebuilds: on start (recovery), on a coverage loss, after a restore; the manager's
//! notifications; a subscriber registered when a map is added misses nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofx_diesel::Backend;
use ofx_diesel::maps::{ManagerChange, ManagerObserver, MapManager, MapSettings};

use crate::common::{Host, Note, Op, Recorder, VALUES, deaf, until};

backend_tests! {
    a_host_starting_gets_a_rebuild_then_the_changes =>
        sqlite_a_host_starting_gets_a_rebuild_then_the_changes,
        postgres_a_host_starting_gets_a_rebuild_then_the_changes;
    a_coverage_loss_rebuilds_every_observer =>
        sqlite_a_coverage_loss_rebuilds_every_observer,
        postgres_a_coverage_loss_rebuilds_every_observer;
    a_restore_rebuilds_on_every_host =>
        sqlite_a_restore_rebuilds_on_every_host,
        postgres_a_restore_rebuilds_on_every_host;
    a_subscriber_registered_on_added_sees_every_change =>
        sqlite_a_subscriber_registered_on_added_sees_every_change,
        postgres_a_subscriber_registered_on_added_sees_every_change;
    removing_a_map_clears_it_everywhere =>
        sqlite_removing_a_map_clears_it_everywhere,
        postgres_removing_a_map_clears_it_everywhere;
}

/// A host started after writes: the manager's `Rebuild` first, then the map's rebuild (the
/// content as of a sequence), then only later changes.
async fn a_host_starting_gets_a_rebuild_then_the_changes<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    a.apply(vec![Op::Add("a".into(), 1), Op::Add("b".into(), 2)])
        .await
        .unwrap();
    let b = Host::<B>::open(url).await;
    let notes = b.recorder.notes();
    assert_eq!(
        notes[0],
        Note::Manager(ManagerChange::Rebuild {
            names: vec![VALUES.to_owned()]
        })
    );
    let Note::Rebuild { sequence, entries } = &notes[1] else {
        panic!("a rebuild second: {notes:?}");
    };
    assert_eq!(*sequence, a.recorder.committed()[0].sequence);
    assert_eq!(entries, &vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
    a.apply(vec![Op::Update("a".into(), 10)]).await.unwrap();
    b.sync().await;
    assert_eq!(b.recorder.content(), a.table().await);
    assert_eq!(
        b.recorder.committed().len(),
        1,
        "only the later transaction"
    );
}

/// Host B is behind (it polls hourly) while A writes and trims the change log: B finds the
/// hole, says `Rebuild`, rebuilds its observers from the table and goes on exactly.
async fn a_coverage_loss_rebuilds_every_observer<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(url, deaf(), |_| {}).await;
    a.apply(vec![Op::Add("a".into(), 1)]).await.unwrap();
    b.sync().await;
    assert_eq!(b.recorder.content().len(), 1);
    for n in 0..10 {
        a.apply(vec![Op::Set(format!("k{n}"), n), Op::Remove("a".into())])
            .await
            .unwrap();
    }
    assert!(a.maps.trim_changes(Duration::ZERO).await.unwrap() > 0);
    b.sync().await;
    let status = b.maps.status();
    assert_eq!(status.coverage_losses, 1, "{status:?}");
    let notes = b.recorder.notes();
    assert!(
        notes.contains(&Note::Manager(ManagerChange::Rebuild {
            names: vec![VALUES.to_owned()]
        })),
        "{notes:?}"
    );
    assert_eq!(b.recorder.content(), a.table().await);
    // And it follows again.
    a.apply(vec![Op::Set("after".into(), 1)]).await.unwrap();
    b.sync().await;
    assert_eq!(b.recorder.content(), a.table().await);
    assert_eq!(b.values().get(&"after".to_owned()).await.unwrap(), Some(1));
    assert_eq!(b.values().get(&"a".to_owned()).await.unwrap(), None);
}

/// `restore` replaces the content: on both hosts the observers get a rebuild with it (no
/// change per entry), and cached reads are invalidated.
async fn a_restore_rebuilds_on_every_host<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.apply(vec![Op::Add("old".into(), 1)]).await.unwrap();
    b.sync().await;
    assert_eq!(b.values().get(&"old".to_owned()).await.unwrap(), Some(1));
    let backup = vec![("x".to_owned(), 7), ("y".to_owned(), 8)];
    a.apply(vec![Op::Restore(backup.clone()), Op::Set("z".into(), 9)])
        .await
        .unwrap();
    b.sync().await;
    let expected: std::collections::BTreeMap<String, i64> = [
        ("x".to_owned(), 7),
        ("y".to_owned(), 8),
        ("z".to_owned(), 9),
    ]
    .into_iter()
    .collect();
    for host in [&a, &b] {
        assert_eq!(host.recorder.content(), expected);
        let rebuilds = host
            .recorder
            .notes()
            .iter()
            .filter(|note| matches!(note, Note::Rebuild { .. }))
            .count();
        assert_eq!(rebuilds, 2, "the start's and the restore's");
        assert_eq!(host.values().get(&"old".to_owned()).await.unwrap(), None);
        assert_eq!(host.values().get(&"x".to_owned()).await.unwrap(), Some(7));
    }
    assert_eq!(a.table().await, expected);
}

/// Subscribes a recorder to every map added, from the `Added` notification.
struct SubscribeOnAdded<B: Backend> {
    maps: Arc<Mutex<Option<MapManager<B>>>>,
    recorder: Recorder,
    added: Arc<Mutex<Vec<String>>>,
}

impl<B: Backend> Clone for SubscribeOnAdded<B> {
    fn clone(&self) -> Self {
        Self {
            maps: Arc::clone(&self.maps),
            recorder: self.recorder.clone(),
            added: Arc::clone(&self.added),
        }
    }
}

impl<B: Backend> ManagerObserver for SubscribeOnAdded<B> {
    fn state_changed(&self, change: &ManagerChange) {
        if let ManagerChange::Added { name } = change {
            self.added.lock().unwrap().push(name.clone());
            if let Some(maps) = self.maps.lock().unwrap().as_ref() {
                maps.map::<String, i64>(name)
                    .unwrap()
                    .subscribe(self.recorder.clone());
            }
        }
    }
}

/// A map added on host B after it started: the observer subscribed from `Added` gets its
/// content and then every change, from the first.
async fn a_subscriber_registered_on_added_sees_every_change<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let watcher = SubscribeOnAdded::<B> {
        maps: Arc::new(Mutex::new(None)),
        recorder: Recorder::default(),
        added: Arc::new(Mutex::new(Vec::new())),
    };
    let b = Host::<B>::open_with(url, MapSettings::default(), |maps| {
        maps.subscribe(watcher.clone());
        *watcher.maps.lock().unwrap() = Some(maps.clone());
    })
    .await;
    // `values` was added before the start: covered by the start's `Rebuild`.
    assert!(watcher.added.lock().unwrap().is_empty());
    let _late_on_b = b.maps.map::<String, i64>("late").unwrap();
    until(Duration::from_secs(10), "the Added notification", || {
        watcher.added.lock().unwrap().as_slice() == ["late".to_owned()]
    })
    .await;
    b.sync().await;
    assert_eq!(
        watcher.recorder.notes(),
        vec![Note::Rebuild {
            sequence: b.maps.status().position,
            entries: vec![]
        }]
    );
    // Every change of it from now on, written on A.
    a.hub()
        .commander()
        .call(crate::common::WriteLate {
            ops: vec![("one".into(), 1), ("two".into(), 2), ("one".into(), 3)],
        })
        .await
        .unwrap();
    b.sync().await;
    let changes = watcher.recorder.changes_since_rebuild();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(
        watcher.recorder.content(),
        [("one".to_owned(), 3), ("two".to_owned(), 2)]
            .into_iter()
            .collect()
    );
}

/// `remove_map`: entries gone; observers get a `Clear`, the manager's observers `Removed`.
async fn removing_a_map_clears_it_everywhere<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.apply(vec![Op::Add("a".into(), 1)]).await.unwrap();
    a.hub()
        .commander()
        .call(crate::common::RemoveValues)
        .await
        .unwrap();
    b.sync().await;
    for host in [&a, &b] {
        assert!(host.recorder.content().is_empty());
        assert!(
            host.recorder
                .notes()
                .contains(&Note::Manager(ManagerChange::Removed {
                    name: VALUES.to_owned()
                })),
            "{:?}",
            host.recorder.notes()
        );
        assert_eq!(host.values().len().await.unwrap(), 0);
    }
    assert!(a.table().await.is_empty());
}
