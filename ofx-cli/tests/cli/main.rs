//! The `ofx` binary against real databases (a SQLite file, a PostgreSQL database per test): a
//! log built by real commands through a hub, then the command line's tables and JSON.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

/// A `sqlite_…` and a `postgres_…` test for each scenario, a function generic over the backend
/// that takes the database's URL (a fresh SQLite file, a fresh PostgreSQL database).
macro_rules! backend_tests {
    ($($scenario:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let url = crate::common::sqlite_file().await;
            $scenario::<ofx_diesel::Sqlite>(&url).await;
            crate::common::remove_sqlite(&url);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let url = crate::common::postgres_database().await;
            $scenario::<ofx_diesel::Postgres>(&url).await;
        }
    )*};
}

mod common;
mod events;
mod follow;
mod hosts;
mod log;
mod state;
mod usage;
