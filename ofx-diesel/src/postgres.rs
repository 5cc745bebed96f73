//! The PostgreSQL backend: diesel-async's `AsyncPgConnection` with a deadpool pool.

use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::backend::{Backend, sealed};
use crate::row::{NewOperationRow, OperationRow};
use crate::schema::ofx_log_trims::dsl as trims;
use crate::schema::ofx_operations::dsl;
use crate::{Error, Result};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// PostgreSQL: a `postgres://` URL.
///
/// Concurrent transactions may commit operation rows out of index order; the log reader
/// tracks the gaps this leaves (see [`DbSettings::gap_retention`](crate::DbSettings)).
#[derive(Debug, Clone, Copy)]
pub struct Postgres;

impl sealed::Sealed for Postgres {}

impl Backend for Postgres {
    type Connection = AsyncPgConnection;
    type Pool = Pool<AsyncPgConnection>;
    type Pooled = Object<AsyncPgConnection>;

    const NAME: &'static str = "postgres";
    const HAS_GAPS: bool = true;

    async fn connect(url: &str) -> diesel::ConnectionResult<Self::Connection> {
        AsyncPgConnection::establish(url).await
    }

    crate::queries::deadpool_pool!();

    async fn migrate(url: &str) -> Result<()> {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut connection =
                <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                    .map_err(|error| Error::Connect(error.to_string()))?;
            connection
                .run_pending_migrations(MIGRATIONS)
                .map(|_| ())
                .map_err(|error| Error::Migration(error.to_string()))
        })
        .await
        .map_err(|error| Error::Migration(error.to_string()))?
    }

    crate::queries::log_queries!();
}
