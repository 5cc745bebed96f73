//! Failures: the database going away and coming back (a proxy cut, connections terminated by
//! the server), `sync` failing typed meanwhile, a hub shut down, rows of the change log and
//! entries that do not decode.

use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_diesel::maps::MapSettings;

use crate::kit::{
    Host, OTHER, Op, Sql, VALUES, assert_redo_order, exec, insert_change_row, log_head, quote,
    run_on, table, until, values, within,
};
use crate::order::assert_hosts_agree;

backend_tests! {
    shutting_a_hub_down_stops_its_follower =>
        sqlite_shutting_a_hub_down_stops_its_follower,
        postgres_shutting_a_hub_down_stops_its_follower;
    shutting_a_hub_down_stops_a_follower_waiting_for_a_rebuild =>
        sqlite_shutting_a_hub_down_stops_a_follower_waiting_for_a_rebuild,
        postgres_shutting_a_hub_down_stops_a_follower_waiting_for_a_rebuild;
    undecodable_changes_are_skipped_and_counted =>
        sqlite_undecodable_changes_are_skipped_and_counted,
        postgres_undecodable_changes_are_skipped_and_counted;
    undecodable_entries_are_skipped_in_a_rebuild_and_counted =>
        sqlite_undecodable_entries_are_skipped_in_a_rebuild_and_counted,
        postgres_undecodable_entries_are_skipped_in_a_rebuild_and_counted;
}

postgres_tests! {
    the_follower_survives_a_cut_and_sync_fails_typed_meanwhile =>
        postgres_the_follower_survives_a_cut_and_sync_fails_typed_meanwhile;
    the_follower_survives_a_stall_and_sync_fails_typed_meanwhile =>
        postgres_the_follower_survives_a_stall_and_sync_fails_typed_meanwhile;
    the_followers_survive_terminated_connections_among_writers =>
        postgres_the_followers_survive_terminated_connections_among_writers;
    a_rebuild_whose_read_fails_midway_is_followed_by_another =>
        postgres_a_rebuild_whose_read_fails_midway_is_followed_by_another;
    a_read_on_a_silent_connection_is_abandoned_and_retried =>
        postgres_a_read_on_a_silent_connection_is_abandoned_and_retried;
}

pub(crate) fn quick_retries() -> MapSettings {
    let mut settings = MapSettings::default();
    settings.retry_max = Duration::from_millis(200);
    settings.refresh_timeout = Duration::from_secs(2);
    settings
}

/// Dropping a host's hub stops its manager's follower (not crashed); `ready` still says it
/// started (it did), and `sync` fails within its timeout instead of hanging.
async fn shutting_a_hub_down_stops_its_follower<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    let maps = a.maps.clone();
    let health = maps.health();
    assert_eq!(health.state(), TaskState::Running);
    drop(a);
    let ended = within(
        Duration::from_secs(10),
        "the follower stops",
        health.ended(),
    )
    .await;
    assert_eq!(ended, TaskState::Stopped);
    assert!(
        within(Duration::from_secs(5), "ready", maps.ready())
            .await
            .is_ok()
    );
    let synced = within(
        Duration::from_secs(5),
        "sync after the stop",
        maps.sync_within(Duration::from_secs(1)),
    )
    .await;
    assert!(synced.is_err(), "{synced:?}");
}

