//! Hostile tests of the transactional maps (`ofx_diesel::maps`), written from their public API
//! and documentation only: each test asserts a documented promise (redo order, rebuilds, reads,
//! the manager's notifications, failures, the materialized-view pattern), so that a broken
//! promise is a failing test. Attacks that found a bug live in `broken.rs`, which is not
//! declared here (see its header to run it).

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)]

/// A `sqlite_…` and a `postgres_…` test for each scenario, a function generic over the backend
/// that takes the database's URL (a fresh SQLite file, a fresh PostgreSQL database).
macro_rules! backend_tests {
    ($($scenario:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[cfg(feature = "sqlite")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let url = crate::kit::sqlite_file().await;
            $scenario::<ofx_diesel::Sqlite>(&url).await;
        }

        #[cfg(feature = "postgres")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let url = crate::kit::postgres_database().await;
            $scenario::<ofx_diesel::Postgres>(&url).await;
        }
    )*};
}

/// A PostgreSQL-only test.
macro_rules! postgres_tests {
    ($($scenario:ident => $postgres:ident;)*) => {$(
        #[cfg(feature = "postgres")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let url = crate::kit::postgres_database().await;
            $scenario(&url).await;
        }
    )*};
}

mod kit;
// The state service's hostile suite's proxy, shared.
#[path = "../state_hostile/proxy.rs"]
mod proxy;

mod edges;
mod failure;
mod manager;
mod order;
mod reads;
mod rebuild;
mod regressions;
mod view;
