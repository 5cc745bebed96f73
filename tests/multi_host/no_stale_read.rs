//! No stale read after quiescence, randomized: hosts read through compute methods while
//! writers on every host bump overlapping counters; once every reader has caught up, every
//! cached value equals a fresh database read, and every command's main branch ran once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use rand::Rng;

use crate::cluster::{Cluster, CounterQueries, CounterService, KEYS, Wakeup};

const HOSTS: usize = 3;
const WRITERS: usize = 8;
const COMMANDS: usize = 2_000;

async fn run<B: CounterQueries>(url: &str, wakeup: &Wakeup) {
    let cluster = Arc::new(Cluster::<B>::start(url, HOSTS, wakeup).await);
    let mut tasks = tokio::task::JoinSet::new();
    // Writers, spread over the hosts.
    for writer in 0..WRITERS {
        let cluster = Arc::clone(&cluster);
        tasks.spawn(async move {
            let counters = &cluster.hosts[writer % HOSTS].counters;
            let mut total = 0;
            for _ in 0..COMMANDS / WRITERS {
                let (key, by) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..KEYS), rng.random_range(1..10))
                };
                counters.bump(key, by).await.unwrap();
                total += by;
            }
            total
        });
    }
    // Readers on every host, all along.
    let readers_done = Arc::new(tokio::sync::Notify::new());
    let mut readers = tokio::task::JoinSet::new();
    for host in 0..HOSTS {
        for _ in 0..2 {
            let cluster = Arc::clone(&cluster);
            let done = Arc::clone(&readers_done);
            readers.spawn(async move {
                let counters = &cluster.hosts[host].counters;
                loop {
                    let (a, b) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..KEYS), rng.random_range(0..KEYS))
                    };
                    let read = async {
                        counters.value_of(a).await.unwrap();
                        counters.pair_of(a, b).await.unwrap();
                    };
                    tokio::select! {
                        () = done.notified() => return,
                        () = read => {}
                    }
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    let mut written = 0;
    while let Some(total) = tasks.join_next().await {
        written += total.unwrap();
    }
    readers_done.notify_waiters();
    readers.shutdown().await;

    // Quiescence: every reader has read every row.
    let last = {
        let counters = &cluster.hosts[0].counters;
        let mut sum = 0;
        for key in 0..KEYS {
            sum += counters.fresh(key).await;
        }
        assert_eq!(sum, written, "every bump applied once");
        i64::try_from(COMMANDS).unwrap()
    };
    for host in &cluster.hosts {
        tokio::time::timeout(Duration::from_secs(30), host.reader.wait_for(last))
            .await
            .expect("every reader catches up within 30 s");
    }
    assert_eq!(
        cluster.main_runs.load(Ordering::SeqCst),
        COMMANDS as u64,
        "each main branch ran exactly once"
    );
    for (index, host) in cluster.hosts.iter().enumerate() {
        // Every wake-up's hint was its operation's row (hints from honest hosts).
        let stats = host.reader.stats();
        assert_eq!(
            (
                stats.hint_mismatches.load(Ordering::SeqCst),
                stats.bad_hints.load(Ordering::SeqCst)
            ),
            (0, 0),
            "host {index}: hints that were not their rows"
        );
    }
    for (index, host) in cluster.hosts.iter().enumerate() {
        for a in 0..KEYS {
            let fresh = host.counters.fresh(a).await;
            assert_eq!(
                host.counters.value_of(a).await,
                Ok(fresh),
                "host {index} serves a stale value({a})"
            );
            for b in 0..KEYS {
                let fresh_b = host.counters.fresh(b).await;
                assert_eq!(
                    host.counters.pair_of(a, b).await,
                    Ok(fresh * 1000 + fresh_b),
                    "host {index} serves a stale pair({a}, {b})"
                );
            }
        }
    }
}

fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!(
        "ofx-multi-host-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    path.to_string_lossy().into_owned()
}

fn postgres_server() -> String {
    std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn redis_server() -> String {
    std::env::var("OFX_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh PostgreSQL database; dropped by `drop_database`.
async fn postgres_database() -> (String, String) {
    let server = postgres_server();
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {server} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            )
        });
    let name = format!("ofx_multi_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    (format!("{server}/{name}"), name)
}

async fn drop_database(name: &str) {
    let server = postgres_server();
    if let Ok(mut admin) =
        diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres")).await
    {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_on_sqlite_polling() {
    run::<ofx_diesel::Sqlite>(&sqlite_file(), &Wakeup::Polling(Duration::from_millis(20))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_on_sqlite_with_the_fs_watcher() {
    let dir = std::env::temp_dir().join(format!(
        "ofx-multi-host-watch-{}",
        uuid::Uuid::new_v4().simple()
    ));
    run::<ofx_diesel::Sqlite>(&sqlite_file(), &Wakeup::Fs(dir.clone())).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_on_postgres_polling() {
    let (url, name) = postgres_database().await;
    run::<ofx_diesel::Postgres>(&url, &Wakeup::Polling(Duration::from_millis(20))).await;
    drop_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_on_postgres_with_listen_notify() {
    let (url, name) = postgres_database().await;
    run::<ofx_diesel::Postgres>(&url, &Wakeup::Postgres(postgres_server())).await;
    drop_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_on_postgres_with_redis() {
    let (url, name) = postgres_database().await;
    run::<ofx_diesel::Postgres>(&url, &Wakeup::Redis(redis_server())).await;
    drop_database(&name).await;
}
