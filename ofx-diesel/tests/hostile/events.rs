//! Events: invalidation branches, chains, self-replacement, keys on finished events, admin
//! calls on live events, panics, long handlers, dropped hubs, payload limits, odd keys and
//! times.

use std::time::Duration;

use ofx_core::background::TaskState;
use ofx_diesel::{EventRetry, EventState, MAX_PAYLOAD_BYTES};

use crate::svc::{HHost, HInval, HQ, HWrite, INVAL, Mode, Opts, fast, now_secs};

const WAIT: Duration = Duration::from_secs(10);

fn ev(tag: &str, mode: Mode, opts: Opts) -> HWrite {
    HWrite {
        tag: tag.to_owned(),
        events: 1,
        payload: "ev".to_owned(),
        mode,
        opts,
        ..HWrite::default()
    }
}

fn keyed(key: &str, conflict: u8) -> Opts {
    Opts {
        key: Some(key.to_owned()),
        conflict,
        ..Opts::default()
    }
}

async fn add_event_in_an_invalidation_branch_is_refused_and_stores_nothing<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let tag = "inval";
    host.hub()
        .commander()
        .call(HInval {
            tag: tag.to_owned(),
        })
        .await
        .unwrap();
    let results = INVAL
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(&format!("{}/{tag}", host.db.url()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 1, "one invalidation pass: {results:?}");
    assert!(
        results[0].contains("NotInOperation"),
        "add_event in an invalidation branch: {results:?}"
    );
    // The operation committed before `call` returned: what it stored is there now.
    assert!(
        host.events_of(tag).await.is_empty(),
        "an invalidation branch stored an event"
    );
}

async fn an_event_can_add_events_in_a_chain<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let tag = "chain";
    host.hub()
        .commander()
        .call(HWrite {
            payload: "5".to_owned(),
            ..ev(tag, Mode::Chain(5), Opts::default())
        })
        .await
        .unwrap();
    let payloads = host.wait_payloads(tag, |p| p.len() >= 7, WAIT).await;
    assert_eq!(payloads, ["0", "1", "2", "3", "4", "5", "w"]);
    assert!(host.drained(WAIT).await);
    assert_eq!(host.events_of(tag).await.len(), 6);
}

/// A periodic job's pattern: an event re-adds itself under its own key with Replace. The
/// replacement must run (KeyConflict::Replace: "runs (again) as a new event ... whatever
/// state it was in").
async fn a_self_replacing_event_runs_its_replacement<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let tag = "selfrep";
    host.hub()
        .commander()
        .call(HWrite {
            payload: "3".to_owned(),
            ..ev(
                tag,
                Mode::SelfReplace(3, "tick".to_owned()),
                keyed("tick", 1),
            )
        })
        .await
        .unwrap();
    let payloads = host
        .wait_payloads(tag, |p| p.len() >= 5, Duration::from_secs(15))
        .await;
    let processor = host.processor();
    let stats = processor.stats();
    let events = host.events_of(tag).await;
    assert_eq!(
        payloads,
        ["0", "1", "2", "3", "w"],
        "the replacements did not each run once (completed {}, fenced {}, retried {}, dead {}; \
         events {events:?})",
        stats.completed(),
        stats.fenced(),
        stats.retried(),
        stats.dead()
    );
}

async fn replace_on_a_done_or_dead_event_runs_it_again<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(1, Duration::from_millis(10), Duration::from_millis(10));
    let host = HHost::<B>::open(url, settings).await;
    let commander = host.hub().commander();
    // Done, then replaced.
    let tag = "rep-done";
    let first = commander
        .call(ev(tag, Mode::Log, keyed("rd", 1)))
        .await
        .unwrap()[0];
    let _ = host.wait_payloads(tag, |p| p.len() >= 2, WAIT).await;
    assert!(host.drained(WAIT).await);
    let second = commander
        .call(HWrite {
            payload: "again".to_owned(),
            ..ev(tag, Mode::Log, keyed("rd", 1))
        })
        .await
        .unwrap()[0];
    assert_eq!(first, second);
    let payloads = host.wait_payloads(tag, |p| p.len() >= 4, WAIT).await;
    assert_eq!(
        payloads,
        ["again", "ev", "w", "w"],
        "a done event replaced ran again"
    );

    // Dead (permanent), then replaced by a good one.
    let tag = "rep-dead";
    let dead = commander
        .call(ev(tag, Mode::Fail(2), keyed("rdd", 1)))
        .await
        .unwrap()[0];
    assert_eq!(
        host.wait_dead(dead, WAIT).await.state,
        Some(EventState::Dead),
        "not dead"
    );
    // Keep: the dead event stays dead.
    commander
        .call(ev(tag, Mode::Log, keyed("rdd", 0)))
        .await
        .unwrap();
    // Committed when `call` returned: a revived event would be pending now.
    assert_eq!(
        host.db.events().get(dead).await.unwrap().unwrap().state,
        Some(EventState::Dead),
        "Keep revived a dead event"
    );
    commander
        .call(ev(tag, Mode::Log, keyed("rdd", 1)))
        .await
        .unwrap();
    let payloads = host.wait_payloads(tag, |p| p.len() >= 4, WAIT).await;
    assert_eq!(
        payloads,
        ["ev", "w", "w", "w"],
        "a dead event replaced ran again"
    );
    let event = host.db.events().get(dead).await.unwrap().unwrap();
    assert_eq!(event.state, Some(EventState::Done));
    assert_eq!(event.attempts, 1, "attempts reset");
    assert_eq!(event.last_error, None, "{:?}", event.last_error);
}

