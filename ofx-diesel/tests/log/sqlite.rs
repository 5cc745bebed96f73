//! The log on SQLite files.

use ofx_diesel::Sqlite;

use crate::common::sqlite_file;
use crate::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_host_a_invalidates_host_b_through_the_log() {
    scenarios::a_command_on_host_a_invalidates_host_b::<Sqlite>(&sqlite_file().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_after_writing_leaves_nothing() {
    scenarios::a_handler_that_fails_after_writing_leaves_nothing::<Sqlite>(&sqlite_file().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_logged_and_skipped() {
    scenarios::bad_rows_are_logged_and_skipped::<Sqlite>(&sqlite_file().await, "accounts.deposit")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trimmer_deletes_only_old_operations() {
    scenarios::the_trimmer_deletes_only_old_operations::<Sqlite>(&sqlite_file().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_stop_when_their_hub_is_dropped() {
    use crate::common::Host;
    let metrics = tokio::runtime::Handle::current().metrics();
    let path = sqlite_file().await;
    let baseline = metrics.num_alive_tasks();
    let host = Host::<Sqlite>::open(&path, crate::common::fast(), true).await;
    let hub = host.accounts.hub.clone();
    let trimmer = host.accounts.db.start_trimmer(hub.shutdown_token());
    assert_eq!(
        host.reader.as_ref().unwrap().stats().health.state(),
        ofx_core::background::TaskState::Running
    );
    // The reader (and its supervisor), the trimmer started with the hub, this one.
    assert!(
        metrics.num_alive_tasks() >= baseline + 4,
        "the reader and the trimmers run"
    );

    // Keep both handles; drop every handle to the hub.
    let Host { accounts, reader } = host;
    drop(accounts);
    drop(hub);
    // Task exits have no event to await: look until they are gone (bounded).
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while metrics.num_alive_tasks() > baseline {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reader and the trimmer stop when their hub is dropped");
    drop((reader, trimmer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_trimmed_log_invalidates_everything() {
    scenarios::a_reader_behind_the_trimmed_log_invalidates_everything::<Sqlite>(
        &sqlite_file().await,
    )
    .await;
}

/// A watcher between hosts of one process: what `ofx-watchers` does across machines.
#[derive(Debug, Default)]
struct InProcessWatcher {
    wakes: std::sync::Arc<tokio::sync::Notify>,
    notified: std::sync::atomic::AtomicU64,
}

impl ofx_core::LogWatcher for InProcessWatcher {
    fn notify(&self) {
        self.notified
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wakes.notify_one();
    }

    fn wakes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.wakes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_wakes_the_reader_without_waiting_for_a_poll() {
    use crate::common::{Host, fast, invalidated};
    use ofx_core::capture;
    let path = sqlite_file().await;
    let watcher = std::sync::Arc::new(InProcessWatcher::default());
    let mut settings = fast();
    settings.poll_period_with_watcher = std::time::Duration::from_secs(3600); // no poll helps
    let a = Host::<Sqlite>::open_with(&path, settings.clone(), false, Some(watcher.clone())).await;
    let b = Host::<Sqlite>::open_with(&path, settings, true, Some(watcher.clone())).await;
    b.reader.as_ref().unwrap().wait_for(0).await;
    let (_, on_b) = capture(b.balance(7)).await.unwrap();
    a.deposit(7, 1, false).await.unwrap();
    assert_eq!(
        watcher.notified.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "notified after the commit"
    );
    invalidated(&on_b).await;
    // A failed command notifies nobody.
    assert!(a.deposit(7, 1, true).await.is_err());
    assert_eq!(
        watcher.notified.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
