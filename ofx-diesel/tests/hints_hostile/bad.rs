//! Promise 3: a hint that is not an operation is counted and dropped; the reader keeps working;
//! nothing crashes; the queue is bounded.

use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_core::watcher::{MAX_QUEUED_HINTS, WakeHints};
use uuid::Uuid;

use crate::kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_that_are_not_operations_are_counted_dropped_and_the_reader_keeps_replaying() {
    let p = pair(Mode::Deliver).await;
    let (_, cached) = p.b.cached(7).await;
    let real = hint(&forged(Uuid::now_v7(), 7, 1, Some(1)));
    let mut garbage: Vec<String> = vec![
        String::new(),
        "\n".into(),
        "{}".into(),
        "null".into(),
        "[]".into(),
        "42".into(),
        "\"a string\"".into(),
        "not json at all".into(),
        "\u{0}\u{0}\u{0}".into(),
        "{\"uuid\": 5}".into(),
        "{\"uuid\": \"not-a-uuid\"}".into(),
        // A real hint, truncated.
        real[..real.len() / 2].to_owned(),
        // A real hint with trailing junk.
        format!("{real}}}}}"),
        // Two hints on one line.
        format!("{real}{real}"),
    ];
    // Nesting far past any recursion limit: a stack overflow here would abort the process.
    garbage.push("[".repeat(1_000_000));
    garbage.push(format!("{}{}", "{\"a\":".repeat(200_000), "1"));
    // 16 MB of one string.
    garbage.push(format!("\"{}\"", "x".repeat(16 << 20)));
    let n = garbage.len() as u64;
    for g in garbage {
        p.on_b.hints.push(g);
    }
    assert_eq!(
        stat(&p.b.stats().bad_hints),
        n,
        "every non-operation is counted once"
    );
    assert_eq!(stat(&p.b.stats().hinted), 0);
    assert!(cached.is_consistent(), "no garbage invalidated anything");
    assert_eq!(p.b.stats().health.state(), TaskState::Running);
    // The reader and the hints still work.
    let (uuid, sequence) = p.a.deposit(7, 1).await;
    p.b.reader()
        .wait_replayed(sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(invalidated_within(&cached, 5).await);
    assert_eq!(p.b.seen.count(&uuid), 1);
    assert_eq!(
        stat(&p.b.stats().hinted),
        1,
        "the real hint after the garbage was replayed"
    );
    assert_eq!(stat(&p.b.stats().bad_rows), 0);
}

/// An operation of a known command whose payload does not decode, with the uuid of a real
/// operation whose row comes next: its failed replay must not mark the uuid completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_of_a_known_command_with_an_undecodable_payload_does_not_hide_the_row() {
    let p = pair(Mode::Drop).await;
    let (_, cached) = p.b.cached(7).await;
    let uuid = Uuid::now_v7();
    let mut bad = forged(uuid, 7, 1, Some(1));
    bad.command = serde_json::json!({ "id": "seven", "amount": [] });
    p.on_b.hints.push(hint(&bad));
    assert!(
        !p.b.hub.notifier().is_known(uuid),
        "a failed hint replay marked the uuid"
    );
    assert_eq!(
        p.b.seen.count(&uuid),
        0,
        "listeners were told of a failed replay"
    );
    assert_eq!(p.b.stats().health.state(), TaskState::Running);
    let index = commit_raw(&p.a.db, uuid, 7, 7, 5).await;
    p.b.reader().wake();
    p.b.reader()
        .wait_replayed(index, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        invalidated_within(&cached, 5).await,
        "the real row's invalidation was lost after a bad hint with its uuid"
    );
    assert_eq!(p.b.seen.count(&uuid), 1);
    let (value, _) = p.b.cached(7).await;
    assert_eq!(value, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_without_a_replayer_keeps_the_newest_max_queued_hints() {
    let hints = WakeHints::new();
    let total = MAX_QUEUED_HINTS * 5 + 3;
    for i in 0..total {
        hints.push(i.to_string());
    }
    let taken = hints.take();
    assert_eq!(taken.len(), MAX_QUEUED_HINTS);
    assert_eq!(hints.dropped(), (total - MAX_QUEUED_HINTS) as u64);
    assert_eq!(
        taken.first().unwrap(),
        &(total - MAX_QUEUED_HINTS).to_string(),
        "oldest dropped"
    );
    assert_eq!(taken.last().unwrap(), &(total - 1).to_string());
    assert!(hints.take().is_empty());
}

/// Hints pushed to a host whose hub is gone: no crash, nothing kept growing without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_pushed_after_the_receiving_hub_is_dropped_are_harmless() {
    let p = pair(Mode::Deliver).await;
    let Pair { a, b, on_b, .. } = p;
    let reader = b.reader.clone();
    drop(b);
    if let Some(reader) = &reader {
        reader.stop();
    }
    drop(reader);
    for i in 0..(MAX_QUEUED_HINTS * 3) {
        on_b.hints
            .push(hint(&forged(Uuid::now_v7(), i as i64, 1, Some(i as i64))));
    }
    // A keeps committing with its hints going nowhere.
    let _ = a.deposit(7, 1).await;
    assert!(on_b.hints.take().len() <= MAX_QUEUED_HINTS);
}
