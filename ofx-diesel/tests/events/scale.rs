//! Exactly once at scale: two hosts on one database, 10,000 events produced by concurrent
//! commands on both, each event's effect exactly once (the effects table's primary key is the
//! event's uuid: a second effect would fail its run, so the run would be retried or dead, never
//! silently doubled).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ofx_diesel::Backend;

use crate::common::{EventSpec, Host, JobQueries, Produce, fast};

const TOTAL: u32 = 10_000;
/// Concurrent writer tasks, split across both hosts.
const WRITERS: u32 = 8;
/// Events per command.
const PER_COMMAND: u32 = 25;

/// Twice the default concurrency (and connections for it): runs commit in groups.
fn busy() -> ofx_diesel::DbSettings {
    let mut settings = fast();
    settings.events.concurrency = 8;
    settings.pool_size = 12;
    settings
}

async fn ten_thousand_events_run_exactly_once_on_two_hosts<B: JobQueries + Backend>(url: &str) {
    let job = 1_000;
    let hosts = [
        Arc::new(Host::<B>::open(url, busy()).await),
        Arc::new(Host::<B>::open(url, busy()).await),
    ];
    let started = Instant::now();
    let commands = TOTAL / WRITERS / PER_COMMAND;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let hub = hosts[writer as usize % 2].hub().clone();
        writers.spawn(async move {
            let mut uuids = Vec::new();
            for _ in 0..commands {
                let produced = hub
                    .commander()
                    .call(Produce {
                        job,
                        count: PER_COMMAND,
                        spec: EventSpec::default(),
                        write: None,
                        fail: false,
                    })
                    .await
                    .unwrap();
                uuids.extend(produced);
            }
            uuids
        });
    }
    let mut produced = HashSet::new();
    while let Some(uuids) = writers.join_next().await {
        produced.extend(uuids.unwrap());
    }
    assert_eq!(
        produced.len(),
        TOTAL as usize,
        "every event has its own uuid"
    );
    let produced_in = started.elapsed();

    // Every run that committed is one completion: exactly TOTAL of them, on both hosts together.
    let processors = [hosts[0].processor(), hosts[1].processor()];
    let completed = || {
        processors
            .iter()
            .map(|processor| processor.stats().completed())
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while completed() < u64::from(TOTAL) {
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} events completed",
            completed()
        );
        let seen = processors[0].stats().completed();
        processors[0]
            .wait_until(|stats| stats.completed() > seen, Duration::from_millis(100))
            .await;
    }
    hosts[0].drained(Duration::from_secs(10)).await;
    let elapsed = started.elapsed();

    assert_eq!(completed(), u64::from(TOTAL), "no event completed twice");
    for processor in &processors {
        assert_eq!(processor.stats().dead(), 0);
    }
    let counts = hosts[0].db.events().counts().await.unwrap();
    assert_eq!(counts.pending, 0, "no event left pending");
    assert_eq!(counts.dead, 0, "no event dead");
    assert_eq!(counts.done, u64::from(TOTAL));
    let effects = hosts[0].effect_rows(job).await;
    assert_eq!(effects.len(), TOTAL as usize);
    let effected: HashSet<uuid::Uuid> = effects
        .iter()
        .map(|effect| uuid::Uuid::parse_str(&effect.event_uuid).unwrap())
        .collect();
    assert_eq!(effected, produced, "one effect for each event produced");
    let split: Vec<u64> = processors
        .iter()
        .map(|processor| processor.stats().completed())
        .collect();
    eprintln!(
        "{}: {TOTAL} events produced in {produced_in:?}, all run in {elapsed:?}; completed per host: {split:?}",
        B::NAME
    );
}

backend_tests! {
    ten_thousand_events_run_exactly_once_on_two_hosts =>
        sqlite_ten_thousand_events_run_exactly_once_on_two_hosts,
        postgres_ten_thousand_events_run_exactly_once_on_two_hosts;
}
