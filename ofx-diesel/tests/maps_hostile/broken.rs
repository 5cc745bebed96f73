//! Attacks that break a documented promise: NOT declared in `main.rs` (so that the suite stays
//! green). To run them, add `mod broken;` to `main.rs` and run
//! `cargo test -p ofx-diesel --all-features --test maps_hostile broken::`.
//!
//! Each test states the promise, the reproduction and what was observed.


postgres_tests! {
    shutting_a_hub_down_stops_a_follower_stuck_on_a_stalled_database =>
        postgres_shutting_a_hub_down_stops_a_follower_stuck_on_a_stalled_database;
}

/// Promise (`Hub::shutdown_token`: "background tasks of this hub stop on it"; the brief:
/// "shutting a hub down stops its follower"; `MapSettings::refresh_timeout`: "a read of the
/// change log that takes longer is abandoned and retried").
///
/// Reproduction (PostgreSQL): host B reaches the database through the TCP proxy, with
/// `refresh_timeout` = 2 s and `retry_max` = 200 ms. The proxy stalls (holds every byte, keeps
/// the connections open); host A commits a change; B's `sync_within(500 ms)` fails (as it
/// should: `MapsUnavailable`); B's hub is dropped (every handle of the host).
///
/// Observed: B's follower stays `Running` (`MapManager::health()`): not stopped after 10 s,
/// nor after 40 s, nor 100 s with the default settings, although the refresh timeout is 2 s.
/// As soon as the proxy forwards bytes again (or closes the connections), it stops within
/// ~10 ms. Before the drop, `status().last_error` is "reading the stream took longer than 2s":
/// the refresh timeout does fire (and a read on a silent connection is retried on a new one,
/// see `failure::a_read_on_a_silent_connection_is_abandoned_and_retried`), but after it the
/// follower waits on something that neither a timeout nor the hub's shutdown interrupts
/// (presumably a new connection's handshake through the stalled path): a dropped hub leaks a
/// task (and its pool and connections) for as long as the network path stays silent.
async fn shutting_a_hub_down_stops_a_follower_stuck_on_a_stalled_database(url: &str) {
    use crate::proxy::{Mode, Proxy};
    use ofx_core::background::TaskState;
    use std::time::Duration;
    type B = ofx_diesel::Postgres;
    let proxy = Proxy::start(url).await;
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open_with(proxy.url(), crate::failure::quick_retries(), |_| {}).await;
    proxy.set(Mode::Stall);
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    // B's follower reads (and hangs on the stalled connection).
    assert!(
        b.maps
            .sync_within(Duration::from_millis(500))
            .await
            .is_err()
    );
    let health = b.maps.health();
    drop(b);
    let stalled = tokio::time::timeout(Duration::from_secs(10), health.ended()).await;
    proxy.set(Mode::Pass);
    assert_eq!(
        stalled.ok(),
        Some(TaskState::Stopped),
        "the follower did not stop within 10 s of its hub's drop while the database stalled"
    );
}
