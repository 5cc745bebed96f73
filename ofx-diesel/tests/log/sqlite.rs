//! The log on SQLite files.

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::capture;
use ofx_diesel::{DbHub, Sqlite};

use crate::common::{AccountError, Deposit, Host, fast, invalidated, sqlite_file};

async fn count(db: &DbHub<Sqlite>, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut connection = db.connection().await.unwrap();
    let query = format!("SELECT COUNT(*) AS n FROM {table}");
    diesel::sql_query(query)
        .get_result::<Count>(&mut connection)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_host_a_invalidates_host_b_through_the_log() {
    let path = sqlite_file().await;
    let a = Host::sqlite(&path, fast(), false).await;
    let b = Host::sqlite(&path, fast(), true).await;

    let (before, on_b) = capture(b.accounts.balance(1)).await.unwrap();
    assert_eq!(before, Ok(0));
    let balance = a
        .accounts
        .hub
        .commander()
        .call(Deposit {
            id: 1,
            amount: 50,
            fail: false,
        })
        .await
        .unwrap();
    assert_eq!(balance, 50);
    assert_eq!(
        a.accounts.balance(1).await,
        Ok(50),
        "read-your-writes on host A"
    );

    invalidated(&on_b).await;
    assert_eq!(
        b.accounts.balance(1).await,
        Ok(50),
        "host B recomputed from the database"
    );
    assert_eq!(
        count(&a.accounts.db, "ofx_operations").await,
        1,
        "one operation row, in the same transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_after_writing_leaves_nothing() {
    let path = sqlite_file().await;
    let a = Host::sqlite(&path, fast(), false).await;
    let (_, cached) = capture(a.accounts.balance(2)).await.unwrap();

    let error = a
        .accounts
        .hub
        .commander()
        .call(Deposit {
            id: 2,
            amount: 10,
            fail: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.handler_error::<AccountError>(),
            Some(AccountError::Refused)
        ),
        "{error:?}"
    );
    assert_eq!(
        count(&a.accounts.db, "accounts").await,
        0,
        "the business row was rolled back"
    );
    assert_eq!(
        count(&a.accounts.db, "ofx_operations").await,
        0,
        "no operation row"
    );
    assert!(cached.is_consistent(), "nothing was invalidated");

    // The connection went back to the pool usable: the next command commits.
    a.accounts
        .hub
        .commander()
        .call(Deposit {
            id: 2,
            amount: 10,
            fail: false,
        })
        .await
        .unwrap();
    assert_eq!(count(&a.accounts.db, "accounts").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_logged_and_skipped() {
    let path = sqlite_file().await;
    let a = Host::sqlite(&path, fast(), false).await;
    let b = Host::sqlite(&path, fast(), true).await;
    let (_, on_b) = capture(b.accounts.balance(3)).await.unwrap();

    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let rows = [
        (
            uuid::Uuid::now_v7().to_string(),
            "accounts.unheard_of",
            r#"{}"#.to_owned(),
            "{}",
            "[]",
        ),
        (
            uuid::Uuid::now_v7().to_string(),
            "accounts.deposit",
            r#"{"id": "three"}"#.to_owned(),
            "{}",
            "[]",
        ),
        (
            uuid::Uuid::now_v7().to_string(),
            "accounts.deposit",
            r#"{"id": 3, "amount": 1, "fail": false}"#.to_owned(),
            "not json",
            "[]",
        ),
        (
            "not-a-uuid".to_owned(),
            "accounts.deposit",
            r#"{"id": 3, "amount": 1, "fail": false}"#.to_owned(),
            "{}",
            "[]",
        ),
    ];
    let mut connection = a.accounts.db.connection().await.unwrap();
    for (uuid, name, command, items, nested) in rows {
        diesel::sql_query(
            "INSERT INTO ofx_operations (uuid, host_id, logged_at, committed_at, command_name, command_json, items_json, nested_json) \
             VALUES (?, 'elsewhere', ?, ?, ?, ?, ?, ?)",
        )
        .bind::<diesel::sql_types::Text, _>(uuid)
        .bind::<diesel::sql_types::BigInt, _>(now)
        .bind::<diesel::sql_types::BigInt, _>(now)
        .bind::<diesel::sql_types::Text, _>(name)
        .bind::<diesel::sql_types::Text, _>(command)
        .bind::<diesel::sql_types::Text, _>(items)
        .bind::<diesel::sql_types::Text, _>(nested)
        .execute(&mut connection)
        .await
        .unwrap();
    }
    drop(connection);
    // A good operation after the bad ones still reaches host B.
    a.accounts
        .hub
        .commander()
        .call(Deposit {
            id: 3,
            amount: 5,
            fail: false,
        })
        .await
        .unwrap();
    invalidated(&on_b).await;
    let stats = b.reader.as_ref().unwrap().stats();
    assert_eq!(
        std::sync::atomic::AtomicU64::load(&stats.bad_rows, std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert_eq!(b.accounts.balance(3).await, Ok(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trimmer_deletes_only_old_operations() {
    let path = sqlite_file().await;
    let a = Host::sqlite(&path, fast(), false).await;
    for id in 0..5 {
        a.accounts
            .hub
            .commander()
            .call(Deposit {
                id,
                amount: 1,
                fail: false,
            })
            .await
            .unwrap();
    }
    let mut connection = a.accounts.db.connection().await.unwrap();
    // Age three of them by two hours.
    connection
        .batch_execute(
            "UPDATE ofx_operations SET logged_at = logged_at - 7200000000 WHERE idx <= 3",
        )
        .await
        .unwrap();
    drop(connection);
    let mut settings = fast();
    settings.trim_batch = 2; // several batches
    let db = DbHub::<Sqlite>::open(&path, settings).await.unwrap();
    assert_eq!(db.trim().await.unwrap(), 3);
    assert_eq!(count(&db, "ofx_operations").await, 2);
    assert_eq!(db.trim().await.unwrap(), 0);
}
