//! Lost wake-ups: the watcher's connection (or watched directory) is taken away between
//! commands. No invalidation is lost, and the delay stays bounded by the safety-net poll.

use std::time::{Duration, Instant};

use diesel_async::AsyncConnection;
use ofx_core::{ComputeService, HostId, capture};

use crate::cluster::{Cluster, CounterService, SAFETY_NET_POLL, Wakeup};

/// Runs three commands on host A; before the second, `cut` takes host B's wake-ups away.
async fn survives(wakeup: Wakeup, cut: impl AsyncFn(&HostId)) {
    let path = std::env::temp_dir().join(format!(
        "ofx-lost-wakeups-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let cluster = Cluster::<ofx_diesel::Sqlite>::start(&path.to_string_lossy(), 2, &wakeup).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    b.reader.wait_for(0).await;
    for round in 0..3 {
        let (_, computed) = capture(b.counters.value_of(1)).await.unwrap();
        if round == 1 {
            cut(b.counters.hub().host_id()).await;
        }
        let started = Instant::now();
        a.counters.bump(1, 1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(15), computed.when_invalidated())
            .await
            .expect("host B's value is invalidated even though its wake-up was lost");
        let delay = started.elapsed();
        assert!(
            delay <= SAFETY_NET_POLL + Duration::from_secs(1),
            "round {round}: invalidated after {delay:?}, beyond the safety-net poll of {SAFETY_NET_POLL:?}"
        );
    }
}

fn redis_cli(args: &[&str]) -> String {
    let server = std::env::var("OFX_TEST_REDIS_CLI_PORT").unwrap_or_else(|_| "6379".to_owned());
    let output = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server])
        .args(args)
        .output()
        .expect("redis-cli (start Redis with `redis-server --daemonize yes --port 6379`)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_kill() {
    let server =
        std::env::var("OFX_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    survives(Wakeup::Redis(server), async |host: &HostId| {
        let name = ofx_watchers::RedisWatcher::client_name_for(host);
        let clients = redis_cli(&["CLIENT", "LIST"]);
        let ids: Vec<String> = clients
            .lines()
            .filter(|line| line.contains(&format!(" name={name} ")))
            .filter_map(|line| {
                line.split(' ')
                    .find_map(|field| field.strip_prefix("id="))
                    .map(str::to_owned)
            })
            .collect();
        assert!(
            !ids.is_empty(),
            "host B's subscriber connection {name} is listed"
        );
        for id in ids {
            redis_cli(&["CLIENT", "KILL", "ID", &id]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listen_connection_terminated() {
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let admin_url = format!("{server}/postgres");
    survives(Wakeup::Postgres(server), async |host: &HostId| {
        let mut admin = diesel_async::AsyncPgConnection::establish(&admin_url)
            .await
            .unwrap();
        let name = format!("ofx-watcher {host}");
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let terminated: Count = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(format!(
                "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                 WHERE application_name = '{name}' AND query LIKE 'LISTEN%'"
            )),
            &mut admin,
        )
        .await
        .unwrap();
        assert!(
            terminated.n >= 1,
            "host B's LISTEN connection was found and terminated"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_directory_deleted_and_recreated() {
    let dir = std::env::temp_dir().join(format!(
        "ofx-lost-wakeups-watch-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let watched = dir.clone();
    survives(Wakeup::Fs(dir.clone()), async move |_: &HostId| {
        std::fs::remove_dir_all(&watched).unwrap();
        std::fs::create_dir_all(&watched).unwrap();
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}
