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
    scenarios::bad_rows_are_logged_and_skipped::<Sqlite>(
        &sqlite_file().await,
        "sqlite_accounts.deposit",
    )
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
        metrics.num_alive_tasks(),
        baseline + 2,
        "the reader and the trimmer run"
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
