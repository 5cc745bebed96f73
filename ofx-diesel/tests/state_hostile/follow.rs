//! Following: bad events quarantined (in bounded memory) and undone, the stream goes on past
//! rows missing or out of range, the follower survives an unreadable stream, a slow `apply`
//! does not block readers.

use std::time::{Duration, Instant};

use ofx_diesel::state::{QuarantineReason, SnapshotStorage, StateSettings, UnavailableCause};
use ofx_diesel::{DbHub, Error};

use crate::common::{BankEvent, Deposit, fast};
use crate::kit::{
    End, Gate, Mark, Rig, SideRuntime, Sql, deposit, exec, fresh_ledger, gated_hub, head,
    insert_row, json, quiet_panics, until, until_async, within,
};

backend_tests! {
    bad_events_are_quarantined_and_undone =>
        sqlite_bad_events_are_quarantined_and_undone,
        postgres_bad_events_are_quarantined_and_undone;
    quarantine_memory_is_bounded =>
        sqlite_quarantine_memory_is_bounded,
        postgres_quarantine_memory_is_bounded;
    a_missing_position_is_skipped =>
        sqlite_a_missing_position_is_skipped,
        postgres_a_missing_position_is_skipped;
    rows_out_of_range_do_not_break_the_stream =>
        sqlite_rows_out_of_range_do_not_break_the_stream,
        postgres_rows_out_of_range_do_not_break_the_stream;
    the_follower_survives_an_unreadable_stream =>
        sqlite_the_follower_survives_an_unreadable_stream,
        postgres_the_follower_survives_an_unreadable_stream;
    a_slow_apply_does_not_block_readers =>
        sqlite_a_slow_apply_does_not_block_readers,
        postgres_a_slow_apply_does_not_block_readers;
}

