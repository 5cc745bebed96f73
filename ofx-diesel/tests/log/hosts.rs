//! Hosts report their position: each hub that reads the log upserts its row of `ofx_hosts` on a
//! heartbeat, marks it stopped when it shuts down; old rows are deleted.

use std::time::{Duration, Instant, SystemTime};

use ofx_core::background::TaskState;
use ofx_diesel::{DbHub, DbSettings, HostInfo};

use crate::common::{AccountQueries, Host, fast};

fn beating() -> DbSettings {
    let mut settings = fast();
    settings.host_heartbeat = Some(Duration::from_millis(50));
    settings
}

/// Polls the hosts' rows until `host`'s satisfies `check` (at most 20 s).
async fn row_of<B: AccountQueries>(
    db: &DbHub<B>,
    host: &str,
    check: impl Fn(&HostInfo) -> bool,
) -> HostInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = db.hosts().await.unwrap();
        if let Some(row) = rows
            .into_iter()
            .find(|row| row.host_id == host && check(row))
        {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "no such row of {host} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hosts_report_their_position<B: AccountQueries>(url: &str) {
    let writer = Host::<B>::open(url, beating(), true).await;
    let reader = Host::<B>::open(url, beating(), true).await;
    let db = &reader.accounts.db;
    let reader_id = reader.accounts.hub.host_id().as_str().to_owned();
    let writer_id = writer.accounts.hub.host_id().as_str().to_owned();

    // Both rows appear; neither host has read anything but the log's (empty) end.
    let row = row_of(db, &reader_id, |_| true).await;
    assert_eq!(row.pid, std::process::id());
    assert!(!row.host_name.is_empty());
    assert_eq!(row.heartbeat_period, Duration::from_millis(50));
    assert!(row.stopped_at.is_none());
    assert!(!row.is_stale(SystemTime::now()));
    assert!(row.is_stale(SystemTime::now() + Duration::from_secs(3600)));
    row_of(db, &writer_id, |_| true).await;

    // A command on the writer: the reader's row follows its reader.
    let sequence = writer.deposit_sequence(1, 10).await;
    db.wait_replayed(&reader.accounts.hub, sequence, Duration::from_secs(20))
        .await
        .unwrap();
    let row = row_of(db, &reader_id, |row| {
        row.cursor >= sequence && row.replayed_through == Some(row.cursor)
    })
    .await;
    assert!(row.replayed >= 1, "{row:?}");
    assert!(row.heartbeat_at >= row.started_at);
    // The writer's reader reads past its own operation.
    row_of(db, &writer_id, |row| row.cursor >= sequence).await;
    let heartbeat = db.heartbeat(&reader.accounts.hub).unwrap();
    assert!(heartbeat.beats.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(
        heartbeat
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(heartbeat.health.state(), TaskState::Running);

    // A host without a heartbeat has none.
    let mut silent = fast();
    silent.host_heartbeat = None;
    let quiet = Host::<B>::open(url, silent, true).await;
    assert!(quiet.accounts.db.heartbeat(&quiet.accounts.hub).is_none());
    // Nor does a host that does not read the log.
    let writing_only = Host::<B>::open(url, beating(), false).await;
    assert!(
        writing_only
            .accounts
            .db
            .heartbeat(&writing_only.accounts.hub)
            .is_none()
    );

    // A hub that shuts down marks its row stopped; the heartbeat ends.
    drop(reader.reader);
    drop(reader.accounts);
    tokio::time::timeout(Duration::from_secs(10), heartbeat.health.ended())
        .await
        .expect("the heartbeat stops with its hub");
    let db = &writer.accounts.db;
    let row = row_of(db, &reader_id, |row| row.stopped_at.is_some()).await;
    assert!(!row.is_stale(SystemTime::now() + Duration::from_secs(3600)));

    // Past the retention, rows are deleted (the live writer's too; it writes it again).
    let mut retention = fast();
    retention.host_retention = Duration::ZERO;
    let sweeping = DbHub::<B>::open(url, retention).await.unwrap();
    // The stopped reader's row at least: the live writer beats every 50 ms, and a beat that
    // lands between the trim's reading of the clock and its DELETE keeps its row this time.
    assert!(sweeping.trim_hosts().await.unwrap() >= 1);
    assert!(
        db.hosts()
            .await
            .unwrap()
            .iter()
            .all(|row| row.host_id != reader_id)
    );
    row_of(db, &writer_id, |_| true).await;
    drop((quiet, writing_only));
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hosts_report_their_position() {
    hosts_report_their_position::<ofx_diesel::Sqlite>(&crate::common::sqlite_file().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hosts_report_their_position() {
    hosts_report_their_position::<ofx_diesel::Postgres>(&crate::common::postgres_database().await)
        .await;
}
