//! A `COMMIT` that fails on the client is verified: the call succeeds if the operation
//! committed, fails with `CommitFailed` only when it certainly did not, and with `CommitInDoubt`
//! when that cannot be known in time.

#[cfg(feature = "postgres")]
mod postgres {
    use diesel::QueryableByName;
    use diesel::sql_types::{BigInt, Nullable};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
    use ofx_diesel::{Backend, NewOperationRow, Postgres};

    use crate::common::postgres_database;

    #[derive(QueryableByName)]
    struct Recorded {
        #[diesel(sql_type = BigInt)]
        idx: i64,
        #[diesel(sql_type = Nullable<BigInt>)]
        xid: Option<i64>,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_insert_returns_the_rows_index_and_records_its_transaction_id() {
        let url = postgres_database().await;
        let mut connection = AsyncPgConnection::establish(&url).await.unwrap();
        connection.batch_execute("BEGIN").await.unwrap();
        let uuid = uuid::Uuid::now_v7().to_string();
        let inserted = Postgres::insert_operation(
            &mut connection,
            NewOperationRow {
                uuid: &uuid,
                host_id: "here",
                logged_at: 0,
                committed_at: 0,
                command_name: "pg_accounts.deposit",
                command_json: "{}",
                items_json: "{}",
                nested_json: "[]",
            },
        )
        .await
        .unwrap();
        let current = diesel::sql_query(
            "SELECT CAST(0 AS BIGINT) AS idx, CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT) AS xid",
        )
        .get_result::<Recorded>(&mut connection)
        .await
        .unwrap();
        assert_eq!(inserted.xid, current.xid, "the transaction's id");
        connection.batch_execute("COMMIT").await.unwrap();

        let row = diesel::sql_query("SELECT idx, xid FROM ofx_operations WHERE uuid = $1")
            .bind::<diesel::sql_types::Text, _>(&uuid)
            .get_result::<Recorded>(&mut connection)
            .await
            .unwrap();
        assert_eq!(row.idx, inserted.idx, "the row's index");
        assert_eq!(
            row.xid, inserted.xid,
            "the row records its transaction's id"
        );
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use diesel_async::SimpleAsyncConnection;
    use ofx_diesel::{Backend, DbHub, NewOperationRow, Sqlite};

    use crate::common::{RawSql, fast, sqlite_file};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_insert_returns_the_rows_index() {
        let path = sqlite_file().await;
        let db = DbHub::<Sqlite>::open(&path, fast()).await.unwrap();
        let mut connection = db.connection().await.unwrap();
        for expected in 1..=3 {
            let uuid = uuid::Uuid::now_v7().to_string();
            connection.batch_execute("BEGIN").await.unwrap();
            let inserted = Sqlite::insert_operation(
                &mut connection,
                NewOperationRow {
                    uuid: &uuid,
                    host_id: "here",
                    logged_at: 0,
                    committed_at: 0,
                    command_name: "sqlite_accounts.deposit",
                    command_json: "{}",
                    items_json: "{}",
                    nested_json: "[]",
                },
            )
            .await
            .unwrap();
            connection.batch_execute("COMMIT").await.unwrap();
            assert_eq!(inserted.idx, expected);
            assert_eq!(inserted.xid, None, "SQLite has no transaction ids");
            assert_eq!(
                db.count(&format!(
                    "ofx_operations WHERE idx = {expected} AND uuid = '{uuid}' AND xid IS NULL"
                ))
                .await,
                1
            );
        }
    }
}
