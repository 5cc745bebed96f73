//! Readiness and shutdown: `NotReady` for every read (and append) before the initial catch-up,
//! `/status` 503 then 200; a hub dropped before readiness, in the middle of a catch-up or with
//! a transaction in flight stops its state service cleanly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ofx_core::Hub;
use ofx_core::background::TaskState;
use ofx_diesel::state::{StateService, StateSettings};
use ofx_diesel::{DbHub, Error};

use crate::common::{Deposit, Ledger, fast};
use crate::kit::{
    End, Gate, Mark, Rig, SideRuntime, Sql, deposit, exec, fresh_ledger, gated_hub, head,
    stream_rows, until, within,
};

backend_tests! {
    nothing_is_read_nor_appended_before_the_initial_catch_up =>
        sqlite_nothing_is_read_nor_appended_before_the_initial_catch_up,
        postgres_nothing_is_read_nor_appended_before_the_initial_catch_up;
    a_hub_dropped_before_readiness_stops_the_service_promptly =>
        sqlite_a_hub_dropped_before_readiness_stops_the_service_promptly,
        postgres_a_hub_dropped_before_readiness_stops_the_service_promptly;
    a_hub_dropped_in_the_middle_of_a_catch_up =>
        sqlite_a_hub_dropped_in_the_middle_of_a_catch_up,
        postgres_a_hub_dropped_in_the_middle_of_a_catch_up;
    a_hub_dropped_with_a_transaction_in_flight =>
        sqlite_a_hub_dropped_with_a_transaction_in_flight,
        postgres_a_hub_dropped_with_a_transaction_in_flight;
    a_state_service_follows_for_one_hub_after_its_database =>
        sqlite_a_state_service_follows_for_one_hub_after_its_database,
        postgres_a_state_service_follows_for_one_hub_after_its_database;
}

fn is_not_ready<T>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::NotReady { .. }))
}

/// The stream's table is away while a host starts: it is not ready, every read fails
/// `NotReady`, an append is refused, the status says why (and `/status` answers 503); once the
/// table is back, it becomes ready with the right state.
async fn nothing_is_read_nor_appended_before_the_initial_catch_up<B: Sql>(url: &str) {
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    for _ in 0..3 {
        a.commander()
            .call(Deposit {
                account: "x".into(),
                amount: 1,
            })
            .await
            .unwrap();
    }
    exec(
        &a.db,
        "ALTER TABLE ofx_stream_events RENAME TO ofx_stream_events_away",
    )
    .await;
    let mut settings = StateSettings::default();
    settings.retry_max = Duration::from_millis(200);
    let c = Rig::<B>::open(url, settings).await;
    until(
        Duration::from_secs(10),
        "the initial load's error in the status",
        || c.ledger().status().last_error.is_some(),
    )
    .await;
    let ledger = c.ledger();
    assert!(!ledger.is_ready());
    assert!(is_not_ready(&ledger.local_state().await));
    assert!(is_not_ready(&ledger.current_state().await));
    assert!(is_not_ready(
        &ledger.current_state_within(Duration::from_millis(10)).await
    ));
    let refused = c
        .commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not ready"), "{refused}");
    assert!(c.bank.balance("x".into()).await.is_err());
    assert_eq!(
        ledger.save_snapshot().await.unwrap(),
        None,
        "a snapshot saved before readiness"
    );
    let status = ledger.status();
    assert!(!status.ready);
    assert_eq!(status.lag_seconds, None, "{status:?}");
    assert!(!status.caught_up, "{status:?}");
    assert_eq!(status.position, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), ledger.ready())
            .await
            .is_err(),
        "ready() returned while the initial load fails"
    );
    #[cfg(feature = "http")]
    {
        let (code, body) = get_status(ledger.clone()).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("\"ready\":false"), "{body}");
        assert!(body.contains("\"projection\":\"ledger\""), "{body}");
    }
    exec(
        &a.db,
        "ALTER TABLE ofx_stream_events_away RENAME TO ofx_stream_events",
    )
    .await;
    within(
        Duration::from_secs(10),
        "ready once the stream is back",
        ledger.ready(),
    )
    .await
    .unwrap();
    let view = ledger.local_state().await.unwrap();
    assert_eq!(view.position, 3);
    assert_eq!(*view.state, fresh_ledger(&a.db).await);
    until(Duration::from_secs(5), "last_error cleared", || {
        ledger.status().last_error.is_none()
    })
    .await;
    #[cfg(feature = "http")]
    {
        let (code, body) = get_status(ledger.clone()).await;
        assert_eq!(code, 200, "{body}");
    }
    let position = c
        .commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, 4);
}

