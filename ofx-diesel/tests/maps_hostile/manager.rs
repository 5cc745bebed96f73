//! The manager's notifications under attack: `Added` for a map added after the start while it
//! is written (from outside, from a command of the host itself), `Removed` and writes after
//! it, `Rebuild` on start and on a coverage loss, a name registered with other types.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofx_diesel::maps::{ManagerChange, ManagerObserver, MapManager, MapSettings};

use crate::kit::{
    HoldAt, Host, Note, OTHER, Op, Recorder, Sql, VALUES, assert_redo_order, content_of, deaf, on,
    run_on, table, until, values,
};

backend_tests! {
    a_map_added_while_it_is_written_misses_nothing =>
        sqlite_a_map_added_while_it_is_written_misses_nothing,
        postgres_a_map_added_while_it_is_written_misses_nothing;
    a_map_added_by_a_command_of_the_host_is_announced_and_complete =>
        sqlite_a_map_added_by_a_command_of_the_host_is_announced_and_complete,
        postgres_a_map_added_by_a_command_of_the_host_is_announced_and_complete;
    a_removed_map_is_announced_and_written_again =>
        sqlite_a_removed_map_is_announced_and_written_again,
        postgres_a_removed_map_is_announced_and_written_again;
    rebuild_is_announced_on_start_and_coverage_loss_before_the_maps_rebuilds =>
        sqlite_rebuild_is_announced_on_start_and_coverage_loss_before_the_maps_rebuilds,
        postgres_rebuild_is_announced_on_start_and_coverage_loss_before_the_maps_rebuilds;
    a_name_registered_with_other_types_is_refused =>
        sqlite_a_name_registered_with_other_types_is_refused,
        postgres_a_name_registered_with_other_types_is_refused;
}

/// Subscribes a recorder to every map added, from the `Added` notification.
struct SubscribeOnAdded<B: ofx_diesel::Backend> {
    maps: Arc<Mutex<Option<MapManager<B>>>>,
    recorder: Recorder,
    added: Arc<Mutex<Vec<String>>>,
}

impl<B: ofx_diesel::Backend> Clone for SubscribeOnAdded<B> {
    fn clone(&self) -> Self {
        Self {
            maps: Arc::clone(&self.maps),
            recorder: self.recorder.clone(),
            added: Arc::clone(&self.added),
        }
    }
}

