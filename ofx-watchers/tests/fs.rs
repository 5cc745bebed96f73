//! `FsWatcher` on a temporary directory: two hosts on one log.
#![cfg(feature = "fs")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{host, log_name};
use ofx_watchers::{Error, FsWatcher};
use tokio_util::sync::CancellationToken;

/// A directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "ofx-watchers-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two hosts watching one log in `dir`.
async fn pair(dir: &TempDir, stop: &CancellationToken) -> (Arc<FsWatcher>, Arc<FsWatcher>) {
    let log = log_name();
    let a = FsWatcher::start(&dir.0, &log, host("a"), stop.clone())
        .await
        .expect("A starts");
    let b = FsWatcher::start(&dir.0, &log, host("b"), stop.clone())
        .await
        .expect("B starts");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_other_host() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    assert!(dir.0.is_dir(), "the missing directory was not created");
    common::notify_wakes_the_other_host(&*a, &*b).await;
    let content = std::fs::read_to_string(a.path()).expect("the log's file exists");
    assert_eq!(content, a.host_id().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_notify_is_ignored() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    common::own_notify_is_ignored(&*a, &*b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_operation_reaches_the_other_host_as_a_hint() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    let a_host = a.host_id().clone();
    common::a_committed_operation_reaches_the_other_host_as_a_hint(&*a, &*b, &a_host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_too_large_for_a_message_goes_without_its_hint() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    let a_host = a.host_id().clone();
    common::an_operation_too_large_for_a_message_goes_without_its_hint(&*a, &*b, &a_host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_is_replayed_before_the_wake_up() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    let a_host = a.host_id().clone();
    common::a_hint_is_replayed_before_the_wake_up(&*a, &*b, &a_host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_coalesced() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    // A rename is reported twice (the new name, and old and new names together).
    common::burst_is_coalesced(&*a, &*b, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_the_directory_is_deleted_and_recreated() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    // The log's file is not written yet, so deleting the directory reports no change of it:
    // B's only wake-up is the one after re-establishing the watch.
    let delete_and_recreate = async {
        std::fs::remove_dir_all(&dir.0).expect("the directory is deleted");
        std::fs::create_dir_all(&dir.0).expect("the directory is recreated");
    };
    common::recovers_after_losing_the_connection(&*a, &*b, delete_and_recreate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_the_directory_is_moved_away() {
    let dir = TempDir::new();
    let (a, b) = pair(&dir, &CancellationToken::new()).await;
    let moved = TempDir(dir.0.with_extension("moved"));
    let move_away = async {
        std::fs::rename(&dir.0, &moved.0).expect("the directory is moved");
    };
    common::recovers_after_losing_the_connection(&*a, &*b, move_away).await;
    assert!(dir.0.is_dir(), "the directory was not created again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_end_when_stopped() {
    let dir = TempDir::new();
    common::tasks_end_when_stopped(|stop| {
        let dir = &dir;
        async move { pair(dir, &stop).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_created_is_an_error() {
    let dir = TempDir::new();
    std::fs::write(&dir.0, "a file, not a directory").expect("the file is written");
    let error = FsWatcher::start(
        dir.0.join("below"),
        &log_name(),
        host("a"),
        CancellationToken::new(),
    )
    .await
    .expect_err("a directory below a file");
    assert!(matches!(error, Error::Io { .. }), "{error}");
    let _ = std::fs::remove_file(&dir.0);
}

/// The wake-ups and the messages sent are counted through the `metrics` facade. The
/// recorder is installed for this test's thread, on a current-thread runtime, so the watchers'
/// tasks record into it and the other tests do not.
#[tokio::test]
async fn wakeups_and_messages_sent_are_counted_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let dir = TempDir::new();
    let stop = CancellationToken::new();
    let (a, b) = pair(&dir, &stop).await;
    common::notify_wakes_the_other_host(&*a, &*b).await;
    // One snapshot (taking one resets the recorder's values).
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && key
                        .labels()
                        .map(|label| (label.key(), label.value()))
                        .eq([("watcher", "fs")])
            })
            .map(|(_, _, _, value)| value)
    };
    // Every wake-up is counted once, by the watcher that woke (here B, maybe twice for one
    // message: a rename is reported twice).
    let Some(&DebugValue::Counter(wakeups)) = counter(ofx_watchers::WAKEUPS) else {
        panic!("no wake-up counted");
    };
    let woke = |stats: ofx_watchers::StatsSnapshot| stats.received + stats.reconnects;
    assert!(wakeups >= 1);
    assert!(wakeups <= woke(a.stats().snapshot()) + woke(b.stats().snapshot()));
    assert_eq!(
        counter(ofx_watchers::NOTIFICATIONS_SENT),
        Some(&DebugValue::Counter(1)),
        "A sent one message"
    );
    stop.cancel();
}