/// `purge` deletes dead events only: a pending or running one is refused and still runs.
async fn purge_of_a_pending_or_running_event_is_refused<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let commander = host.hub().commander();
    let later = commander
        .call(ev(
            "purge-later",
            Mode::Log,
            Opts {
                delay_ms: Some(600_000),
                ..Opts::default()
            },
        ))
        .await
        .unwrap()[0];
    assert!(matches!(
        host.db.events().purge(later).await,
        Err(ofx_diesel::Error::NoSuchEvent(_))
    ));
    let job = 90_101;
    let running = commander
        .call(ev("purge-running", Mode::Gated(job), Opts::default()))
        .await
        .unwrap()[0];
    crate::svc::hgate_arrivals(url, job, 1).await;
    assert!(matches!(
        host.db.events().purge(running).await,
        Err(ofx_diesel::Error::NoSuchEvent(_))
    ));
    assert!(matches!(
        host.db.events().redrive(running).await,
        Err(ofx_diesel::Error::NoSuchEvent(_))
    ));
    crate::svc::hgate_open(url, job);
    let payloads = host
        .wait_payloads("purge-running", |p| p.len() >= 2, WAIT)
        .await;
    assert_eq!(payloads, ["ev", "w"]);
    assert_eq!(host.db.events().purge_dead().await.unwrap(), 0);
    assert!(host.db.events().get(later).await.unwrap().is_some());
}

/// A handler that panics: its run fails (the event is retried, then dead with a reason), the
/// processor lives on and runs the events behind it.
async fn a_panicking_event_handler_is_retried_then_dead_and_the_processor_lives<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(3, Duration::from_millis(10), Duration::from_millis(20));
    let host = HHost::<B>::open(url, settings).await;
    let processor = host.processor();
    let commander = host.hub().commander();
    let uuid = commander
        .call(ev("panic", Mode::Panic, Opts::default()))
        .await
        .unwrap()[0];
    let event = host.wait_dead(uuid, WAIT).await;
    assert_eq!(
        event.state,
        Some(EventState::Dead),
        "a panicking event is not dead after its attempts: {event:?}, processor {:?}, running {}",
        processor.health().state(),
        processor.running()
    );
    assert_eq!(event.attempts, 3);
    assert!(
        event.last_error.as_deref().unwrap_or("").contains("panic"),
        "{event:?}"
    );
    assert_eq!(processor.health().state(), TaskState::Running);
    // The event is dead in the database before its run leaves the processor's list: wait.
    let deadline = std::time::Instant::now() + WAIT;
    while processor.running() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead event's run stays in the processor's list"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    commander
        .call(ev("after-panic", Mode::Log, Opts::default()))
        .await
        .unwrap();
    let payloads = host
        .wait_payloads("after-panic", |p| p.len() >= 2, WAIT)
        .await;
    assert_eq!(payloads, ["ev", "w"]);
}

