//! Transient failures of the write path on PostgreSQL: serialization failures and deadlocks
//! raised by the server on 20 % of the commands, and writer sessions terminated mid-transaction (one per 200
//! commands). Every call succeeds within the commander's retry budget, and every effect is
//! committed once.

use ofx_tests::ledger::{Fault, Wakeup};
use ofx_tests::servers::{drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;

use crate::harness::{Run, Workload};

/// Runs `workload` on two hosts of a fresh database, checks it, and asserts that every call
/// succeeded and committed once. Returns the report.
async fn every_call_succeeds(workload: Workload, scenario: &str) -> ofx_tests::checker::Report {
    let url = fresh_database(&shared_postgres()).await;
    let run = Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await;
    let failed = run.drive(&workload).await;
    let (report, _) = run.settle_and_check(scenario).await;
    report.assert_clean(scenario);
    assert_eq!(failed, 0, "every call succeeds: {:?}", run.failures());
    assert_eq!(report.tally.committed as usize, workload.commands);
    drop(run);
    drop_database(&url).await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_and_deadlocks_on_a_fifth_of_the_commits() {
    let workload = Workload {
        commands: tiered(1_000, 10_000),
        writers: 8,
        fault: |i| {
            if i % 5 == 4 {
                Fault::TransientOnce
            } else {
                Fault::None
            }
        },
        pause_after_error: std::time::Duration::ZERO,
    };
    let commands = workload.commands;
    let report = every_call_succeeds(workload, "serialization failures").await;
    // Each faulted command ran its main branch twice, and committed once.
    assert_eq!(report.tally.main_runs as usize, commands + commands / 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_sessions_terminated_mid_transaction() {
    let workload = Workload {
        commands: tiered(1_000, 10_000),
        writers: 8,
        fault: |i| {
            if i % 200 == 199 {
                Fault::TerminateOnce
            } else {
                Fault::None
            }
        },
        pause_after_error: std::time::Duration::ZERO,
    };
    every_call_succeeds(workload, "terminated writers").await;
}
