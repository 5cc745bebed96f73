//! A reader stopped and started again on its hub resumes where its predecessor stopped,
//! missing nothing in between: the gaps its predecessor was waiting for included.

use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use ofx_core::capture;

use crate::kit::{Host, connect, database, fast, marked_insert};

/// Index 1 is drawn and held, index 2 commits and is read; the reader is stopped and started
/// again; index 1 commits: the new reader replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_restarted_while_a_gap_is_open_replays_the_late_row() {
    let url = database().await;
    let a = Host::open(&url, fast(), false).await;
    let b = Host::open(&url, fast(), true).await;
    let reader = b.reader();
    reader.wait_for(0).await;

    let mut held = connect(&url).await;
    let (late, sql) = marked_insert(1);
    held.batch_execute(&format!("BEGIN; {sql}")).await.unwrap();
    let (_, later_on_b) = capture(b.accounts.balance(2)).await.unwrap();
    let (_, late_on_b) = capture(b.accounts.balance(1)).await.unwrap();
    let (_, later) = a.deposit(2, 1).await.unwrap();
    assert_eq!(later, 2);
    reader.wake();
    tokio::time::timeout(Duration::from_secs(10), later_on_b.when_invalidated())
        .await
        .unwrap();

    reader.stop();
    let reader = b.db.start_log_reader(&b.hub).await.unwrap();
    reader
        .wait_replayed(later, Duration::from_millis(300))
        .await
        .expect_err("index 1 may still commit: the new reader waits for it too");
    held.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    reader
        .wait_replayed(later, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(b.seen.replayed(&late), 1, "the late row was replayed");
    assert!(!late_on_b.is_consistent());
    assert_eq!(reader.stats().gaps_expired.load(Ordering::Relaxed), 0);
}

/// One log writer holds index n open while index n + 1 commits; the reader is woken and, a
/// few hundred microseconds later (a different delay each round, so that the stop lands
/// anywhere in the reading of n + 1 and the recording of n's gap), stopped and started again;
/// then n commits. The new reader must still wait for n, and replay it. Forty rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_stopped_while_it_finds_a_gap_leaves_the_gap_to_its_successor() {
    let url = database().await;
    let a = Host::open(&url, fast(), false).await;
    let mut settings = fast();
    // Reads only when woken (or started), so that the test knows when one begins.
    settings.poll_period = Duration::from_secs(3600);
    let b = Host::open(&url, settings, true).await;
    b.reader().wait_for(0).await;
    let mut held = connect(&url).await;
    let mut missed = Vec::new();
    let rounds = 40;
    for round in 0..rounds {
        let (late, sql) = marked_insert(round);
        held.batch_execute(&format!("BEGIN; {sql}")).await.unwrap();
        let (later_uuid, later) = a.deposit(1000 + round, 1).await.unwrap();
        let reader = b.reader();
        reader.wake();
        let delay = Duration::from_micros(u64::try_from(round).unwrap() * 100);
        let until = std::time::Instant::now() + delay;
        while std::time::Instant::now() < until {
            tokio::task::yield_now().await;
        }
        reader.stop();
        let reader = b.db.start_log_reader(&b.hub).await.unwrap();
        // Index n + 1 is read (by one reader or the other).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.seen.replayed(&later_uuid) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "round {round}");
            reader.wake();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let early = reader.wait_replayed(later, Duration::from_millis(50)).await;
        held.batch_execute("COMMIT").await.unwrap();
        reader.wake();
        reader
            .wait_replayed(later, Duration::from_secs(10))
            .await
            .unwrap();
        if b.seen.replayed(&late) != 1 {
            missed.push(format!(
                "round {round} (stopped {delay:?} after the wake): index {} committed after \
                 index {later} was read, never replayed; wait_replayed({later}) while it was \
                 held: {early:?}",
                later - 1
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {rounds} late rows missed by a restarted reader: {missed:#?}",
        missed.len()
    );
}
