//! Settings at their edges: refused when opened, or working; never a processor that silently
//! runs nothing, never a panic.

use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_diesel::{DbHub, EventRetry};

use crate::svc::{HHost, HQ, HWrite, fast};

/// Opens a host with `settings` (or reports the refusal); if it opens, an event must run.
async fn refused_or_runs<B: HQ>(url: &str, settings: ofx_diesel::DbSettings, what: &str) {
    // Refused when opened (or attached) is fine.
    let opened = DbHub::<B>::open(url, settings.clone()).await;
    if let Err(error) = opened {
        eprintln!("{what}: refused at open: {error}");
        return;
    }
    let host = HHost::<B>::open(url, settings).await;
    let tag = format!("cfg-{what}");
    host.hub()
        .commander()
        .call(HWrite {
            tag: tag.clone(),
            events: 2,
            payload: "ev".to_owned(),
            ..HWrite::default()
        })
        .await
        .unwrap();
    let payloads = host
        .wait_payloads(&tag, |p| p.len() >= 3, Duration::from_secs(8))
        .await;
    let processor = host.processor();
    if payloads != ["ev", "ev", "w"] {
        eprintln!(
            "{what}: events {:#?}, fenced {}, retried {}, dead {}",
            host.events_of(&tag).await,
            processor.stats().fenced(),
            processor.stats().retried(),
            processor.stats().dead()
        );
    }
    assert_eq!(
        payloads,
        ["ev", "ev", "w"],
        "{what}: accepted, but the events did not run (processor {:?}, claimed {}, running {})",
        processor.health().state(),
        processor.stats().claimed(),
        processor.running()
    );
    assert_eq!(processor.health().state(), TaskState::Running, "{what}");
}

async fn concurrency_zero_is_refused_or_runs_events<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.concurrency = 0;
    refused_or_runs::<B>(url, settings, "concurrency-0").await;
}

async fn a_zero_lease_is_refused_or_runs_events<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.lease = Duration::ZERO;
    refused_or_runs::<B>(url, settings, "lease-0").await;
}

async fn zero_max_attempts_is_refused_or_runs_events<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(0, Duration::from_millis(10), Duration::from_millis(10));
    refused_or_runs::<B>(url, settings, "attempts-0").await;
}

async fn a_zero_poll_period_is_refused_or_runs_events<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.poll_period = Duration::ZERO;
    refused_or_runs::<B>(url, settings, "poll-0").await;
}

#[test]
fn retry_delays_never_overflow() {
    let retry = EventRetry::default();
    for attempt in [0, 1, 10, 63, 64, 65, 1_000, u32::MAX] {
        let delay = std::panic::catch_unwind(|| retry.delay(attempt));
        assert!(
            matches!(delay, Ok(delay) if delay <= Duration::from_secs(375)),
            "attempt {attempt}: {delay:?}"
        );
    }
    let huge = EventRetry::new(10, Duration::MAX, Duration::MAX);
    let delay = std::panic::catch_unwind(|| huge.delay(3));
    assert!(
        delay.is_ok(),
        "EventRetry::delay panicked with a Duration::MAX initial delay"
    );
}

backend_tests! {
    concurrency_zero_is_refused_or_runs_events =>
        sqlite_concurrency_zero_is_refused_or_runs_events,
        postgres_concurrency_zero_is_refused_or_runs_events;
    a_zero_lease_is_refused_or_runs_events =>
        sqlite_a_zero_lease_is_refused_or_runs_events,
        postgres_a_zero_lease_is_refused_or_runs_events;
    zero_max_attempts_is_refused_or_runs_events =>
        sqlite_zero_max_attempts_is_refused_or_runs_events,
        postgres_zero_max_attempts_is_refused_or_runs_events;
    a_zero_poll_period_is_refused_or_runs_events =>
        sqlite_a_zero_poll_period_is_refused_or_runs_events,
        postgres_a_zero_poll_period_is_refused_or_runs_events;
}