impl<B: ofx_diesel::Backend> SubscribeOnAdded<B> {
    fn new() -> Self {
        Self {
            maps: Arc::new(Mutex::new(None)),
            recorder: Recorder::default(),
            added: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn added(&self) -> Vec<String> {
        self.added.lock().unwrap().clone()
    }
}

impl<B: ofx_diesel::Backend> ManagerObserver for SubscribeOnAdded<B> {
    fn state_changed(&self, change: &ManagerChange) {
        if let ManagerChange::Added { name } = change {
            self.added.lock().unwrap().push(name.clone());
            if let Some(maps) = self.maps.lock().unwrap().as_ref() {
                maps.map::<String, i64>(name)
                    .unwrap()
                    .subscribe(self.recorder.of(name));
            }
        }
    }
}

/// Opens a host whose manager has a [`SubscribeOnAdded`].
async fn host_subscribing_on_added<B: Sql>(
    url: &str,
    settings: MapSettings,
) -> (Host<B>, SubscribeOnAdded<B>) {
    let watcher = SubscribeOnAdded::<B>::new();
    let host = Host::<B>::open_with(url, settings, |maps| {
        maps.subscribe(watcher.clone());
        *watcher.maps.lock().unwrap() = Some(maps.clone());
    })
    .await;
    (host, watcher)
}

/// A streams writes into the map `late`; B adds `late` in the middle of the stream: the
/// observer B subscribes from `Added` gets a rebuild as of s, then exactly the changes of
/// `late` after s (as A's observer of `late` got them), in order.
async fn a_map_added_while_it_is_written_misses_nothing<B: Sql>(url: &str) {
    let reference = Recorder::default();
    let a = Host::<B>::open_with(url, MapSettings::default(), |maps| {
        maps.map::<String, i64>("late")
            .unwrap()
            .subscribe(reference.of("late"));
    })
    .await;
    let (b, watcher) = host_subscribing_on_added::<B>(url, MapSettings::default()).await;
    let writing = {
        let hub = a.hub().clone();
        tokio::spawn(async move {
            for n in 0..120_i64 {
                run_on(
                    &hub,
                    vec![
                        on("late", Op::Set(format!("k{}", n % 11), n)),
                        on("late", Op::Remove(format!("k{}", (n + 4) % 11))),
                        values(Op::Set("v".into(), n)),
                    ],
                )
                .await
                .unwrap();
            }
        })
    };
    until(Duration::from_secs(30), "some writes", || {
        reference.len() > 60
    })
    .await;
    let _late = b.map("late");
    until(Duration::from_secs(30), "Added", || {
        watcher.added() == vec!["late".to_owned()]
    })
    .await;
    writing.await.unwrap();
    b.sync().await;
    a.sync().await;
    let notes = watcher.recorder.notes();
    let Some(Note::Rebuild { sequence, .. }) = notes.first() else {
        panic!("a rebuild first: {notes:?}");
    };
    let expected: Vec<Note> = reference
        .notes()
        .into_iter()
        .filter(|note| matches!(note, Note::Change { position, .. } if position > sequence))
        .collect();
    assert!(!expected.is_empty(), "subscribed while written");
    assert_eq!(notes[1..].to_vec(), expected);
    assert_eq!(content_of(&notes, "late"), table(&a.db, "late").await);
    assert_eq!(watcher.added(), vec!["late".to_owned()], "once");
    assert_redo_order(&b.recorder.notes(), false);
}

/// A command on B registers a new map and writes it in its transaction: B's manager says
/// `Added`, and the observer subscribed from it has the command's writes (in its rebuild or as
/// changes after it), then later ones.
async fn a_map_added_by_a_command_of_the_host_is_announced_and_complete<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let (b, watcher) = host_subscribing_on_added::<B>(url, MapSettings::default()).await;
    b.run(vec![
        values(Op::Set("v".into(), 1)),
        on("fresh", Op::Set("x".into(), 1)),
        on("fresh", Op::Set("y".into(), 2)),
    ])
    .await
    .unwrap();
    b.sync().await;
    assert_eq!(watcher.added(), vec!["fresh".to_owned()]);
    assert_eq!(
        watcher.recorder.content("fresh"),
        table(&a.db, "fresh").await,
        "{:?}",
        watcher.recorder.notes()
    );
    a.run(vec![on("fresh", Op::Remove("x".into()))])
        .await
        .unwrap();
    b.sync().await;
    assert_eq!(
        watcher.recorder.content("fresh"),
        table(&a.db, "fresh").await
    );
    assert_eq!(watcher.added(), vec!["fresh".to_owned()], "once");
}

/// `remove_map` in a transaction that writes another map too: on both hosts the map's
/// observers get a `Clear`, the manager's `Removed`, in redo order; the map written again
/// after it starts empty and its observers follow.
async fn a_removed_map_is_announced_and_written_again<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![
        values(Op::Set("a".into(), 1)),
        values(Op::Set("b".into(), 2)),
    ])
    .await
    .unwrap();
    b.run(vec![
        crate::kit::other(Op::Set("o".into(), 1)),
        values(Op::RemoveMap),
        crate::kit::other(Op::Set("p".into(), 2)),
    ])
    .await
    .unwrap();
    a.run(vec![values(Op::Set("c".into(), 3))]).await.unwrap();
    for host in [&a, &b] {
        host.sync().await;
        let notes = host.recorder.after_start();
        let clear = notes
            .iter()
            .position(|note| {
                matches!(note, Note::Change { map, action: ofx_diesel::maps::MapAction::Clear, .. } if map == VALUES)
            })
            .expect("a Clear");
        let removed = notes
            .iter()
            .position(|note| {
                *note
                    == Note::Manager(ManagerChange::Removed {
                        name: VALUES.to_owned(),
                    })
            })
            .expect("Removed");
        // `Removed` comes right after the map's `Clear`, inside the transaction (the docs do not
        // say where): redo order holds for the rest.
        assert_eq!(removed, clear + 1, "the Clear, then Removed: {notes:?}");
        let without_removed: Vec<Note> = notes
            .iter()
            .filter(|note| !matches!(note, Note::Manager(ManagerChange::Removed { .. })))
            .cloned()
            .collect();
        assert_redo_order(&without_removed, true);
        for map in [VALUES, OTHER] {
            assert_eq!(host.recorder.content(map), table(&a.db, map).await, "{map}");
        }
        assert_eq!(
            host.map(VALUES).entries().await.unwrap(),
            vec![("c".to_owned(), 3)]
        );
    }
}

