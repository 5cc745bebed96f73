//! A host in a process of its own, for the event-host tests: it opens the database, attaches
//! it with a short lease, and runs events with the handler its mode names, telling on stdout
//! what happens so that the test can stop, continue or kill it at the right moment.
//!
//! `event_host <sqlite|postgres> <url> <hang|pause>`:
//! - `hang`: the handler writes its effect, prints `mid <event> <attempt>`, and never returns;
//! - `pause`: the handler prints `mid <event> <attempt>`, waits for the line `go` on stdin, then
//!   writes its effect, prints `returning <event> <attempt>` and returns.
//!
//! It prints `ready <host id>` once its processor runs, and `stats ...` after each run ends. It
//! exits when its stdin closes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failure ends the process: the test sees it

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ofx_core::Hub;
use ofx_diesel::{DbHub, DbSettings, EventProcessor};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::Notify;

#[allow(dead_code, unreachable_pub)] // shared with the test, which uses other parts of it
mod service;

use service::{EffectQueries, LEASE, Role, Signal, Worker};

/// One line on stdout, flushed at once: the test is waiting for it.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").unwrap();
    stdout.flush().unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backend, url, mode] = args.as_slice() else {
        panic!("usage: event_host <sqlite|postgres> <url> <hang|pause>");
    };
    match backend.as_str() {
        "sqlite" => run::<ofx_diesel::Sqlite>(url, mode).await,
        "postgres" => run::<ofx_diesel::Postgres>(url, mode).await,
        other => panic!("unknown backend {other}"),
    }
}

async fn run<B: EffectQueries>(url: &str, mode: &str) {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings.read_log = false;
    settings.trim = false;
    settings.events.lease = LEASE;
    let db = DbHub::<B>::open(url, settings).await.unwrap();
    let hub = Hub::builder().with(db.clone()).start().await.unwrap();
    let signal: Signal = Arc::new(|stage, delivery| {
        say(&format!("{stage} {} {}", delivery.event, delivery.attempt));
    });
    let go = Arc::new(Notify::new());
    let role = match mode {
        "hang" => Role::HangAfterEffect(signal),
        "pause" => Role::WaitThenEffect(signal, Arc::clone(&go)),
        other => panic!("unknown mode {other}"),
    };
    let worker = Arc::new(Worker {
        hub: hub.clone(),
        db: db.clone(),
        role,
    });
    hub.add_service(&worker).unwrap();
    let processor = db
        .event_processor(&hub)
        .expect("attaching started the processor");
    tokio::spawn(report(processor));
    say(&format!("ready {}", hub.host_id()));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "go" {
            go.notify_one();
        }
    }
    std::process::exit(0);
}

/// Prints the processor's stats each time a run ended.
async fn report(processor: EventProcessor) {
    let ended = |processor: &EventProcessor| {
        let stats = processor.stats();
        stats.completed()
            + stats.fenced()
            + stats.retried()
            + stats.dead()
            + stats.in_doubt()
            + stats.release_failures()
    };
    let mut seen = 0;
    loop {
        processor
            .wait_until(|_| ended(&processor) > seen, Duration::from_secs(3600))
            .await;
        seen = ended(&processor);
        let stats = processor.stats();
        say(&format!(
            "stats claimed={} completed={} fenced={} retried={} dead={} in_doubt={}",
            stats.claimed(),
            stats.completed(),
            stats.fenced(),
            stats.retried(),
            stats.dead(),
            stats.in_doubt()
        ));
    }
}
