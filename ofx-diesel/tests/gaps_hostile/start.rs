//! Where a fresh reader starts: exactly at the log's end, replaying every operation that
//! commits after its start however long its transaction was open; and what may hold a reader
//! up: only log writers of its own log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;

use crate::gate::{Gate, chaotic_commits};
use crate::kit::{Host, connect, database, fast, logged, marked_insert, query_i64};
use crate::stress::run_writers;

/// Log writers of every kind are in flight when a host starts: transactions that drew indexes
/// by hand (one of them several), operations held before their COMMIT, a transaction that holds
/// a transaction id but draws its index only after the start. They end in random order, most
/// committing, some rolling back: the new host replays each that committed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_started_among_log_writers_in_flight_replays_each_that_commits_after_it() {
    let url = database().await;
    let a = Host::open(&url, fast(), false).await;
    // Some history first.
    for id in 0..5 {
        a.deposit(id, 1).await.unwrap();
    }
    let (gate, mut reached) = Gate::install(&a.db);

    // By hand: 8 transactions, each drawing 1 to 3 indexes, left open.
    let mut raw = Vec::new();
    for n in 0..8_i64 {
        let mut connection = connect(&url).await;
        let mut uuids = Vec::new();
        connection.batch_execute("BEGIN").await.unwrap();
        for k in 0..(n % 3 + 1) {
            let (uuid, sql) = marked_insert(100 + n * 10 + k);
            connection.batch_execute(&sql).await.unwrap();
            uuids.push(uuid);
        }
        raw.push((connection, uuids));
    }
    // Through the framework: 4 operations held before their COMMIT.
    gate.hold(4);
    let mut held = Vec::new();
    for id in 200..204 {
        let commander = a.hub.commander();
        held.push(tokio::spawn(async move {
            commander
                .call_committed(crate::kit::Dep {
                    id,
                    amount: 1,
                    fail: false,
                })
                .await
                .unwrap()
        }));
        reached.recv().await.unwrap();
    }
    // A transaction with an id, no index yet.
    let mut late_drawer = connect(&url).await;
    late_drawer
        .batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (300, 0)")
        .await
        .unwrap();
    // Rows that committed meanwhile, above the open ones.
    a.deposit(5, 1).await.unwrap();

    let b = Host::open(&url, fast(), true).await;
    let started = Instant::now();
    let mut expected = Vec::new();
    let (uuid, sql) = marked_insert(301);
    late_drawer.batch_execute(&sql).await.unwrap();
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.shuffle(&mut rand::rng());
    let mut rolled_back = 0;
    for (position, i) in order.into_iter().enumerate() {
        let (connection, uuids) = &mut raw[i];
        if position % 4 == 3 {
            connection.batch_execute("ROLLBACK").await.unwrap();
            rolled_back += uuids.len();
        } else {
            connection.batch_execute("COMMIT").await.unwrap();
            expected.extend(uuids.iter().copied());
        }
        if position == 2 {
            late_drawer.batch_execute("COMMIT").await.unwrap();
            expected.push(uuid);
        }
        if position == 4 {
            gate.release(4);
            for task in held.drain(..) {
                expected.push(task.await.unwrap().operation);
            }
        }
    }
    assert!(rolled_back > 0);
    let (_, last) = a.deposit(6, 1).await.unwrap();
    b.reader()
        .wait_replayed(last, Duration::from_secs(20))
        .await
        .unwrap();
    let missed: Vec<_> = expected
        .iter()
        .filter(|uuid| b.seen.replayed(uuid) != 1)
        .collect();
    assert!(
        missed.is_empty(),
        "committed after the reader started ({:?} ago) but not replayed once: {missed:?}",
        started.elapsed()
    );
    assert_eq!(b.reader().stats().gaps_expired.load(Ordering::Relaxed), 0);
}

/// A transaction that never writes to the log (a session idle in its transaction after a
/// business write, here and in another database of the server) cannot bring a row below the
/// reader's start: a fresh reader does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_is_not_held_up_by_transactions_that_never_write_to_the_log() {
    let url = database().await;
    let other = database().await;
    let a = Host::open(&url, fast(), false).await;
    let (_, before) = a.deposit(1, 1).await.unwrap();
    let mut idle_here = connect(&url).await;
    idle_here
        .batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (2, 0)")
        .await
        .unwrap();
    let mut idle_elsewhere = connect(&other).await;
    idle_elsewhere
        .batch_execute("BEGIN; INSERT INTO accounts (id, balance) VALUES (2, 0)")
        .await
        .unwrap();

    let b = Host::open(&url, fast(), true).await;
    let reader = b.reader();
    reader
        .wait_replayed(before, Duration::from_secs(5))
        .await
        .expect("nothing can still commit at or below the start: no log writer is in flight");
    let (uuid, after) = a.deposit(3, 1).await.unwrap();
    reader
        .wait_replayed(after, Duration::from_secs(5))
        .await
        .expect("the operation after the start is replayed, not held up by idle sessions");
    assert_eq!(b.seen.replayed(&uuid), 1);
    idle_here.batch_execute("ROLLBACK").await.unwrap();
    idle_elsewhere.batch_execute("ROLLBACK").await.unwrap();
}