/// A handler running three leases long: the heartbeat renews its claim; another host does not
/// take the event over; it completes once, on its first attempt.
async fn a_handler_longer_than_its_lease_keeps_its_claim<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.lease = Duration::from_millis(900);
    let a = HHost::<B>::open(url, settings.clone()).await;
    let b = HHost::<B>::open(url, settings).await;
    let tag = "long";
    let uuid = a
        .hub()
        .commander()
        .call(ev(tag, Mode::Sleep(3_000), Opts::default()))
        .await
        .unwrap()[0];
    let payloads = a
        .wait_payloads(tag, |p| p.len() >= 2, Duration::from_secs(15))
        .await;
    assert!(a.drained(Duration::from_secs(10)).await);
    let event = a.db.events().get(uuid).await.unwrap().unwrap();
    let fenced = a.processor().stats().fenced() + b.processor().stats().fenced();
    assert_eq!(payloads, ["ev", "w"]);
    assert_eq!(
        (event.attempts, event.lease_token, fenced),
        (1, 1, 0),
        "the long run lost its claim: {event:?}"
    );
    assert_eq!(
        crate::svc::runs(&format!("ev/{}/{tag}", a.db.url())),
        1,
        "the handler ran more than once"
    );
}

/// A host whose hub is dropped while its event runs: the event is done once, by it or by
/// another host after the lease.
async fn a_hub_dropped_mid_event_still_runs_it_once<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.lease = Duration::from_millis(900);
    let job = 90_111;
    let gate = crate::common::gate::<B>(job);
    let a = crate::common::Host::<B>::open(url, settings.clone()).await;
    let spec = crate::common::EventSpec {
        behavior: crate::common::Behavior::Gated,
        ..Default::default()
    };
    let uuid = a.produce(job, 1, spec).await.unwrap()[0];
    gate.arrivals(1).await;
    drop(a);
    // Past the lease (900 ms): what is tested is whether A's dropped hub still renews it. The
    // lease is a duration; no signal tells that it would have ended.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let b = crate::common::Host::<B>::open(url, settings).await;
    // B takes it over after the lease (unless A's run lives on and renews it).
    let taken = tokio::time::timeout(Duration::from_secs(5), gate.arrivals(2)).await;
    gate.open();
    let event = b
        .wait_event(
            uuid,
            |event| event.state == Some(EventState::Done),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(b.effects(job).await, 1);
    eprintln!(
        "dropped hub: taken over by B: {}, event {event:?}",
        taken.is_ok()
    );
}

/// An event whose command is over MAX_PAYLOAD_BYTES: refused when written (the command fails,
/// nothing commits), not stored to die later.
async fn an_event_over_the_payload_limit_is_refused_when_added<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let tag = "huge";
    let result = host
        .hub()
        .commander()
        .call(HWrite {
            payload_size: MAX_PAYLOAD_BYTES + 1,
            ..ev(tag, Mode::Log, Opts::default())
        })
        .await;
    // `call` returned: a stored event or write would be there now.
    let events = host.events_of(tag).await;
    let payloads = host.payloads(tag).await;
    assert!(
        result.is_err(),
        "an oversized event was accepted; stored: {:?}, writes {payloads:?}",
        events
            .iter()
            .map(|event| (event.state, event.last_error.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        events.is_empty() && payloads.is_empty(),
        "an oversized event's operation committed"
    );
}

/// Keys of every shape work (stored as given, run once) or fail the command cleanly.
async fn odd_keys_work_or_fail_cleanly<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let commander = host.hub().commander();
    let long_a = format!("{}a", "k".repeat(100_000));
    let long_b = format!("{}b", "k".repeat(100_000));
    let keys: Vec<(&str, String)> = vec![
        ("key-empty", String::new()),
        ("key-sql", "a'b\"c;-- DROP TABLE ofx_events".to_owned()),
        ("key-unicode", "ключ🔑\u{202e}".to_owned()),
        ("key-long-a", long_a),
        ("key-long-b", long_b),
        ("key-nul", "nul\0byte".to_owned()),
    ];
    let mut report = Vec::new();
    for (tag, key) in &keys {
        let result = commander.call(ev(tag, Mode::Log, keyed(key, 2))).await;
        match result {
            Ok(uuids) => {
                let payloads = host.wait_payloads(tag, |p| p.len() >= 2, WAIT).await;
                let event = host.db.events().get(uuids[0]).await.unwrap().unwrap();
                assert_eq!(
                    event.key.as_deref(),
                    Some(key.as_str()),
                    "{tag}: key changed"
                );
                assert_eq!(payloads, ["ev", "w"], "{tag}");
                report.push(format!("{tag}: ok"));
            }
            Err(error) => {
                assert!(
                    !matches!(
                        error,
                        ofx_core::Error::CommitInDoubt { .. }
                            | ofx_core::Error::HandlerPanicked { .. }
                    ),
                    "{tag}: {error:?}"
                );
                assert!(
                    host.payloads(tag).await.is_empty(),
                    "{tag}: committed though failed"
                );
                report.push(format!("{tag}: failed cleanly: {error}"));
            }
        }
    }
    eprintln!("{report:#?}");
}

