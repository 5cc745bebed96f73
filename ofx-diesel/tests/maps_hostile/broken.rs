//! Attacks that break a documented promise: NOT declared in `main.rs` (so that the suite stays
//! green). To run them, add `mod broken;` to `main.rs` and run
//! `cargo test -p ofx-diesel --all-features --test maps_hostile broken::`.
//!
//! Each test states the promise, the reproduction and what was observed.

use crate::kit::{Host, Note, Op, Sql, assert_redo_order, insert_change_row, values};

backend_tests! {
    undecodable_rows_are_not_announced_as_transactions =>
        sqlite_undecodable_rows_are_not_announced_as_transactions,
        postgres_undecodable_rows_are_not_announced_as_transactions;
}

postgres_tests! {
    a_transaction_that_only_read_with_get_in_does_not_queue_map_writers =>
        postgres_a_transaction_that_only_read_with_get_in_does_not_queue_map_writers;
    shutting_a_hub_down_stops_a_follower_stuck_on_a_stalled_database =>
        postgres_shutting_a_hub_down_stops_a_follower_stuck_on_a_stalled_database;
}

/// Promise (module docs, "Order"; `TransactionCommitted`; the brief's "undecodable rows are
/// skipped"): `transaction_committed` comes *after the changes of its transaction*, and
/// `TransactionCommitted::changes` is "how many changes it made"; a change that does not decode
/// is skipped and counted (`MapStatus::skipped`).
///
/// Reproduction: one committed transaction; then rows inserted by SQL into `ofx_stream_events`,
/// stream `ofx.maps`, at the head + 1, + 2, …: a body that is not JSON, a change whose key is not
/// a string, an unknown action, and `{}` with the operation id `by-hand` (not a uuid); then a
/// real transaction.
///
/// Observed (SQLite and PostgreSQL): every host counts the rows in `skipped` and delivers no
/// change for them, but announces each row as a transaction of its own:
/// `transaction_committed(TransactionCommitted { sequence: <the row's position>, changes: 1,
/// operation: <the row's operation_uuid> })` with no change before it; for the row whose
/// operation id is not a uuid, `operation` is the nil uuid `00000000-…`. So a skipped row is
/// not skipped by the manager's observers: they see phantom transactions (one per garbage row)
/// claiming a change nobody was told about, and an operation id that never existed.
async fn undecodable_rows_are_not_announced_as_transactions<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    a.sync().await;
    let mut hand = Vec::new();
    for (body, operation) in [
        (
            "not json at all".to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            r#"{"map":"values","action":"add","key":5,"new":1}"#.to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            r#"{"map":"values","action":"explode","key":"z","new":1}"#.to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        ("{}".to_owned(), "by-hand".to_owned()),
    ] {
        hand.push(insert_change_row(&a.db, &body, &operation).await);
    }
    b.run(vec![values(Op::Set("b".into(), 2))]).await.unwrap();
    for (n, host) in [&a, &b].into_iter().enumerate() {
        host.sync().await;
        assert!(host.maps.status().skipped >= 4, "host {n}: counted");
        let notes = host.recorder.notes();
        assert!(
            notes.iter().all(|note| !matches!(
                note,
                Note::Committed(committed) if committed.operation.is_nil()
            )),
            "host {n}: a transaction with the nil operation id: {notes:#?}"
        );
        let phantoms: Vec<_> = host
            .recorder
            .committed()
            .into_iter()
            .filter(|committed| hand.contains(&committed.sequence))
            .collect();
        assert!(
            phantoms.is_empty(),
            "host {n}: undecodable rows announced as transactions: {phantoms:#?}"
        );
        // Every transaction announced is preceded by its changes.
        assert_redo_order(&notes, true);
    }
}

/// Statement (module docs, "Order"): "Map writers queue on one lock per database (PostgreSQL: a
/// transaction-scoped advisory lock …), taken at a transaction's first map **write** and held
/// until it commits"; "a transaction that writes maps should be short".
///
/// Reproduction (PostgreSQL): command 1 on host A calls only `get_in` (a read) and then waits
/// (a gate, standing for slow work in the handler); command 2 on host B does one `set`.
///
/// Observed: command 2 waits for command 1's transaction: `pg_locks` shows it waiting on an
/// `advisory` lock held by command 1, which has written nothing. `get_in` takes the maps' lock
/// (which makes read-then-write safe, but is not what the docs say): a transaction that only
/// reads a map through `get_in` holds up every map writer of the database for as long as it
/// runs. Either the docs should say that `get_in` queues like a write (and "a transaction that
/// reads or writes maps should be short"), or `get_in` should not take the lock.
async fn a_transaction_that_only_read_with_get_in_does_not_queue_map_writers(url: &str) {
    use crate::kit::{fresh_gate, gate, run_on, within};
    use std::time::Duration;
    type B = ofx_diesel::Postgres;
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    let name = fresh_gate();
    let reader = {
        let hub = a.hub().clone();
        let name = name.clone();
        tokio::spawn(async move {
            run_on(
                &hub,
                vec![
                    values(Op::Expect("k".into(), None)),
                    values(Op::Pause(name)),
                ],
            )
            .await
        })
    };
    gate(&name).reached(1).await;
    let writer = b.run(vec![values(Op::Set("k".into(), 1))]);
    let written = tokio::time::timeout(Duration::from_secs(10), writer).await;
    let waits = crate::order::lock_waits(&a.db).await;
    gate(&name).open();
    within(Duration::from_secs(30), "the reader", reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        written.is_ok(),
        "a writer waited 10 s behind a transaction that only read with get_in (waiting on: \
         {waits:?})"
    );
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
    assert!(b.maps.sync_within(Duration::from_millis(500)).await.is_err());
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
