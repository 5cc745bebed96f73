//! Host clocks skewed by ±5 s (`DbSettings::clock`): hosts started while others write lose
//! nothing, and events run once. Leases and due times are stamped with each host's clock
//! corrected to the database server's, so no host takes over a lease still held: no run is
//! fenced off.

use std::sync::Arc;
use std::time::Duration;

use ofx_diesel::WallClock;
use ofx_tests::checker::History;
use ofx_tests::ledger::{Fault, Hooks, LedgerHost, Wakeup, default_settings, events_settled};
use ofx_tests::servers::{drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;
use tokio_util::sync::CancellationToken;

use crate::harness::{KEYS, QUIESCENCE, Run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_skewed_by_five_seconds() {
    let url = fresh_database(&shared_postgres()).await;
    let wakeup = Wakeup::Postgres(url.clone());
    let history = Arc::new(History::new());
    let log = format!("faults-skew-{}", uuid::Uuid::new_v4().simple());
    let skewed = |clock: WallClock| {
        let mut settings = default_settings();
        settings.clock = clock;
        Some(settings)
    };
    // Event runs long enough that a host whose clock were 5 s ahead would take over leases
    // still held (2 s leases, renewed every third of it).
    let hooks = Hooks {
        event_duration: Some(Duration::from_millis(300)),
        ..Hooks::default()
    };
    let start = async |clock: WallClock| {
        Arc::new(
            LedgerHost::<ofx_diesel::Postgres>::start_with(
                &url,
                &log,
                &wakeup,
                skewed(clock),
                hooks.clone(),
                &history,
            )
            .await
            .unwrap(),
        )
    };
    let five = Duration::from_secs(5);
    let mut hosts = vec![start(WallClock::system()).await];
    // Host 0 writes all along, with events; the skewed hosts start while it does.
    let stop = CancellationToken::new();
    let commands = tiered(300, 2_000);
    let writer = {
        let host = Arc::clone(&hosts[0]);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0_usize;
            while !stop.is_cancelled() || i < commands {
                let _ = host
                    .ledger
                    .call_with_event(
                        i64::try_from(i).unwrap() % KEYS,
                        1,
                        Fault::None,
                        i.is_multiple_of(3),
                    )
                    .await;
                i += 1;
            }
        })
    };
    hosts.push(start(WallClock::offset(five, true)).await);
    hosts.push(start(WallClock::offset(five, false)).await);
    // The skewed hosts write too.
    for i in 0..tiered(100, 500) {
        let host = &hosts[1 + i % 2];
        let _ = host
            .ledger
            .call_with_event(
                i64::try_from(i).unwrap() % KEYS,
                1,
                Fault::None,
                i.is_multiple_of(2),
            )
            .await;
    }
    stop.cancel();
    writer.await.unwrap();
    events_settled(hosts[0].ledger.db(), QUIESCENCE * 3)
        .await
        .unwrap();
    let fenced: Vec<u64> = hosts
        .iter()
        .map(|host| {
            let processor = host.ledger.db().event_processor(&host.hub).unwrap();
            processor.stats().fenced()
        })
        .collect();
    println!("clock skew: runs fenced off per host (system, +5 s, -5 s): {fenced:?}");
    assert_eq!(
        fenced.iter().sum::<u64>(),
        0,
        "a host took over a lease still held: the clocks were not corrected"
    );
    let run = Run {
        hosts,
        history,
        done: tokio::sync::watch::channel(0).0,
    };
    let (report, _) = run.settle_and_check("clock skew").await;
    report.assert_clean("clock skew");
    assert_eq!(report.tally.failed, 0, "{:?}", run.failures());
    drop(run);
    drop_database(&url).await;
}
