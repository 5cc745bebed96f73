//! What the watcher test binaries share: names, waits with deadlines, and the scenarios every
//! watcher must pass. Each binary starts two watchers (two hosts) on one log and runs them.

// Each binary uses a part of these helpers.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ofx_core::{HostId, LogWatcher};
use ofx_watchers::{StatsSnapshot, WatcherStats};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The longest any awaited event may take.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// A log name no other test uses.
pub(crate) fn log_name() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A host id no other test uses, starting with `label`.
pub(crate) fn host(label: &str) -> HostId {
    HostId::from_string(format!("{label}-{}", uuid::Uuid::new_v4().simple()))
}

/// The watchers under test, with their counters.
pub(crate) trait TestWatcher: LogWatcher {
    fn stats(&self) -> &WatcherStats;
}

#[cfg(feature = "fs")]
impl TestWatcher for ofx_watchers::FsWatcher {
    fn stats(&self) -> &WatcherStats {
        ofx_watchers::FsWatcher::stats(self)
    }
}

#[cfg(feature = "postgres")]
impl TestWatcher for ofx_watchers::PgWatcher {
    fn stats(&self) -> &WatcherStats {
        ofx_watchers::PgWatcher::stats(self)
    }
}

#[cfg(feature = "redis")]
impl TestWatcher for ofx_watchers::RedisWatcher {
    fn stats(&self) -> &WatcherStats {
        ofx_watchers::RedisWatcher::stats(self)
    }
}

/// Waits for a wake-up on `wakes` (one stored earlier counts), failing after [`WAIT`].
pub(crate) async fn expect_wake(wakes: &Notify, what: &str) {
    tokio::time::timeout(WAIT, wakes.notified())
        .await
        .unwrap_or_else(|_| panic!("{what}: no wake-up within {WAIT:?}"));
}

/// Takes the wake-up stored on `wakes`, if there is one, without waiting.
pub(crate) async fn take_stored_wake(wakes: &Notify) -> bool {
    // `timeout` polls the future before its timer: a stored permit is taken at once.
    tokio::time::timeout(Duration::ZERO, wakes.notified())
        .await
        .is_ok()
}