/// Two applications' logs on one server (two databases): a log writer held open in the other
/// database is no log writer of this log, and does not hold this log's gaps open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_writer_of_another_database_does_not_hold_this_logs_gaps_open() {
    let url = database().await;
    let other = database().await;
    let a = Host::open(&url, fast(), false).await;
    let b = Host::open(&url, fast(), true).await;
    let reader = b.reader();
    reader.wait_for(0).await;

    // The other application's log writer, open for as long as the test runs.
    let mut elsewhere = connect(&other).await;
    elsewhere
        .batch_execute(&format!("BEGIN; {}", marked_insert(1).1))
        .await
        .unwrap();
    // This log: index 1 drawn and held, index 2 committed and read.
    let mut held = connect(&url).await;
    held.batch_execute(&format!("BEGIN; {}", marked_insert(2).1))
        .await
        .unwrap();
    let (uuid, later) = a.deposit(3, 1).await.unwrap();
    assert_eq!(later, 2);
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_millis(300))
        .await
        .expect_err("index 1's writer is still open");
    held.batch_execute("ROLLBACK").await.unwrap();
    reader.wake();
    let rolled_back = Instant::now();
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "the gap's only writer of this log rolled back {:?} ago, yet: {error}",
                rolled_back.elapsed()
            )
        });
    assert_eq!(b.seen.replayed(&uuid), 1);
    assert_eq!(reader.stats().gaps_closed.load(Ordering::Relaxed), 1);
    elsewhere.batch_execute("ROLLBACK").await.unwrap();
}

/// Hosts started one after another while writers run (commits delayed at random after their
/// indexes are drawn): each replays every operation whose command was called after its start
/// returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fresh_readers_started_while_writers_run_replay_every_operation_called_after() {
    let url = database().await;
    let writers = [Arc::new(Host::open(&url, fast(), false).await)];
    chaotic_commits(&writers[0].db, Duration::from_millis(50), 0);
    let (done, mut received) = mpsc::unbounded_channel();
    let tasks = run_writers(&writers, 6, 40, done);
    let stop = Arc::new(AtomicBool::new(false));
    let starter = {
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut readers = Vec::new();
            while !stop.load(Ordering::SeqCst) && readers.len() < 12 {
                let pause = rand::rng().random_range(10..80);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let mut settings = fast();
                settings.pool_size = 2;
                let host = Host::open(&url, settings, true).await;
                readers.push((Instant::now(), host));
            }
            readers
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let readers = starter.await.unwrap();
    assert!(readers.len() >= 3, "{}", readers.len());
    let mut committed = Vec::new();
    while let Ok(done) = received.try_recv() {
        committed.push(done);
    }
    let mut connection = connect(&url).await;
    let last = query_i64(
        &mut connection,
        "SELECT COALESCE(MAX(idx), 0)::bigint AS n FROM ofx_operations",
    )
    .await;
    let logged = logged(&mut connection).await;
    for (n, (started, host)) in readers.iter().enumerate() {
        host.reader()
            .wait_replayed(last, Duration::from_secs(30))
            .await
            .unwrap_or_else(|error| panic!("reader {n}: {error}"));
        let mut missed: Vec<_> = committed
            .iter()
            .filter(|(began, uuid, _)| began > started && host.seen.replayed(uuid) != 1)
            .map(|(_, uuid, sequence)| (*sequence, *uuid))
            .collect();
        missed.sort();
        assert!(
            missed.is_empty(),
            "reader {n} missed operations called after it started: {missed:?}"
        );
        let phantom: Vec<_> = host
            .seen
            .replayed_all()
            .into_keys()
            .filter(|uuid| !logged.contains_key(uuid))
            .collect();
        assert!(phantom.is_empty(), "{phantom:?}");
        assert_eq!(
            host.reader().stats().gaps_expired.load(Ordering::Relaxed),
            0
        );
        host.hub.shutdown_token().cancel();
    }
}
