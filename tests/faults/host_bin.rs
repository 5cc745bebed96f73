//! A fault-matrix host in a process of its own, that kills itself with `SIGKILL` at a fail
//! point, for the kill tests (`faults/kills.rs`). It writes its history to a file, one JSON
//! record per line, so that what it did before it died reaches the checker.
//!
//! `fault_host <sqlite|postgres> <url> <fs-dir|-> <log> <history> <fail point> <n>`
//!
//! Fail points (the host dies at the `n`-th time it reaches it): `before_commit` (the main
//! branch ran, `COMMIT` not sent), `after_commit` (committed, its invalidation pass not run),
//! `mid_invalidation` (in an invalidation branch, local or replayed), `mid_event` (an event's
//! handler wrote its effect, its transaction not committed). Its writers call commands, every
//! third one with an event, until it dies.
//!
//! With the fail point `none` it writes `n` commands, prints `written`, then waits for a line
//! `settle <log index>` on stdin: it waits until it replayed the log up to there, records what
//! it serves beside direct reads, prints `done` and exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a failure ends the process: the test sees it

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ofx_diesel::CommitFaultHook;
use ofx_tests::checker::History;
use ofx_tests::ledger::{Fault, Hook, Hooks, LedgerHost, LedgerQueries, Wakeup};
use tokio::io::AsyncBufReadExt as _;

/// Counter keys (as the tests').
const KEYS: i64 = 16;

/// Writers in the process.
const WRITERS: usize = 4;

/// How long a host that was told to die may live without reaching its fail point.
const DEADLINE: Duration = Duration::from_secs(120);

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").unwrap();
    stdout.flush().unwrap();
}

/// Dies at once, as a crash does: no destructor, no flush, no goodbye.
fn die() -> ! {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::process::exit(4)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backend, url, dir, log, history, point, n] = args.as_slice() else {
        panic!(
            "usage: fault_host <sqlite|postgres> <url> <fs-dir|-> <log> <history> <fail point> <n>"
        );
    };
    let n: usize = n.parse().unwrap();
    match backend.as_str() {
        "sqlite" => run::<ofx_diesel::Sqlite>(url, dir, log, history, point, n).await,
        "postgres" => run::<ofx_diesel::Postgres>(url, dir, log, history, point, n).await,
        other => panic!("unknown backend {other}"),
    }
}

async fn run<B: LedgerQueries>(
    url: &str,
    dir: &str,
    log: &str,
    history: &str,
    point: &str,
    n: usize,
) {
    let history = Arc::new(History::to_file(std::path::Path::new(history)).unwrap());
    let reached = Arc::new(AtomicUsize::new(0));
    let fail: Hook = {
        let reached = Arc::clone(&reached);
        Arc::new(move || {
            if reached.fetch_add(1, Ordering::SeqCst) + 1 == n {
                die();
            }
        })
    };
    let mut hooks = Hooks::default();
    match point {
        "after_commit" => hooks.after_commit = Some(Arc::clone(&fail)),
        "mid_invalidation" => hooks.mid_invalidation = Some(Arc::clone(&fail)),
        "mid_event" => hooks.mid_event = Some(Arc::clone(&fail)),
        "before_commit" | "none" => {}
        other => panic!("unknown fail point {other}"),
    }
    let wakeup = if dir == "-" {
        Wakeup::Postgres(url.to_owned())
    } else {
        Wakeup::Fs(dir.into())
    };
    let host = LedgerHost::<B>::start_with(url, log, &wakeup, None, hooks, &history)
        .await
        .unwrap();
    if point == "before_commit" {
        let hook: CommitFaultHook<B> = Arc::new(move |_connection| {
            fail();
            Box::pin(async {})
        });
        host.ledger.db().set_commit_fault(Some(hook));
    }
    let host = Arc::new(host);
    say("ready");
    let limit = if point == "none" { n } else { usize::MAX };
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let host = Arc::clone(&host);
        let next = Arc::clone(&next);
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    return;
                }
                let key = i64::try_from(i).unwrap() % KEYS;
                let _ = host
                    .ledger
                    .call_with_event(key, 1, Fault::None, i.is_multiple_of(3))
                    .await;
            }
        });
    }
    if point != "none" {
        tokio::time::sleep(DEADLINE).await;
        say("the fail point was never reached");
        std::process::exit(3);
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    say("written");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(index) = line.strip_prefix("settle ") {
            let index: i64 = index.parse().unwrap();
            host.ledger
                .db()
                .wait_replayed(&host.hub, index, Duration::from_secs(60))
                .await
                .unwrap();
            host.ledger.record_reads(KEYS).await.unwrap();
            say("done");
            std::process::exit(0);
        }
    }
    std::process::exit(5);
}
