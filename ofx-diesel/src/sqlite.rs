//! The SQLite backend: bundled SQLite through diesel-async's sync-connection wrapper, in WAL
//! mode. The embedded default.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::backend::{Backend, StartPosition, sealed};
use crate::row::{NewOperationRow, OperationRow};
use crate::schema::ofx_log_trims::dsl as trims;
use crate::schema::ofx_operations::dsl;
use crate::{Error, Result};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// SQLite, the embedded default: a file path (or `:memory:` for one connection) as the URL.
///
/// Connections use WAL, `synchronous = NORMAL` (durable against a process crash; use
/// PostgreSQL for durability against power loss) and wait up to 5 s on a locked database.
#[derive(Debug, Clone, Copy)]
pub struct Sqlite;

impl sealed::Sealed for Sqlite {}

/// A SQLite connection usable from async code.
pub type SqliteAsyncConnection = SyncConnectionWrapper<SqliteConnection>;

const SESSION: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                       PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

impl Backend for Sqlite {
    type Connection = SqliteAsyncConnection;
    type Pool = Pool<SqliteAsyncConnection>;
    type Pooled = Object<SqliteAsyncConnection>;

    const NAME: &'static str = "sqlite";
    // One writer at a time, and AUTOINCREMENT: rows commit in index order.
    const HAS_GAPS: bool = false;

    async fn connect(url: &str) -> diesel::ConnectionResult<Self::Connection> {
        let mut connection = SqliteAsyncConnection::establish(url).await?;
        connection
            .batch_execute(SESSION)
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(connection)
    }

    crate::queries::deadpool_pool!();

    async fn migrate(url: &str) -> Result<()> {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut connection = SqliteConnection::establish(&url)
                .map_err(|error| Error::Connect(error.to_string()))?;
            diesel::connection::SimpleConnection::batch_execute(&mut connection, SESSION)?;
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
        // One writer at a time, and AUTOINCREMENT: a row not visible now gets a higher index.
        let cursor: Option<i64> = dsl::ofx_operations
            .select(diesel::dsl::max(dsl::idx))
            .first(connection)
            .await?;
        Ok(StartPosition {
            cursor: cursor.unwrap_or(0),
            in_flight: Vec::new(),
        })
    }

    async fn running_transactions(
        _connection: &mut Self::Connection,
        _transactions: &[i64],
    ) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }

    async fn rows_of_transactions(
        _connection: &mut Self::Connection,
        _through: i64,
        _transactions: &[i64],
    ) -> Result<Vec<OperationRow>> {
        Ok(Vec::new())
    }
}