/// Command names and keys cannot collide: two commands' keyed events are two events.
#[test]
fn key_uuids_of_different_commands_never_collide() {
    use ofx_core::operation::event_key_uuid;
    for sep in ["", "/", ":", "\0", " ", "\n", "|", "#", "\u{1f}"] {
        let a = event_key_uuid("h.ev", &format!("k{sep}z"), None);
        let b = event_key_uuid(&format!("h.ev{sep}k"), "z", None);
        assert_ne!(a, b, "separator {sep:?}");
    }
    // A keyed event and a debounced one with the same key.
    let at = std::time::UNIX_EPOCH + Duration::from_secs(60);
    assert_ne!(
        event_key_uuid("h.ev", "k", None),
        event_key_uuid("h.ev", "k", Some(at))
    );
}

/// A user key cannot take the uuid of a debounced event of the same command.
#[test]
fn a_key_never_collides_with_a_debounce_window() {
    use ofx_core::operation::event_key_uuid;
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    let debounced = event_key_uuid("h.ev", "k", Some(at));
    for repr in [
        since.as_secs().to_string(),
        since.as_millis().to_string(),
        since.as_micros().to_string(),
        since.as_nanos().to_string(),
    ] {
        for sep in ["\0", "/", ":", "@", "#", " ", "|"] {
            let key = format!("k{sep}{repr}");
            assert_ne!(event_key_uuid("h.ev", &key, None), debounced, "key {key:?}");
        }
    }
}

/// A handler that writes, then works three leases long (SQLite: its write transaction is
/// open meanwhile): the heartbeat still renews its claim; it completes once, first attempt.
async fn a_handler_that_writes_then_works_longer_than_its_lease_keeps_its_claim<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.lease = Duration::from_millis(900);
    let a = HHost::<B>::open(url, settings).await;
    let tag = "write-long";
    let uuid = a
        .hub()
        .commander()
        .call(ev(tag, Mode::LogThenSleep(3_000), Opts::default()))
        .await
        .unwrap()[0];
    let payloads = a
        .wait_payloads(tag, |p| p.len() >= 2, Duration::from_secs(20))
        .await;
    let event = a.db.events().get(uuid).await.unwrap().unwrap();
    let stats = a.processor();
    assert_eq!(
        (
            payloads.len(),
            event.state,
            event.attempts,
            stats.stats().fenced()
        ),
        (2, Some(EventState::Done), 1, 0),
        "the run lost its claim while it held its transaction: {event:?}"
    );
}

/// An event whose runs keep losing their claim (its host killed or paused mid-run, again and
/// again: a poison event) is dead once its attempts are spent, not claimed forever.
async fn an_event_that_keeps_losing_its_claim_dies_after_its_attempts<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.events.retry =
        EventRetry::new(3, Duration::from_millis(10), Duration::from_millis(10));
    settings.events.lease = Duration::from_secs(300);
    let job = 90_201;
    let gate = crate::common::gate::<B>(job);
    let spec = crate::common::EventSpec {
        behavior: crate::common::Behavior::Gated,
        ..Default::default()
    };
    let producer = {
        let mut settings = settings.clone();
        settings.events.process = false;
        crate::common::Host::<B>::open(url, settings).await
    };
    let uuid = producer.produce(job, 1, spec).await.unwrap()[0];
    let mut hosts = Vec::new();
    for claim in 1..=5u32 {
        let host = crate::common::Host::<B>::open(url, settings.clone()).await;
        let arrived = tokio::time::timeout(Duration::from_secs(3), gate.arrivals(claim)).await;
        if arrived.is_err() {
            break;
        }
        // The host "dies": it claims nothing more, its lease ends.
        let processor = host.processor();
        processor.stop();
        producer
            .sql(&format!(
                "UPDATE ofx_events SET lease_until = 0 WHERE uuid = '{uuid}'"
            ))
            .await;
        hosts.push(host);
    }
    let last = crate::common::Host::<B>::open(url, settings.clone()).await;
    // The last host claims it once more than its attempts allow, and declares it dead.
    let event = producer
        .wait_event(
            uuid,
            |event| event.state == Some(EventState::Dead),
            Duration::from_secs(10),
        )
        .await;
    gate.open();
    assert!(
        event.state == Some(EventState::Dead) && event.attempts <= 4,
        "after repeated lost claims, with 3 attempts allowed: {:?}, {} attempts",
        event.state,
        event.attempts
    );
    drop(last);
}