/// Rows of the change log inserted by hand that do not decode (not JSON; a change whose key is
/// not a string; an unknown action; an operation id that is not a uuid): skipped and counted by
/// every host, whose follower goes on in order with the later transactions.
async fn undecodable_changes_are_skipped_and_counted<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    a.sync().await;
    b.sync().await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let bad = [
        ("not json at all".to_owned(), uuid.clone()),
        (
            r#"{"map":"values","action":"add","key":5,"new":1}"#.to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            r#"{"map":"values","action":"explode","key":"z","new":1}"#.to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        ("{}".to_owned(), "by-hand".to_owned()),
    ];
    let mut hand = Vec::new();
    for (body, operation) in &bad {
        hand.push(insert_change_row(&a.db, body, operation).await);
    }
    b.run(vec![
        values(Op::Set("b".into(), 2)),
        crate::kit::other(Op::Set("o".into(), 3)),
    ])
    .await
    .unwrap();
    a.run(vec![values(Op::Remove("a".into()))]).await.unwrap();
    let c = Host::<B>::open(url).await;
    for (n, host) in [&a, &b].into_iter().enumerate() {
        host.sync().await;
        let status = host.maps.status();
        assert!(
            status.skipped >= 4,
            "host {n} counts the undecodable rows: {status:?}"
        );
        assert!(!host.maps.health().crashed());
        assert_eq!(host.maps.health().state(), TaskState::Running);
        assert_eq!(status.position, log_head(&a.db).await);
        // (Each row by hand is announced as a transaction of one change, none delivered: see
        // `broken.rs`; not checked here.)
        let transactions = assert_redo_order(&host.recorder.notes(), false);
        let real: Vec<_> = transactions
            .iter()
            .filter(|t| !hand.contains(&t.sequence))
            .collect();
        assert_eq!(real.len(), 3, "host {n}: {transactions:?}");
        for map in [VALUES, OTHER] {
            assert_eq!(host.recorder.content(map), table(&a.db, map).await);
        }
    }
    c.sync().await;
    assert_eq!(c.recorder.content(VALUES), table(&a.db, VALUES).await);
    // And they follow on (the rows by hand make a hole in the sequence numbers: no density).
    c.run(vec![values(Op::Set("c".into(), 3))]).await.unwrap();
    a.sync().await;
    b.sync().await;
    assert_eq!(a.recorder.after_start(), b.recorder.after_start());
    let transactions = assert_redo_order(&a.recorder.notes(), false);
    assert_eq!(
        transactions
            .iter()
            .filter(|t| !hand.contains(&t.sequence))
            .count(),
        4
    );
    assert_eq!(a.recorder.content(VALUES), table(&a.db, VALUES).await);
}

/// An entry of the table inserted by hand that does not decode as the map's types: a rebuild
/// skips it and counts it; `entries` fails with it; `get` of other keys works.
async fn undecodable_entries_are_skipped_in_a_rebuild_and_counted<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    a.run(vec![
        values(Op::Set("a".into(), 1)),
        values(Op::Set("b".into(), 2)),
    ])
    .await
    .unwrap();
    exec(
        &a.db,
        &format!(
            "INSERT INTO ofx_map_entries (map, key, value) VALUES ({}, '5', '1'), ({}, '\"w\"', \
             '\"not a number\"')",
            quote(VALUES),
            quote(VALUES)
        ),
    )
    .await;
    let b = Host::<B>::open(url).await;
    let status = b.maps.status();
    assert!(status.skipped >= 2, "{status:?}");
    assert_eq!(
        b.recorder.content(VALUES),
        [("a".to_owned(), 1), ("b".to_owned(), 2)]
            .into_iter()
            .collect()
    );
    assert!(b.map(VALUES).entries().await.is_err());
    assert_eq!(b.map(VALUES).get(&"a".to_owned()).await.unwrap(), Some(1));
    // Changes go on.
    a.run(vec![values(Op::Set("c".into(), 3))]).await.unwrap();
    b.sync().await;
    assert_eq!(b.recorder.content(VALUES).get("c"), Some(&3));
}

/// Host B reaches PostgreSQL through `proxy`; `cut` takes it away: while it is away, A's
/// writes commit and B's `sync` fails with `MapsUnavailable`; once it is back, B catches up in
/// order with what A got.
async fn survives<F: Fn(&crate::proxy::Proxy)>(url: &str, cut: F) {
    use crate::proxy::{Mode, Proxy};
    type B = ofx_diesel::Postgres;
    let proxy = Proxy::start(url).await;
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(proxy.url(), quick_retries(), |_| {}).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    b.sync().await;
    cut(&proxy);
    for n in 0..5 {
        a.run(vec![
            values(Op::Set(format!("k{n}"), n)),
            values(Op::Remove("a".into())),
        ])
        .await
        .unwrap();
    }
    let failed = within(
        Duration::from_secs(20),
        "sync while the database is away",
        b.maps.sync_within(Duration::from_secs(1)),
    )
    .await;
    assert!(
        matches!(failed, Err(ofx_diesel::Error::MapsUnavailable { .. })),
        "{failed:?}"
    );
    proxy.set(Mode::Pass);
    let back = b.maps.sync_within(Duration::from_secs(30)).await;
    assert!(back.is_ok(), "{back:?}");
    assert!(!b.maps.health().crashed());
    assert_hosts_agree(&[&a, &b]).await;
    assert_eq!(b.maps.status().coverage_losses, 0);
    assert_eq!(b.map(VALUES).get(&"k4".to_owned()).await.unwrap(), Some(4));
    b.run(vec![values(Op::Set("from b".into(), 1))])
        .await
        .unwrap();
    assert_hosts_agree(&[&a, &b]).await;
}

