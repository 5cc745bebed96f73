//! Snapshots: a valid one is loaded; one of another version, corrupt, or ahead of the stream is
//! ignored (the state is rebuilt from the stream); saving never breaks the service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ofx_core::Hub;
use ofx_diesel::state::{Projection, Rejection, SnapshotStorage, StateService, StateSettings};
use ofx_diesel::{Backend, DbHub};

use crate::common::{Bank, BankEvent, Deposit, Ledger, fast};
use crate::kit::{
    End, Mark, Rig, Sql, blob, bytes_literal, deposit, exec, fold, fresh_ledger, quiet_panics,
    scalar, stream_rows, until, within,
};

backend_tests! {
    corrupt_or_relabelled_table_snapshots_are_ignored =>
        sqlite_corrupt_or_relabelled_table_snapshots_are_ignored,
        postgres_corrupt_or_relabelled_table_snapshots_are_ignored;
    a_snapshot_of_another_version_is_ignored =>
        sqlite_a_snapshot_of_another_version_is_ignored,
        postgres_a_snapshot_of_another_version_is_ignored;
    an_unwritable_snapshot_directory_does_not_break_the_service =>
        sqlite_an_unwritable_snapshot_directory_does_not_break_the_service,
        postgres_an_unwritable_snapshot_directory_does_not_break_the_service;
    corrupt_directory_snapshots_are_ignored =>
        sqlite_corrupt_directory_snapshots_are_ignored,
        postgres_corrupt_directory_snapshots_are_ignored;
    concurrent_saves_from_two_hosts =>
        sqlite_concurrent_saves_from_two_hosts,
        postgres_concurrent_saves_from_two_hosts;
    an_explicit_save_is_never_undone_by_an_older_background_one =>
        sqlite_an_explicit_save_is_never_undone_by_an_older_background_one,
        postgres_an_explicit_save_is_never_undone_by_an_older_background_one;
}

/// A hub following the ledger only.
struct Follower<B: Backend> {
    hub: Hub,
    ledger: StateService<Ledger, B>,
}

/// Its state is saved after readiness (when it did not start from a snapshot): waits for that
/// save, so that no save of a host that is gone lands after a test planted a snapshot.
async fn follower<B: Backend>(url: &str, settings: StateSettings) -> Follower<B> {
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    let saves = settings.snapshots != SnapshotStorage::None;
    let ledger = StateService::with_settings(&db, Ledger, settings);
    let hub = Hub::builder()
        .with(db)
        .with(ledger.clone())
        .start()
        .await
        .unwrap();
    within(Duration::from_secs(20), "ready", ledger.ready())
        .await
        .unwrap();
    let status = ledger.status();
    // Saved after readiness unless it started from a snapshot, or has nothing to save.
    if saves && status.loaded_snapshot.is_none() && status.position > 0 {
        until(
            Duration::from_secs(10),
            "the snapshot saved after readiness",
            || ledger.status().saved_snapshot.is_some(),
        )
        .await;
    }
    Follower { hub, ledger }
}

/// 50 events, good and bad, on host A.
async fn some_events<B: Sql>(a: &Rig<B>) {
    for round in 0..10 {
        a.commander()
            .call(Mark {
                mark: format!("round-{round}"),
                ledger: vec![
                    deposit("s", 3),
                    BankEvent::Withdrew {
                        account: "s".into(),
                        amount: 2,
                    },
                    BankEvent::Poison,
                    BankEvent::Explode {
                        account: "s".into(),
                    },
                    deposit(&format!("s{round}"), round),
                ],
                notes: vec![],
                end: End::Succeed,
            })
            .await
            .unwrap();
    }
}

const LEDGER_V1: &str = "FROM ofx_state_snapshots WHERE projection = 'ledger' AND version = 1";

