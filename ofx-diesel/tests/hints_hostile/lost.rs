//! Promise 1: whatever happens to the hints, every committed operation's invalidation happens
//! on B.

use std::time::Duration;

use crate::kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hint_still_invalidates_through_the_log() {
    let p = pair(Mode::Drop).await;
    let (_, cached) = p.b.cached(7).await;
    let (uuid, sequence) = p.a.deposit(7, 3).await;
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(invalidated_within(&cached, 5).await);
    assert_eq!(p.b.seen.count(&uuid), 1);
    assert_eq!(stat(&p.b.stats().hinted), 0);
    assert_eq!(p.b.cached(7).await.0, 3);
}

/// B's service is not attached when the hint comes: its replay fails, and the row (retried until
/// the service is attached) must still complete it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_whose_replay_fails_because_the_service_is_not_attached_is_left_to_the_row() {
    let p = pair_with(Mode::Deliver, settings(), false).await;
    let (uuid, sequence) = p.a.deposit(7, 2).await;
    // The hint was pushed in A's commit, and failed.
    assert_eq!(stat(&p.b.stats().hinted), 0);
    assert!(!p.b.hub.notifier().is_known(uuid));
    assert_eq!(p.b.seen.count(&uuid), 0);
    // The row's replay fails too, and is retried; attach the service once it has been tried.
    tokio::time::timeout(
        Duration::from_secs(10),
        p.b.replay_failed.clone().wait_for(|failed| *failed > 0),
    )
    .await
    .expect("the row's replay was never retried")
    .unwrap();
    p.b.attach();
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(p.b.seen.wait(&uuid, 10).await, 1);
    assert_eq!(stat(&p.b.stats().replay_failures), 0);
    // After it: later hints work.
    let (_, cached) = p.b.cached(8).await;
    let (second, sequence) = p.a.deposit(8, 1).await;
    assert!(
        !cached.is_consistent(),
        "the hint replays once the service is attached"
    );
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(p.b.seen.count(&second), 1);
    assert_eq!(p.b.seen.count(&uuid), 1);
}

/// Hints arriving while B's reader is stopped are replayed (or left to the row) by the next
/// reader, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_arriving_while_the_reader_is_stopped_are_completed_once_by_the_next_reader() {
    let p = pair(Mode::Duplicate(3)).await;
    let (_, cached) = p.b.cached(7).await;
    p.b.reader().stop();
    let mut uuids = Vec::new();
    let mut last = 0;
    for _ in 0..5 {
        let (uuid, sequence) = p.a.deposit(7, 1).await;
        uuids.push(uuid);
        last = sequence;
    }
    let reader = p.b.db.start_log_reader(&p.b.hub).await.unwrap();
    reader
        .wait_replayed(last, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(invalidated_within(&cached, 5).await);
    for uuid in &uuids {
        assert_eq!(p.b.seen.count(uuid), 1, "completions of {uuid}");
    }
    assert_eq!(p.b.cached(7).await.0, 5);
}

/// A's COMMIT fails (the transaction was rolled back under it): no hint may go, and B must not
/// complete or invalidate for an operation that never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_sends_no_hint() {
    use diesel_async::SimpleAsyncConnection;
    let p = pair(Mode::Deliver).await;
    p.a.db.set_commit_fault(Some(std::sync::Arc::new(
        |connection: &mut <ofx_diesel::Sqlite as ofx_diesel::Backend>::Connection| {
            Box::pin(async move {
                let _ = connection.batch_execute("ROLLBACK").await;
            })
        },
    )));
    let (_, cached) = p.b.cached(7).await;
    let result =
        p.a.hub
            .commander()
            .call_committed(Dep {
                id: 7,
                amount: 1,
                nonce: 0,
            })
            .await;
    let stored = true_balance(&p.a.db, 7).await;
    assert_eq!(stored, 0, "the rolled-back deposit is not in the database");
    assert!(
        result.is_err(),
        "the failed commit reported success: {result:?}"
    );
    assert_eq!(
        p.on_a.committed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a hint was sent for a commit that failed"
    );
    assert!(
        p.b.seen.all().is_empty(),
        "B completed an operation that never committed"
    );
    assert!(cached.is_consistent());
}

/// B is computing a value (it has read the database, not returned yet) when A commits: the
/// hint's invalidation lands on the computing value, then its row is skipped. The value that
/// computation stores read the data before the commit: it must not stay consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_landing_on_a_value_being_computed_leaves_no_stale_value() {
    let p = std::sync::Arc::new(pair(Mode::Deliver).await);
    let computing = {
        let p = std::sync::Arc::clone(&p);
        tokio::spawn(async move {
            ofx_core::capture(p.b.accounts.slow_balance(SLOW_ID))
                .await
                .unwrap()
        })
    };
    // The computation has read the old balance.
    SLOW_READ.acquire().await.unwrap().forget();
    let (uuid, sequence) = p.a.deposit(SLOW_ID, 10).await;
    assert_eq!(
        stat(&p.b.stats().hinted),
        1,
        "the hint replayed during the computation"
    );
    SLOW_GATE.add_permits(1);
    let (old, computed) = computing.await.unwrap();
    assert_eq!(old.unwrap(), 0, "the computation read before the commit");
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(p.b.seen.count(&uuid), 1);
    // The next read must see the deposit.
    SLOW_GATE.add_permits(1);
    let now = tokio::time::timeout(Duration::from_secs(10), p.b.accounts.slow_balance(SLOW_ID))
        .await
        .expect("slow_balance returned")
        .unwrap();
    assert!(
        now == 10 && !computed.is_consistent(),
        "LOST INVALIDATION: B serves {now} after the hinted deposit of 10 (value computed across \
         the hint consistent: {})",
        computed.is_consistent()
    );
}
