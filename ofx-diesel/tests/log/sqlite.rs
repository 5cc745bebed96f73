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