/// A valid table snapshot is loaded; the same with a flipped byte, truncated, relabelled to an
/// earlier position, or relabelled ahead of the stream, must not give a wrong state.
async fn corrupt_or_relabelled_table_snapshots_are_ignored<B: Sql>(url: &str) {
    quiet_panics();
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    some_events(&a).await;
    a.ledger().current_state().await.unwrap();
    assert_eq!(a.ledger().save_snapshot().await.unwrap(), Some(50));
    let fresh = fresh_ledger(&a.db).await;
    let body = blob(&a.db, &format!("SELECT body AS value {LEDGER_V1}")).await;

    let c = follower::<B>(url, StateSettings::default()).await;
    assert_eq!(
        c.ledger.status().loaded_snapshot,
        Some(50),
        "the valid snapshot"
    );
    assert_eq!(*c.ledger.local_state().await.unwrap().state, fresh);
    drop(c);

    let mut flipped = body.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let cases: Vec<(&str, String)> = vec![
        (
            "a flipped byte",
            format!("body = {}, position = 50", bytes_literal::<B>(&flipped)),
        ),
        (
            "a truncated body",
            format!(
                "body = {}, position = 50",
                bytes_literal::<B>(&body[..body.len() - 1])
            ),
        ),
        (
            "an empty body",
            format!("body = {}, position = 50", bytes_literal::<B>(&[])),
        ),
        (
            "the state at 50 labelled 20",
            format!("body = {}, position = 20", bytes_literal::<B>(&body)),
        ),
        (
            "the state at 50 labelled 5,000 (ahead)",
            format!("body = {}, position = 5000", bytes_literal::<B>(&body)),
        ),
    ];
    for (case, assignments) in cases {
        exec(&a.db, &format!("UPDATE ofx_state_snapshots SET {assignments} WHERE projection = 'ledger' AND version = 1")).await;
        let mut settings = StateSettings::default();
        // Keeps the planted snapshot: this host saves none.
        settings.snapshots = SnapshotStorage::Table;
        settings.snapshot_every = u64::MAX;
        let c = follower::<B>(url, settings).await;
        let view = c.ledger.local_state().await.unwrap();
        assert_eq!(view.position, 50, "{case}");
        assert_eq!(
            *view.state,
            fresh,
            "{case}: the host's state is not the stream's (loaded snapshot {:?})",
            c.ledger.status().loaded_snapshot
        );
        drop(c);
    }
}

/// The ledger, version 2: deposits count double.
struct LedgerV2;

impl Projection for LedgerV2 {
    type Event = BankEvent;
    type State = Bank;
    const NAME: &'static str = "ledger";
    const VERSION: u32 = 2;

    fn initial(&self) -> Bank {
        Bank::default()
    }

    fn apply(&self, state: &mut Bank, event: BankEvent, position: u64) -> Result<(), Rejection> {
        let event = match event {
            BankEvent::Deposited { account, amount } => BankEvent::Deposited {
                account,
                amount: amount * 2,
            },
            other => other,
        };
        Ledger.apply(state, event, position)
    }
}

/// A version-1 snapshot is not loaded by version 2 (and a garbage version-3 row by neither).
async fn a_snapshot_of_another_version_is_ignored<B: Sql>(url: &str) {
    quiet_panics();
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    some_events(&a).await;
    a.ledger().current_state().await.unwrap();
    assert_eq!(a.ledger().save_snapshot().await.unwrap(), Some(50));
    exec(
        &a.db,
        &format!(
            "INSERT INTO ofx_state_snapshots (projection, version, position, saved_at, body) \
             VALUES ('ledger', 3, 50, 0, {})",
            bytes_literal::<B>(b"garbage")
        ),
    )
    .await;
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    let v2 = StateService::new(&db, LedgerV2);
    let hub = Hub::builder()
        .with(db.clone())
        .with(v2.clone())
        .start()
        .await
        .unwrap();
    within(Duration::from_secs(20), "v2 ready", v2.ready())
        .await
        .unwrap();
    assert_eq!(
        v2.status().loaded_snapshot,
        None,
        "v2 loaded another version's snapshot"
    );
    let expected = fold(&LedgerV2, &stream_rows(&db, "ledger").await).0;
    assert_eq!(*v2.local_state().await.unwrap().state, expected);
    assert_eq!(v2.save_snapshot().await.unwrap(), Some(50));
    drop(hub);
    let c = follower::<B>(url, StateSettings::default()).await;
    assert_eq!(c.ledger.status().loaded_snapshot, Some(50));
    assert_eq!(
        *c.ledger.local_state().await.unwrap().state,
        fresh_ledger(&a.db).await,
        "v1 loaded another version's snapshot"
    );
}

/// A fresh temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ofx-state-hostile-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A snapshot directory that cannot be created (under `/proc`, refused even to root): the
/// service is ready, answers and appends anyway; `save_snapshot` fails with an error.
async fn an_unwritable_snapshot_directory_does_not_break_the_service<B: Sql>(url: &str) {
    let mut settings = StateSettings::default();
    settings.snapshots = SnapshotStorage::Directory(PathBuf::from(format!(
        "/proc/self/ofx-hostile-{}",
        uuid::Uuid::new_v4().simple()
    )));
    let a = Rig::<B>::open(url, settings).await;
    a.ready().await;
    let position = a
        .commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, 1);
    assert!(a.ledger().save_snapshot().await.is_err());
    assert_eq!(a.ledger().status().saved_snapshot, None);
    assert_eq!(a.ledger().current_state().await.unwrap().position, 1);
    assert!(!a.ledger().health().crashed());
}