/// Due times at the edges: the epoch (runs now), before the epoch ("a time in the past
/// means now"), far in the future, `delay(Duration::MAX)`, a debounce window of zero. None
/// may panic; past times run now.
async fn due_times_at_the_edges_do_not_panic<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let cases: Vec<(&str, Opts)> = vec![
        (
            "due-epoch",
            Opts {
                due_secs: Some(0),
                ..Opts::default()
            },
        ),
        (
            "due-before-epoch",
            Opts {
                due_secs: Some(-86_400),
                ..Opts::default()
            },
        ),
        (
            "due-far-future",
            Opts {
                due_secs: Some(now_secs() + 400_000 * 365 * 86_400),
                ..Opts::default()
            },
        ),
        (
            "due-delay-max",
            Opts {
                delay_max: true,
                ..Opts::default()
            },
        ),
        (
            "due-debounce-zero",
            Opts {
                key: Some("dz".to_owned()),
                debounce_ms: Some(0),
                ..Opts::default()
            },
        ),
    ];
    let mut failures = Vec::new();
    for (tag, opts) in cases {
        let commander = host.hub().commander();
        let command = ev(tag, Mode::Log, opts);
        let joined = tokio::spawn(async move { commander.call(command).await }).await;
        match joined {
            Err(panic) => failures.push(format!("{tag}: the call panicked: {panic}")),
            Ok(Err(ofx_core::Error::HandlerPanicked { .. })) => {
                failures.push(format!("{tag}: add_event panicked in the handler"));
            }
            Ok(Err(error)) => eprintln!("{tag}: refused: {error}"),
            Ok(Ok(uuids)) => {
                let event = host.db.events().get(uuids[0]).await.unwrap().unwrap();
                eprintln!("{tag}: stored, due {:?}", event.due_at);
            }
        }
    }
    for tag in ["due-epoch", "due-before-epoch"] {
        let payloads = host.wait_payloads(tag, |p| p.len() >= 2, WAIT).await;
        if payloads != ["ev", "w"] {
            failures.push(format!("{tag}: did not run now: {payloads:?}"));
        }
    }
    let processor = host.processor();
    if processor.health().state() != TaskState::Running {
        failures.push(format!("processor: {:?}", processor.health().state()));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A processor stopped, then started again (`start_event_processor`: "starts ... or returns
/// the one running"): events run again.
async fn a_stopped_processor_can_be_started_again<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let processor = host.processor();
    processor.stop();
    assert_eq!(processor.health().ended().await, TaskState::Stopped);
    let again = host.db.start_event_processor(host.hub()).unwrap();
    assert!(
        !again.is_stopped(),
        "start_event_processor returned the stopped processor"
    );
    host.hub()
        .commander()
        .call(ev("restart", Mode::Log, Opts::default()))
        .await
        .unwrap();
    let payloads = host.wait_payloads("restart", |p| p.len() >= 2, WAIT).await;
    assert_eq!(payloads, ["ev", "w"]);
}

/// `list` with a limit that does not fit the database's integer.
async fn list_with_a_huge_limit_works<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    host.hub()
        .commander()
        .call(ev("list", Mode::Log, Opts::default()))
        .await
        .unwrap();
    let listed = host.db.events().list(None, usize::MAX).await;
    assert!(
        matches!(&listed, Ok(events) if events.len() == 1),
        "{listed:?}"
    );
}

/// An event whose producing command touches no database is stored anyway (the home of events),
/// and a cancelled such call leaves nothing half done either.
async fn events_of_a_command_that_writes_nothing_are_stored<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let tag = "nowrite";
    let uuids = host
        .hub()
        .commander()
        .call(HWrite {
            no_write: true,
            events: 3,
            ..ev(tag, Mode::Log, Opts::default())
        })
        .await
        .unwrap();
    assert_eq!(uuids.len(), 3);
    let payloads = host.wait_payloads(tag, |p| p.len() >= 3, WAIT).await;
    assert_eq!(payloads, ["ev", "ev", "ev"]);
    // Failing after adding them: none stored.
    let tag = "nowrite-fail";
    let result = host
        .hub()
        .commander()
        .call(HWrite {
            no_write: true,
            fail: true,
            ..ev(tag, Mode::Log, Opts::default())
        })
        .await;
    assert!(result.is_err());
    // Nothing of a failed call commits after it returned.
    assert!(host.events_of(tag).await.is_empty());
}

