//! Faults of the wake-up path: the LISTEN connection terminated every 2 s, a private Redis
//! killed and restarted every 1,000 operations, an inotify queue overflowed and the watched
//! directory deleted and recreated. A lost wake-up may delay a replay, never lose it.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, RunQueryDsl};
use ofx_tests::ledger::Wakeup;
use ofx_tests::servers::{PrivateRedis, drop_database, fresh_database, shared_postgres};
use ofx_tests::tiered;
use tokio_util::sync::CancellationToken;

use crate::harness::{Run, Workload};
use crate::soak::tempdir;

/// Terminates every session of database `name` that is listening (the watcher's).
async fn terminate_listeners(admin: &mut diesel_async::AsyncPgConnection, name: &str) -> usize {
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .execute(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_connection_terminated_every_two_seconds() {
    let server = shared_postgres();
    let url = fresh_database(&server).await;
    let name = url.rsplit_once('/').unwrap().1.to_owned();
    let run = Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Postgres(url.clone())).await;
    let stop = CancellationToken::new();
    let terminator = {
        let stop = stop.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut admin = diesel_async::AsyncPgConnection::establish(&url)
                .await
                .unwrap();
            let mut terminated = 0;
            while stop
                .run_until_cancelled(tokio::time::sleep(Duration::from_secs(2)))
                .await
                .is_some()
            {
                terminated += terminate_listeners(&mut admin, &name).await;
            }
            terminated
        })
    };
    // Long enough for several terminations: the writers are paced.
    let workload = Workload::soak::<ofx_diesel::Postgres>(tiered(3_000, 10_000));
    run.drive(&workload).await;
    stop.cancel();
    let terminated = terminator.await.unwrap();
    let (report, _) = run.settle_and_check("LISTEN terminated").await;
    report.assert_clean("LISTEN terminated");
    assert!(
        terminated >= 2,
        "the listeners were terminated ({terminated})"
    );
    drop(run);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_redis_killed_and_restarted_every_1000_operations() {
    let redis = Arc::new(std::sync::Mutex::new(PrivateRedis::start()));
    let redis_url = redis.lock().unwrap().url();
    let url = fresh_database(&shared_postgres()).await;
    let run =
        Arc::new(Run::<ofx_diesel::Postgres>::start(&url, 2, &Wakeup::Redis(redis_url)).await);
    let every = tiered(250, 1_000);
    let workload = Workload::soak::<ofx_diesel::Postgres>(tiered(1_000, 10_000));
    let killer = {
        let run = Arc::clone(&run);
        let redis = Arc::clone(&redis);
        let commands = workload.commands;
        tokio::spawn(async move {
            let mut kills = 0;
            let mut at = every;
            while at < commands {
                run.reached(at).await;
                let redis = Arc::clone(&redis);
                tokio::task::spawn_blocking(move || redis.lock().unwrap().restart())
                    .await
                    .unwrap();
                kills += 1;
                at += every;
            }
            kills
        })
    };
    run.drive(&workload).await;
    let kills = killer.await.unwrap();
    let (report, _) = run.settle_and_check("Redis restarts").await;
    report.assert_clean("Redis restarts");
    assert_eq!(kills, workload.commands / every - 1);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_overflow_then_directory_recreated() {
    let path = std::env::temp_dir()
        .join(format!("ofx-faults-{}.db", uuid::Uuid::new_v4().simple()))
        .to_string_lossy()
        .into_owned();
    let dir = tempdir();
    let run = Arc::new(Run::<ofx_diesel::Sqlite>::start(&path, 2, &Wakeup::Fs(dir.clone())).await);
    let workload = Workload::soak::<ofx_diesel::Sqlite>(tiered(1_000, 10_000));
    let storm = {
        let run = Arc::clone(&run);
        let dir = dir.clone();
        let half = workload.commands / 2;
        tokio::spawn(async move {
            run.reached(half / 2).await;
            // More events than inotify's default queue (16,384) at once.
            let touched = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || {
                    for i in 0..20_000 {
                        std::fs::write(dir.join(format!("noise-{}", i % 64)), b"x").unwrap();
                    }
                    20_000
                }
            })
            .await
            .unwrap();
            run.reached(half).await;
            // The hosts keep writing their signal files into it: removing may race with them.
            let mut attempts = 0;
            while let Err(error) = std::fs::remove_dir_all(&dir) {
                attempts += 1;
                assert!(
                    attempts < 1_000,
                    "cannot remove the watched directory: {error}"
                );
            }
            std::fs::create_dir_all(&dir).unwrap();
            touched
        })
    };
    run.drive(&workload).await;
    assert_eq!(storm.await.unwrap(), 20_000);
    let (report, _) = run.settle_and_check("inotify overflow").await;
    report.assert_clean("inotify overflow");
    let _ = std::fs::remove_dir_all(dir);
}
