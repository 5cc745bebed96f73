//! SQLite takes one writer at a time: the operations of a process take turns for it in the
//! process (`DbHub`'s writer turn), so that a waiting one starts as soon as the one before it
//! ends instead of sleeping in SQLite's busy handler. The turn must end with every transaction:
//! committed, rolled back, or cancelled mid-way.

use std::sync::Arc;
use std::time::Duration;

use ofx_diesel::Sqlite;

use crate::common::{Host, RawSql, fast, sqlite_file};

/// Shorter than SQLite's busy timeout and the turn's own wait (5 s each): a turn left taken
/// shows as a timeout here.
const PROMPTLY: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_all_commit() {
    let host = Host::<Sqlite>::open(&sqlite_file().await, fast(), false).await;
    let deposits = (0..20_i64).map(|id| host.deposit(id % 4, 1, false));
    let results = tokio::time::timeout(PROMPTLY * 4, futures_join_all(deposits))
        .await
        .expect("20 commands of 4 accounts end");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(host.accounts.db.count("ofx_operations").await, 20);
    assert_eq!(
        host.accounts.db.count("accounts WHERE balance = 5").await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_command_ends_its_turn() {
    let host = Host::<Sqlite>::open(&sqlite_file().await, fast(), false).await;
    host.deposit(1, 1, true)
        .await
        .expect_err("refused after its write");
    let next = tokio::time::timeout(PROMPTLY, host.deposit(1, 2, false))
        .await
        .expect("the next command does not wait for the refused one's turn");
    assert_eq!(next.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_cancelled_mid_transaction_ends_its_turn() {
    let host = Host::<Sqlite>::open(&sqlite_file().await, fast(), false).await;
    // Several connections idle in the pool: the next command may take another one than the
    // cancelled command's.
    let warm = futures_join_all((10..14_i64).map(|id| host.deposit(id, 1, false))).await;
    assert!(warm.iter().all(Result::is_ok));
    // The first command stops just before its COMMIT, holding its transaction and its turn.
    let reached = Arc::new(tokio::sync::Notify::new());
    let hook_reached = Arc::clone(&reached);
    host.accounts
        .db
        .set_commit_fault(Some(Arc::new(move |_connection| {
            let reached = Arc::clone(&hook_reached);
            Box::pin(async move {
                reached.notify_one();
                std::future::pending::<()>().await;
            })
        })));
    let mut held = Box::pin(host.deposit(1, 5, false));
    tokio::select! {
        _ = &mut held => panic!("the command cannot commit past the hook"),
        () = reached.notified() => {}
    }
    host.accounts.db.set_commit_fault(None);
    drop(held); // cancelled: its transaction rolls back, and its turn must end with it
    let next = tokio::time::timeout(PROMPTLY, host.deposit(2, 7, false))
        .await
        .expect("the next command does not wait for the cancelled one's turn");
    assert_eq!(next.unwrap(), 7);
    assert_eq!(host.accounts.db.count("accounts WHERE id = 1").await, 0);
}

/// Runs `futures` concurrently (in this task) and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("ready"))
        .collect()
}