async fn the_follower_survives_a_cut_and_sync_fails_typed_meanwhile(url: &str) {
    survives(url, |proxy| proxy.set(crate::proxy::Mode::Down)).await;
}

async fn the_follower_survives_a_stall_and_sync_fails_typed_meanwhile(url: &str) {
    survives(url, |proxy| proxy.set(crate::proxy::Mode::Stall)).await;
}

/// Writers on two hosts while the server terminates every connection to the database again
/// and again: both followers go on, and once it stops they agree, in redo order, with one
/// transaction per operation of the log, and with the table.
async fn the_followers_survive_terminated_connections_among_writers(url: &str) {
    type B = ofx_diesel::Postgres;
    let a = Host::<B>::open_with(url, quick_retries(), |_| {}).await;
    let b = Host::<B>::open_with(url, quick_retries(), |_| {}).await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4_i64 {
        let hub = [&a, &b][usize::try_from(writer % 2).unwrap()].hub().clone();
        let stop = stop.clone();
        writers.spawn(async move {
            let mut n = 0;
            let mut committed = 0;
            while !stop.is_cancelled() || committed < 5 {
                let steps = vec![
                    values(Op::Set(format!("w{writer}"), n)),
                    crate::kit::other(Op::Set(format!("k{}", n % 5), writer)),
                ];
                if run_on(&hub, steps).await.is_ok() {
                    committed += 1;
                }
                n += 1;
            }
            committed
        });
    }
    for _ in 0..6 {
        let before = a.recorder.committed().len() + b.recorder.committed().len();
        until(Duration::from_secs(60), "progress between kills", || {
            a.recorder.committed().len() + b.recorder.committed().len() > before + 6
        })
        .await;
        crate::kit::postgres_admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = {} AND pid <> pg_backend_pid()",
            quote(&database)
        ))
        .await;
    }
    stop.cancel();
    let mut committed = 0;
    while let Some(done) = writers.join_next().await {
        committed += done.unwrap();
    }
    assert!(committed >= 20);
    let transactions = within(
        Duration::from_secs(60),
        "the hosts agree",
        assert_hosts_agree(&[&a, &b]),
    )
    .await;
    let operations = crate::kit::scalar(
        &a.db,
        "SELECT COUNT(DISTINCT operation_uuid) AS value FROM ofx_stream_events \
         WHERE stream = 'ofx.maps'",
    )
    .await
    .unwrap();
    assert_eq!(transactions.len(), usize::try_from(operations).unwrap());
    assert!(!a.maps.health().crashed() && !b.maps.health().crashed());
}

/// Records each rebuild (after reading it: a rebuild cut short is recorded short) and each
/// change; the first rebuild stops at a gate after its first entry.
#[derive(Clone)]
struct CutShort {
    recorder: crate::kit::Recorder,
    gate: std::sync::Arc<crate::kit::Gate>,
    first: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ofx_diesel::maps::MapObserver<String, i64> for CutShort {
    fn changed(&self, change: &ofx_diesel::maps::MapChange<String, i64>) {
        self.recorder.of(VALUES).changed(change);
    }

    fn rebuild(
        &self,
        mut entries: ofx_diesel::maps::Rebuild<String, i64>,
    ) -> ofx_core::ScopeFuture<'_, ()> {
        Box::pin(async move {
            let sequence = entries.sequence();
            let mut content = Vec::new();
            content.extend(entries.next().await);
            if self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.gate.pass().await;
            }
            while let Some(entry) = entries.next().await {
                content.push(entry);
            }
            self.recorder
                .notes
                .lock()
                .unwrap()
                .push(crate::kit::Note::Rebuild {
                    map: VALUES.to_owned(),
                    sequence,
                    entries: content,
                });
        })
    }
}

