//! The log reader (coverage check and read in one round trip) against the prefix trimmer: a
//! reader on another hub never misses a committed operation; rows trimmed before it read them
//! make it invalidate everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ofx_core::capture;
use ofx_diesel::{DbHub, Sqlite};

use crate::kit::{Host, Mode, fast, sqlite_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_never_misses_an_operation_while_the_trimmer_runs_concurrently() {
    let url = sqlite_file().await;
    let writer = Host::<Sqlite>::open(&url, fast(), false).await;
    let mut reading = fast();
    reading.poll_period = Duration::from_micros(200);
    let reader = Host::<Sqlite>::open(&url, reading, true).await;
    // A trimmer on a third hub, trimming everything as fast as it can.
    let mut trimming = fast();
    trimming.max_age = Duration::ZERO;
    let trimmer = DbHub::<Sqlite>::open(&url, trimming).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let trim_task = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = trimmer.trim().await;
            }
        })
    };
    let mut missed = Vec::new();
    for id in 0..400_i64 {
        let (value, computed) = capture(reader.accounts.balance(id)).await.unwrap();
        assert_eq!(value, Ok(0));
        writer.dep(id, 1, Mode::Ok).await.unwrap();
        if tokio::time::timeout(Duration::from_secs(3), computed.when_invalidated())
            .await
            .is_err()
        {
            missed.push(id);
        }
    }
    stop.store(true, Ordering::Relaxed);
    trim_task.await.unwrap();
    let stats = reader.reader.as_ref().unwrap().stats();
    assert!(
        missed.is_empty(),
        "the reader's cached value stayed valid after the operation committed, for ids {missed:?} \
         (coverage losses {}, replayed {})",
        stats.coverage_losses.load(Ordering::Relaxed),
        stats.replayed.load(Ordering::Relaxed),
    );
}
