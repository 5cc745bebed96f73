//! `RedisWatcher` against the Redis server at 127.0.0.1:6379 (or `OFX_TEST_REDIS`).
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;

use common::{host, log_name};
use ofx_watchers::{Error, RedisWatcher};
use tokio_util::sync::CancellationToken;

/// The URL of the test server.
fn url() -> String {
    std::env::var("OFX_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A connection to the test server, for what tests do behind the watchers' backs.
async fn admin() -> redis::aio::MultiplexedConnection {
    let url = url();
    let connect = async {
        redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await
    };
    connect.await.unwrap_or_else(|error| {
        panic!(
            "cannot reach Redis at {url} ({error}). Start it with \
             `redis-server --daemonize yes`, or set OFX_TEST_REDIS to another server \
             (redis://host:port)"
        )
    })
}

/// Two hosts subscribed to one log.
async fn pair(stop: &CancellationToken) -> (Arc<RedisWatcher>, Arc<RedisWatcher>) {
    drop(admin().await); // fails with how to start the server if it is down
    let log = log_name();
    let a = RedisWatcher::start(&url(), &log, host("a"), stop.clone())
        .await
        .expect("A starts");
    let b = RedisWatcher::start(&url(), &log, host("b"), stop.clone())
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
async fn recovers_after_client_kill() {
    let (a, b) = pair(&CancellationToken::new()).await;
    let mut admin = admin().await;
    let kill = async {
        // Only B's subscriber: other tests' subscribers run on the same server.
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .expect("CLIENT LIST runs");
        let name = format!("name={}", b.client_name());
        let id = clients
            .lines()
            .find(|line| line.split(' ').any(|field| field == name))
            .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
            .unwrap_or_else(|| panic!("B's subscriber not in CLIENT LIST:\n{clients}"))
            .to_owned();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .arg("ID")
            .arg(&id)
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL runs");
        assert_eq!(killed, 1, "B's subscriber not killed");
    };
    common::recovers_after_losing_the_connection(&*a, &*b, kill).await;
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
    let error = RedisWatcher::start(
        "redis://127.0.0.1:1",
        &log_name(),
        host("a"),
        CancellationToken::new(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(
        matches!(
            error,
            Error::Redis {
                action: "connect",
                ..
            }
        ),
        "{error}"
    );
}
