//! `PgWatcher` against the PostgreSQL server at 127.0.0.1:5432 (or `OFX_TEST_POSTGRES`).
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;

use common::{host, log_name};
use ofx_watchers::{Error, PgWatcher};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// The database URL of the test server.
fn url() -> String {
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    format!("{server}/postgres")
}

/// A client on the test server, for what tests do behind the watchers' backs.
async fn admin() -> tokio_postgres::Client {
    let url = url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {url} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or set OFX_TEST_POSTGRES to another server (postgres://user@host:port)"
            )
        });
    tokio::spawn(connection);
    client
}

/// Two hosts listening on one log.
async fn pair(stop: &CancellationToken) -> (Arc<PgWatcher>, Arc<PgWatcher>) {
    drop(admin().await); // fails with how to start the server if it is down
    let log = log_name();
    let a = PgWatcher::start(&url(), &log, host("a"), stop.clone())
        .await
        .expect("A starts");
    let b = PgWatcher::start(&url(), &log, host("b"), stop.clone())
        .await
        .expect("B starts");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_other_host() {
    let (a, b) = pair(&CancellationToken::new()).await;
    assert_eq!(a.channel(), b.channel());
    common::notify_wakes_the_other_host(&*a, &*b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_notify_is_ignored() {
    let (a, b) = pair(&CancellationToken::new()).await;
    common::own_notify_is_ignored(&*a, &*b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_operation_reaches_the_other_host_as_a_hint() {
    let (a, b) = pair(&CancellationToken::new()).await;
    let a_host = a.host_id().clone();
    common::a_committed_operation_reaches_the_other_host_as_a_hint(&*a, &*b, &a_host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_too_large_for_a_message_goes_without_its_hint() {
    let (a, b) = pair(&CancellationToken::new()).await;
    let a_host = a.host_id().clone();
    common::an_operation_too_large_for_a_message_goes_without_its_hint(&*a, &*b, &a_host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_is_replayed_before_the_wake_up() {
    let (a, b) = pair(&CancellationToken::new()).await;
    let a_host = a.host_id().clone();
    common::a_hint_is_replayed_before_the_wake_up(&*a, &*b, &a_host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_coalesced() {
    let (a, b) = pair(&CancellationToken::new()).await;
    common::burst_is_coalesced(&*a, &*b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_pg_terminate_backend() {
    let (a, b) = pair(&CancellationToken::new()).await;
    let admin = admin().await;
    let terminate = async {
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                &[&b.application_name()],
            )
            .await
            .expect("pg_terminate_backend runs");
        assert_eq!(rows.len(), 1, "B's LISTEN connection not found");
        assert!(
            rows[0].get::<_, bool>(0),
            "B's LISTEN connection not terminated"
        );
    };
    common::recovers_after_losing_the_connection(&*a, &*b, terminate).await;
    assert_eq!(
        a.stats().snapshot().reconnects,
        0,
        "A lost its connection too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_end_when_stopped() {
    common::tasks_end_when_stopped(|stop| async move { pair(&stop).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_an_error() {
    let error = PgWatcher::start(
        "postgres://postgres@127.0.0.1:1/postgres",
        &log_name(),
        host("a"),
        CancellationToken::new(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(
        matches!(
            error,
            Error::Postgres {
                action: "connect",
                ..
            }
        ),
        "{error}"
    );
}