/// Waits until `done` holds for `stats`, failing after [`WAIT`].
pub(crate) async fn wait_stats(
    stats: &WatcherStats,
    what: &str,
    done: impl FnMut(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    match tokio::time::timeout(WAIT, stats.wait_until(done)).await {
        Ok(snapshot) => snapshot,
        Err(_) => panic!(
            "{what}: not reached within {WAIT:?}; stats: {:?}",
            stats.snapshot()
        ),
    }
}

/// Waits until this runtime runs at most `baseline` tasks, failing after [`WAIT`]. There is no
/// event to await for a task's end, so this polls the runtime's count.
pub(crate) async fn wait_tasks_end(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = Instant::now() + WAIT;
    while metrics.num_alive_tasks() > baseline {
        assert!(
            Instant::now() < deadline,
            "{} tasks still alive {WAIT:?} after stopping, {baseline} before starting",
            metrics.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ===== scenarios =====

/// A's notify wakes B.
pub(crate) async fn notify_wakes_the_other_host(a: &impl TestWatcher, b: &impl TestWatcher) {
    let b_wakes = b.wakes();
    take_stored_wake(&b_wakes).await;
    a.notify();
    expect_wake(&b_wakes, "B after A's notify").await;
    assert!(b.stats().snapshot().received >= 1);
    wait_stats(a.stats(), "A sent its message", |s| s.sent == 1).await;
}

/// A's notify reaches A too, which ignores it.
pub(crate) async fn own_notify_is_ignored(a: &impl TestWatcher, b: &impl TestWatcher) {
    let a_wakes = a.wakes();
    let b_wakes = b.wakes();
    take_stored_wake(&a_wakes).await;
    take_stored_wake(&b_wakes).await;
    a.notify();
    expect_wake(&b_wakes, "B after A's notify").await;
    wait_stats(a.stats(), "A received its own message", |s| {
        s.own_ignored >= 1
    })
    .await;
    assert!(
        !take_stored_wake(&a_wakes).await,
        "A woke on its own message"
    );
    assert_eq!(a.stats().snapshot().received, 0);
}

/// A burst of notifies is sent as at most two messages (one in flight, one pending), and each
/// message wakes B at most `wakes_per_message` times.
pub(crate) async fn burst_is_coalesced(
    a: &impl TestWatcher,
    b: &impl TestWatcher,
    wakes_per_message: u64,
) {
    let (a_wakes, b_wakes) = (a.wakes(), b.wakes());
    take_stored_wake(&a_wakes).await;
    take_stored_wake(&b_wakes).await;
    for _ in 0..100 {
        a.notify();
    }
    expect_wake(&b_wakes, "B after A's burst").await;
    // A round trip from B to A: time for A's sender to send more, had it not coalesced. With
    // `FsWatcher`, A's second write may overwrite B's before A reads it (a documented limit):
    // B then sends again.
    let mut round_trip = false;
    for _ in 0..5 {
        b.notify();
        if tokio::time::timeout(WAIT / 5, a_wakes.notified())
            .await
            .is_ok()
        {
            round_trip = true;
            break;
        }
    }
    assert!(round_trip, "A after B's notify: no wake-up");
    let sent = wait_stats(a.stats(), "A sent the burst", |s| s.sent >= 1).await;
    assert_eq!(sent.notifies, 100);
    assert_eq!(sent.notify_failures, 0);
    assert!(sent.sent <= 2, "the burst was not coalesced: {sent:?}");
    let received = b.stats().snapshot();
    assert!(
        received.received >= 1 && received.received <= 2 * wakes_per_message,
        "B woke too often: {received:?}"
    );
}

/// After `break_b` cuts B off, B re-establishes its connection, wakes once, and receives A's
/// later messages.
pub(crate) async fn recovers_after_losing_the_connection<F: Future<Output = ()>>(
    a: &impl TestWatcher,
    b: &impl TestWatcher,
    break_b: F,
) {
    let b_wakes = b.wakes();
    take_stored_wake(&b_wakes).await;
    break_b.await;
    wait_stats(b.stats(), "B reconnected", |s| s.reconnects >= 1).await;
    expect_wake(&b_wakes, "B after reconnecting").await;

    take_stored_wake(&b_wakes).await;
    let before = b.stats().snapshot().received;
    a.notify();
    expect_wake(&b_wakes, "B after A's notify, once reconnected").await;
    wait_stats(b.stats(), "B received A's message", |s| s.received > before).await;
}

/// The background tasks of watchers started by `start` end when their token is cancelled, and
/// when they are dropped.
pub(crate) async fn tasks_end_when_stopped<W, F>(start: impl Fn(CancellationToken) -> F)
where
    W: TestWatcher,
    F: Future<Output = (Arc<W>, Arc<W>)>,
{
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    let stop = CancellationToken::new();
    let (a, b) = start(stop.clone()).await;
    exchange(&*a, &*b).await;
    assert!(
        metrics.num_alive_tasks() > baseline,
        "no background task ran"
    );
    stop.cancel();
    wait_tasks_end(baseline).await;
    drop((a, b));

    // Dropped without cancelling.
    let (a, b) = start(CancellationToken::new()).await;
    exchange(&*a, &*b).await;
    drop((a, b));
    wait_tasks_end(baseline).await;
}

/// Each of A and B wakes the other (so both have opened their sending side).
async fn exchange(a: &impl TestWatcher, b: &impl TestWatcher) {
    let (a_wakes, b_wakes) = (a.wakes(), b.wakes());
    a.notify();
    expect_wake(&b_wakes, "B after A's notify").await;
    b.notify();
    expect_wake(&a_wakes, "A after B's notify").await;
}

// ===== hints =====

/// A committed operation whose command carries `text`.
pub(crate) fn committed_operation(host_id: &HostId, text: &str) -> ofx_core::Operation {
    ofx_core::Operation::new(
        uuid::Uuid::now_v7(),
        host_id.clone(),
        "tests.note",
        serde_json::json!({ "text": text }),
    )
    .with_commit(Some(17), std::time::SystemTime::now())
}

/// A's committed operation reaches B as a hint, queued before B is woken; A ignores its own.
pub(crate) async fn a_committed_operation_reaches_the_other_host_as_a_hint(
    a: &impl TestWatcher,
    b: &impl TestWatcher,
    a_host: &HostId,
) {
    let (a_hints, b_hints) = (
        a.hints().expect("A carries hints"),
        b.hints().expect("B too"),
    );
    let b_wakes = b.wakes();
    take_stored_wake(&b_wakes).await;
    let operation = committed_operation(a_host, "milk");
    a.notify_committed(&operation);
    expect_wake(&b_wakes, "B after A's commit").await;
    let received = b_hints.take();
    assert_eq!(
        received.len(),
        1,
        "one hint, queued before the wake-up: {received:?}"
    );
    let hint = ofx_core::watcher::decode_hint(&received[0]).unwrap();
    assert_eq!(
        (
            hint.uuid,
            &hint.host_id,
            hint.command_name.as_str(),
            hint.sequence
        ),
        (operation.uuid, a_host, "tests.note", Some(17))
    );
    assert_eq!(hint.command, serde_json::json!({ "text": "milk" }));
    assert_eq!(hint.committed_at, operation.committed_at);
    let sent = wait_stats(a.stats(), "A sent its hint", |s| s.hints_sent == 1).await;
    assert_eq!((sent.sent, sent.hints_omitted), (1, 0));
    assert_eq!(b.stats().snapshot().hints_received, 1);
    wait_stats(a.stats(), "A received its own message", |s| {
        s.own_ignored >= 1
    })
    .await;
    assert!(a_hints.take().is_empty(), "A queued its own hint");
}

/// An operation too large for one message wakes B without its hint.
pub(crate) async fn an_operation_too_large_for_a_message_goes_without_its_hint(
    a: &impl TestWatcher,
    b: &impl TestWatcher,
    a_host: &HostId,
) {
    let b_hints = b.hints().expect("B carries hints");
    let b_wakes = b.wakes();
    take_stored_wake(&b_wakes).await;
    let large = committed_operation(a_host, &"x".repeat(10_000));
    a.notify_committed(&large);
    expect_wake(&b_wakes, "B after A's commit").await;
    let sent = wait_stats(a.stats(), "A sent its wake-up", |s| s.sent == 1).await;
    assert_eq!((sent.hints_sent, sent.hints_omitted), (0, 1));
    assert!(b_hints.take().is_empty(), "B got a hint too large to send");
}

/// With a replayer installed on B's hints (what B's log reader does), A's hint is replayed
/// before B is woken.
pub(crate) async fn a_hint_is_replayed_before_the_wake_up(
    a: &impl TestWatcher,
    b: &impl TestWatcher,
    a_host: &HostId,
) {
    let b_hints = b.hints().expect("B carries hints");
    let replayed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let replayer: ofx_core::watcher::HintReplayer = {
        let replayed = Arc::clone(&replayed);
        Arc::new(move |hint: &str| replayed.lock().unwrap().push(hint.to_owned()))
    };
    b_hints.set_replayer(Arc::clone(&replayer));
    let b_wakes = b.wakes();
    take_stored_wake(&b_wakes).await;
    let operation = committed_operation(a_host, "eggs");
    a.notify_committed(&operation);
    expect_wake(&b_wakes, "B after A's commit").await;
    let replayed_at_wake = replayed.lock().unwrap().clone();
    assert_eq!(replayed_at_wake.len(), 1, "replayed before the wake-up");
    assert_eq!(
        ofx_core::watcher::decode_hint(&replayed_at_wake[0])
            .unwrap()
            .uuid,
        operation.uuid
    );
    assert!(
        b_hints.take().is_empty(),
        "a replayed hint is not queued too"
    );
    // Removed: hints wait in the queue again.
    b_hints.remove_replayer(&replayer);
    a.notify_committed(&committed_operation(a_host, "bread"));
    expect_wake(&b_wakes, "B after A's second commit").await;
    assert_eq!(b_hints.take().len(), 1);
    assert_eq!(replayed.lock().unwrap().len(), 1);
}
