//! Gaps on PostgreSQL: indexes a reader skipped over because their transactions had not
//! committed. A gap closes exactly when the transactions that could still fill it have finished,
//! and indexes the sequence has not handed out yet are never given up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use ofx_core::capture;
use ofx_diesel::{DbSettings, Postgres};

use crate::common::{Host, RawSql, fast, invalidated, marked_insert, postgres_database};

/// Begins a transaction on `connection` that takes a log index for a deposit of 1 into account
/// `id`, recording its transaction id and marking itself a log writer first (as the framework's
/// insert does), and leaves it open.
async fn take_index(connection: &mut AsyncPgConnection, id: i64) {
    connection
        .batch_execute(&format!("BEGIN; {}", insert_with_xid(id)))
        .await
        .unwrap();
}

fn insert_with_xid(id: i64) -> String {
    marked_insert(id)
}

fn gaps_closed(host: &Host<Postgres>) -> u64 {
    host.stats().gaps_closed.load(Ordering::Relaxed)
}

fn gaps_expired(host: &Host<Postgres>) -> u64 {
    host.stats().gaps_expired.load(Ordering::Relaxed)
}

fn late_rows(host: &Host<Postgres>) -> u64 {
    host.stats().late_rows.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_transaction_rolls_back_closes_when_it_does() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;
    assert_eq!(
        DbSettings::default().gap_retention,
        Duration::from_secs(300),
        "the retention is the default: only the rollback can close the gap in time"
    );

    // A transaction takes index 1 and stays open; the next operation commits and is read.
    let mut held = AsyncPgConnection::establish(&url).await.unwrap();
    take_index(&mut held, 50).await;
    let (_, later_on_b) = capture(b.balance(51)).await.unwrap();
    let later = a.deposit_sequence(51, 1).await;
    reader.wake();
    invalidated(&later_on_b).await;
    reader
        .wait_replayed(later, Duration::from_millis(200))
        .await
        .expect_err("index 1 may still commit: the later operation is not all there is");

    held.batch_execute("ROLLBACK").await.unwrap();
    let rolled_back = Instant::now();
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .expect("the gap closes once its transaction rolled back");
    assert!(
        rolled_back.elapsed() < Duration::from_secs(10),
        "well under the retention"
    );
    assert_eq!(gaps_closed(&b), 1, "index 1, closed: nothing was missed");
    assert_eq!(gaps_expired(&b), 0);
    assert_eq!(late_rows(&b), 0);
}

/// A server of the test's own where nothing else writes: its database, settings for hosts
/// that write nothing of their own (no heartbeat, no trimmer, no event processor), and host A
/// with the business table.
async fn quiet_server() -> (
    crate::private_server::PrivateServer,
    String,
    DbSettings,
    Host<Postgres>,
) {
    let server = crate::private_server::PrivateServer::start();
    let mut admin = AsyncPgConnection::establish(&server.url("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE horizon")
        .await
        .unwrap();
    drop(admin);
    let url = server.url("horizon");
    let mut settings = fast();
    settings.host_heartbeat = None;
    settings.trim = false;
    settings.events.process = false;
    let a = Host::<Postgres>::open(&url, settings.clone(), false).await;
    a.accounts.db.exec(crate::common::ACCOUNTS).await;
    (server, url, settings, a)
}

/// An operation whose transaction took its id early (a business write) and draws its index
/// late is older than a log writer that drew an index before it and is still open: once the
/// older one commits, the open one's id is at or above every new snapshot's horizon (`xmax`),
/// and so in no snapshot's in-progress list. Its gap stays open all the same, and its row is
/// replayed when it commits. On a server of the test's own, so that no other transaction
/// completes and moves the horizon past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_writer_is_above_the_snapshot_horizon_stays_open() {
    let (_server, url, settings, _a) = quiet_server().await;
    let b = Host::<Postgres>::open(&url, settings, true).await;
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;
    let (_, late_on_b) = capture(b.balance(81)).await.unwrap();

    // The older transaction takes its id (a business write); the newer one takes its id and the
    // next index, and stays open; the older one takes the index after and commits.
    let mut older = AsyncPgConnection::establish(&url).await.unwrap();
    older
        .batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (80, 0)")
        .await
        .unwrap();
    let mut newer = AsyncPgConnection::establish(&url).await.unwrap();
    take_index(&mut newer, 81).await;
    older
        .batch_execute(&format!("{}; COMMIT", marked_insert(80)))
        .await
        .unwrap();
    // A fresh log: the newer transaction drew index 1, the older one 2.
    let later = 2;
    assert_eq!(b.accounts.db.count("ofx_operations").await, 1);
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_millis(300))
        .await
        .expect_err("the newer transaction's index may still commit");

    newer.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    invalidated(&late_on_b).await;
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(late_rows(&b), 1);
    assert_eq!(gaps_closed(&b), 0);
    assert_eq!(gaps_expired(&b), 0);
}

