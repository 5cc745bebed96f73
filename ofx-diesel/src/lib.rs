//! ofx-diesel
mod backend;
mod db_hub;
mod error;
#[cfg(feature = "postgres")]
mod postgres;
mod reader;
mod row;
mod schema;
mod scope;
#[cfg(feature = "sqlite")]
mod sqlite;
mod trimmer;
pub use backend::Backend;
pub use db_hub::{CommitFaultHook, DbHub, DbSettings};
pub use error::{Error, Result};
#[cfg(feature = "postgres")]
pub use postgres::Postgres;
pub use reader::{LogReader, MAX_GAPS, ReaderStats};
pub use row::{BadRow, NewOperationRow, OperationRow};
pub use scope::{DATABASE_OPERATION_SCOPE, DbOperationScope, OperationConnection};
#[cfg(feature = "sqlite")]
pub use sqlite::{Sqlite, SqliteAsyncConnection};
pub use trimmer::Trimmer;
