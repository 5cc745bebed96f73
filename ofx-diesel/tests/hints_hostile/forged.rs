//! Forged hints: the channel is trusted as the log is (ofx-watchers' docs), so a forged hint
//! may make B invalidate. These tests measure what else it can do: hide a real operation's
//! invalidation, or move `Hub::hinted_position` past the log.

use std::time::Duration;

use uuid::Uuid;

use crate::kit::*;

/// A forged hint with the uuid of an operation about to commit, but other content (another
/// account), arrives first: B completes the uuid with the forged content, then skips the real
/// row by uuid. Does B's real invalidation (account 7) still happen?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hint_with_a_real_uuid_and_other_content_does_not_hide_the_real_invalidation() {
    let p = pair(Mode::Drop).await;
    let (_, seven) = p.b.cached(7).await;
    let (_, other) = p.b.cached(999).await;
    let uuid = Uuid::now_v7();
    p.on_b.hints.push(hint(&forged(uuid, 999, 1, Some(1))));
    let forged_took = invalidated_within(&other, 5).await;
    let index = commit_raw(&p.a.db, uuid, 7, 7, 100).await;
    p.b.reader().wake();
    p.b.reader()
        .wait_replayed(index, Duration::from_secs(10))
        .await
        .unwrap();
    let measured = format!(
        "forged invalidated account 999: {forged_took}; hinted {}, known {}, replayed {}, \
         completions {}",
        stat(&p.b.stats().hinted),
        stat(&p.b.stats().known),
        stat(&p.b.stats().replayed),
        p.b.seen.count(&uuid)
    );
    assert!(
        invalidated_within(&seven, 3).await,
        "LOST INVALIDATION: the real row's invalidation of account 7 never ran ({measured}); \
         B serves {} while the database holds {}",
        p.b.cached(7).await.0,
        true_balance(&p.a.db, 7).await
    );
}

/// A forged hint with a sequence far past the log: `hinted_position` is documented as "the
/// highest log position of an operation this hub replayed from a hint", which live values wait
/// for the log position to cover. Does an untrusted sequence move it past anything the log
/// will ever reach?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hint_with_a_huge_sequence_does_not_move_hinted_position_past_the_log() {
    let p = pair(Mode::Deliver).await;
    let (_, sequence) = p.a.deposit(7, 1).await;
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(p.b.hub.hinted_position(), Some(sequence));
    p.on_b
        .hints
        .push(hint(&forged(Uuid::now_v7(), 5, 1, Some(i64::MAX - 1))));
    let hinted = stat(&p.b.stats().hinted);
    let (_, next) = p.a.deposit(7, 1).await;
    p.b.reader()
        .wait_replayed(next, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        p.b.hub.hinted_position() <= p.b.hub.log_position(),
        "hinted_position {:?} is past the log position {:?} for good (forged hint replayed: {})",
        p.b.hub.hinted_position(),
        p.b.hub.log_position(),
        hinted == 2
    );
}

/// A forged hint with a negative or absent sequence: no crash, the hint replays or not, and the
/// positions never go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hints_with_odd_sequences_do_not_move_positions_back() {
    let p = pair(Mode::Deliver).await;
    let (_, sequence) = p.a.deposit(7, 1).await;
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    let (hinted, logged) = (p.b.hub.hinted_position(), p.b.hub.log_position());
    for seq in [None, Some(-1), Some(i64::MIN), Some(0)] {
        p.on_b.hints.push(hint(&forged(Uuid::now_v7(), 5, 1, seq)));
    }
    // Not committed at all (no commit time).
    let uncommitted = ofx_core::Operation::new(
        Uuid::now_v7(),
        ofx_core::HostId::from_string("elsewhere"),
        DEPOSIT,
        serde_json::json!({ "id": 5, "amount": 1 }),
    );
    p.on_b.hints.push(hint(&uncommitted));
    assert_eq!(p.b.hub.hinted_position(), hinted);
    assert_eq!(p.b.hub.log_position(), logged);
    assert_eq!(
        p.b.stats().health.state(),
        ofx_core::background::TaskState::Running
    );
}
