//! Reprocessing and error classification: transient and permanent marks wrapped in user
//! error types, nested transient errors swallowed or propagated, events of retried runs.

use std::time::Duration;

use ofx_diesel::{EventRetry, EventState};

use crate::svc::{HHost, HOuter, HQ, HShaped, HWrite, Leaf, Mode, Opts, fast, runs, shaped_error};

const WAIT: Duration = Duration::from_secs(10);

/// `Hub::is_transient` of each error shape: transient anywhere in the chain is transient,
/// permanent anywhere wins.
#[test]
fn permanent_wins_and_transient_is_found_anywhere_in_the_chain() {
    let hub = ofx_core::Hub::builder().build().unwrap();
    let handler = |shape: u8| ofx_core::Error::handler(shaped_error(shape));
    let expected = [
        (0, false, false),
        (1, true, false),
        (2, false, true),
        (3, true, false),
        (4, false, true),
        (5, false, true),
        (6, false, true),
        (7, false, true),
        (8, false, true),
    ];
    let mut wrong = Vec::new();
    for (shape, transient, permanent) in expected {
        let error = handler(shape);
        let got = (hub.is_transient(&error), error.is_permanent());
        if got != (transient, permanent) {
            wrong.push(format!(
                "shape {shape} ({error}): (transient, permanent) = {got:?}, expected {:?}",
                (transient, permanent)
            ));
        }
    }
    // Marks directly as the error, not wrapped in a handler error.
    let direct = ofx_core::Error::transient(ofx_core::Error::permanent(Leaf));
    if hub.is_transient(&direct) || !direct.is_permanent() {
        wrong.push(format!(
            "transient(permanent): {}",
            hub.is_transient(&direct)
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// An outermost command run again for each transient shape, once for the others; whatever
/// its tries, its write and its event are stored once.
async fn reprocessing_follows_the_error_shape_and_commits_once<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let commander = host.hub().commander();
    // (shape, fail_runs, expected runs, expected success)
    let cases = [
        (1u8, 2u32, 3u32, true), // transient twice, then succeeds on the 3rd (last) try
        (3, 1, 2, true),         // transient in a non-transparent wrapper
        (2, 5, 1, false),        // permanent: not retried
        (5, 5, 1, false),        // transient(permanent): permanent wins
        (7, 5, 1, false),        // nested permanent under a wrapped transient
        (0, 5, 1, false),        // plain: not transient
        (1, 5, 3, false),        // transient every time: 3 tries in all (default policy)
    ];
    let mut wrong = Vec::new();
    for (index, (shape, fail_runs, expected_runs, ok)) in cases.into_iter().enumerate() {
        let tag = format!("shape-{index}");
        let result = commander
            .call(HShaped {
                tag: tag.clone(),
                shape,
                fail_runs,
            })
            .await;
        let ran = runs(&format!("shaped/{}/{tag}", host.db.url()));
        if ran != expected_runs || result.is_ok() != ok {
            wrong.push(format!(
                "shape {shape}: ran {ran} times (expected {expected_runs}), result {result:?}"
            ));
        }
        // `call` returned: what it committed is there now.
        let writes = host
            .payloads(&tag)
            .await
            .iter()
            .filter(|p| *p == "w")
            .count();
        let events = host.events_of(&tag).await.len();
        let expect = usize::from(ok);
        if (writes, events) != (expect, expect) {
            wrong.push(format!("shape {shape}: {writes} writes, {events} events"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A nested command's transient failure: swallowed by the outer, the outer commits once
/// (not reprocessed), without the nested command's write and event; propagated, the whole
/// outermost command runs again, and commits its events once.
async fn a_nested_transient_error_reprocesses_the_outermost_only_when_it_fails<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let commander = host.hub().commander();
    let tag = "swallowed";
    commander
        .call(HOuter {
            tag: tag.to_owned(),
            swallow: true,
            inner_transient_runs: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        runs(&format!("outer/{}/{tag}", host.db.url())),
        1,
        "the outer ran again"
    );
    let _ = host.wait_payloads(tag, |p| !p.is_empty(), WAIT).await;
    assert!(host.drained(WAIT).await);
    let payloads = host
        .wait_payloads(tag, |p| p.len() >= 2, Duration::from_millis(500))
        .await;
    assert_eq!(
        payloads,
        ["outer"],
        "only the outer event ran; no inner write"
    );

    let tag = "propagated";
    commander
        .call(HOuter {
            tag: tag.to_owned(),
            swallow: false,
            inner_transient_runs: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        runs(&format!("outer/{}/{tag}", host.db.url())),
        2,
        "the outer was run again"
    );
    assert!(host.drained(WAIT).await);
    let payloads = host.wait_payloads(tag, |p| p.len() >= 3, WAIT).await;
    // Drained: no event pending or running, so nothing writes any more.
    assert!(host.drained(WAIT).await);
    let payloads2 = host.payloads(tag).await;
    assert_eq!(payloads, payloads2);
    assert_eq!(
        payloads,
        ["inner", "inner", "outer"],
        "one inner write, the inner and the outer event once each"
    );
    assert_eq!(host.events_of(tag).await.len(), 2);
}

/// An event whose handler fails with `transient(permanent(..))` (or a permanent error in a
/// user error type's source chain) is dead at once: permanent wins.
async fn an_event_failing_with_a_wrapped_permanent_error_is_dead_at_once<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(5, Duration::from_millis(10), Duration::from_millis(20));
    let host = HHost::<B>::open(url, settings).await;
    let commander = host.hub().commander();
    let mut wrong = Vec::new();
    for shape in [2u8, 4, 5, 6, 7] {
        let tag = format!("evshape-{shape}");
        let uuid = commander
            .call(HWrite {
                tag: tag.clone(),
                events: 1,
                mode: Mode::Fail(shape),
                ..HWrite::default()
            })
            .await
            .unwrap()[0];
        let event = host.wait_dead(uuid, WAIT).await;
        let handler_runs = runs(&format!("ev/{}/{tag}", host.db.url()));
        if event.state != Some(EventState::Dead) || event.attempts != 1 || handler_runs != 1 {
            wrong.push(format!(
                "shape {shape}: {:?} after {} attempts, handler ran {handler_runs} times",
                event.state, event.attempts
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let _ = Opts::default();
}

backend_tests! {
    reprocessing_follows_the_error_shape_and_commits_once =>
        sqlite_reprocessing_follows_the_error_shape_and_commits_once,
        postgres_reprocessing_follows_the_error_shape_and_commits_once;
    a_nested_transient_error_reprocesses_the_outermost_only_when_it_fails =>
        sqlite_a_nested_transient_error_reprocesses_the_outermost_only_when_it_fails,
        postgres_a_nested_transient_error_reprocesses_the_outermost_only_when_it_fails;
    an_event_failing_with_a_wrapped_permanent_error_is_dead_at_once =>
        sqlite_an_event_failing_with_a_wrapped_permanent_error_is_dead_at_once,
        postgres_an_event_failing_with_a_wrapped_permanent_error_is_dead_at_once;
}
