//! The behaviours every backend must show, as generic scenarios.

use std::sync::atomic::Ordering;

use ofx_core::capture;
use ofx_diesel::DbHub;

use crate::common::{AccountError, AccountQueries, Host, RawSql, fast, invalidated};

pub(crate) async fn a_command_on_host_a_invalidates_host_b<B: AccountQueries>(url: &str)
where
    DbHub<B>: RawSql,
{
    let a = Host::<B>::open(url, fast(), false).await;
    let b = Host::<B>::open(url, fast(), true).await;
    let (before, on_b) = capture(b.balance(1)).await.unwrap();
    assert_eq!(before, Ok(0));

    assert_eq!(a.deposit(1, 50, false).await.unwrap(), 50);
    assert_eq!(a.balance(1).await, Ok(50), "read-your-writes on host A");
    invalidated(&on_b).await;
    assert_eq!(
        b.balance(1).await,
        Ok(50),
        "host B recomputed from the database"
    );
    assert_eq!(
        a.accounts.db.count("ofx_operations").await,
        1,
        "one operation row"
    );
}

pub(crate) async fn a_handler_that_fails_after_writing_leaves_nothing<B: AccountQueries>(url: &str)
where
    DbHub<B>: RawSql,
{
    let a = Host::<B>::open(url, fast(), false).await;
    let (_, cached) = capture(a.balance(2)).await.unwrap();
    let error = a.deposit(2, 10, true).await.unwrap_err();
    assert!(
        matches!(
            error.handler_error::<AccountError>(),
            Some(AccountError::Refused)
        ),
        "{error:?}"
    );
    assert_eq!(
        a.accounts.db.count("accounts").await,
        0,
        "the business row was rolled back"
    );
    assert_eq!(
        a.accounts.db.count("ofx_operations").await,
        0,
        "no operation row"
    );
    assert!(cached.is_consistent(), "nothing was invalidated");
    // The connection went back to the pool usable.
    a.deposit(2, 10, false).await.unwrap();
    assert_eq!(a.accounts.db.count("accounts").await, 1);
}

