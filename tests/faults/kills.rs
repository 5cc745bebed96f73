//! Hosts killed with `SIGKILL` at fail points: after the main branch before `COMMIT`, after
//! `COMMIT` before the local invalidation pass, in the middle of an invalidation branch, and in
//! the middle of an event's handler. Each victim is a `fault_host` process; host B (this
//! process) writes all along. Survivors lose nothing, every committed effect and every event's
//! effect happened once, and a host started afterwards serves nothing stale.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ofx_tests::checker::{History, Record, check};
use ofx_tests::ledger::{Fault, LedgerHost, LedgerQueries, Wakeup, events_settled, truth};
use ofx_tests::servers::{drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;
use rand::Rng;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_util::sync::CancellationToken;

use crate::harness::{KEYS, QUIESCENCE};
use crate::soak::tempdir;

/// The fail points, in turn.
const POINTS: [&str; 4] = [
    "before_commit",
    "after_commit",
    "mid_invalidation",
    "mid_event",
];

/// How long a victim may take to die.
const PATIENCE: Duration = Duration::from_secs(150);

/// Where the victims are and how they are started.
struct Victims {
    backend: &'static str,
    url: String,
    dir: Option<PathBuf>,
    log: String,
    files: PathBuf,
}

impl Victims {
    fn command(&self, history: &Path, point: &str, n: usize) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fault_host"));
        command
            .arg(self.backend)
            .arg(&self.url)
            .arg(
                self.dir
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |dir| dir.to_string_lossy().into_owned()),
            )
            .arg(&self.log)
            .arg(history)
            .arg(point)
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// The host a victim's history names, if it got as far as starting.
fn host_of(records: &[Record]) -> Option<String> {
    records.iter().find_map(|record| match record {
        Record::HostStarted { host, .. } => Some(host.clone()),
        _ => None,
    })
}

async fn kills<B: LedgerQueries>(victims: Victims, kills: usize, scenario: &str) {
    let history = Arc::new(History::new());
    let wakeup = victims.dir.as_ref().map_or_else(
        || Wakeup::Postgres(victims.url.clone()),
        |dir| Wakeup::Fs(dir.clone()),
    );
    let b = Arc::new(
        LedgerHost::<B>::start(&victims.url, &victims.log, &wakeup, None, &history)
            .await
            .unwrap(),
    );
    // Host B writes all along (every third command with an event).
    let stop = CancellationToken::new();
    let writer = {
        let b = Arc::clone(&b);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0_i64;
            while !stop.is_cancelled() {
                let _ = b
                    .ledger
                    .call_with_event(i % KEYS, 1, Fault::None, i % 3 == 0)
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut by_point = [0_usize; 4];
    for k in 0..kills {
        let point = POINTS[k % POINTS.len()];
        let n = rand::rng().random_range(1..=12);
        let file = victims.files.join(format!("victim-{k}.jsonl"));
        let mut child = victims.command(&file, point, n).spawn().unwrap();
        let status = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap_or_else(|_| panic!("victim {k} ({point} #{n}) died within {PATIENCE:?}"))
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "victim {k} ({point} #{n}) was killed at its fail point: {status}"
        );
        let records = History::load(&file).unwrap();
        let host = host_of(&records);
        history.extend(records);
        if let Some(host) = host {
            history.record(Record::HostStopped { host });
        }
        by_point[k % POINTS.len()] += 1;
    }
    // A host started after the kills, that must catch up and serve nothing stale.
    let file = victims.files.join("survivor.jsonl");
    let mut survivor = victims.command(&file, "none", 40).spawn().unwrap();
    let mut stdin = survivor.stdin.take().unwrap();
    let mut lines = BufReader::new(survivor.stdout.take().unwrap()).lines();
    let mut expect = async |wanted: &str| loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the survivor answers in time")
            .unwrap()
            .expect("the survivor runs");
        if line == wanted {
            return;
        }
    };
    expect("written").await;
    stop.cancel();
    writer.await.unwrap();
    // Events of the dead run elsewhere once their lease ends.
    events_settled(b.ledger.db(), QUIESCENCE).await.unwrap();
    let last = truth(b.ledger.db())
        .await
        .unwrap()
        .operations
        .last()
        .unwrap()
        .idx;
    b.ledger
        .db()
        .wait_replayed(&b.hub, last, QUIESCENCE)
        .await
        .unwrap();
    stdin
        .write_all(format!("settle {last}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    expect("done").await;
    let status = survivor.wait().await.unwrap();
    assert!(status.success(), "the survivor exits cleanly: {status}");
    history.extend(History::load(&file).unwrap());
    b.ledger.record_reads(KEYS).await.unwrap();
    let truth = truth(b.ledger.db()).await.unwrap();
    let report = check(&history.records(), &truth);
    println!(
        "{} | kills per fail point {:?} = {by_point:?}; events {}",
        report.summary(scenario),
        POINTS,
        truth.events.len()
    );
    report.assert_clean(scenario);
    assert!(!truth.events.is_empty(), "events were produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_killed_at_fail_points_sqlite() {
    let files = tempdir();
    let url = files.join("ledger.db").to_string_lossy().into_owned();
    let dir = files.join("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let victims = Victims {
        backend: "sqlite",
        url,
        dir: Some(dir),
        log: format!("faults-kills-{}", uuid::Uuid::new_v4().simple()),
        files: files.clone(),
    };
    kills::<ofx_diesel::Sqlite>(victims, tiered(8, 200), "kills sqlite").await;
    let _ = std::fs::remove_dir_all(files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_killed_at_fail_points_postgres() {
    let files = tempdir();
    let url = fresh_database(&shared_postgres()).await;
    let victims = Victims {
        backend: "postgres",
        url: url.clone(),
        dir: None,
        log: format!("faults-kills-{}", uuid::Uuid::new_v4().simple()),
        files: files.clone(),
    };
    kills::<ofx_diesel::Postgres>(victims, tiered(8, 200), "kills postgres").await;
    drop_database(&url).await;
    let _ = std::fs::remove_dir_all(files);
}