/// In one append: a deposit, an `apply` that mutates then panics, a rejected event, an
/// overdraft (rejected), a deposit; then an undecodable row by hand, then a deposit. Every
/// host (the appending one, one started later) quarantines exactly the bad ones with their
/// kind, undoes the panicking `apply`'s mutation, and goes on; the audit (same stream) only
/// quarantines the undecodable row.
async fn bad_events_are_quarantined_and_undone<B: Sql>(url: &str) {
    quiet_panics();
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    a.commander()
        .call(Mark {
            mark: "bad".into(),
            ledger: vec![
                deposit("a", 10),
                BankEvent::Explode {
                    account: "a".into(),
                },
                BankEvent::Poison,
                BankEvent::Withdrew {
                    account: "a".into(),
                    amount: 100,
                },
                deposit("a", 5),
            ],
            notes: vec![],
            end: End::Succeed,
        })
        .await
        .unwrap();
    insert_row(&a.db, "ledger", 6, "{\"Deposited\":{\"account\":\"a\"}}").await;
    let position = a
        .commander()
        .call(Deposit {
            account: "a".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, 7);
    // B projects the whole stream (a snapshot would let it skip the bad events).
    let mut settings = StateSettings::default();
    settings.snapshots = SnapshotStorage::None;
    let b = Rig::<B>::open(url, settings).await;
    b.ready().await;
    assert_eq!(b.ledger().status().loaded_snapshot, None);
    for (name, rig) in [("A", &a), ("B", &b)] {
        let view = rig.ledger().current_state().await.unwrap();
        assert_eq!(view.position, 7);
        assert_eq!(
            view.balances.get("a"),
            Some(&16),
            "host {name}: a failing apply's mutation leaked (or an event was lost)"
        );
        assert_eq!(view.applied, 3);
        let quarantined = rig.ledger().quarantined();
        let kinds: Vec<(u64, &str)> = quarantined
            .iter()
            .map(|q| (q.position, q.reason.kind()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (2, "panicked"),
                (3, "rejected"),
                (4, "rejected"),
                (6, "undecodable")
            ],
            "host {name}"
        );
        assert!(
            matches!(&quarantined[0].reason, QuarantineReason::Panicked(m) if m.contains("explode"))
        );
        assert!(
            quarantined[1].body.contains("Poison"),
            "{:?}",
            quarantined[1]
        );
        assert_eq!(quarantined[0].stream, "ledger");
        assert_eq!(rig.ledger().status().quarantined, 4, "host {name}");
        let audit = rig.audit().current_state().await.unwrap();
        assert_eq!(audit.positions, vec![1, 2, 3, 4, 5, 7], "host {name}");
        let audit_kinds: Vec<(u64, &str)> = rig
            .audit()
            .quarantined()
            .iter()
            .map(|q| (q.position, q.reason.kind()))
            .collect();
        assert_eq!(audit_kinds, vec![(6, "undecodable")], "host {name}");
    }
    let stored: Vec<(u64, &str)> = a
        .ledger()
        .stored_quarantine(100)
        .await
        .unwrap()
        .iter()
        .map(|q| (q.position, q.reason.kind()))
        .collect();
    assert_eq!(
        stored,
        vec![
            (2, "panicked"),
            (3, "rejected"),
            (4, "rejected"),
            (6, "undecodable")
        ]
    );
}

/// 30 rejected events, 5 kept in memory: the last five, oldest first; all counted, and all
/// stored (in the background).
async fn quarantine_memory_is_bounded<B: Sql>(url: &str) {
    let mut settings = StateSettings::default();
    settings.quarantine_memory = 5;
    let a = Rig::<B>::open(url, settings).await;
    a.ready().await;
    a.commander()
        .call(Mark {
            mark: "poison".into(),
            ledger: vec![BankEvent::Poison; 30],
            notes: vec![],
            end: End::Succeed,
        })
        .await
        .unwrap();
    let view = a.ledger().current_state().await.unwrap();
    assert_eq!(view.position, 30);
    let kept: Vec<u64> = a
        .ledger()
        .quarantined()
        .iter()
        .map(|q| q.position)
        .collect();
    assert_eq!(kept, vec![26, 27, 28, 29, 30]);
    assert_eq!(a.ledger().status().quarantined, 30);
    // Stored in the background: never lost, soon there.
    until_async(Duration::from_secs(10), "all 30 stored", || async {
        a.ledger().stored_quarantine(100).await.unwrap().len() == 30
    })
    .await;
}

/// Rows 1, 2 and 4 by hand (3 deleted): the follower quarantines 3 as missing and goes on; the
/// next append is at 5.
async fn a_missing_position_is_skipped<B: Sql>(url: &str) {
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    for position in [1, 2, 4] {
        insert_row(&db, "ledger", position, &json(&deposit("h", position))).await;
    }
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    let view = a.ledger().current_state().await.unwrap();
    assert_eq!(view.position, 4);
    assert_eq!(view.balances.get("h"), Some(&7));
    let missing: Vec<(u64, &str)> = a
        .ledger()
        .quarantined()
        .iter()
        .map(|q| (q.position, q.reason.kind()))
        .collect();
    assert_eq!(missing, vec![(3, "missing")]);
    let position = a
        .commander()
        .call(Deposit {
            account: "h".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, 5);
}

/// Rows at positions 0 and -5 by hand (outside "dense from 1"): the stream still starts at 1
/// for appends and states.
async fn rows_out_of_range_do_not_break_the_stream<B: Sql>(url: &str) {
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    insert_row(&db, "ledger", 0, &json(&deposit("zero", 1))).await;
    insert_row(&db, "ledger", -5, &json(&deposit("negative", 1))).await;
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    within(Duration::from_secs(10), "ready", a.ledger().ready())
        .await
        .unwrap();
    let position = a
        .commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, 1);
    let view = a.ledger().current_state().await.unwrap();
    assert_eq!(view.position, 1);
    assert_eq!(view.balances.get("x"), Some(&1));
}

/// The stream's table renamed away and back: `current_state()` fails `Unavailable`
/// (failing), `local_state()` answers, `last_error` is set, then everything recovers and the
/// error is cleared.
async fn the_follower_survives_an_unreadable_stream<B: Sql>(url: &str) {
    let mut settings = StateSettings::default();
    settings.retry_max = Duration::from_millis(300);
    let a = Rig::<B>::open(url, settings.clone()).await;
    let b = Rig::<B>::open(url, settings).await;
    a.ready().await;
    b.ready().await;
    a.commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap();
    exec(
        &a.db,
        "ALTER TABLE ofx_stream_events RENAME TO ofx_stream_events_away",
    )
    .await;
    let started = Instant::now();
    let error = within(
        Duration::from_secs(5),
        "current_state_within(1 s) on an unreadable stream",
        b.ledger().current_state_within(Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Unavailable {
                cause: UnavailableCause::Failing(_) | UnavailableCause::Stalled,
                ..
            }
        ),
        "expected Unavailable, got {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(b.ledger().local_state().await.is_ok());
    until(Duration::from_secs(5), "last_error set", || {
        b.ledger().status().last_error.is_some()
    })
    .await;
    assert!(b.ledger().is_ready());
    exec(
        &a.db,
        "ALTER TABLE ofx_stream_events_away RENAME TO ofx_stream_events",
    )
    .await;
    until_async(
        Duration::from_secs(10),
        "current_state() once readable",
        || async { matches!(b.ledger().current_state().await, Ok(view) if view.position == 1) },
    )
    .await;
    until(Duration::from_secs(5), "last_error cleared", || {
        b.ledger().status().last_error.is_none()
    })
    .await;
    assert!(!b.ledger().health().crashed());
    let position = b
        .commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, 2);
    assert_eq!(fresh_ledger(&a.db).await.balances.get("x"), Some(&2));
}

/// A follower held inside `apply` (a slow projection): `local_state()` and `status()` answer at
/// once with the state before the batch; `current_state_within` fails `Unavailable` in time;
/// once `apply` goes on, everything is applied.
async fn a_slow_apply_does_not_block_readers<B: Sql>(url: &str) {
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    let gate = Gate::new();
    let side = SideRuntime::new();
    let (hub, gated) = gated_hub::<B>(&side, url, &gate).await;
    within(Duration::from_secs(10), "gated ready", gated.ready())
        .await
        .unwrap();
    a.commander()
        .call(Mark {
            mark: "slow".into(),
            ledger: vec![deposit("x", 1), deposit("gate", 1), deposit("x", 1)],
            notes: vec![],
            end: End::Succeed,
        })
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "the follower is inside apply",
        || gate.arrivals() >= 1,
    )
    .await;
    let started = Instant::now();
    let status = gated.status();
    let local = within(
        Duration::from_millis(500),
        "local_state() while apply is slow",
        gated.local_state(),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(local.position, 0, "a half-applied batch was published");
    assert_eq!(*local.state, 0);
    assert!(
        !status.caught_up || status.position == head(&a.db, "ledger").await,
        "{status:?}"
    );
    let error = within(
        Duration::from_secs(3),
        "current_state_within(300 ms) while apply is slow",
        gated.current_state_within(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    gate.open();
    let view = within(
        Duration::from_secs(10),
        "current_state() once apply goes on",
        async {
            loop {
                if let Ok(view) = gated.current_state().await {
                    return view;
                }
                // Paces the retries of a deadline loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(view.position, 3);
    assert_eq!(*view.state, 3);
    drop(hub);
    drop(side);
}
