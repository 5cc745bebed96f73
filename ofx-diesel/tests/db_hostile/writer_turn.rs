//! The SQLite writer turn: concurrent commands all commit or fail cleanly, none hangs; the
//! turn ends with every transaction; nested commands do not deadlock; two hubs on one file.

use std::sync::Arc;

use diesel_async::SimpleAsyncConnection;
use ofx_diesel::Sqlite;
use tokio::sync::Notify;

use crate::kit::{Host, Mode, PROMPTLY, RawSql, fast, sqlite_file};

async fn host() -> Arc<Host<Sqlite>> {
    Arc::new(Host::<Sqlite>::open(&sqlite_file().await, fast(), false).await)
}

/// Runs `n` deposits of 1 at once (ids `0..n`, mode as given), each on its own task.
async fn burst(
    host: &Arc<Host<Sqlite>>,
    ids: std::ops::Range<i64>,
    mode: Mode,
) -> Vec<Result<i64, ofx_core::Error>> {
    let tasks: Vec<_> = ids
        .map(|id| {
            let host = Arc::clone(host);
            tokio::spawn(async move { host.dep(id, 1, mode).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            tokio::time::timeout(PROMPTLY * 3, task)
                .await
                .expect("no command hangs")
                .expect("the task ends"),
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_handler_ends_its_turn() {
    let host = host().await;
    let panicked = host.dep(1, 1, Mode::Panic).await;
    assert!(panicked.is_err(), "{panicked:?}");
    let next = tokio::time::timeout(PROMPTLY, host.dep(2, 3, Mode::Ok))
        .await
        .expect("the next command does not wait for the panicked one's turn");
    assert_eq!(next.unwrap(), 3);
    assert_eq!(host.db().count("accounts WHERE id = 1").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failing_and_panicking_commands_all_end_and_none_leaks() {
    let host = host().await;
    let mut tasks = Vec::new();
    for id in 0..30_i64 {
        let host = Arc::clone(&host);
        let mode = match id % 3 {
            0 => Mode::Ok,
            1 => Mode::Fail,
            _ => Mode::Panic,
        };
        tasks.push(tokio::spawn(
            async move { (mode, host.dep(id, 1, mode).await) },
        ));
    }
    for task in tasks {
        let (mode, result) = tokio::time::timeout(PROMPTLY * 3, task)
            .await
            .expect("no command hangs")
            .unwrap();
        assert_eq!(result.is_ok(), mode == Mode::Ok, "{mode:?}: {result:?}");
    }
    assert_eq!(host.db().count("ofx_operations").await, 10);
    assert_eq!(host.db().count("accounts").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_cancelled_while_waiting_for_the_turn_leaves_it_free() {
    let host = host().await;
    let reached = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (hook_reached, hook_release) = (Arc::clone(&reached), Arc::clone(&release));
    host.db()
        .set_commit_fault(Some(Arc::new(move |_connection| {
            let (reached, release) = (Arc::clone(&hook_reached), Arc::clone(&hook_release));
            Box::pin(async move {
                reached.notify_one();
                release.notified().await;
            })
        })));
    // The first command holds its turn at its commit.
    let first = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { host.dep(1, 1, Mode::Ok).await })
    };
    reached.notified().await;
    host.db().set_commit_fault(None);
    // A second command waits for the turn, and is cancelled while waiting.
    let waiting = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { host.dep(2, 1, Mode::Ok).await })
    };
    tokio::task::yield_now().await;
    waiting.abort();
    let _ = waiting.await;
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), 1);
    let next = tokio::time::timeout(PROMPTLY, host.dep(3, 1, Mode::Ok))
        .await
        .expect("the turn is free after a waiter was cancelled");
    assert_eq!(next.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_ends_its_turn_and_leaves_nothing() {
    let host = host().await;
    // The hook ends the transaction under the scope: COMMIT fails.
    host.db().set_commit_fault(Some(Arc::new(move |connection| {
        Box::pin(async move {
            let _ = connection.batch_execute("ROLLBACK").await;
        })
    })));
    let failed = tokio::time::timeout(PROMPTLY, host.dep(1, 1, Mode::Ok))
        .await
        .expect("a failed commit ends");
    host.db().set_commit_fault(None);
    assert!(failed.is_err(), "{failed:?}");
    let next = tokio::time::timeout(PROMPTLY, host.dep(2, 5, Mode::Ok))
        .await
        .expect("the next command does not wait for the failed commit's turn");
    assert_eq!(next.unwrap(), 5);
    assert_eq!(host.db().count("accounts WHERE id = 1").await, 0);
    assert_eq!(host.db().count("ofx_operations").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_with_nested_commands_do_not_deadlock() {
    let host = host().await;
    let results = burst(&host, 0..16, Mode::Nested).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(host.db().count("ofx_operations").await, 16);
    assert_eq!(
        host.db()
            .count("accounts WHERE id >= 1000 AND balance = 1")
            .await,
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hubs_on_one_file_commit_concurrently() {
    let url = sqlite_file().await;
    let a = Arc::new(Host::<Sqlite>::open(&url, fast(), true).await);
    let b = Arc::new(Host::<Sqlite>::open(&url, fast(), true).await);
    let (ra, rb) = tokio::join!(burst(&a, 0..20, Mode::Ok), burst(&b, 100..120, Mode::Ok));
    assert!(
        ra.iter().chain(rb.iter()).all(Result::is_ok),
        "{ra:?} {rb:?}"
    );
    assert_eq!(a.db().count("ofx_operations").await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_commands_at_random_points_never_leaves_the_turn_taken() {
    let host = host().await;
    for round in 0..40_u64 {
        let task = {
            let host = Arc::clone(&host);
            tokio::spawn(async move { host.dep(1, 1, Mode::Ok).await })
        };
        // Cancel after a varying number of scheduler passes: at BEGIN, in the handler, at the
        // insert+COMMIT hop.
        for _ in 0..(round % 8) {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        let next = tokio::time::timeout(PROMPTLY, host.dep(2, 1, Mode::Ok))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the turn was left taken"));
        next.unwrap_or_else(|error| panic!("round {round}: {error:?}"));
    }
    // Every cancelled deposit into 1 either committed with its row or left nothing.
    let ops = host.db().count("ofx_operations").await;
    let into_one = ops - 40;
    assert_eq!(
        host.db()
            .count(&format!("accounts WHERE id = 1 AND balance = {into_one}"))
            .await
            + i64::from(into_one == 0),
        1,
        "business rows match the log"
    );
}
