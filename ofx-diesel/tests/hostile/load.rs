//! Load: many due events on a small pool with producers writing meanwhile; two hosts on one
//! SQLite file writing and processing at once; one operation with many events.

use std::time::{Duration, Instant};

use crate::svc::{HHost, HQ, HWrite, Mode, Opts, fast};

/// `count` calls of `HWrite` on `host` from `tasks` tasks; returns the failures.
async fn writers<B: HQ>(
    host: &HHost<B>,
    prefix: &str,
    tasks: usize,
    count: usize,
) -> Vec<(String, String)> {
    let mut handles = Vec::new();
    for task in 0..tasks {
        let commander = host.hub().commander();
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..count {
                let tag = format!("{prefix}-{task}-{i}");
                let result = tokio::time::timeout(
                    Duration::from_secs(30),
                    commander.call(HWrite {
                        tag: tag.clone(),
                        events: 1,
                        payload: "ev".to_owned(),
                        ..HWrite::default()
                    }),
                )
                .await;
                match result {
                    Err(_) => failures.push((tag, "hung 30 s".to_owned())),
                    Ok(Err(error)) => failures.push((tag, format!("{error}"))),
                    Ok(Ok(_)) => {}
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for handle in handles {
        failures.extend(handle.await.unwrap());
    }
    failures
}

/// 300 due events and writers on a pool of 2 (concurrency 1, below it as the docs ask): all
/// run, no call fails, nothing hangs.
async fn many_due_events_on_a_small_pool_drain_without_deadlock<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.pool_size = 2;
    settings.events.concurrency = 1;
    let host = HHost::<B>::open(url, settings).await;
    host.hub()
        .commander()
        .call(HWrite {
            tag: "backlog".to_owned(),
            events: 300,
            payload: "ev".to_owned(),
            ..HWrite::default()
        })
        .await
        .unwrap();
    let failures = writers(&host, "small", 3, 20).await;
    let drained = host.drained(Duration::from_secs(60)).await;
    let processor = host.processor();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        drained,
        "events still pending: {:?}, processor {:?}, running {}, claim failures {}",
        host.db.events().counts().await.unwrap(),
        processor.health().state(),
        processor.running(),
        processor.stats().claim_failures()
    );
    assert_eq!(host.payloads("backlog").await.len(), 301);
}

/// The default concurrency (4) on a pool of 2 (against the docs' advice): it may be slow, it
/// must not deadlock.
async fn concurrency_above_the_pool_does_not_deadlock<B: HQ>(url: &str) {
    let mut settings = fast();
    settings.pool_size = 2;
    let host = HHost::<B>::open(url, settings).await;
    host.hub()
        .commander()
        .call(HWrite {
            tag: "over".to_owned(),
            events: 100,
            payload: "ev".to_owned(),
            mode: Mode::Sleep(5),
            ..HWrite::default()
        })
        .await
        .unwrap();
    let failures = writers(&host, "over", 2, 10).await;
    let drained = host.drained(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        drained,
        "events still pending: {:?}",
        host.db.events().counts().await.unwrap()
    );
}

/// Two hosts on one SQLite file, each with 4 writers and its processor: BUSY is transient and
/// waited for, so no command fails, and every committed write has its event run once.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_hosts_writing_one_file_do_not_fail_commands() {
    let url = crate::common::sqlite_file().await;
    let a = HHost::<ofx_diesel::Sqlite>::open(&url, fast()).await;
    let b = HHost::<ofx_diesel::Sqlite>::open(&url, fast()).await;
    let started = Instant::now();
    let (fa, fb) = tokio::join!(writers(&a, "a", 4, 40), writers(&b, "b", 4, 40));
    let elapsed = started.elapsed();
    assert!(
        a.drained(Duration::from_secs(60)).await,
        "events still pending"
    );
    // Exactly once for what committed; nothing for what failed.
    let mut wrong = Vec::new();
    for (prefix, failed) in [("a", &fa), ("b", &fb)] {
        for task in 0..4 {
            for i in 0..40 {
                let tag = format!("{prefix}-{task}-{i}");
                let payloads = a.payloads(&tag).await;
                let did_fail = failed.iter().any(|(t, _)| *t == tag);
                let expected: &[&str] = if did_fail { &[] } else { &["ev", "w"] };
                if payloads != expected {
                    wrong.push(format!("{tag}: {payloads:?} (failed: {did_fail})"));
                }
            }
        }
    }
    let failures: Vec<_> = fa.iter().chain(fb.iter()).collect();
    eprintln!("320 calls in {elapsed:?}, {} failed", failures.len());
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(
        failures.is_empty(),
        "{} commands failed: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// One operation adding 20,000 events (half of them keyed, every key twice): it commits in
/// reasonable time and stores each event once.
async fn an_operation_with_many_events_commits<B: HQ>(url: &str) {
    let host = HHost::<B>::open(url, fast()).await;
    let started = Instant::now();
    let uuids = host
        .hub()
        .commander()
        .call(HWrite {
            tag: "many".to_owned(),
            events: 20_000,
            payload: "ev".to_owned(),
            mode: Mode::Log,
            opts: Opts::default(),
            ..HWrite::default()
        })
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(uuids.len(), 20_000);
    let counts = host.db.events().counts().await.unwrap();
    assert_eq!(counts.pending + counts.done, 20_000, "{counts:?}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    eprintln!("20,000 events in {elapsed:?}");
}

backend_tests! {
    many_due_events_on_a_small_pool_drain_without_deadlock =>
        sqlite_many_due_events_on_a_small_pool_drain_without_deadlock,
        postgres_many_due_events_on_a_small_pool_drain_without_deadlock;
    concurrency_above_the_pool_does_not_deadlock =>
        sqlite_concurrency_above_the_pool_does_not_deadlock,
        postgres_concurrency_above_the_pool_does_not_deadlock;
    an_operation_with_many_events_commits =>
        sqlite_an_operation_with_many_events_commits,
        postgres_an_operation_with_many_events_commits;
}