/// The same order of transactions, with the reader started while the newer one is open: its
/// index is below the reader's start, its id above the start snapshot's horizon. Its row is
/// replayed when it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_started_while_a_writer_above_the_snapshot_horizon_is_open_replays_it() {
    let (_server, url, settings, _a) = quiet_server().await;

    let mut older = AsyncPgConnection::establish(&url).await.unwrap();
    older
        .batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (90, 0)")
        .await
        .unwrap();
    let mut newer = AsyncPgConnection::establish(&url).await.unwrap();
    take_index(&mut newer, 91).await;
    older
        .batch_execute(&format!("{}; COMMIT", marked_insert(90)))
        .await
        .unwrap();
    // Host B starts now: after index 2, the newer transaction's index 1 below it.
    let b = Host::<Postgres>::open(&url, settings, true).await;
    let reader = b.reader.as_ref().unwrap();
    let (_, late_on_b) = capture(b.balance(91)).await.unwrap();
    reader
        .wait_replayed(2, Duration::from_millis(300))
        .await
        .expect_err("the newer transaction's index may still commit below the start");

    newer.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    invalidated(&late_on_b).await;
    reader
        .wait_replayed(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(late_rows(&b), 1);
}

/// A transaction that never wrote to the log (here, one idle in its transaction after a
/// business write, which holds a transaction id) does not hold a gap open: only transactions
/// marked as log writers may still fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_not_held_open_by_a_transaction_that_never_wrote_to_the_log() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;

    let mut unrelated = AsyncPgConnection::establish(&url).await.unwrap();
    unrelated
        .batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (70, 0)")
        .await
        .unwrap();
    let mut held = AsyncPgConnection::establish(&url).await.unwrap();
    take_index(&mut held, 71).await;
    let later = a.deposit_sequence(72, 1).await;
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_millis(200))
        .await
        .expect_err("the log writer's index may still commit");

    held.batch_execute("ROLLBACK").await.unwrap();
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .expect("the gap closes once its log writer rolled back, the unrelated one still open");
    assert_eq!(gaps_closed(&b), 1);
    assert_eq!(gaps_expired(&b), 0);
    unrelated.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_transaction_commits_is_replayed_before_wait_replayed_returns() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;

    let mut held = AsyncPgConnection::establish(&url).await.unwrap();
    take_index(&mut held, 52).await;
    let (_, held_on_b) = capture(b.balance(52)).await.unwrap();
    let (_, later_on_b) = capture(b.balance(53)).await.unwrap();
    let later = a.deposit_sequence(53, 1).await;
    reader.wake();
    invalidated(&later_on_b).await;
    assert!(held_on_b.is_consistent(), "its row is not committed yet");
    reader
        .wait_replayed(later, Duration::from_millis(200))
        .await
        .expect_err("index 1 may still commit");

    held.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        !held_on_b.is_consistent(),
        "the late row was replayed before wait_replayed returned"
    );
    assert_eq!(late_rows(&b), 1);
    assert_eq!(gaps_closed(&b), 0);
    assert_eq!(gaps_expired(&b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_with_more_late_rows_than_a_batch_is_read_in_pages() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let mut settings = fast();
    settings.read_batch = 2;
    let b = Host::<Postgres>::open(&url, settings, true).await;
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;

    // One transaction takes indexes 1 to 5 and stays open; index 6 commits and is read.
    let mut held = AsyncPgConnection::establish(&url).await.unwrap();
    let inserts: Vec<String> = (70..75).map(insert_with_xid).collect();
    held.batch_execute(&format!("BEGIN; {}", inserts.join("; ")))
        .await
        .unwrap();
    let mut held_on_b = Vec::new();
    for id in 70..75 {
        held_on_b.push(capture(b.balance(id)).await.unwrap().1);
    }
    let (_, later_on_b) = capture(b.balance(75)).await.unwrap();
    let later = a.deposit_sequence(75, 1).await;
    assert_eq!(later, 6);
    reader.wake();
    invalidated(&later_on_b).await;

    held.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .unwrap();
    for computed in &held_on_b {
        assert!(!computed.is_consistent(), "every late row was replayed");
    }
    assert_eq!(late_rows(&b), 5);
    assert_eq!(gaps_closed(&b), 0);
    assert_eq!(gaps_expired(&b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_far_ahead_of_the_sequence_does_not_lose_the_operations_below_it() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;

    // A row written by hand at index 1,000,000, far past the sequence (which has handed out
    // nothing yet).
    let (_, far_on_b) = capture(b.balance(60)).await.unwrap();
    a.accounts
        .db
        .exec(&format!(
            "INSERT INTO ofx_operations (idx, uuid, host_id, logged_at, committed_at, command_name, command_json, items_json, nested_json) \
             VALUES (1000000, '{}', 'elsewhere', 0, 0, 'accounts.deposit', '{{\"id\": 60, \"amount\": 1, \"fail\": false}}', '{{}}', '[]')",
            uuid::Uuid::now_v7()
        ))
        .await;
    reader.wake();
    invalidated(&far_on_b).await;
    let error = reader
        .wait_replayed(1, Duration::from_millis(200))
        .await
        .expect_err("index 1 is not drawn yet: an operation may still commit there");
    assert!(
        matches!(
            error,
            ofx_diesel::Error::ReplayTimeout {
                blocked_by: ofx_diesel::ReplayBlock::NotDrawn { index: 1 },
                ..
            }
        ),
        "{error}"
    );

    // Operations through the framework draw 1, 2, 3 from the sequence: each is replayed, and
    // wait_replayed returns only once it was.
    for id in 61..64 {
        let (_, on_b) = capture(b.balance(id)).await.unwrap();
        let sequence = a.deposit_sequence(id, 1).await;
        assert!(sequence < 1_000_000, "drawn from the sequence: {sequence}");
        reader
            .wait_replayed(sequence, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            !on_b.is_consistent(),
            "operation {sequence} was replayed before wait_replayed returned"
        );
    }
    assert_eq!(gaps_expired(&b), 0, "nothing was given up");
    assert_eq!(b.balance(63).await, Ok(1));
}
