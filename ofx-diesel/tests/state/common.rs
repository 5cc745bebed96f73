//! A bank projected from a stream of its domain events, a service whose commands append to it
//! and whose compute method reads it, and hosts to run them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, service,
};
use ofx_diesel::state::{Projection, Rejection, StateService, StateSettings};
use ofx_diesel::{Backend, DbHub, DbSettings};
use serde::{Deserialize, Serialize};

/// The bank's domain events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum BankEvent {
    Deposited {
        account: String,
        amount: i64,
    },
    Withdrew {
        account: String,
        amount: i64,
    },
    /// `apply` rejects it.
    Poison,
    /// `apply` changes the state, then panics.
    Explode {
        account: String,
    },
}

/// Balances by account, and how many events were applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bank {
    pub(crate) balances: BTreeMap<String, i64>,
    pub(crate) applied: u64,
    pub(crate) last_position: u64,
}

pub(crate) struct Ledger;

impl Projection for Ledger {
    type Event = BankEvent;
    type State = Bank;
    const NAME: &'static str = "ledger";
    const VERSION: u32 = 1;

    fn initial(&self) -> Bank {
        Bank::default()
    }

    fn apply(&self, state: &mut Bank, event: BankEvent, position: u64) -> Result<(), Rejection> {
        match event {
            BankEvent::Deposited { account, amount } => {
                *state.balances.entry(account).or_default() += amount;
            }
            BankEvent::Withdrew { account, amount } => {
                let balance = state.balances.entry(account).or_default();
                if *balance < amount {
                    return Err(Rejection::new("overdraft"));
                }
                *balance -= amount;
            }
            BankEvent::Poison => return Err(Rejection::new("poison")),
            BankEvent::Explode { account } => {
                state.balances.insert(account, i64::MIN);
                panic!("explode");
            }
        }
        state.applied += 1;
        state.last_position = position;
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "bank.deposit")]
pub(crate) struct Deposit {
    pub(crate) account: String,
    pub(crate) amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "bank.withdraw")]
pub(crate) struct Withdraw {
    pub(crate) account: String,
    pub(crate) amount: i64,
}

/// Appends raw events (poison ones included).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "bank.append")]
pub(crate) struct AppendRaw {
    pub(crate) events: Vec<BankEvent>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BankError {
    #[error("insufficient funds: {0}")]
    Insufficient(i64),
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
}

pub(crate) struct BankService<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) state: StateService<Ledger, B>,
    pub(crate) balance_computations: AtomicU64,
}

impl<B: Backend> ComputeService for BankService<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: Backend> BankService<B> {
    #[compute_method]
    pub(crate) async fn balance(&self, account: String) -> Result<i64, String> {
        self.balance_computations.fetch_add(1, Ordering::Relaxed);
        let view = self.state.local_state().await.map_err(|e| e.to_string())?;
        Ok(view.balances.get(&account).copied().unwrap_or(0))
    }

    #[command_handler]
    pub(crate) async fn deposit(
        &self,
        command: Deposit,
        ctx: &CommandContext,
    ) -> Result<u64, BankError> {
        let appended = self
            .state
            .transaction(ctx, |_bank: &Bank, appends| {
                appends.push(BankEvent::Deposited {
                    account: command.account.clone(),
                    amount: command.amount,
                });
                Ok::<_, BankError>(())
            })
            .await?;
        Ok(*appended.positions.end())
    }

    #[command_handler]
    pub(crate) async fn withdraw(
        &self,
        command: Withdraw,
        ctx: &CommandContext,
    ) -> Result<u64, BankError> {
        let appended = self
            .state
            .transaction(ctx, |bank: &Bank, appends| {
                let balance = bank.balances.get(&command.account).copied().unwrap_or(0);
                if balance < command.amount {
                    return Err(BankError::Insufficient(balance));
                }
                appends.push(BankEvent::Withdrew {
                    account: command.account.clone(),
                    amount: command.amount,
                });
                Ok(())
            })
            .await?;
        Ok(*appended.positions.end())
    }

    #[command_handler]
    pub(crate) async fn append_raw(
        &self,
        command: AppendRaw,
        ctx: &CommandContext,
    ) -> Result<u64, BankError> {
        let appended = self
            .state
            .transaction(ctx, |_bank: &Bank, appends| {
                for event in &command.events {
                    appends.push(event.clone());
                }
                Ok::<_, BankError>(())
            })
            .await?;
        Ok(*appended.positions.end())
    }
}

/// One host: a database handle, a hub with the state service, the bank service.
#[allow(dead_code)] // not every scenario reads every field
pub(crate) struct Host<B: Backend> {
    pub(crate) db: DbHub<B>,
    pub(crate) bank: Arc<BankService<B>>,
}

impl<B: Backend> Host<B> {
    pub(crate) async fn open(url: &str, settings: StateSettings) -> Self {
        let db = DbHub::<B>::open(url, fast()).await.unwrap();
        let state = StateService::with_settings(&db, Ledger, settings);
        let hub = Hub::builder()
            .with(db.clone())
            .with(state.clone())
            .start()
            .await
            .unwrap();
        let bank = Arc::new(BankService {
            hub: hub.clone(),
            state,
            balance_computations: AtomicU64::new(0),
        });
        hub.add_service(&bank).unwrap();
        Self { db, bank }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.bank.hub
    }

    pub(crate) fn state(&self) -> &StateService<Ledger, B> {
        &self.bank.state
    }

    pub(crate) async fn ready(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.state().ready())
            .await
            .expect("ready within 30 s")
            .unwrap();
    }
}

/// Settings for tests: a short poll period.
pub(crate) fn fast() -> DbSettings {
    let mut settings = DbSettings::default();
    settings.poll_period = Duration::from_millis(50);
    settings
}

/// A fresh SQLite file.
#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite_file() -> String {
    let path = std::env::temp_dir().join(format!("ofx-state-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    DbHub::<ofx_diesel::Sqlite>::open(&path, fast())
        .await
        .unwrap();
    path
}

/// A fresh PostgreSQL database on the server at 127.0.0.1:5432 (or `OFX_TEST_POSTGRES`).
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_database() -> String {
    use diesel_async::AsyncConnection;
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {server} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or set OFX_TEST_POSTGRES to another server"
            )
        });
    let name = format!(
        "ofx_state_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    DbHub::<ofx_diesel::Postgres>::open(&url, fast())
        .await
        .unwrap();
    url
}
