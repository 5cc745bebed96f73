//! Hostile tests of events with guaranteed delivery and reprocessing, written from the public
//! API and the docs only. A test that fails names the promise it breaks.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)]

/// A `sqlite_…` and a `postgres_…` test for each scenario (as in `tests/events`).
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

#[path = "../events/common.rs"]
mod common;

mod svc;

mod cancel;
mod config;
mod errors;
mod events;
mod load;