/// The manager's `Rebuild` names every map, and comes before the maps' rebuilds, which come
/// before any change: on start, and on a coverage loss (host B, reading two changes at a time,
/// is held while delivering the first of four transactions; A trims the log meanwhile).
async fn rebuild_is_announced_on_start_and_coverage_loss_before_the_maps_rebuilds<B: Sql>(
    url: &str,
) {
    let a = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    let hold = HoldAt::default();
    let mut settings = deaf();
    settings.read_batch = 2;
    let b = Host::<B>::open_with(url, settings, |maps| {
        maps.map::<String, i64>("third").unwrap();
        maps.map::<String, i64>(VALUES)
            .unwrap()
            .subscribe(hold.clone());
    })
    .await;
    let names = vec![VALUES.to_owned(), OTHER.to_owned(), "third".to_owned()];
    let check = |notes: &[Note]| {
        assert_eq!(
            notes[0],
            Note::Manager(ManagerChange::Rebuild {
                names: names.clone()
            })
        );
        let mut rebuilt: Vec<&str> = notes[1..3]
            .iter()
            .map(|note| match note {
                Note::Rebuild { map, .. } => map.as_str(),
                other => panic!("a rebuild: {other:?} in {notes:?}"),
            })
            .collect();
        rebuilt.sort_unstable();
        assert_eq!(rebuilt, vec![OTHER, VALUES]);
    };
    check(&b.recorder.notes());
    assert_eq!(b.maps.names(), names);
    assert!(b.maps.status().ready);
    let start = b.sync().await;
    let seen = b.recorder.len();
    // B is held delivering the first transaction; the others commit meanwhile, then the trim.
    *hold.position.lock().unwrap() = Some(start + 1);
    a.run(vec![
        values(Op::Set("a".into(), 0)),
        values(Op::Set("b".into(), 0)),
    ])
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
    for n in 1..4 {
        a.run(vec![
            values(Op::Set("a".into(), n)),
            values(Op::Set("b".into(), n)),
        ])
        .await
        .unwrap();
    }
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    hold.hold.release();
    catching_up.await.unwrap().unwrap();
    b.sync().await;
    assert_eq!(
        b.maps.status().coverage_losses,
        1,
        "{:#?}",
        &b.recorder.notes()[seen..]
    );
    let notes = b.recorder.notes();
    let rebuild = seen
        + notes[seen..]
            .iter()
            .position(|note| matches!(note, Note::Manager(ManagerChange::Rebuild { .. })))
            .expect("a Rebuild after the coverage loss");
    check(&notes[rebuild..]);
    assert_redo_order(&notes, true);
    assert_eq!(b.recorder.content(VALUES), table(&a.db, VALUES).await);
}

/// A name registered with other types is refused (`MapAttach`), before and after the start,
/// also from a command; the same types are handed out again.
async fn a_name_registered_with_other_types_is_refused<B: Sql>(url: &str) {
    let db = ofx_diesel::DbHub::<B>::open(url, crate::kit::fast())
        .await
        .unwrap();
    let maps = MapManager::new(&db);
    maps.map::<String, i64>("m").unwrap();
    assert!(matches!(
        maps.map::<String, String>("m"),
        Err(ofx_diesel::Error::MapAttach(_))
    ));
    assert!(matches!(
        maps.map::<u64, i64>("m"),
        Err(ofx_diesel::Error::MapAttach(_))
    ));
    assert!(maps.map::<String, i64>("m").is_ok());
    assert_eq!(maps.names(), vec!["m".to_owned()]);

    let a = Host::<B>::open(url).await;
    assert!(matches!(
        a.maps.map::<String, u32>(VALUES),
        Err(ofx_diesel::Error::MapAttach(_))
    ));
    assert!(matches!(
        a.maps.map::<(String, String), i64>(OTHER),
        Err(ofx_diesel::Error::MapAttach(_))
    ));
    a.maps.map::<u8, u8>("bytes").unwrap();
    // The writer service asks for `bytes` as `<String, i64>`: its command fails, nothing written.
    assert!(
        a.run(vec![
            values(Op::Set("v".into(), 1)),
            on("bytes", Op::Set("x".into(), 1))
        ])
        .await
        .is_err()
    );
    a.sync().await;
    assert!(table(&a.db, VALUES).await.is_empty());
    assert!(a.recorder.committed().is_empty());
}