/// Host B reads rebuilds two entries a page; an observer's rebuild stops after its first entry
/// while the server terminates every connection to the database: "if reading it fails midway,
/// the stream ends early and another rebuild follows, before any change". The observer's
/// content is then exact, and stays exact with later changes.
async fn a_rebuild_whose_read_fails_midway_is_followed_by_another(url: &str) {
    type B = ofx_diesel::Postgres;
    let a = Host::<B>::open_with(url, quick_retries(), |_| {}).await;
    let mut settings = quick_retries();
    settings.rebuild_page = 2;
    let b = Host::<B>::open_with(url, settings, |_| {}).await;
    a.run(
        (0..20)
            .map(|n| values(Op::Set(format!("k{n:02}"), n)))
            .collect(),
    )
    .await
    .unwrap();
    b.sync().await;
    let name = crate::kit::fresh_gate();
    let observer = CutShort {
        recorder: crate::kit::Recorder::default(),
        gate: crate::kit::gate(&name),
        first: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    b.map(VALUES).subscribe(observer.clone());
    observer.gate.reached(1).await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    crate::kit::postgres_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = {} AND pid <> pg_backend_pid()",
        quote(&database)
    ))
    .await;
    observer.gate.open();
    a.run(vec![
        values(Op::Remove("k05".into())),
        values(Op::Set("new".into(), 1)),
    ])
    .await
    .unwrap();
    b.maps.sync_within(Duration::from_secs(30)).await.unwrap();
    let notes = observer.recorder.notes();
    let expected = table(&a.db, VALUES).await;
    assert_eq!(
        crate::kit::content_of(&notes, VALUES),
        expected,
        "the observer's content: {notes:#?}"
    );
    // Any rebuild cut short is followed by another before any change.
    for (at, note) in notes.iter().enumerate() {
        if let crate::kit::Note::Rebuild { entries, .. } = note
            && entries.len() < 19
        {
            assert!(
                notes.get(at + 1).is_some_and(crate::kit::Note::is_rebuild),
                "a short rebuild, then no rebuild: {notes:#?}"
            );
        }
    }
}

/// The hub is dropped while its follower waits for an observer's rebuild (which waits for a
/// gate that is never opened): the follower still stops.
async fn shutting_a_hub_down_stops_a_follower_waiting_for_a_rebuild<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    let name = crate::kit::fresh_gate();
    let observer = CutShort {
        recorder: crate::kit::Recorder::default(),
        gate: crate::kit::gate(&name),
        first: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    a.map(VALUES).subscribe(observer.clone());
    observer.gate.reached(1).await;
    let health = a.maps.health();
    drop(a);
    let ended = within(
        Duration::from_secs(10),
        "the follower stops while a rebuild waits",
        health.ended(),
    )
    .await;
    assert_eq!(ended, TaskState::Stopped);
    observer.gate.open();
}

/// Host B's open connections go silent for good (a half-dead network path) while new ones
/// work: its follower's read hangs, is abandoned after `refresh_timeout` (2 s) and retried on a
/// new connection, so B catches up with A's writes.
async fn a_read_on_a_silent_connection_is_abandoned_and_retried(url: &str) {
    use crate::proxy::Proxy;
    type B = ofx_diesel::Postgres;
    let proxy = Proxy::start(url).await;
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(proxy.url(), quick_retries(), |_| {}).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    b.sync().await;
    proxy.silence_open_connections();
    for n in 0..3 {
        a.run(vec![values(Op::Set(format!("k{n}"), n))])
            .await
            .unwrap();
    }
    let caught_up = b.maps.sync_within(Duration::from_secs(30)).await;
    assert!(
        caught_up.is_ok(),
        "{caught_up:?}, status {:?}",
        b.maps.status()
    );
    assert_hosts_agree(&[&a, &b]).await;
}