/// Every file of the directory with a flipped byte, then truncated to nothing: ignored.
async fn corrupt_directory_snapshots_are_ignored<B: Sql>(url: &str) {
    quiet_panics();
    let dir = temp_dir("corrupt");
    let mut settings = StateSettings::default();
    settings.snapshots = SnapshotStorage::Directory(dir.clone());
    settings.snapshot_every = u64::MAX;
    let a = Rig::<B>::open(url, settings.clone()).await;
    a.ready().await;
    some_events(&a).await;
    a.ledger().current_state().await.unwrap();
    assert_eq!(a.ledger().save_snapshot().await.unwrap(), Some(50));
    let fresh = fresh_ledger(&a.db).await;
    let files = files_of(&dir);
    assert!(!files.is_empty(), "no snapshot file in {}", dir.display());
    let c = follower::<B>(url, settings.clone()).await;
    assert_eq!(c.ledger.status().loaded_snapshot, Some(50));
    drop(c);
    for file in &files {
        let mut bytes = std::fs::read(file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(file, bytes).unwrap();
    }
    let c = follower::<B>(url, settings.clone()).await;
    assert_eq!(
        c.ledger.status().loaded_snapshot,
        None,
        "a corrupt snapshot file was loaded"
    );
    assert_eq!(*c.ledger.local_state().await.unwrap().state, fresh);
    drop(c);
    for file in &files {
        std::fs::write(file, b"").unwrap();
    }
    let c = follower::<B>(url, settings).await;
    assert_eq!(c.ledger.status().loaded_snapshot, None);
    assert_eq!(*c.ledger.local_state().await.unwrap().state, fresh);
    drop(c);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect()
}

/// Two hosts save snapshots at the same time, over and over, while appends go on, to the
/// shared table and to one directory: no save fails, and a host started afterwards has the
/// stream's state.
async fn concurrent_saves_from_two_hosts<B: Sql>(url: &str) {
    let dir = temp_dir("shared");
    for storage in [
        SnapshotStorage::Table,
        SnapshotStorage::Directory(dir.clone()),
    ] {
        let mut settings = StateSettings::default();
        settings.snapshots = storage.clone();
        let a = Arc::new(Rig::<B>::open(url, settings.clone()).await);
        a.ready().await;
        let x = follower::<B>(url, settings.clone()).await;
        let y = follower::<B>(url, settings.clone()).await;
        let writer = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                for _ in 0..40 {
                    a.commander()
                        .call(Deposit {
                            account: "c".into(),
                            amount: 1,
                        })
                        .await
                        .unwrap();
                }
            })
        };
        let mut savers = Vec::new();
        for ledger in [
            x.ledger.clone(),
            y.ledger.clone(),
            x.ledger.clone(),
            y.ledger.clone(),
        ] {
            savers.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                for _ in 0..15 {
                    if let Err(error) = ledger.save_snapshot().await {
                        errors.push(error.to_string());
                    }
                }
                errors
            }));
        }
        writer.await.unwrap();
        let mut errors = Vec::new();
        for saver in savers {
            errors.extend(saver.await.unwrap());
        }
        assert!(
            errors.is_empty(),
            "{storage:?}: {} concurrent saves failed, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        drop((x, y));
        let c = follower::<B>(url, settings).await;
        assert_eq!(
            *c.ledger.local_state().await.unwrap().state,
            fresh_ledger(&a.db).await,
            "{storage:?}: a host started from concurrently saved snapshots"
        );
        drop(c);
        drop(a);
        exec(
            &DbHub::<B>::open(url, fast()).await.unwrap(),
            "DELETE FROM ofx_stream_events",
        )
        .await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the follower saving after every event, `save_snapshot()` racing its background saves:
/// once it returned a position, the stored snapshot and `status().saved_snapshot` never go
/// below it (a background save of an older state used to land after it).
async fn an_explicit_save_is_never_undone_by_an_older_background_one<B: Sql>(url: &str) {
    let mut settings = StateSettings::default();
    settings.snapshot_every = 1;
    settings.snapshot_period = Duration::ZERO;
    let a = Rig::<B>::open(url, settings).await;
    a.ready().await;
    for expected in 1..=40_u64 {
        a.commander()
            .call(Deposit {
                account: "x".into(),
                amount: 1,
            })
            .await
            .unwrap();
        until(Duration::from_secs(10), "the deposit is applied", || {
            a.ledger().status().position >= expected
        })
        .await;
        let saved = a.ledger().save_snapshot().await.unwrap().unwrap();
        assert!(saved >= expected, "saved {saved} after {expected}");
        for _ in 0..3 {
            tokio::task::yield_now().await;
            let stored = scalar(&a.db, &format!("SELECT position AS value {LEDGER_V1}"))
                .await
                .unwrap_or(0);
            assert!(
                u64::try_from(stored).unwrap() >= saved,
                "the stored snapshot went back from {saved} to {stored}"
            );
            let status = a.ledger().status().saved_snapshot.unwrap_or(0);
            assert!(
                status >= saved,
                "saved_snapshot went back from {saved} to {status}"
            );
        }
    }
}
