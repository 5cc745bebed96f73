//! Savepoints: a nested command that is the first to ask for the operation's connection begins
//! the transaction and takes its savepoint; when it fails, the savepoint is rolled back. The
//! operation's row, inserted later, must still be marked as a log writer's (its transaction's id
//! recorded and the log-writer lock held until it ends), or a reader would give up its index
//! while it can still commit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ofx_core::capture;

use crate::gate::Gate;
use crate::kit::{Host, NestedFirst, database, fast};

async fn a_held_operation_begun_by_a_nested_command_keeps_its_gap_open(
    nested_fails: bool,
    write: bool,
) {
    let url = database().await;
    let a = Host::open(&url, fast(), false).await;
    let b = Host::open(&url, fast(), true).await;
    let reader = b.reader();
    reader.wait_for(0).await;
    let (gate, mut reached) = Gate::install(&a.db);

    // The operation begun by its nested command draws index n and is held before its COMMIT.
    gate.hold(1);
    let (_, held_on_b) = capture(b.accounts.balance(10)).await.unwrap();
    let commander = a.hub.commander();
    let held = tokio::spawn(async move {
        commander
            .call_committed(NestedFirst {
                id: 10,
                nested_fails,
                write,
            })
            .await
            .unwrap()
    });
    reached.recv().await.unwrap();

    // Index n + 1 commits, and host B reads it.
    let (_, later_on_b) = capture(b.accounts.balance(20)).await.unwrap();
    let (later_uuid, later) = a.deposit(20, 1).await.unwrap();
    reader.wake();
    tokio::time::timeout(Duration::from_secs(10), later_on_b.when_invalidated())
        .await
        .expect("host B replays index n + 1");
    assert_eq!(b.seen.replayed_eventually(&later_uuid).await, 1);
    let early = reader
        .wait_replayed(later, Duration::from_millis(500))
        .await;
    assert!(
        early.is_err(),
        "wait_replayed({later}) returned while the operation at index {} (begun by a nested \
         command, nested_fails = {nested_fails}) was still open and about to commit: its gap was \
         given up",
        later - 1
    );

    gate.release(1);
    let executed = held.await.unwrap();
    let sequence = executed.committed.unwrap().sequence.unwrap();
    assert_eq!(sequence, later - 1);
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        b.seen.replayed(&executed.operation),
        1,
        "the operation at {sequence} was replayed once before wait_replayed returned"
    );
    assert!(!held_on_b.is_consistent(), "its invalidation ran on host B");
    let stats = reader.stats();
    assert_eq!(stats.gaps_expired.load(Ordering::Relaxed), 0);
    assert_eq!(stats.gaps_closed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.late_rows.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_begun_by_a_failed_nested_command_stays_a_log_writer() {
    a_held_operation_begun_by_a_nested_command_keeps_its_gap_open(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_only_write_was_rolled_back_to_a_savepoint_stays_a_log_writer() {
    a_held_operation_begun_by_a_nested_command_keeps_its_gap_open(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_begun_by_a_successful_nested_command_stays_a_log_writer() {
    a_held_operation_begun_by_a_nested_command_keeps_its_gap_open(false, false).await;
}
