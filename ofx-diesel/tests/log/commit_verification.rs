//! A `COMMIT` that fails on the client is verified: the call succeeds if the operation
//! committed, fails with `CommitFailed` only when it certainly did not, and with `CommitInDoubt`
//! when that cannot be known in time.
//!
//! On PostgreSQL, a proxy between the host and the server breaks the first `COMMIT` after it is
//! armed (see `proxy.rs`), each way several times in a row: the outcome must not depend on
//! timing.

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    use diesel::QueryableByName;
    use diesel::sql_types::{BigInt, Nullable};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
    use ofx_core::ReprocessPolicy;
    use ofx_diesel::{
        Backend, DbHub, DbSettings, Doubt, Error, NewOperationRow, Postgres, TransactionStatus,
    };

    use crate::common::{Host, RawSql, fast, postgres_database};
    use crate::proxy::{Fault, Proxy};

    /// An operation row of a deposit, as a host writes it.
    fn deposit_row(uuid: &str) -> NewOperationRow<'_> {
        NewOperationRow {
            uuid,
            host_id: "here",
            logged_at: 0,
            committed_at: 0,
            command_name: "pg_accounts.deposit",
            command_json: "{}",
            items_json: "{}",
            nested_json: "[]",
        }
    }

    #[derive(QueryableByName)]
    struct Recorded {
        #[diesel(sql_type = BigInt)]
        idx: i64,
        #[diesel(sql_type = Nullable<BigInt>)]
        xid: Option<i64>,
    }

    /// `BEGIN` takes the transaction's id in the same round trip (what verification asks
    /// about when the row's reply is lost): it is the id the row records, at both isolation
    /// levels, and the row and `COMMIT` pipelined after it commit that transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_id_taken_at_begin_is_the_transaction_s_and_the_pipelined_commit_commits_it() {
        let url = postgres_database().await;
        for serializable in [false, true] {
            let mut settings = DbSettings::default();
            settings.serializable = serializable;
            // A new connection (no statement prepared yet), then again on the same one.
            let mut connection = AsyncPgConnection::establish(&url).await.unwrap();
            for _ in 0..2 {
                let begun_as = Postgres::begin_operation(&mut connection, &settings)
                    .await
                    .unwrap();
                assert!(begun_as.is_some(), "PostgreSQL takes the id at BEGIN");
                let level = diesel::sql_query(
                    "SELECT CAST(0 AS BIGINT) AS idx, CAST(CASE current_setting(\
                     'transaction_isolation') WHEN 'serializable' THEN 1 ELSE 0 END AS BIGINT) \
                     AS xid",
                )
                .get_result::<Recorded>(&mut connection)
                .await
                .unwrap();
                assert_eq!(
                    level.xid,
                    Some(i64::from(serializable)),
                    "the isolation level"
                );
                let uuid = uuid::Uuid::now_v7().to_string();
                let (inserted, committed) = Postgres::insert_operation_and_commit(
                    &mut connection,
                    deposit_row(&uuid),
                    begun_as,
                )
                .await
                .unwrap();
                committed.unwrap();
                assert_eq!(
                    inserted.xid, begun_as,
                    "the row's transaction is the one begun"
                );
                let row = diesel::sql_query("SELECT idx, xid FROM ofx_operations WHERE uuid = $1")
                    .bind::<diesel::sql_types::Text, _>(&uuid)
                    .get_result::<Recorded>(&mut connection)
                    .await
                    .unwrap();
                assert_eq!((row.idx, row.xid), (inserted.idx, begun_as), "committed");
                assert_eq!(
                    Postgres::transaction_status(&mut connection, begun_as.unwrap())
                        .await
                        .unwrap(),
                    Some(TransactionStatus::Committed)
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_insert_returns_the_rows_index_and_records_its_transaction_id() {
        let url = postgres_database().await;
        let mut connection = AsyncPgConnection::establish(&url).await.unwrap();
        connection.batch_execute("BEGIN").await.unwrap();
        let uuid = uuid::Uuid::now_v7().to_string();
        let inserted = Postgres::insert_operation(&mut connection, deposit_row(&uuid))
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
        assert_eq!(
            Postgres::transaction_status(&mut connection, row.xid.unwrap())
                .await
                .unwrap(),
            Some(TransactionStatus::Committed),
            "pg_xact_status knows the transaction by this id"
        );
    }

    /// A database, a host whose hub reaches it through a proxy, and a direct hub to check what
    /// the server holds.
    struct Setup {
        proxy: Proxy,
        host: Host<Postgres>,
        direct: DbHub<Postgres>,
    }

    async fn through_proxy(settings: DbSettings) -> Setup {
        let url = postgres_database().await;
        let proxy = Proxy::start(&url).await;
        let host = Host::<Postgres>::open(proxy.url(), settings, false).await;
        let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
        Setup {
            proxy,
            host,
            direct,
        }
    }

    /// The server holds account `id` with `balance`, and `operations` operation rows, each with
    /// its transaction id.
    async fn assert_committed(direct: &DbHub<Postgres>, id: i64, balance: i64, operations: i64) {
        assert_eq!(
            direct
                .count(&format!("accounts WHERE id = {id} AND balance = {balance}"))
                .await,
            1,
            "the business row of account {id} is committed"
        );
        assert_eq!(
            direct.count("ofx_operations").await,
            operations,
            "each committed operation is in the log exactly once"
        );
        assert_eq!(
            direct.count("ofx_operations WHERE xid IS NOT NULL").await,
            operations,
            "each row records its transaction id"
        );
    }

    /// Makes every `COMMIT` that touched `accounts` take `delay` inside the server, before the
    /// commit is recorded: the server is still committing when the client hears of its
    /// connection's end.
    async fn slow_commits(direct: &DbHub<Postgres>, delay: Duration) {
        direct
            .exec(&format!(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$; \
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON accounts \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
                delay.as_secs_f64()
            ))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_cut_before_it_reaches_the_server_is_reported_not_committed() {
        // The raw outcome: a connection lost before COMMIT is transient, and the default policy
        // would run the command again (see the end of this test).
        let url = postgres_database().await;
        let proxy = Proxy::start(&url).await;
        let host = Host::<Postgres>::open_reprocessing(
            proxy.url(),
            fast(),
            false,
            ReprocessPolicy::disabled(),
        )
        .await;
        let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
        let setup = Setup {
            proxy,
            host,
            direct,
        };
        for round in 1..=5 {
            setup.proxy.arm(Fault::CutBeforeCommit);
            let error = setup
                .host
                .deposit(round, 10, false)
                .await
                .expect_err("COMMIT never reached the server");
            assert_eq!(
                setup.proxy.intercepted(),
                round as u64,
                "the proxy saw diesel's COMMIT"
            );
            assert!(
                matches!(
                    error.scope_error::<Error>(),
                    Some(Error::CommitFailed { .. })
                ),
                "round {round}: the server aborted the transaction: {error:?}"
            );
            assert_eq!(setup.direct.count("accounts").await, 0, "round {round}");
            assert_eq!(
                setup.direct.count("ofx_operations").await,
                0,
                "round {round}"
            );
        }
        assert_eq!(setup.host.deposit(6, 1, false).await.unwrap(), 1);
        assert_committed(&setup.direct, 6, 1, 1).await;

        // With reprocessing on (the default), the same cut is retried and the deposit happens
        // once.
        let reprocessing = Host::<Postgres>::open(setup.proxy.url(), fast(), false).await;
        setup.proxy.arm(Fault::CutBeforeCommit);
        assert_eq!(reprocessing.deposit(7, 10, false).await.unwrap(), 10);
        assert_eq!(
            setup.proxy.intercepted(),
            6,
            "the sixth armed COMMIT was cut"
        );
        assert_committed(&setup.direct, 7, 10, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_whose_reply_is_cut_off_is_verified_committed() {
        let setup = through_proxy(fast()).await;
        for round in 1..=8 {
            if round == 5 {
                // From now on the server is still committing when the client learns that its
                // connection is gone: verification must wait for it.
                slow_commits(&setup.direct, Duration::from_millis(200)).await;
            }
            setup.proxy.arm(Fault::ForwardThenCutClient);
            let balance = setup
                .host
                .deposit(round, 10, false)
                .await
                .unwrap_or_else(|error| panic!("round {round}: the commit happened: {error:?}"));
            assert_eq!(balance, 10);
            assert_eq!(setup.proxy.intercepted(), round as u64);
            assert_committed(&setup.direct, round, 10, round).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_reaches_the_server_after_the_client_was_cut_is_verified_committed() {
        let setup = through_proxy(fast()).await;
        let delay = Duration::from_millis(300);
        for round in 1..=4 {
            setup.proxy.arm(Fault::CutClientThenForwardAfter(delay));
            let started = Instant::now();
            let balance = setup
                .host
                .deposit(round, 10, false)
                .await
                .unwrap_or_else(|error| panic!("round {round}: the commit happened: {error:?}"));
            assert!(
                started.elapsed() >= delay,
                "verification waited while the transaction was in progress"
            );
            assert_eq!(balance, 10);
            assert_eq!(setup.proxy.intercepted(), round as u64);
            assert_committed(&setup.direct, round, 10, round).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_still_in_progress_after_the_verification_period_is_in_doubt() {
        let mut settings = fast();
        settings.commit_verification = Duration::from_secs(1);
        let setup = through_proxy(settings).await;
        for round in 1..=3 {
            setup.proxy.arm(Fault::CutClientAndHold);
            let started = Instant::now();
            let error = setup
                .host
                .deposit(round, 10, false)
                .await
                .expect_err("the commit is held past the verification period");
            assert!(
                started.elapsed() >= Duration::from_secs(1),
                "verification asked for the whole period"
            );
            assert!(
                matches!(
                    error.scope_error::<Error>(),
                    Some(Error::CommitInDoubt {
                        reason: Doubt::InProgress(_),
                        ..
                    })
                ),
                "round {round}: {error:?}"
            );
            assert_eq!(
                setup
                    .direct
                    .count(&format!("accounts WHERE id = {round}"))
                    .await,
                0
            );
            // The held COMMIT may still happen, and then does: "not committed" would have been
            // a lie.
            tokio::time::timeout(
                Duration::from_secs(10),
                setup.proxy.release_and_await_reply(),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: the released COMMIT was answered within 10 s")
            });
            assert_committed(&setup.direct, round, 10, round).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_cannot_be_verified_is_in_doubt() {
        let mut settings = fast();
        settings.commit_verification = Duration::from_millis(500);
        let setup = through_proxy(settings).await;
        for round in 1..=3 {
            setup.proxy.arm(Fault::CutAllAndRefuse);
            let error = setup
                .host
                .deposit(round, 10, false)
                .await
                .expect_err("the database cannot be asked");
            assert!(
                matches!(
                    error.scope_error::<Error>(),
                    Some(Error::CommitInDoubt {
                        reason: Doubt::Unreachable(_) | Doubt::NoAnswer(_),
                        ..
                    })
                ),
                "round {round}: {error:?}"
            );
            setup.proxy.accept_again();
            assert_eq!(setup.direct.count("accounts").await, 0, "round {round}");
            assert_eq!(
                setup.direct.count("ofx_operations").await,
                0,
                "round {round}"
            );
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::Arc;

    use diesel_async::SimpleAsyncConnection;
    use ofx_diesel::{Backend, DbHub, Error, NewOperationRow, Sqlite, SqliteAsyncConnection};

    use crate::common::{Host, RawSql, fast, sqlite_file};

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

    /// Runs `sql` on the scope's connection just before the scope's `COMMIT`.
    fn before_commit(host: &Host<Sqlite>, sql: &'static str) {
        host.accounts.db.set_commit_fault(Some(Arc::new(
            move |connection: &mut SqliteAsyncConnection| {
                Box::pin(async move {
                    connection.batch_execute(sql).await.unwrap();
                })
            },
        )));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_is_settled_by_looking_the_operation_up() {
        let path = sqlite_file().await;
        let host = Host::<Sqlite>::open(&path, fast(), false).await;
        let db = host.accounts.db.clone();

        // The transaction is gone before COMMIT: our COMMIT fails, nothing committed.
        before_commit(&host, "ROLLBACK");
        let error = host.deposit(1, 10, false).await.unwrap_err();
        assert!(
            matches!(
                error.scope_error::<Error>(),
                Some(Error::CommitFailed { .. })
            ),
            "{error:?}"
        );
        assert_eq!(db.count("accounts").await, 0);
        assert_eq!(db.count("ofx_operations").await, 0);

        // The transaction committed before our COMMIT: it fails, yet the operation happened.
        before_commit(&host, "COMMIT");
        assert_eq!(host.deposit(2, 10, false).await.unwrap(), 10);
        assert_eq!(db.count("accounts WHERE id = 2 AND balance = 10").await, 1);
        assert_eq!(db.count("ofx_operations").await, 1);

        db.set_commit_fault(None);
        assert_eq!(host.deposit(3, 10, false).await.unwrap(), 10);
        assert_eq!(db.count("ofx_operations").await, 2);
    }
}
