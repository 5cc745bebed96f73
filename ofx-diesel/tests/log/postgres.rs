//! The log on PostgreSQL (each test on a database of its own), with the faults only a server
//! has: broken connections at commit, terminated readers, transactions committing out of order.

use std::sync::Arc;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use ofx_core::capture;
use ofx_diesel::{DbHub, Error, Postgres};

use crate::common::{Host, RawSql, fast, invalidated, marked_insert, postgres_database};
use crate::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_host_a_invalidates_host_b_through_the_log() {
    scenarios::a_command_on_host_a_invalidates_host_b::<Postgres>(&postgres_database().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_after_writing_leaves_nothing() {
    scenarios::a_handler_that_fails_after_writing_leaves_nothing::<Postgres>(
        &postgres_database().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_logged_and_skipped() {
    scenarios::bad_rows_are_logged_and_skipped::<Postgres>(
        &postgres_database().await,
        "accounts.deposit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trimmer_deletes_only_old_operations() {
    scenarios::the_trimmer_deletes_only_old_operations::<Postgres>(&postgres_database().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_trimmed_log_invalidates_everything() {
    scenarios::a_reader_behind_the_trimmed_log_invalidates_everything::<Postgres>(
        &postgres_database().await,
    )
    .await;
}

/// The operation row and `COMMIT` are pipelined (sent together): the row must still reach the
/// server first, in the command's transaction, also on a new connection, where neither
/// statement is prepared yet (the first command of each of these hubs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_row_commits_in_the_command_s_transaction_from_a_new_connection() {
    let url = postgres_database().await;
    for id in 0..3 {
        let a = Host::<Postgres>::open(&url, fast(), false).await;
        let sequence = a.deposit_sequence(id, 10).await;
        // The business row's `xmin` is the transaction's 32-bit id; the log row's `xid` the
        // full one.
        assert_eq!(
            a.accounts
                .db
                .count(&format!(
                    "accounts, ofx_operations WHERE accounts.id = {id} AND ofx_operations.idx = \
                     {sequence} AND ofx_operations.xid % 4294967296 = \
                     accounts.xmin::text::bigint"
                ))
                .await,
            1,
            "command {id}: its account row and its log row were written by one transaction"
        );
    }
}

/// A log row the server refuses (here a trigger raises) aborts the transaction: the `COMMIT`
/// pipelined behind it rolls everything back, the command fails, and the connection is still
/// good for the next command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_row_the_server_refuses_leaves_no_write() {
    let url = postgres_database().await;
    let mut settings = fast();
    settings.pool_size = 2;
    let a = Host::<Postgres>::open(&url, settings, false).await;
    a.deposit(1, 5, false).await.unwrap();
    a.accounts
        .db
        .exec(
            "CREATE FUNCTION refuse_operation() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION \
             'refused'; END $$ LANGUAGE plpgsql; CREATE TRIGGER refuse_operation BEFORE INSERT \
             ON ofx_operations FOR EACH ROW EXECUTE FUNCTION refuse_operation();",
        )
        .await;
    let error = a.deposit(2, 5, false).await.unwrap_err();
    assert!(
        format!("{error:?}").contains("refused"),
        "the server's refusal is reported: {error:?}"
    );
    assert_eq!(a.accounts.db.count("accounts WHERE id = 2").await, 0);
    assert_eq!(a.accounts.db.count("ofx_operations").await, 1);
    a.accounts
        .db
        .exec("DROP TRIGGER refuse_operation ON ofx_operations")
        .await;
    // The pool's connections (two), the refused one back from its aborted transaction.
    for id in 2..5 {
        a.deposit(id, 5, false).await.unwrap();
    }
    assert_eq!(a.accounts.db.count("accounts").await, 4);
    assert_eq!(a.accounts.db.count("ofx_operations").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_connection_dies_is_verified_and_reported_failed() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let (_, cached) = capture(a.balance(4)).await.unwrap();
    let killer_url = url.clone();
    a.accounts
        .db
        .set_commit_fault(Some(Arc::new(move |connection: &mut AsyncPgConnection| {
            let url = killer_url.clone();
            Box::pin(async move {
                #[derive(diesel::QueryableByName)]
                struct Pid {
                    #[diesel(sql_type = diesel::sql_types::Integer)]
                    pid: i32,
                }
                let pid = diesel_async::RunQueryDsl::get_result::<Pid>(
                    diesel::sql_query("SELECT pg_backend_pid() AS pid"),
                    connection,
                )
                .await
                .unwrap()
                .pid;
                let mut other = AsyncPgConnection::establish(&url).await.unwrap();
                other
                    .batch_execute(&format!("SELECT pg_terminate_backend({pid})"))
                    .await
                    .unwrap();
            })
        })));
    let error = a.deposit(4, 10, false).await.unwrap_err();
    assert!(
        matches!(
            error.scope_error::<Error>(),
            Some(Error::CommitFailed { .. })
        ),
        "the commit was verified and found not to have happened: {error:?}"
    );
    a.accounts.db.set_commit_fault(None);
    assert_eq!(a.accounts.db.count("accounts").await, 0);
    assert_eq!(a.accounts.db.count("ofx_operations").await, 0);
    assert!(
        cached.is_consistent(),
        "a command that did not happen invalidates nothing"
    );
    // The pool replaced the dead connection.
    a.deposit(4, 10, false).await.unwrap();
    assert_eq!(a.accounts.db.count("accounts").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_late_with_a_lower_index_is_not_skipped() {
    let url = postgres_database().await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let (_, first) = capture(b.balance(10)).await.unwrap();
    let (_, second) = capture(b.balance(11)).await.unwrap();
    let reader = b.reader.as_ref().unwrap();
    reader.wait_for(0).await;

    // Two transactions take indexes n and n + 1; n + 1 commits first and is read; n commits
    // after. The reader must still replay n.
    let mut early = AsyncPgConnection::establish(&url).await.unwrap();
    let mut late = AsyncPgConnection::establish(&url).await.unwrap();
    let insert = marked_insert;
    late.batch_execute(&format!("BEGIN; {}", insert(10)))
        .await
        .unwrap();
    early
        .batch_execute(&format!("BEGIN; {}; COMMIT", insert(11)))
        .await
        .unwrap();
    reader.wake();
    invalidated(&second).await;
    assert!(first.is_consistent(), "its row is not committed yet");

    late.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    invalidated(&first).await;
    assert_eq!(
        b.stats()
            .late_rows
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_survives_its_connections_being_terminated() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let (_, before) = capture(b.balance(20)).await.unwrap();
    a.deposit(20, 1, false).await.unwrap();
    invalidated(&before).await;

    // Kill every connection to the database: the pools' and the reader's.
    let name = url.rsplit('/').next().unwrap().to_owned();
    let mut admin = AsyncPgConnection::establish(&url).await.unwrap();
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await
        .unwrap();

    let (_, after) = capture(b.balance(20)).await.unwrap();
    a.deposit(20, 1, false).await.unwrap();
    invalidated(&after).await;
    assert_eq!(b.balance(20).await, Ok(2));
    let _ = DbHub::<Postgres>::url;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_survives_a_server_restart_and_reads_what_was_committed_meanwhile() {
    let server = crate::private_server::PrivateServer::start();
    let mut admin = AsyncPgConnection::establish(&server.url("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE restart")
        .await
        .unwrap();
    drop(admin);
    let url = server.url("restart");
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    a.accounts.db.exec(crate::common::ACCOUNTS).await;
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    b.reader.as_ref().unwrap().wait_for(0).await;
    let (_, on_b) = capture(b.balance(30)).await.unwrap();

    server.ctl_stop();
    server.ctl_start();
    // Host A's pool reconnects; host B's reader reconnects with backoff and finds the row.
    a.deposit(30, 7, false).await.unwrap();
    invalidated(&on_b).await;
    assert!(
        b.stats()
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the reader saw the outage"
    );
    assert_eq!(b.balance(30).await, Ok(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_started_during_a_transaction_replays_it_when_it_commits_late() {
    let url = postgres_database().await;
    let a = Host::<Postgres>::open(&url, fast(), false).await;
    // T1 takes an index (its transaction id recorded and marked first, as the scope does) and is held
    // before its COMMIT.
    let mut held = AsyncPgConnection::establish(&url).await.unwrap();
    held.batch_execute(&format!("BEGIN; {}", marked_insert(40)))
        .await
        .unwrap();
    // T2 takes the next index and commits, "long ago": a start placed by time (the rows logged
    // a few seconds before it) would begin after T2 and never see T1.
    let second = a.deposit_sequence(41, 1).await;
    a.accounts
        .db
        .exec("UPDATE ofx_operations SET logged_at = logged_at - 60000000")
        .await;
    // Host B starts afterwards: its reader's start is past T2, and T1 is still open.
    let b = Host::<Postgres>::open(&url, fast(), true).await;
    let reader = b.reader.as_ref().unwrap();
    let error = reader
        .wait_replayed(second, std::time::Duration::from_millis(100))
        .await
        .expect_err("T1 may still commit below the start: not everything up to T2 is known");
    assert!(
        matches!(
            error,
            Error::ReplayTimeout {
                blocked_by: ofx_diesel::ReplayBlock::StartHorizon { .. },
                ..
            }
        ),
        "{error}"
    );
    let (_, late) = capture(b.balance(40)).await.unwrap();
    held.batch_execute("COMMIT").await.unwrap();
    reader.wake();
    invalidated(&late).await;
    reader
        .wait_replayed(second, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        b.stats()
            .late_rows
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "found through the transactions in flight at the start"
    );
}