pub(crate) async fn bad_rows_are_logged_and_skipped<B: AccountQueries>(url: &str, name: &str)
where
    DbHub<B>: RawSql,
{
    let a = Host::<B>::open(url, fast(), false).await;
    let b = Host::<B>::open(url, fast(), true).await;
    let (_, on_b) = capture(b.balance(3)).await.unwrap();
    let db = &a.accounts.db;
    let uuid = || uuid::Uuid::now_v7().to_string();
    db.insert_row(&uuid(), "accounts.unheard_of", "{}", "{}")
        .await;
    db.insert_row(&uuid(), name, r#"{"id": "three"}"#, "{}")
        .await;
    db.insert_row(
        &uuid(),
        name,
        r#"{"id": 3, "amount": 1, "fail": false}"#,
        "not json",
    )
    .await;
    db.insert_row(
        "not-a-uuid",
        name,
        r#"{"id": 3, "amount": 1, "fail": false}"#,
        "{}",
    )
    .await;
    // A good operation after the bad ones still reaches host B.
    a.deposit(3, 5, false).await.unwrap();
    invalidated(&on_b).await;
    assert_eq!(b.stats().bad_rows.load(Ordering::Relaxed), 4);
    assert_eq!(b.balance(3).await, Ok(5));
}

pub(crate) async fn the_trimmer_deletes_only_old_operations<B: AccountQueries>(url: &str)
where
    DbHub<B>: RawSql,
{
    let a = Host::<B>::open(url, fast(), false).await;
    for id in 0..5 {
        a.deposit(id, 1, false).await.unwrap();
    }
    let db = &a.accounts.db;
    db.exec("UPDATE ofx_operations SET logged_at = logged_at - 7200000000 WHERE idx IN (SELECT idx FROM ofx_operations ORDER BY idx LIMIT 3)")
        .await;
    let mut settings = fast();
    settings.trim_batch = 2; // several batches
    let trimmer = DbHub::<B>::open(url, settings).await.unwrap();
    assert_eq!(trimmer.trim().await.unwrap(), 3);
    assert_eq!(db.count("ofx_operations").await, 2);
    assert_eq!(trimmer.trim().await.unwrap(), 0);

    // What is trimmed is a prefix of the log: an old row after a newer one waits until that
    // one is old too.
    for id in 5..8 {
        a.deposit(id, 1, false).await.unwrap();
    }
    db.exec("UPDATE ofx_operations SET logged_at = logged_at - 7200000000 WHERE idx = (SELECT MAX(idx) FROM ofx_operations)")
        .await;
    assert_eq!(
        trimmer.trim().await.unwrap(),
        0,
        "the oldest rows are recent"
    );
    assert_eq!(db.count("ofx_operations").await, 5);
    db.exec("UPDATE ofx_operations SET logged_at = logged_at - 7200000000 WHERE idx < (SELECT MAX(idx) FROM ofx_operations)")
        .await;
    assert_eq!(trimmer.trim().await.unwrap(), 5, "then all of them");
    assert_eq!(db.count("ofx_operations").await, 0);
    // An emptied log still never gives an index twice: the next operation comes after every
    // trimmed one (a reader whose cursor is there would miss it otherwise).
    assert_eq!(
        db.count("ofx_log_trims WHERE trimmed_through >= 8").await,
        1,
        "the eight operations are trimmed"
    );
    a.deposit(8, 1, false).await.unwrap();
    assert_eq!(
        db.count("ofx_operations, ofx_log_trims WHERE idx > trimmed_through")
            .await,
        1,
        "the new operation's index is past the trimmed ones"
    );
    // Nothing else to trim by: the log has no index on `logged_at` to keep up at each commit.
    let catalog = if B::NAME == "postgres" {
        "pg_indexes WHERE indexname = 'ofx_operations_logged_at'"
    } else {
        "sqlite_master WHERE type = 'index' AND name = 'ofx_operations_logged_at'"
    };
    assert_eq!(db.count(catalog).await, 0);
}

pub(crate) async fn a_reader_behind_the_trimmed_log_invalidates_everything<B: AccountQueries>(
    url: &str,
) where
    DbHub<B>: RawSql,
{
    let a = Host::<B>::open(url, fast(), false).await;
    for id in 0..4 {
        a.deposit(id, 1, false).await.unwrap();
    }
    // The first three are trimmed before host B reads them.
    a.accounts
        .db
        .exec("UPDATE ofx_operations SET logged_at = logged_at - 7200000000 WHERE idx IN (SELECT idx FROM ofx_operations ORDER BY idx LIMIT 3)")
        .await;
    assert_eq!(a.accounts.db.trim().await.unwrap(), 3);

    let b = Host::<B>::open(url, fast(), false).await;
    let (_, unrelated) = capture(b.balance(99)).await.unwrap();
    // A host that was down: its reader resumes from index 0, below what was trimmed.
    let reader = b
        .accounts
        .db
        .start_log_reader_at(&b.accounts.hub, Some(0))
        .await
        .unwrap();
    invalidated(&unrelated).await;
    assert_eq!(reader.stats().coverage_losses.load(Ordering::Relaxed), 1);
    // A reader that is not behind loses nothing.
    let c = Host::<B>::open(url, fast(), true).await;
    let up_to_date = c.reader.as_ref().unwrap();
    let (_, kept) = capture(c.balance(98)).await.unwrap();
    let sequence = a.deposit_sequence(5, 1).await;
    reader.wait_for(sequence).await;
    up_to_date.wait_for(sequence).await;
    assert_eq!(
        up_to_date.stats().coverage_losses.load(Ordering::Relaxed),
        0
    );
    assert!(kept.is_consistent());
}
