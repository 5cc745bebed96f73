//! ofx-diesel
mod backend;
mod db_hub;
mod error;
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
pub use reader::{LogReader, ReaderStats};
pub use row::{BadRow, NewOperationRow, OperationRow};
pub use scope::{DATABASE_OPERATION_SCOPE, DbOperationScope, OperationConnection};
#[cfg(feature = "sqlite")]
pub use sqlite::{Sqlite, SqliteAsyncConnection};
pub use trimmer::Trimmer;
