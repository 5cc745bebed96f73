//! The PostgreSQL backend: diesel-async's `AsyncPgConnection` with a deadpool pool.

use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::backend::{Backend, StartPosition, sealed};
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

    async fn start_position(connection: &mut Self::Connection) -> Result<StartPosition> {
        // One statement, one snapshot: every row with an index up to `cursor` that is not
        // visible in it belongs to a transaction in its in-progress list (the operation's
        // transaction id is assigned before its index is drawn).
        let start: StartRow = diesel::sql_query(
            "SELECT COALESCE((SELECT MAX(idx) FROM ofx_operations), 0) AS cursor, \
             ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(pg_current_snapshot()) AS x) \
             AS in_flight",
        )
        .get_result(connection)
        .await?;
        Ok(StartPosition {
            cursor: start.cursor,
            in_flight: start.in_flight,
        })
    }

    async fn running_transactions(
        connection: &mut Self::Connection,
        transactions: &[i64],
    ) -> Result<Vec<i64>> {
        let running: Vec<RunningRow> = diesel::sql_query(
            "SELECT x AS transaction FROM unnest($1::bigint[]) AS x \
             WHERE pg_xact_status(x::text::xid8) = 'in progress'",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(transactions)
        .load(connection)
        .await?;
        Ok(running.into_iter().map(|row| row.transaction).collect())
    }

    async fn rows_of_transactions(
        _connection: &mut Self::Connection,
        _through: i64,
        _transactions: &[i64],
    ) -> Result<Vec<OperationRow>> {
        Ok(Vec::new())
    }
}

#[derive(QueryableByName)]
struct StartRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    cursor: i64,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::BigInt>)]
    in_flight: Vec<i64>,
}

#[derive(QueryableByName)]
struct RunningRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    transaction: i64,
}
