//! Connections are checked out of the pool without a test query (no `SELECT 1` round trip per
//! command). A pooled connection that died while idle fails at the operation's `BEGIN`, before
//! anything of the operation was sent: the operation begins again on another connection, and
//! the caller never sees the failure, even with reprocessing off.

use ofx_core::ReprocessPolicy;
use ofx_diesel::{DbHub, Postgres};

use crate::common::{Host, RawSql, fast, postgres_database};
use crate::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_cut_at_begin_is_replaced_and_the_command_runs_once() {
    let url = postgres_database().await;
    let proxy = Proxy::start(&url).await;
    let host = Host::<Postgres>::open_reprocessing(
        proxy.url(),
        fast(),
        false,
        ReprocessPolicy::disabled(),
    )
    .await;
    let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
    // A first command leaves its connection idle in the pool.
    assert_eq!(host.deposit(1, 5, false).await.unwrap(), 5);
    for round in 1..=5_i64 {
        proxy.arm_begin();
        assert_eq!(
            host.deposit(1, 1, false).await.unwrap(),
            5 + round,
            "round {round}: the command ran on another connection"
        );
        assert_eq!(
            proxy.begins_cut(),
            round as u64,
            "round {round}: the proxy cut the reused connection at BEGIN"
        );
    }
    assert_eq!(
        direct.count("accounts WHERE id = 1 AND balance = 10").await,
        1
    );
    assert_eq!(
        direct.count("ofx_operations").await,
        6,
        "each command is in the log exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_after_the_server_terminated_every_idle_connection() {
    let url = postgres_database().await;
    let host =
        Host::<Postgres>::open_reprocessing(&url, fast(), false, ReprocessPolicy::disabled()).await;
    let direct = DbHub::<Postgres>::open(&url, fast()).await.unwrap();
    // Several connections idle in the pool: commands run concurrently.
    for deposited in deposit_to_four(&host).await {
        assert_eq!(deposited.unwrap(), 1);
    }
    for round in 1..=3_i64 {
        direct
            .exec(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await;
        for deposited in deposit_to_four(&host).await {
            assert_eq!(
                deposited.unwrap_or_else(|error| panic!("round {round}: {error:?}")),
                1 + round
            );
        }
    }
    assert_eq!(direct.count("ofx_operations").await, 16);
}

/// Deposits 1 to accounts 1 to 4 at the same time (four connections in use at once).
async fn deposit_to_four(host: &Host<Postgres>) -> [Result<i64, ofx_core::Error>; 4] {
    let (a, b, c, d) = tokio::join!(
        host.deposit(1, 1, false),
        host.deposit(2, 1, false),
        host.deposit(3, 1, false),
        host.deposit(4, 1, false),
    );
    [a, b, c, d]
}
