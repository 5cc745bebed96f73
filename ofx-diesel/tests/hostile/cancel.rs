//! Cancellation safety: a caller dropping a `call` future mid-way leaves no partial write and
//! no orphan event; the pool and the database stay usable.

use std::time::Duration;

use crate::svc::{HHost, HQ, HWrite, fast};

fn write(tag: &str, events: u32, hold_ms: u64) -> HWrite {
    HWrite {
        tag: tag.to_owned(),
        events,
        payload: "ev".to_owned(),
        hold_ms,
        ..HWrite::default()
    }
}

/// Checks, for a tag, that its write and its events are all or nothing (and the events ran).
async fn all_or_nothing<B: HQ>(host: &HHost<B>, tag: &str, events: usize) -> bool {
    let payloads = host.payloads(tag).await;
    let writes = payloads.iter().filter(|p| *p == "w").count();
    let stored = host.events_of(tag).await.len();
    assert!(writes <= 1, "{tag}: the write committed {writes} times");
    if writes == 1 {
        assert_eq!(
            stored, events,
            "{tag}: the operation committed with {stored} of its {events} events"
        );
    } else {
        assert_eq!(
            stored, 0,
            "{tag}: orphan events: {stored} events without their operation"
        );
    }
    writes == 1
}

/// Timeouts from 0 to ~6 ms around a producing call: every cut point, before, during and after
/// the commit.
async fn cancelled_call_leaves_no_partial_write_and_no_orphan_event<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.pool_size = 2;
    settings.events.concurrency = 1;
    let host = HHost::<B>::open(url, settings).await;
    let commander = host.hub().commander();
    let mut tags = Vec::new();
    for i in 0..200u64 {
        let tag = format!("cancel-{i}");
        let cut = Duration::from_micros(i * 100);
        let _ = tokio::time::timeout(cut, commander.call(write(&tag, 2, 0))).await;
        tags.push(tag);
    }
    // The pool and database are usable afterwards.
    for i in 0..5 {
        let tag = format!("after-{i}");
        tokio::time::timeout(Duration::from_secs(10), commander.call(write(&tag, 1, 0)))
            .await
            .expect("a call after cancelled calls hung")
            .expect("a call after cancelled calls failed");
    }
    // A future dropped after it sent `COMMIT` leaves the server (or SQLite's blocking task) to
    // finish that commit: no signal tells when. This grace time is for that only; the
    // all-or-nothing check holds whenever it lands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut committed = 0;
    for tag in &tags {
        if all_or_nothing(&host, tag, 2).await {
            committed += 1;
        }
    }
    assert!(
        host.drained(Duration::from_secs(30)).await,
        "events were still pending"
    );
    for tag in &tags {
        let payloads = host.payloads(tag).await;
        let writes = payloads.iter().filter(|p| *p == "w").count();
        let runs = payloads.iter().filter(|p| *p == "ev").count();
        assert_eq!(
            runs,
            writes * 2,
            "{tag}: events ran {runs} times for {writes} writes"
        );
    }
    eprintln!("cancelled calls: {committed} of {} committed", tags.len());
}

/// A call cancelled while its handler holds the operation's transaction (written, events
/// added, then waiting forever): its transaction is rolled back and the connection is not
/// left in it; writers and the processor go on.
async fn cancelled_call_holding_its_transaction_releases_it<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.pool_size = 2;
    settings.events.concurrency = 1;
    let host = HHost::<B>::open(url, settings).await;
    let commander = host.hub().commander();
    for i in 0..4 {
        let tag = format!("held-{i}");
        let cut = Duration::from_millis(100);
        let result = tokio::time::timeout(cut, commander.call(write(&tag, 1, u64::MAX))).await;
        assert!(result.is_err(), "the held call returned");
    }
    for i in 0..4 {
        let tag = format!("next-{i}");
        let result =
            tokio::time::timeout(Duration::from_secs(10), commander.call(write(&tag, 1, 0))).await;
        match result {
            Err(_) => panic!("a call after cancelled held calls hung (connection leaked?)"),
            Ok(Err(error)) => panic!("a call after cancelled held calls failed: {error:?}"),
            Ok(Ok(_)) => {}
        }
    }
    // Cancelled before their commit: their transactions were rolled back when their scopes were
    // dropped; nothing of them can commit later.
    for i in 0..4 {
        let tag = format!("held-{i}");
        assert!(
            !all_or_nothing(&host, &tag, 1).await,
            "{tag}: a cancelled call committed"
        );
    }
    assert!(
        host.drained(Duration::from_secs(20)).await,
        "events were still pending"
    );
    for i in 0..4 {
        let tag = format!("next-{i}");
        assert_eq!(host.payloads(&tag).await, ["ev", "w"]);
    }
}

backend_tests! {
    cancelled_call_leaves_no_partial_write_and_no_orphan_event =>
        sqlite_cancelled_call_leaves_no_partial_write_and_no_orphan_event,
        postgres_cancelled_call_leaves_no_partial_write_and_no_orphan_event;
    cancelled_call_holding_its_transaction_releases_it =>
        sqlite_cancelled_call_holding_its_transaction_releases_it,
        postgres_cancelled_call_holding_its_transaction_releases_it;
}