/// `GET /status` of a router serving `service`, over a real socket.
#[cfg(feature = "http")]
async fn get_status(service: impl ofx_diesel::state::StatusSource) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service: Arc<dyn ofx_diesel::state::StatusSource> = Arc::new(service);
    let router = ofx_diesel::state::status_router([service]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(
        Duration::from_secs(5),
        "the status route",
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap();
    server.abort();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The initial load fails and the follower backs off for 20 s; the hub is dropped: `ready()`
/// must say `StateStopped` and the task must stop, promptly — not after the backoff.
async fn a_hub_dropped_before_readiness_stops_the_service_promptly<B: Sql>(url: &str) {
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    exec(
        &db,
        "ALTER TABLE ofx_stream_events RENAME TO ofx_stream_events_away",
    )
    .await;
    let mut settings = StateSettings::default();
    settings.retry_min = Duration::from_secs(20);
    settings.retry_max = Duration::from_secs(20);
    let ledger = StateService::with_settings(&db, Ledger, settings);
    let hub = Hub::builder()
        .with(db.clone())
        .with(ledger.clone())
        .start()
        .await
        .unwrap();
    until(Duration::from_secs(10), "the initial load failed", || {
        ledger.status().last_error.is_some()
    })
    .await;
    let waiting = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.ready().await })
    };
    assert_eq!(ledger.health().state(), TaskState::Running);
    let dropped = Instant::now();
    drop(hub);
    let result = within(
        Duration::from_secs(3),
        "ready() after the hub was dropped (the follower sleeps its 20 s backoff?)",
        waiting,
    )
    .await
    .unwrap();
    assert!(
        matches!(result, Err(Error::StateStopped { .. })),
        "ready() after the hub was dropped: {result:?}"
    );
    let ended = within(
        Duration::from_secs(3),
        "the follower task ending",
        ledger.health().ended(),
    )
    .await;
    assert_eq!(ended, TaskState::Stopped);
    assert!(dropped.elapsed() < Duration::from_secs(3));
    let after = within(
        Duration::from_secs(3),
        "current_state() on a stopped service",
        ledger.current_state(),
    )
    .await;
    assert!(
        after.is_err(),
        "current_state() of a stopped, never ready service"
    );
    assert!(
        within(Duration::from_secs(3), "ready() again", ledger.ready())
            .await
            .is_err()
    );
}

/// A follower held inside `apply` during its initial catch-up; the hub is dropped, then `apply`
/// goes on: `ready()` returns (no hang) and the task stops (not crashed).
async fn a_hub_dropped_in_the_middle_of_a_catch_up<B: Sql>(url: &str) {
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    a.commander()
        .call(Mark {
            mark: "catch-up".into(),
            ledger: vec![deposit("x", 1), deposit("gate", 1), deposit("x", 1)],
            notes: vec![],
            end: End::Succeed,
        })
        .await
        .unwrap();
    let gate = Gate::new();
    let side = SideRuntime::new();
    let (hub, gated) = gated_hub::<B>(&side, url, &gate).await;
    until(
        Duration::from_secs(10),
        "the catch-up is inside apply",
        || gate.arrivals() >= 1,
    )
    .await;
    assert!(!gated.is_ready());
    assert!(is_not_ready(&gated.local_state().await));
    let status = gated.status();
    assert!(!status.ready);
    let waiting = {
        let gated = gated.clone();
        tokio::spawn(async move { gated.ready().await })
    };
    drop(hub);
    gate.open();
    let result = within(
        Duration::from_secs(5),
        "ready() after the hub was dropped mid catch-up",
        waiting,
    )
    .await
    .unwrap();
    assert!(
        matches!(result, Ok(()) | Err(Error::StateStopped { .. })),
        "{result:?}"
    );
    let ended = within(
        Duration::from_secs(5),
        "the follower task ending",
        gated.health().ended(),
    )
    .await;
    assert_eq!(ended, TaskState::Stopped);
    drop(side);
}

/// A command hangs after its appends; every handle of its host is dropped but the call; the
/// call is released: its operation commits whole (or not at all), the stream is dense, and once
/// the call is gone the hub and its state service stop.
async fn a_hub_dropped_with_a_transaction_in_flight<B: Sql>(url: &str) {
    let a = Rig::<B>::open(url, StateSettings::default()).await;
    let x = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    x.ready().await;
    let hang = Arc::clone(&x.attack.hang);
    let hung = Arc::clone(&x.attack.hung);
    let ledger = x.ledger().clone();
    let commander = x.commander();
    let call = tokio::spawn(async move {
        commander
            .call(Mark {
                mark: "in-flight".into(),
                ledger: vec![deposit("f", 1), deposit("f", 2)],
                notes: vec!["in flight".into()],
                end: End::Hang,
            })
            .await
    });
    until(
        Duration::from_secs(10),
        "the command reached its wait",
        || hung.load(Ordering::SeqCst) == 1,
    )
    .await;
    drop(x);
    hang.notify_one();
    let result = within(Duration::from_secs(10), "the in-flight call", call)
        .await
        .unwrap();
    let committed = a.marks("in-flight").await == 1;
    assert_eq!(committed, result.is_ok(), "{result:?}");
    let rows = stream_rows(&a.db, "ledger").await;
    assert_eq!(rows.len(), if committed { 2 } else { 0 }, "{rows:?}");
    assert_eq!(head(&a.db, "notes").await, u64::from(committed));
    let ended = within(
        Duration::from_secs(5),
        "the state service stopping with its hub",
        ledger.health().ended(),
    )
    .await;
    assert_eq!(ended, TaskState::Stopped);
    let position = a
        .commander()
        .call(Deposit {
            account: "f".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(position, if committed { 3 } else { 1 });
}

/// "Added with `HubBuilder::with` after its `DbHub`, once per hub": a second hub, or a hub
/// without the database first, is refused (`StateAttach`), not silently followed twice.
async fn a_state_service_follows_for_one_hub_after_its_database<B: Sql>(url: &str) {
    let db = DbHub::<B>::open(url, fast()).await.unwrap();
    let ledger = StateService::new(&db, Ledger);
    let first = Hub::builder()
        .with(db.clone())
        .with(ledger.clone())
        .start()
        .await
        .unwrap();
    within(Duration::from_secs(10), "ready", ledger.ready())
        .await
        .unwrap();
    let second = Hub::builder()
        .with(db.clone())
        .with(ledger.clone())
        .start()
        .await;
    assert!(second.is_err(), "a state service started on a second hub");
    let db2 = DbHub::<B>::open(url, fast()).await.unwrap();
    let early = StateService::new(&db2, Ledger);
    let before_db = Hub::builder().with(early).with(db2.clone()).start().await;
    assert!(
        before_db.is_err(),
        "a state service added before its database"
    );
    // The first hub's service is unharmed.
    assert!(ledger.current_state().await.is_ok());
    drop(first);
}
