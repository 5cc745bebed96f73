//! Soaks on healthy servers: many writers on two hosts, 2 % of the commands failing after their
//! writes (their log sequence values burnt, leaving gaps), and host B's reader restarted every
//! 500 operations.

use std::sync::Arc;

use ofx_tests::ledger::Wakeup;
use ofx_tests::servers::{drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;

use crate::harness::{Run, Workload};

fn sqlite_file() -> String {
    std::env::temp_dir()
        .join(format!("ofx-faults-{}.db", uuid::Uuid::new_v4().simple()))
        .to_string_lossy()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sqlite() {
    let path = sqlite_file();
    let dir = tempdir();
    let run = Run::<ofx_diesel::Sqlite>::start(&path, 2, &Wakeup::Fs(dir.clone())).await;
    let workload = Workload::soak::<ofx_diesel::Sqlite>(tiered(1_000, 10_000));
    let failed = run.drive(&workload).await;
    let (report, _) = run.settle_and_check("soak sqlite").await;
    report.assert_clean("soak sqlite");
    assert_eq!(
        failed,
        workload.commands / 50,
        "only the refused commands fail"
    );
    assert_eq!(report.tally.committed as usize, workload.commands - failed);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_postgres() {
    let url = fresh_database(&shared_postgres()).await;
    let run = Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await;
    let workload = Workload::soak::<ofx_diesel::Postgres>(tiered(1_000, 10_000));
    let failed = run.drive(&workload).await;
    let (report, _) = run.settle_and_check("soak postgres").await;
    report.assert_clean("soak postgres");
    assert_eq!(
        failed,
        workload.commands / 50,
        "only the refused commands fail"
    );
    drop(run);
    drop_database(&url).await;
}

/// Host B's reader is stopped and a new one started every 500 operations: it resumes where
/// the last one stopped, losing and repeating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_restarted_every_500_operations() {
    let url = fresh_database(&shared_postgres()).await;
    let run =
        Arc::new(Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await);
    let workload = Workload::soak::<ofx_diesel::Postgres>(tiered(2_000, 10_000));
    let restarts = {
        let run = Arc::clone(&run);
        let commands = workload.commands;
        tokio::spawn(async move {
            let host = &run.hosts[1];
            let mut restarts = 0;
            let mut at = 500;
            while at < commands {
                run.reached(at).await;
                let reader = host.reader().expect("B reads the log");
                reader.stop();
                host.ledger
                    .db()
                    .start_log_reader(&host.hub)
                    .await
                    .expect("a new reader starts");
                restarts += 1;
                at += 500;
            }
            restarts
        })
    };
    run.drive(&workload).await;
    let restarts = restarts.await.unwrap();
    let (report, _) = run.settle_and_check("reader restarts").await;
    report.assert_clean("reader restarts");
    assert_eq!(restarts, workload.commands / 500 - 1);
    drop_database(&url).await;
}

/// A temporary directory for a file-system watcher.
pub(crate) fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ofx-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
