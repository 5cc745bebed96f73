//! PostgreSQL checkout without `SELECT 1`: no command fails because of a stale pooled
//! connection, and nothing runs twice.

use std::sync::Arc;

use ofx_core::ReprocessPolicy;
use ofx_core::capture;
use ofx_diesel::{DbHub, Postgres};
use tokio::sync::Barrier;

use crate::kit::{Host, Mode, PROMPTLY, RawSql, fast, postgres_database};

const KILL_ALL: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

async fn burst(
    host: &Arc<Host<Postgres>>,
    ids: std::ops::Range<i64>,
) -> Vec<Result<i64, ofx_core::Error>> {
    let tasks: Vec<_> = ids
        .map(|id| {
            let host = Arc::clone(host);
            tokio::spawn(async move { host.dep(id, 1, Mode::Ok).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            tokio::time::timeout(PROMPTLY * 5, task)
                .await
                .expect("no hang")
                .unwrap(),
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_pool_of_terminated_idle_connections_fails_no_command_even_without_reprocessing() {
    let url = postgres_database().await;
    let mut settings = fast();
    settings.pool_size = 8;
    let host = Arc::new(
        Host::<Postgres>::open_with(&url, settings, false, ReprocessPolicy::disabled()).await,
    );
    let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
    // Fill the pool: 8 commands at once, then every one of them idle.
    assert!(burst(&host, 0..8).await.iter().all(Result::is_ok));
    for round in 1..=3_i64 {
        direct.exec(KILL_ALL).await;
        // More concurrent commands than the pool has connections, every pooled one dead.
        let results = burst(&host, 0..16).await;
        for (id, result) in results.iter().enumerate() {
            assert!(result.is_ok(), "round {round}, id {id}: {result:?}");
        }
    }
    assert_eq!(direct.count("ofx_operations").await, 8 + 3 * 16);
    assert_eq!(
        direct.count("accounts WHERE id < 8 AND balance = 4").await,
        8
    );
    assert_eq!(
        direct.count("accounts WHERE id >= 8 AND balance = 3").await,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminating_every_connection_mid_burst_runs_nothing_twice() {
    let url = postgres_database().await;
    let host = Arc::new(Host::<Postgres>::open(&url, fast(), false).await);
    let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
    const N: usize = 6;
    // N commands stop before their COMMIT (their transactions open), then every connection of
    // the database is terminated, then they go on.
    let barrier = Arc::new(Barrier::new(N + 1));
    let hook_barrier = Arc::clone(&barrier);
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook_held = Arc::clone(&held);
    host.db()
        .set_commit_fault(Some(Arc::new(move |_connection| {
            let barrier = Arc::clone(&hook_barrier);
            let held = Arc::clone(&hook_held);
            Box::pin(async move {
                if held.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < N {
                    barrier.wait().await;
                    barrier.wait().await;
                }
            })
        })));
    let ids = 0..(N as i64);
    let tasks = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { burst(&host, ids).await })
    };
    barrier.wait().await;
    direct.exec(KILL_ALL).await;
    barrier.wait().await;
    let results = tasks.await.unwrap();
    host.db().set_commit_fault(None);
    let mut committed = 0;
    for (id, result) in results.iter().enumerate() {
        let rows = direct.count(&format!("accounts WHERE id = {id}")).await;
        let balance_one = direct
            .count(&format!("accounts WHERE id = {id} AND balance = 1"))
            .await;
        match result {
            Ok(balance) => {
                committed += 1;
                assert_eq!((*balance, balance_one), (1, 1), "id {id}: committed once");
            }
            Err(_) => assert!(rows == 0 || balance_one == 1, "id {id}: at most once"),
        }
    }
    let ops = direct.count("ofx_operations").await;
    assert_eq!(
        direct.count("accounts").await,
        ops,
        "one operation row per business row"
    );
    assert!(ops >= committed, "{results:?}");
    assert_eq!(
        direct.count("accounts WHERE balance > 1").await,
        0,
        "nothing ran twice"
    );
    // And the pool recovered: the next burst all succeeds.
    let after = burst(&host, 100..110).await;
    assert!(after.iter().all(Result::is_ok), "{after:?}");
}

/// Waits until `condition` holds (polled), failing after 10 s.
async fn until(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

/// Promise: a reader on another hub never misses a committed operation, including when rows are
/// trimmed past it (then it invalidates everything). Here the trimmer deletes the visible prefix
/// of the log past an index drawn by a transaction still in flight; that transaction commits
/// after the reader's "invalidate everything".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operation_committing_below_a_trim_is_not_missed_by_a_reader() {
    use std::sync::atomic::Ordering;
    let url = postgres_database().await;
    let writer = Arc::new(Host::<Postgres>::open(&url, fast(), false).await);
    let reader = Host::<Postgres>::open(&url, fast(), true).await;
    let mut trimming = fast();
    trimming.max_age = std::time::Duration::ZERO;
    let trimmer = DbHub::<Postgres>::open(&url, trimming).await.unwrap();
    // Deposit X stops before its COMMIT, its row (and index) written.
    let reached = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (hr, hl, hf) = (
        Arc::clone(&reached),
        Arc::clone(&release),
        Arc::clone(&first),
    );
    writer
        .db()
        .set_commit_fault(Some(Arc::new(move |_connection| {
            let (reached, release, first) = (Arc::clone(&hr), Arc::clone(&hl), Arc::clone(&hf));
            Box::pin(async move {
                if first.swap(false, Ordering::SeqCst) {
                    reached.notify_one();
                    release.notified().await;
                }
            })
        })));
    let x = {
        let writer = Arc::clone(&writer);
        tokio::spawn(async move { writer.dep(1, 1, Mode::Ok).await })
    };
    reached.notified().await;
    // Deposit Y commits after it, with a higher index; the reader replays it.
    writer.dep(2, 1, Mode::Ok).await.unwrap();
    let stats = reader.reader.as_ref().unwrap().stats();
    until("the reader replayed Y", || {
        stats.replayed.load(Ordering::Relaxed) >= 1
    })
    .await;
    // The trimmer deletes the visible prefix (Y's row), past X's index still in flight.
    assert!(trimmer.trim().await.unwrap() >= 1);
    // Deposit Z commits after the trim; once the reader replayed it, it has read past the trim.
    writer.dep(3, 1, Mode::Ok).await.unwrap();
    until("the reader replayed Z", || {
        stats.replayed.load(Ordering::Relaxed) >= 2
    })
    .await;
    // Computed on the reader after it read past the trim, before X commits.
    let (value, computed) = capture(reader.accounts.balance(1)).await.unwrap();
    assert_eq!(value, Ok(0));
    release.notify_one();
    assert_eq!(x.await.unwrap().unwrap(), 1);
    let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
    assert_eq!(
        direct.count("accounts WHERE id = 1 AND balance = 1").await,
        1
    );
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        computed.when_invalidated(),
    )
    .await
    .expect("the reader's cached balance(1) is invalidated after X committed");
}
