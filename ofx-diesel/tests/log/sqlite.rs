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

/// One end of a watcher pair between two hosts of one process that carries hints, as
/// `ofx-watchers`' watchers do across machines: what this end's host commits goes, as a hint,
/// into the other end's hints (replayed there at once by its reader's replayer, in this
/// host's task), then wakes the other end.
#[derive(Debug, Default)]
struct HintingWatcher {
    wakes: std::sync::Arc<tokio::sync::Notify>,
    hints: std::sync::Arc<ofx_core::watcher::WakeHints>,
    peer: std::sync::OnceLock<std::sync::Arc<HintingWatcher>>,
    /// Changes each operation before it goes as a hint: a host that lies.
    lie: std::sync::OnceLock<fn(&mut ofx_core::Operation)>,
}

impl HintingWatcher {
    /// Two ends, each sending to the other.
    fn pair() -> (std::sync::Arc<Self>, std::sync::Arc<Self>) {
        let (a, b) = (
            std::sync::Arc::new(Self::default()),
            std::sync::Arc::new(Self::default()),
        );
        a.peer.set(std::sync::Arc::clone(&b)).unwrap();
        b.peer.set(std::sync::Arc::clone(&a)).unwrap();
        (a, b)
    }
}

impl ofx_core::LogWatcher for HintingWatcher {
    fn notify(&self) {
        self.peer.get().unwrap().wakes.notify_one();
    }

    fn wakes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.wakes)
    }

    fn notify_committed(&self, operation: &ofx_core::Operation) {
        let peer = self.peer.get().unwrap();
        let mut operation = operation.clone();
        if let Some(lie) = self.lie.get() {
            lie(&mut operation);
        }
        peer.hints
            .push(ofx_core::watcher::encode_hint(&operation).unwrap());
        peer.wakes.notify_one();
    }

    fn hints(&self) -> Option<std::sync::Arc<ofx_core::watcher::WakeHints>> {
        Some(std::sync::Arc::clone(&self.hints))
    }
}

/// The hinting pair's hosts: A writes, B reads (and polls only once an hour: only the watcher
/// wakes it).
async fn hinted_hosts(
    path: &str,
) -> (
    crate::common::Host<Sqlite>,
    crate::common::Host<Sqlite>,
    std::sync::Arc<HintingWatcher>,
) {
    hinted_hosts_lying(path, None).await
}

/// [`hinted_hosts`], A's hints changed by `lie`.
async fn hinted_hosts_lying(
    path: &str,
    lie: Option<fn(&mut ofx_core::Operation)>,
) -> (
    crate::common::Host<Sqlite>,
    crate::common::Host<Sqlite>,
    std::sync::Arc<HintingWatcher>,
) {
    use crate::common::{Host, fast};
    let (on_a, on_b) = HintingWatcher::pair();
    if let Some(lie) = lie {
        on_a.lie.set(lie).unwrap();
    }
    let mut settings = fast();
    settings.poll_period_with_watcher = std::time::Duration::from_secs(3600);
    let a = Host::<Sqlite>::open_with(path, settings.clone(), false, Some(on_a)).await;
    let b = Host::<Sqlite>::open_with(path, settings, true, Some(on_b.clone())).await;
    b.reader.as_ref().unwrap().wait_for(0).await;
    (a, b, on_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_invalidates_the_other_host_before_its_row_is_read_and_the_row_is_then_skipped() {
    use ofx_core::capture;
    use std::sync::atomic::Ordering::Relaxed;
    let path = sqlite_file().await;
    let (a, b, _) = hinted_hosts(&path).await;
    let (_, on_b) = capture(b.balance(7)).await.unwrap();
    let stats = b.reader.as_ref().unwrap().stats();
    let sequence = a.deposit_sequence(7, 1).await;
    // The hint was replayed in A's commit, before B's reader was woken: B's value is
    // invalidated when the call returns, whatever B's reader has done yet.
    assert!(
        !on_b.is_consistent(),
        "B's value outlived the commit: the hint was not replayed"
    );
    assert_eq!(stats.hinted.load(Relaxed), 1);
    assert_eq!(b.accounts.hub.hinted_position(), Some(sequence));
    // Woken after the hint, the reader reads the row, and skips it: the invalidation ran once.
    replayed(&b, sequence).await;
    assert_eq!(stats.known.load(Relaxed), 1, "the row was skipped");
    assert_eq!(
        stats.hint_mismatches.load(Relaxed),
        0,
        "the hint was the row"
    );
    assert_eq!(
        (stats.replayed.load(Relaxed), stats.hinted.load(Relaxed)),
        (1, 1),
        "replayed once, from the hint"
    );
    assert_eq!(stats.bad_rows.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_that_is_not_a_known_operation_is_dropped_and_the_row_still_replays() {
    use ofx_core::capture;
    use std::sync::atomic::Ordering::Relaxed;
    let path = sqlite_file().await;
    let (a, b, on_b) = hinted_hosts(&path).await;
    let stats = b.reader.as_ref().unwrap().stats();
    let (_, cached) = capture(b.balance(7)).await.unwrap();
    // Not an operation: counted, dropped.
    on_b.hints.push("{\"not\": \"an operation\"".to_owned());
    assert_eq!(stats.bad_hints.load(Relaxed), 1);
    // An operation of a command this program does not know: its replay fails, quietly (the
    // row's replay would report it), and nothing is marked completed.
    let unknown = ofx_core::Operation::new(
        uuid::Uuid::now_v7(),
        ofx_core::HostId::from_string("elsewhere"),
        "no.such.command",
        serde_json::json!({}),
    );
    on_b.hints
        .push(ofx_core::watcher::encode_hint(&unknown).unwrap());
    assert!(!b.accounts.hub.notifier().is_known(unknown.uuid));
    assert_eq!(stats.hinted.load(Relaxed), 0);
    assert!(cached.is_consistent(), "nothing was invalidated");
    // The reader still replays what commits.
    let sequence = a.deposit_sequence(7, 1).await;
    replayed(&b, sequence).await;
    assert!(!cached.is_consistent());
    assert_eq!(stats.bad_rows.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_that_differs_from_its_row_makes_the_reader_run_the_rows_invalidations() {
    use ofx_core::capture;
    use std::sync::atomic::Ordering::Relaxed;
    let path = sqlite_file().await;
    // A tells B it deposited to account 8; its row says 7.
    let lie: fn(&mut ofx_core::Operation) = |operation| operation.command["id"] = 8.into();
    let (a, b, _) = hinted_hosts_lying(&path, Some(lie)).await;
    let stats = b.reader.as_ref().unwrap().stats();
    let (_, seven) = capture(b.balance(7)).await.unwrap();
    let (_, eight) = capture(b.balance(8)).await.unwrap();
    let sequence = a.deposit_sequence(7, 1).await;
    assert!(!eight.is_consistent(), "the lie was replayed");
    replayed(&b, sequence).await;
    assert_eq!(stats.hint_mismatches.load(Relaxed), 1);
    assert!(
        !seven.is_consistent(),
        "the row the hint hid was not left stale"
    );
    assert_eq!(b.balance(7).await, Ok(1));
}

/// Waits until `host`'s reader has replayed the log through `sequence`.
async fn replayed(host: &crate::common::Host<Sqlite>, sequence: i64) {
    host.reader
        .as_ref()
        .unwrap()
        .wait_replayed(sequence, std::time::Duration::from_secs(10))
        .await
        .unwrap();
}