/// A chain whose every link fails once transiently in its run: reprocessing within the claim;
/// each link's event is stored once (the failed runs' added events are dropped).
async fn a_transient_run_that_added_an_event_stores_it_once<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let tag = "tr-chain";
    host.hub()
        .commander()
        .call(ev(tag, Mode::TransientRuns(2), Opts::default()))
        .await
        .unwrap();
    assert!(host.drained(WAIT).await);
    let payloads = host.wait_payloads(tag, |p| p.len() >= 3, WAIT).await;
    assert_eq!(
        payloads,
        ["child", "ev", "w"],
        "the child event of the run that committed, once"
    );
    let events = host.events_of(tag).await;
    assert_eq!(
        events.len(),
        2,
        "the failed runs' child events were dropped: {events:?}"
    );
    assert!(events.iter().all(|event| event.attempts == 1), "{events:?}");
}

backend_tests! {
    a_handler_that_writes_then_works_longer_than_its_lease_keeps_its_claim =>
        sqlite_a_handler_that_writes_then_works_longer_than_its_lease_keeps_its_claim,
        postgres_a_handler_that_writes_then_works_longer_than_its_lease_keeps_its_claim;
    an_event_that_keeps_losing_its_claim_dies_after_its_attempts =>
        sqlite_an_event_that_keeps_losing_its_claim_dies_after_its_attempts,
        postgres_an_event_that_keeps_losing_its_claim_dies_after_its_attempts;
    add_event_in_an_invalidation_branch_is_refused_and_stores_nothing =>
        sqlite_add_event_in_an_invalidation_branch_is_refused_and_stores_nothing,
        postgres_add_event_in_an_invalidation_branch_is_refused_and_stores_nothing;
    an_event_can_add_events_in_a_chain =>
        sqlite_an_event_can_add_events_in_a_chain,
        postgres_an_event_can_add_events_in_a_chain;
    a_self_replacing_event_runs_its_replacement =>
        sqlite_a_self_replacing_event_runs_its_replacement,
        postgres_a_self_replacing_event_runs_its_replacement;
    replace_on_a_done_or_dead_event_runs_it_again =>
        sqlite_replace_on_a_done_or_dead_event_runs_it_again,
        postgres_replace_on_a_done_or_dead_event_runs_it_again;
    purge_of_a_pending_or_running_event_is_refused =>
        sqlite_purge_of_a_pending_or_running_event_is_refused,
        postgres_purge_of_a_pending_or_running_event_is_refused;
    a_panicking_event_handler_is_retried_then_dead_and_the_processor_lives =>
        sqlite_a_panicking_event_handler_is_retried_then_dead_and_the_processor_lives,
        postgres_a_panicking_event_handler_is_retried_then_dead_and_the_processor_lives;
    a_handler_longer_than_its_lease_keeps_its_claim =>
        sqlite_a_handler_longer_than_its_lease_keeps_its_claim,
        postgres_a_handler_longer_than_its_lease_keeps_its_claim;
    a_hub_dropped_mid_event_still_runs_it_once =>
        sqlite_a_hub_dropped_mid_event_still_runs_it_once,
        postgres_a_hub_dropped_mid_event_still_runs_it_once;
    an_event_over_the_payload_limit_is_refused_when_added =>
        sqlite_an_event_over_the_payload_limit_is_refused_when_added,
        postgres_an_event_over_the_payload_limit_is_refused_when_added;
    odd_keys_work_or_fail_cleanly =>
        sqlite_odd_keys_work_or_fail_cleanly,
        postgres_odd_keys_work_or_fail_cleanly;
    due_times_at_the_edges_do_not_panic =>
        sqlite_due_times_at_the_edges_do_not_panic,
        postgres_due_times_at_the_edges_do_not_panic;
    a_stopped_processor_can_be_started_again =>
        sqlite_a_stopped_processor_can_be_started_again,
        postgres_a_stopped_processor_can_be_started_again;
    list_with_a_huge_limit_works =>
        sqlite_list_with_a_huge_limit_works,
        postgres_list_with_a_huge_limit_works;
    events_of_a_command_that_writes_nothing_are_stored =>
        sqlite_events_of_a_command_that_writes_nothing_are_stored,
        postgres_events_of_a_command_that_writes_nothing_are_stored;
    a_transient_run_that_added_an_event_stores_it_once =>
        sqlite_a_transient_run_that_added_an_event_stores_it_once,
        postgres_a_transient_run_that_added_an_event_stores_it_once;
}
