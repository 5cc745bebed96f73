//! Runs a workload on a cluster of [`LedgerHost`]s while a fault is injected, waits for
//! quiescence, and checks the history against the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ofx_tests::checker::{History, Outcome, Record, Report, check};
use ofx_tests::ledger::{Fault, LedgerHost, LedgerQueries, Wakeup, truth};
use rand::Rng;
use tokio::sync::watch;

/// Counter keys.
pub(crate) const KEYS: i64 = 16;

/// How long every host has to catch up once the writes are over.
pub(crate) const QUIESCENCE: Duration = Duration::from_secs(60);

/// A workload: `commands` calls spread over `writers` tasks and every host, with `fault(i)`
/// deciding the fault of the `i`-th call.
pub(crate) struct Workload {
    pub(crate) commands: usize,
    pub(crate) writers: usize,
    pub(crate) fault: fn(usize) -> Fault,
    /// How long a writer waits after a failed call (a client's backoff).
    pub(crate) pause_after_error: Duration,
}

impl Workload {
    /// `commands` calls by 8 writers, 2 % of them failing after their writes: at their
    /// `COMMIT` on PostgreSQL (their log indexes burnt), before it on SQLite (whose rolled-back
    /// inserts give their sequence values back).
    pub(crate) fn soak<B: LedgerQueries>(commands: usize) -> Self {
        Self {
            commands,
            writers: 8,
            fault: |i| {
                if i % 50 != 49 {
                    Fault::None
                } else if B::FAILS_AT_COMMIT {
                    Fault::FailAtCommit
                } else {
                    Fault::FailAfterInsert
                }
            },
            pause_after_error: Duration::ZERO,
        }
    }
}

/// A running cluster and its history.
pub(crate) struct Run<B: LedgerQueries> {
    pub(crate) hosts: Vec<Arc<LedgerHost<B>>>,
    pub(crate) history: Arc<History>,
    /// Calls finished so far (whatever their outcome).
    pub(crate) done: watch::Sender<usize>,
}

impl<B: LedgerQueries> Run<B> {
    /// Starts `count` hosts on `url`, woken as `wakeup` says.
    pub(crate) async fn start(url: &str, count: usize, wakeup: &Wakeup) -> Self {
        let history = Arc::new(History::new());
        let log = format!("faults-{}", uuid::Uuid::new_v4().simple());
        let mut hosts = Vec::with_capacity(count);
        for _ in 0..count {
            hosts.push(Arc::new(
                LedgerHost::<B>::start(url, &log, wakeup, None, &history)
                    .await
                    .unwrap(),
            ));
        }
        Self {
            hosts,
            history,
            done: watch::channel(0).0,
        }
    }

    /// Waits until `count` calls have finished.
    pub(crate) async fn reached(&self, count: usize) {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|done| *done >= count).await;
    }

    /// Runs `workload` with readers on every host all along; returns how many calls failed.
    pub(crate) async fn drive(&self, workload: &Workload) -> usize {
        let next = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop_readers = Arc::new(AtomicBool::new(false));
        let mut readers = tokio::task::JoinSet::new();
        for host in &self.hosts {
            let host = Arc::clone(host);
            let stop = Arc::clone(&stop_readers);
            readers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..KEYS), rng.random_range(0..KEYS))
                    };
                    let _ = host.ledger.value(a).await;
                    let _ = host.ledger.pair(a, b).await;
                    tokio::task::yield_now().await;
                }
            });
        }
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..workload.writers {
            let host = Arc::clone(&self.hosts[writer % self.hosts.len()]);
            let next = Arc::clone(&next);
            let failed = Arc::clone(&failed);
            let done = self.done.clone();
            let commands = workload.commands;
            let fault = workload.fault;
            let pause = workload.pause_after_error;
            writers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= commands {
                        return;
                    }
                    let (key, by) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..KEYS), rng.random_range(1..10))
                    };
                    if host.ledger.call(key, by, fault(i)).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                    done.send_modify(|done| *done += 1);
                }
            });
        }
        while let Some(result) = writers.join_next().await {
            result.unwrap();
        }
        stop_readers.store(true, Ordering::Relaxed);
        while let Some(result) = readers.join_next().await {
            result.unwrap();
        }
        failed.load(Ordering::Relaxed)
    }

    /// The messages of the calls told they failed.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.history
            .records()
            .into_iter()
            .filter_map(|record| match record {
                Record::Call {
                    outcome: Outcome::Error { message } | Outcome::InDoubt { message },
                    ..
                } => Some(message),
                _ => None,
            })
            .collect()
    }

    /// Waits until every host that reads the log replayed all of it, records what each serves
    /// beside a direct read, and checks the history. Returns the report and how long the
    /// slowest host took to catch up.
    pub(crate) async fn settle_and_check(&self, scenario: &str) -> (Report, Duration) {
        let first = &self.hosts[0];
        let truth_now = truth(first.ledger.db()).await.unwrap();
        let last = truth_now
            .operations
            .iter()
            .map(|operation| operation.idx)
            .max()
            .unwrap_or(0);
        let started = Instant::now();
        for host in &self.hosts {
            if host.hub.shutdown_token().is_cancelled() {
                continue;
            }
            host.ledger
                .db()
                .wait_replayed(&host.hub, last, QUIESCENCE)
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "{scenario}: host {} did not catch up: {error}",
                        host.ledger.host()
                    )
                });
        }
        let caught_up = started.elapsed();
        for host in &self.hosts {
            if !host.hub.shutdown_token().is_cancelled() {
                host.ledger.record_reads(KEYS).await.unwrap();
            }
        }
        let truth = truth(first.ledger.db()).await.unwrap();
        let report = check(&self.history.records(), &truth);
        println!("{}", report.summary(scenario));
        (report, caught_up)
    }
}
