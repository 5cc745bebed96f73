//! An accounts service on a database, and hosts to run it.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Computed, Hub, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::{Backend, DbHub, DbSettings, LogReader};
use serde::{Deserialize, Serialize};

diesel::table! {
    accounts (id) {
        id -> BigInt,
        balance -> BigInt,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "accounts.deposit")]
pub(crate) struct Deposit {
    pub(crate) id: i64,
    pub(crate) amount: i64,
    /// Fail after writing, to prove the write is rolled back.
    pub(crate) fail: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("refused after writing")]
    Refused,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub(crate) struct Accounts<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<B>,
}

impl<B: Backend> ComputeService for Accounts<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// The accounts service on SQLite (a `#[service]` impl is for one concrete type).
pub(crate) type SqliteAccounts = Accounts<ofx_diesel::Sqlite>;

#[service]
impl SqliteAccounts {
    #[compute_method]
    pub(crate) async fn balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self
            .db
            .connection()
            .await
            .map_err(|error| error.to_string())?;
        let balance: Option<i64> = accounts::table
            .find(id)
            .select(accounts::balance)
            .first(&mut connection)
            .await
            .optional()
            .map_err(|error| error.to_string())?;
        Ok(balance.unwrap_or(0))
    }

    #[command_handler]
    pub(crate) async fn deposit(
        &self,
        command: Deposit,
        ctx: &CommandContext,
    ) -> Result<i64, AccountError> {
        invalidate! {
            self.balance(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::insert_into(accounts::table)
            .values((
                accounts::id.eq(command.id),
                accounts::balance.eq(command.amount),
            ))
            .on_conflict(accounts::id)
            .do_update()
            .set(accounts::balance.eq(accounts::balance + command.amount))
            .execute(&mut *connection)
            .await?;
        if command.fail {
            return Err(AccountError::Refused);
        }
        let balance = accounts::table
            .find(command.id)
            .select(accounts::balance)
            .first(&mut *connection)
            .await?;
        Ok(balance)
    }
}

/// One host: a hub with the database scope, the service, and (if started) a log reader.
pub(crate) struct Host {
    pub(crate) accounts: Arc<SqliteAccounts>,
    pub(crate) reader: Option<LogReader>,
}

impl Host {
    pub(crate) async fn sqlite(path: &str, settings: DbSettings, read: bool) -> Self {
        let db = DbHub::<ofx_diesel::Sqlite>::open(path, settings)
            .await
            .unwrap();
        let hub = Hub::builder().filter(db.operation_scope()).build().unwrap();
        let accounts = Arc::new(Accounts {
            hub: hub.clone(),
            db: db.clone(),
        });
        hub.add_service(&accounts);
        let reader = read.then(|| db.start_log_reader(&hub));
        Self { accounts, reader }
    }
}

/// A fresh SQLite file with the business table.
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!("ofx-test-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    let db = DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY NOT NULL, balance BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    path
}

/// Settings for tests: a short poll period (the reader is woken by nothing else here).
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(20);
    settings
}

/// Waits for `computed` to be invalidated, failing after 10 s.
pub(crate) async fn invalidated(computed: &Computed) {
    tokio::time::timeout(Duration::from_secs(10), computed.when_invalidated())
        .await
        .expect("the other host's reader invalidated the value within 10 s");
}
