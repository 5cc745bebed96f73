//! Transactional maps and their ordered change notifications, on SQLite and PostgreSQL: redo
//! order on every host, commit sequence numbers, rebuilds (start, coverage loss, restore),
//! the manager's notifications, reads through compute methods, a secondary index kept exact.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

/// A `sqlite_…` and a `postgres_…` test for each scenario, a function generic over the backend
/// that takes the database's URL (a fresh SQLite file, a fresh PostgreSQL database).
macro_rules! backend_tests {
    ($($scenario:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[cfg(feature = "sqlite")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let url = crate::common::sqlite_file().await;
            $scenario::<ofx_diesel::Sqlite>(&url).await;
        }

        #[cfg(feature = "postgres")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let url = crate::common::postgres_database().await;
            $scenario::<ofx_diesel::Postgres>(&url).await;
        }
    )*};
}

mod common;
mod index;
mod order;
mod rebuild;
mod writes;
