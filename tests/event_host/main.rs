//! A host that dies or stops in the middle of an event's run, as an OS process: killed with
//! `SIGKILL`, its event is run by another host after its lease, once; stopped with `SIGSTOP`
//! past its lease and continued after another host completed the event, its late commit is
//! refused (fenced off by the lease token), and the effect still happened once.
//!
//! The child is `event_host` (this package's binary): it claims the event that host B (this
//! process, its processor started only once the child is mid-handler) produced, and says on
//! stdout when it is in the middle of its handler.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection as _;
use ofx_core::Hub;
use ofx_diesel::{DbHub, DbSettings, EventProcessor, EventState};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

#[allow(dead_code, unreachable_pub)] // shared with the child binary, which uses other parts of it
mod service;

use service::{EffectQueries, LEASE, Produce, Role, TABLES, Worker};

/// How long the child may take to say its next line.
const PATIENCE: Duration = Duration::from_secs(30);

/// The child process.
struct ChildHost {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildHost {
    /// Starts `event_host <backend> <url> <mode>` and waits until its processor runs.
    async fn start(backend: &str, url: &str, mode: &str) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_event_host"))
            .args([backend, url, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut host = Self {
            child,
            stdin,
            lines,
        };
        let ready = host.line().await;
        assert!(ready.starts_with("ready "), "{ready}");
        host
    }

    /// Its next line on stdout.
    async fn line(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("the child host answers in time")
            .unwrap()
            .expect("the child host is running")
    }

    fn pid(&self) -> String {
        self.child.id().expect("the child runs").to_string()
    }

    /// Sends `signal` (`STOP`, `CONT`) to it.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    async fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes its stdin: it exits.
    async fn stop(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the child host exits when its input closes")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// Host B: this process, with the worker that finishes its runs; its processor is off until
/// the test starts it.
struct HostB<B: EffectQueries> {
    hub: Hub,
    db: DbHub<B>,
    /// The hub holds its services weakly.
    _worker: Arc<Worker<B>>,
}

impl<B: EffectQueries> HostB<B> {
    async fn open(url: &str) -> Self {
        let mut settings = DbSettings::default();
        settings.poll_period = Duration::from_millis(20);
        settings.read_log = false;
        settings.trim = false;
        settings.events.process = false;
        settings.events.lease = LEASE;
        let db = DbHub::<B>::open(url, settings).await.unwrap();
        let hub = Hub::builder().with(db.clone()).start().await.unwrap();
        let worker = Arc::new(Worker {
            hub: hub.clone(),
            db: db.clone(),
            role: Role::Finish,
        });
        hub.add_service(&worker).unwrap();
        Self {
            hub,
            db,
            _worker: worker,
        }
    }

    /// Starts its processor and waits until it completed the event.
    async fn complete(&self) -> EventProcessor {
        let processor = self.db.start_event_processor(&self.hub).unwrap();
        // The child's lease runs out first: at most a lease and a heartbeat's wait from now.
        assert!(
            processor
                .wait_until(|stats| stats.completed() >= 1, PATIENCE)
                .await,
            "host B completed the event after the child's lease"
        );
        processor
    }

    /// The hosts that wrote an effect of `event`, one entry per effect.
    async fn effects(&self, event: uuid::Uuid) -> Vec<String> {
        let mut connection = self.db.connection().await.unwrap();
        B::effects_of(&mut connection, &event.to_string())
            .await
            .unwrap()
    }

    /// Checks that `event` was done by host B, on the second claim, with its effect once.
    async fn assert_done_once_by_b(&self, event: uuid::Uuid) {
        let info = self.db.events().get(event).await.unwrap().unwrap();
        assert_eq!(info.state, Some(EventState::Done));
        assert_eq!(info.attempts, 2, "the child's claim, then host B's");
        assert_eq!(
            info.lease_token, 2,
            "each claim took a new fencing token: the child's was 1"
        );
        assert_eq!(
            self.effects(event).await,
            [self.hub.host_id().to_string()],
            "one effect, host B's: the child's never committed"
        );
    }
}

/// Reads the child's `mid <event> <attempt>` line: it is in the middle of its first attempt of
/// `event`.
async fn mid_handler(child: &mut ChildHost, event: uuid::Uuid) {
    let mid = child.line().await;
    assert_eq!(mid, format!("mid {event} 1"), "the child runs the event");
}

async fn a_host_killed_mid_handler_loses_its_event_to_another_after_the_lease<B: EffectQueries>(
    backend: &str,
    url: &str,
) {
    let b = HostB::<B>::open(url).await;
    let mut child = ChildHost::start(backend, url, "hang").await;
    let event = b.hub.commander().call(Produce).await.unwrap();
    // The child claimed it, wrote its effect in the run's transaction, and hangs there.
    mid_handler(&mut child, event).await;
    child.child.start_kill().unwrap(); // SIGKILL
    let status = tokio::time::timeout(PATIENCE, child.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "killed: {status}");

    let processor = b.complete().await;
    b.assert_done_once_by_b(event).await;
    assert_eq!(processor.stats().claimed(), 1);
    assert_eq!(processor.stats().fenced(), 0);
}

async fn a_stopped_host_that_comes_back_after_its_lease_has_its_commit_refused<B: EffectQueries>(
    backend: &str,
    url: &str,
    stopped_without_locks: impl AsyncFn(&HostB<B>) -> bool,
) {
    let b = HostB::<B>::open(url).await;
    let mut child = ChildHost::start(backend, url, "pause").await;
    let event = b.hub.commander().call(Produce).await.unwrap();
    // The child claimed it and waits in its handler, before writing anything.
    mid_handler(&mut child, event).await;
    // Stopped: no heartbeat renews its lease. Stopped in the middle of one of its own
    // statements (a claim poll, a heartbeat), it could hold the database's lock: continue it
    // and stop it again.
    let mut stops = 0;
    loop {
        child.signal("STOP");
        stops += 1;
        if stopped_without_locks(&b).await {
            break;
        }
        assert!(stops < 10, "the child keeps holding a lock when stopped");
        child.signal("CONT");
    }

    let processor = b.complete().await;
    b.assert_done_once_by_b(event).await;

    // The child comes back, long after its lease, and finishes its run: its commit must be
    // refused, its effect rolled back.
    child.signal("CONT");
    child.tell("go").await;
    assert_eq!(
        child.line().await,
        format!("returning {event} 1"),
        "the child's handler wrote its effect and succeeded"
    );
    // Its handler succeeded, so what was refused is its commit: the run's transaction marks
    // the event done only under the claim's token (1, while the event's is 2 now).
    assert_eq!(
        child.line().await,
        "stats claimed=1 completed=0 fenced=1 retried=0 dead=0 in_doubt=0",
        "the child's run was fenced off: its lease was lost"
    );
    b.assert_done_once_by_b(event).await;
    assert_eq!(processor.stats().claimed(), 1);
    child.stop().await;
}

/// A fresh SQLite file with the effects table.
async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!(
        "ofx-event-host-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<ofx_diesel::Sqlite>::open(&path, DbSettings::default())
        .await
        .unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(TABLES)
        .await
        .unwrap();
    path
}

/// Whether a stopped child holds SQLite's write lock: taking it (with the connection's busy
/// timeout) fails while it does.
async fn sqlite_unlocked(b: &HostB<ofx_diesel::Sqlite>) -> bool {
    let mut connection = b.db.connection().await.unwrap();
    match connection.batch_execute("BEGIN IMMEDIATE").await {
        Ok(()) => {
            connection.batch_execute("ROLLBACK").await.unwrap();
            true
        }
        Err(_) => false,
    }
}

/// A fresh PostgreSQL database with the effects table, on the server at 127.0.0.1:5432 (or
/// `OFX_TEST_POSTGRES`).
async fn postgres_database() -> String {
    use diesel_async::AsyncConnection as _;
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {server} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or set OFX_TEST_POSTGRES to another server"
            )
        });
    drop_leftovers(&mut admin, "ofx_event_host_").await;
    let name = format!(
        "ofx_event_host_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    let db = DbHub::<ofx_diesel::Postgres>::open(&url, DbSettings::default())
        .await
        .unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(TABLES)
        .await
        .unwrap();
    url
}

/// A stopped PostgreSQL client holds no lock: its statements run to their end on the server
/// (autocommit), and the paused handler has not begun its transaction.
async fn postgres_unlocked(_b: &HostB<ofx_diesel::Postgres>) -> bool {
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_host_killed_mid_handler_loses_its_event_to_another_after_the_lease() {
    let url = sqlite_file().await;
    a_host_killed_mid_handler_loses_its_event_to_another_after_the_lease::<ofx_diesel::Sqlite>(
        "sqlite", &url,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_host_killed_mid_handler_loses_its_event_to_another_after_the_lease() {
    let url = postgres_database().await;
    a_host_killed_mid_handler_loses_its_event_to_another_after_the_lease::<ofx_diesel::Postgres>(
        "postgres", &url,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_stopped_host_that_comes_back_after_its_lease_has_its_commit_refused() {
    let url = sqlite_file().await;
    a_stopped_host_that_comes_back_after_its_lease_has_its_commit_refused::<ofx_diesel::Sqlite>(
        "sqlite",
        &url,
        sqlite_unlocked,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_stopped_host_that_comes_back_after_its_lease_has_its_commit_refused() {
    let url = postgres_database().await;
    a_stopped_host_that_comes_back_after_its_lease_has_its_commit_refused::<ofx_diesel::Postgres>(
        "postgres",
        &url,
        postgres_unlocked,
    )
    .await;
}

/// Drops the test databases named `{prefix}{pid}_…` whose process is gone (a test that failed
/// before it could drop its own); databases of running processes are left alone.
async fn drop_leftovers(admin: &mut diesel_async::AsyncPgConnection, prefix: &str) {
    use diesel::QueryableByName;
    use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection as _};
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let names: Vec<Name> = diesel::sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'"
    ))
    .load(admin)
    .await
    .unwrap_or_default();
    for Name { datname } in names {
        let pid = datname[prefix.len()..]
            .split('_')
            .next()
            .unwrap_or_default();
        let alive = !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            // Fails harmlessly if the database is still in use.
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {datname}"))
                .await;
        }
    }
}
