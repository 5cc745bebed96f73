//! Faults of the database server itself, on a PostgreSQL cluster of the test's own: a crash
//! (`pg_ctl stop -m immediate`) and restart in the middle of a run, after which every host
//! resumes within 10 s; an idle-in-transaction session and a repeatable-read reader holding the
//! MVCC horizon; and a host's pool exhausted. The lag each causes is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use ofx_tests::ledger::Wakeup;
use ofx_tests::servers::{PrivatePostgres, drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;

use crate::harness::{Run, Workload};

/// How soon every host must be back after the server is.
const RESUME: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_and_restarted_mid_run() {
    let server = Arc::new(PrivatePostgres::start());
    let url = fresh_database(&server.server_url()).await;
    let run =
        Arc::new(Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await);
    let mut workload = Workload::soak::<ofx_diesel::Postgres>(tiered(1_000, 4_000));
    workload.pause_after_error = Duration::from_millis(50);
    // The crash, and then, while the writers go on, the time until every host is back: a
    // command succeeds on each, and every host replays both.
    let crash = {
        let run = Arc::clone(&run);
        let server = Arc::clone(&server);
        let half = workload.commands / 2;
        tokio::spawn(async move {
            run.reached(half).await;
            tokio::task::spawn_blocking(move || {
                server.ctl_stop("immediate");
                std::thread::sleep(Duration::from_secs(1)); // the outage
                server.ctl_start();
            })
            .await
            .unwrap();
            let restarted = Instant::now();
            let mut sequences = Vec::new();
            for host in &run.hosts {
                loop {
                    if let Ok(sequence) = host.ledger.call_sequence(0, 1).await {
                        sequences.push(sequence);
                        break;
                    }
                    assert!(
                        restarted.elapsed() < RESUME,
                        "a command succeeds within {RESUME:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let last = sequences.into_iter().max().unwrap();
            for host in &run.hosts {
                let left = RESUME.saturating_sub(restarted.elapsed());
                host.ledger
                    .db()
                    .wait_replayed(&host.hub, last, left)
                    .await
                    .unwrap_or_else(|error| {
                        panic!("every host replays within {RESUME:?}: {error}")
                    });
            }
            restarted.elapsed()
        })
    };
    run.drive(&workload).await;
    let resumed = crash.await.unwrap();
    let (report, _) = run.settle_and_check("PostgreSQL crash").await;
    println!("PostgreSQL crash: every host resumed {resumed:?} after the restart");
    report.assert_clean("PostgreSQL crash");
    assert!(report.tally.failed > 0, "calls failed during the outage");
}

/// A repeatable-read reader and an idle transaction that holds an xid pin the MVCC horizon
/// (and the oldest running transaction, which the reader's gap tracking watches) for the whole
/// run and beyond: nothing is lost, and the replay lag is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn horizon_pinned_by_idle_and_repeatable_read_transactions() {
    let server = PrivatePostgres::start();
    let url = fresh_database(&server.server_url()).await;
    let run = Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await;
    let hold = Duration::from_secs(tiered(5, 60) as u64);
    let mut reader = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .unwrap();
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM ofx_operations")
        .await
        .unwrap();
    let mut idle = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .unwrap();
    idle.batch_execute("BEGIN; INSERT INTO fx_counters (key, value) VALUES (-1, 0)")
        .await
        .unwrap();
    let started = Instant::now();
    let workload = Workload::soak::<ofx_diesel::Postgres>(tiered(1_000, 10_000));
    run.drive(&workload).await;
    let (during, _) = run.settle_and_check("pinned horizon (held)").await;
    during.assert_clean("pinned horizon (held)");
    tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
    reader.batch_execute("COMMIT").await.unwrap();
    idle.batch_execute("ROLLBACK").await.unwrap();
    let (report, _) = run.settle_and_check("pinned horizon").await;
    println!(
        "pinned horizon: held {:?}; replay lag p50 {} µs, p99 {} µs, max {} µs",
        started.elapsed(),
        report.tally.lag_p50_us,
        report.tally.lag_p99_us,
        report.tally.lag_max_us
    );
    report.assert_clean("pinned horizon");
}

/// Host B's pool is exhausted (every connection checked out) for a while during the run: its
/// reader and its writers wait or fail, then catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool() {
    let url = fresh_database(&shared_postgres()).await;
    let run =
        Arc::new(Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await);
    let hold = Duration::from_secs(tiered(2, 20) as u64);
    let host_b = Arc::clone(&run.hosts[1]);
    let pool_size = host_b.ledger.db().settings().pool_size;
    let exhaust = {
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            run.reached(100).await;
            let mut held = Vec::with_capacity(pool_size);
            for _ in 0..pool_size {
                held.push(host_b.ledger.db().connection().await.unwrap());
            }
            tokio::time::sleep(hold).await;
            drop(held);
        })
    };
    let mut workload = Workload::soak::<ofx_diesel::Postgres>(tiered(1_000, 10_000));
    workload.pause_after_error = Duration::from_millis(20);
    run.drive(&workload).await;
    exhaust.await.unwrap();
    let (report, caught_up) = run.settle_and_check("exhausted pool").await;
    println!(
        "exhausted pool: held {hold:?}; caught up {caught_up:?} after the writes; replay lag p50 {} µs, \
         max {} µs",
        report.tally.lag_p50_us, report.tally.lag_max_us
    );
    report.assert_clean("exhausted pool");
    drop(run);
    drop_database(&url).await;
}
