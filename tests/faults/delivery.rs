//! One row, several paths to a host: small read batches, gaps (rows whose transactions hold
//! their log index while later ones commit, re-read once they commit), a storm of spurious
//! wake-ups beside the watcher's, and a reader restarted mid-run. Each host's listeners run
//! once per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ofx_diesel::CommitFaultHook;
use ofx_tests::checker::History;
use ofx_tests::ledger::{LedgerHost, Wakeup, default_settings};
use ofx_tests::servers::{drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;
use tokio_util::sync::CancellationToken;

use crate::harness::{Run, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reaching_a_host_by_several_paths_are_completed_once() {
    let url = fresh_database(&shared_postgres()).await;
    let wakeup = Wakeup::Postgres(url.clone());
    let history = Arc::new(History::new());
    let log = format!("faults-delivery-{}", uuid::Uuid::new_v4().simple());
    let mut settings = default_settings();
    settings.read_batch = 4;
    let mut hosts = Vec::new();
    for _ in 0..2 {
        hosts.push(Arc::new(
            LedgerHost::<ofx_diesel::Postgres>::start(
                &url,
                &log,
                &wakeup,
                Some(settings.clone()),
                &history,
            )
            .await
            .unwrap(),
        ));
    }
    // Every 10th commit of each host holds its log index 30 ms before its `COMMIT`: the
    // others' readers see a gap, and re-read it.
    for host in &hosts {
        let commits = Arc::new(AtomicU64::new(0));
        let hook: CommitFaultHook<ofx_diesel::Postgres> = Arc::new(move |_connection| {
            let slow = commits.fetch_add(1, Ordering::Relaxed) % 10 == 9;
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            })
        });
        host.ledger.db().set_commit_fault(Some(hook));
    }
    let run = Arc::new(Run {
        hosts,
        history,
        done: tokio::sync::watch::channel(0).0,
    });
    // Spurious wake-ups of host B's reader, all along.
    let stop = CancellationToken::new();
    let storm = {
        let run = Arc::clone(&run);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut wakes = 0_u64;
            while !stop.is_cancelled() {
                if let Some(reader) = run.hosts[1].reader() {
                    reader.wake();
                    wakes += 1;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            wakes
        })
    };
    let workload = Workload::soak::<ofx_diesel::Postgres>(tiered(1_000, 10_000));
    let restart = {
        let run = Arc::clone(&run);
        let half = workload.commands / 2;
        tokio::spawn(async move {
            run.reached(half).await;
            let host = &run.hosts[1];
            host.reader().unwrap().stop();
            host.ledger.db().start_log_reader(&host.hub).await.unwrap();
        })
    };
    run.drive(&workload).await;
    restart.await.unwrap();
    stop.cancel();
    let wakes = storm.await.unwrap();
    let (report, _) = run.settle_and_check("several paths").await;
    let gaps: u64 = run
        .hosts
        .iter()
        .map(|host| {
            host.reader()
                .unwrap()
                .stats()
                .gaps_closed
                .load(Ordering::Relaxed)
        })
        .sum();
    println!("several paths: {wakes} spurious wake-ups, {gaps} gaps closed after the restart");
    report.assert_clean("several paths");
    assert!(wakes > 100, "the storm ran ({wakes})");
    assert!(gaps > 0, "the readers re-read gaps");
    drop(run);
    drop_database(&url).await;
}
