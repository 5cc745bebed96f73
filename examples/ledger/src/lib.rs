//! A bank ledger on ofx's **state service** ([`ofx_diesel::state`]): accounts, deposits and
//! transfers are domain events appended to a stream ([`LedgerEvent`]), every host keeps the
//! balances projected from it in memory ([`Ledger`], [`Accounts`]), commands decide on the
//! state at the stream's head and append in their own transaction ([`Bank::deposit`],
//! [`Bank::transfer`], with the overdraft check), and a compute method that reads the state
//! ([`Bank::balance`]) is invalidated on every host when the state advances there.
//!
//! Run the demo with `cargo run -p ledger`: two hosts on one SQLite file, woken by the
//! file-system watcher.
//!
//! A host is wired in the order the runtime needs (see [`Host::prepare`]):
//!
//! ```no_run
//! # async fn example() -> Result<(), ledger::LedgerError> {
//! use ledger::{Deposit, Host, LedgerFiles};
//!
//! let files = LedgerFiles::temporary();
//! let host = Host::open("a", &files).await?; // database + watcher, hub, state service, bank
//! host.ledger().ready().await?;               // caught up with the stream
//! let receipt = host
//!     .hub()
//!     .commander()
//!     .call(Deposit { account: "alice".into(), amount: 100 })
//!     .await?;
//! assert_eq!(receipt.balance, 100);
//! assert_eq!(host.bank().balance("alice".into()).await?, 100);
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use imbl::OrdMap;
use ofx_core::background::TaskState;
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, service,
};
use ofx_diesel::state::{
    Projection, Rejection, SnapshotStorage, StateService, StateSettings, StateView,
};
use ofx_diesel::{DbHub, DbSettings, Sqlite};
use ofx_watchers::FsWatcher;
use serde::{Deserialize, Serialize};

// ===== the stream and its projection =====

/// The ledger's domain events: the stream `ledger`, the source of truth of every balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerEvent {
    /// Money came into the bank, to `account` (which exists from then on).
    Deposited {
        /// The account credited.
        account: String,
        /// How much, in cents.
        amount: u64,
    },
    /// Money moved from one account to another.
    Transferred {
        /// The account debited.
        from: String,
        /// The account credited.
        to: String,
        /// How much, in cents.
        amount: u64,
    },
}

/// The projected state: every account's balance.
///
/// The balances are an [`imbl::OrdMap`], a persistent B-tree, not a `BTreeMap`: the state
/// service shares its state with readers as an `Arc<Accounts>` that it replaces per applied
/// batch, so it clones the state (`Projection::State: Clone`) for every batch it applies (and
/// for every decision of a command that saw events beyond this host's state). Cloning an
/// `OrdMap` is a reference count, and applying an event copies only the path to the balance
/// it changes: the new state shares every other account with the one readers still hold,
/// where a `BTreeMap` would copy every account per batch. It is ordered, so that the state,
/// its snapshots and what the demo prints do not depend on hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    balances: OrdMap<String, u64>,
}

impl Accounts {
    /// The balance of `account` (0 for an account never credited).
    pub fn balance(&self, account: &str) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// Every account that was ever credited, with its balance, by name.
    pub fn balances(&self) -> &OrdMap<String, u64> {
        &self.balances
    }

    /// The money in the bank: the sum of the deposits, whatever the transfers did.
    pub fn total(&self) -> u64 {
        self.balances.values().sum()
    }
}

/// The projection of the `ledger` stream into [`Accounts`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ledger;

impl Projection for Ledger {
    type Event = LedgerEvent;
    type State = Accounts;
    const NAME: &'static str = "ledger";
    const VERSION: u32 = 1;

    fn initial(&self) -> Accounts {
        Accounts::default()
    }

    /// Applies one event. The commands check what is checked here against the state at the
    /// stream's head before they append, so a rejection only happens to an event written
    /// outside them (by hand, or by a buggy program): it is quarantined and the stream goes
    /// on without it.
    fn apply(
        &self,
        state: &mut Accounts,
        event: LedgerEvent,
        _position: u64,
    ) -> Result<(), Rejection> {
        match event {
            LedgerEvent::Deposited { account, amount } => {
                let balance = state
                    .balance(&account)
                    .checked_add(amount)
                    .ok_or_else(|| Rejection::new(format!("the balance of {account} overflows")))?;
                state.balances.insert(account, balance);
            }
            LedgerEvent::Transferred { from, to, amount } => {
                if from == to {
                    return Err(Rejection::new("a transfer to the same account"));
                }
                let debited = state
                    .balance(&from)
                    .checked_sub(amount)
                    .ok_or_else(|| Rejection::new(format!("{from} would be overdrawn")))?;
                let credited = state
                    .balance(&to)
                    .checked_add(amount)
                    .ok_or_else(|| Rejection::new(format!("the balance of {to} overflows")))?;
                state.balances.insert(from, debited);
                state.balances.insert(to, credited);
            }
        }
        Ok(())
    }
}

// ===== commands and errors =====

/// Credits `account` with `amount` cents from outside the bank.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Receipt, name = "ledger.deposit")]
pub struct Deposit {
    /// The account credited (created by its first deposit).
    pub account: String,
    /// How much, in cents (more than 0).
    pub amount: u64,
}

/// Moves `amount` cents from one account to another, if `from` has them.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Receipt, name = "ledger.transfer")]
pub struct Transfer {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, in cents (more than 0).
    pub amount: u64,
}

/// What a command appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The event's position in the stream.
    pub position: u64,
    /// The balance of the account the command names first (credited by a deposit, debited by
    /// a transfer) once the event applies.
    pub balance: u64,
    /// How many times the decision ran: more than once when another host appended first.
    pub attempts: u32,
}

/// Why a ledger command or read failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// An amount of 0: a command must move money.
    #[error("an amount must be more than 0")]
    ZeroAmount,
    /// A transfer from an account to itself.
    #[error("a transfer needs two different accounts")]
    SameAccount,
    /// The account to debit does not have the amount, as of the stream's head when the
    /// command decided: nothing was appended.
    #[error("insufficient funds in {account}: the balance is {balance}, the transfer {amount}")]
    InsufficientFunds {
        /// The account.
        account: String,
        /// Its balance.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },
    /// A balance would not fit in a `u64`.
    #[error("the balance of {account} would overflow")]
    Overflow {
        /// The account.
        account: String,
    },
    /// The state service or its database failed: not ready yet
    /// ([`ofx_diesel::Error::NotReady`]), unable to catch up
    /// ([`ofx_diesel::Error::Unavailable`]), or a database error. Shared, so that a compute
    /// method may cache it.
    #[error(transparent)]
    State(Arc<ofx_diesel::Error>),
    /// The runtime failed (a hub could not start, a command could not run).
    #[error(transparent)]
    Runtime(#[from] ofx_core::Error),
}

impl From<ofx_diesel::Error> for LedgerError {
    fn from(error: ofx_diesel::Error) -> Self {
        Self::State(Arc::new(error))
    }
}

impl LedgerError {
    /// The ledger's error inside a failed [`Commander::call`](ofx_core::Commander::call), if
    /// the handler failed with one.
    pub fn of_call(error: &ofx_core::Error) -> Option<&Self> {
        error.handler_error::<Self>()
    }
}

// ===== the service =====

/// The bank: its commands append to the ledger's stream through the state service, its
/// compute method reads the projected state.
#[derive(Debug)]
pub struct Bank {
    hub: Hub,
    ledger: StateService<Ledger, Sqlite>,
    balance_computations: AtomicU64,
}

impl ComputeService for Bank {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Bank {
    /// The bank on `hub`, reading and appending through `ledger` (attached to `hub`).
    ///
    /// # Errors
    /// When the hub refuses the service (its commands are handled by another one).
    pub fn open(hub: &Hub, ledger: StateService<Ledger, Sqlite>) -> Result<Arc<Self>, LedgerError> {
        let bank = Arc::new(Self {
            hub: hub.clone(),
            ledger,
            balance_computations: AtomicU64::new(0),
        });
        hub.add_service(&bank)?;
        Ok(bank)
    }

    /// The state service the bank reads and appends through.
    pub fn ledger(&self) -> &StateService<Ledger, Sqlite> {
        &self.ledger
    }

    /// How many times [`balance`](Self::balance) was computed (not served from the cache).
    pub fn balance_computations(&self) -> u64 {
        self.balance_computations.load(Ordering::SeqCst)
    }

    /// The balance of `account` on this host, cached until the state advances here: it reads
    /// [`local_state`](StateService::local_state), which makes it a dependent of the state.
    /// It never waits for the database; a command that returned on this host is in it
    /// (read-your-writes), one from another host once this host followed the stream.
    ///
    /// # Errors
    /// [`LedgerError::State`] with [`ofx_diesel::Error::NotReady`] before the state service's
    /// initial catch-up (cached until it is ready, which invalidates it).
    #[compute_method]
    pub async fn balance(&self, account: String) -> Result<u64, LedgerError> {
        self.balance_computations.fetch_add(1, Ordering::SeqCst);
        let accounts = self.ledger.local_state().await?;
        Ok(accounts.balance(&account))
    }

    /// Credits an account. No invalidation branch: what reads the state is invalidated by the
    /// state service itself when the deposit reaches it, on every host.
    #[command_handler]
    pub async fn deposit(
        &self,
        command: Deposit,
        ctx: &CommandContext,
    ) -> Result<Receipt, LedgerError> {
        if command.amount == 0 {
            return Err(LedgerError::ZeroAmount);
        }
        let appended = self
            .ledger
            .transaction(ctx, |accounts, appends| {
                let balance = accounts
                    .balance(&command.account)
                    .checked_add(command.amount)
                    .ok_or_else(|| LedgerError::Overflow {
                        account: command.account.clone(),
                    })?;
                appends.push(LedgerEvent::Deposited {
                    account: command.account.clone(),
                    amount: command.amount,
                });
                Ok::<_, LedgerError>(balance)
            })
            .await?;
        Ok(Receipt {
            position: *appended.positions.end(),
            balance: appended.output,
            attempts: appended.attempts,
        })
    }

    /// Moves money between two accounts. The overdraft check runs in the state service's
    /// transaction closure, on the state as of the stream's head in the command's own
    /// transaction: the event is appended at the next position only if no other append took
    /// it first, else the closure decides again on the newer state (optimistic concurrency;
    /// on SQLite the command's transaction holds the write lock from its start, so appenders
    /// queue and the closure runs once).
    ///
    /// # Errors
    /// [`LedgerError::InsufficientFunds`] (nothing appended), [`LedgerError::ZeroAmount`],
    /// [`LedgerError::SameAccount`], [`LedgerError::Overflow`], or the state service's errors.
    #[command_handler]
    pub async fn transfer(
        &self,
        command: Transfer,
        ctx: &CommandContext,
    ) -> Result<Receipt, LedgerError> {
        if command.amount == 0 {
            return Err(LedgerError::ZeroAmount);
        }
        if command.from == command.to {
            return Err(LedgerError::SameAccount);
        }
        let appended = self
            .ledger
            .transaction(ctx, |accounts, appends| {
                let balance = accounts.balance(&command.from);
                let Some(left) = balance.checked_sub(command.amount) else {
                    return Err(LedgerError::InsufficientFunds {
                        account: command.from.clone(),
                        balance,
                        amount: command.amount,
                    });
                };
                if accounts
                    .balance(&command.to)
                    .checked_add(command.amount)
                    .is_none()
                {
                    return Err(LedgerError::Overflow {
                        account: command.to.clone(),
                    });
                }
                appends.push(LedgerEvent::Transferred {
                    from: command.from.clone(),
                    to: command.to.clone(),
                    amount: command.amount,
                });
                Ok(left)
            })
            .await?;
        Ok(Receipt {
            position: *appended.positions.end(),
            balance: appended.output,
            attempts: appended.attempts,
        })
    }
}

// ===== hosts =====

/// Where the hosts of one ledger keep their files: the shared SQLite database, the directory
/// the file-system watcher signals commits through, and a directory per host for its
/// snapshots.
#[derive(Debug, Clone)]
pub struct LedgerFiles {
    /// The SQLite database every host opens.
    pub database: PathBuf,
    /// The directory the hosts' [`FsWatcher`]s share.
    pub watch_dir: PathBuf,
    /// Each host's snapshots go to a directory of this one named after the host.
    pub snapshots: PathBuf,
}

impl LedgerFiles {
    /// Fresh paths in the temporary directory (nothing is created yet).
    pub fn temporary() -> Self {
        let id = uuid::Uuid::new_v4().simple();
        let dir = std::env::temp_dir();
        Self {
            database: dir.join(format!("ofx-ledger-{id}.db")),
            watch_dir: dir.join(format!("ofx-ledger-{id}-watch")),
            snapshots: dir.join(format!("ofx-ledger-{id}-snapshots")),
        }
    }

    /// The snapshot directory of host `name`.
    pub fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.snapshots.join(name)
    }

    /// Removes the files (once every host on them is dropped); what cannot be removed is left.
    pub fn remove(&self) {
        let database = self.database.to_string_lossy();
        for file in [
            database.to_string(),
            format!("{database}-wal"),
            format!("{database}-shm"),
        ] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir_all(&self.watch_dir);
        let _ = std::fs::remove_dir_all(&self.snapshots);
    }
}

/// The state service's settings for host `name`: snapshots in its own directory.
pub fn state_settings(files: &LedgerFiles, name: &str) -> StateSettings {
    let mut settings = StateSettings::default();
    settings.snapshots = SnapshotStorage::Directory(files.snapshot_dir(name));
    settings
}

/// A host whose database and state service exist but whose hub has not started: its state
/// service is not ready (reads fail with [`ofx_diesel::Error::NotReady`]).
#[derive(Debug)]
pub struct PreparedHost {
    name: String,
    db: DbHub<Sqlite>,
    ledger: StateService<Ledger, Sqlite>,
}

impl PreparedHost {
    /// The host's state service, not started yet.
    pub fn ledger(&self) -> &StateService<Ledger, Sqlite> {
        &self.ledger
    }

    /// Starts the hub with the database (its log reader, trimmer and watcher) and the state
    /// service (its follower loads the newest snapshot, then catches up), and adds the bank.
    ///
    /// # Errors
    /// When the hub cannot start or refuses the bank.
    pub async fn start(self) -> Result<Host, LedgerError> {
        let hub = Hub::builder()
            .with(self.db.clone())
            .with(self.ledger.clone())
            .start()
            .await?;
        let bank = Bank::open(&hub, self.ledger)?;
        Ok(Host {
            name: self.name,
            db: self.db,
            hub,
            bank,
        })
    }
}

/// One host of the ledger: its database handle, its hub (with the state service), the bank.
#[derive(Debug)]
pub struct Host {
    name: String,
    db: DbHub<Sqlite>,
    hub: Hub,
    bank: Arc<Bank>,
}

impl Host {
    /// Opens the database (migrated if needed) with its file-system watcher, and the state
    /// service with its snapshots in the host's directory ([`state_settings`]): the first two
    /// of the three steps of a host, in the order they must happen (the watcher is set before
    /// the hub starts). [`PreparedHost::start`] is the third.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub async fn prepare(name: &str, files: &LedgerFiles) -> Result<PreparedHost, LedgerError> {
        let db =
            DbHub::<Sqlite>::open(&files.database.to_string_lossy(), DbSettings::default()).await?;
        db.set_watcher(FsWatcher::factory(&files.watch_dir, "ledger"))?;
        let ledger = StateService::with_settings(&db, Ledger, state_settings(files, name));
        Ok(PreparedHost {
            name: name.to_owned(),
            db,
            ledger,
        })
    }

    /// [`prepare`](Self::prepare), then [`start`](PreparedHost::start). The state service is
    /// not ready yet: wait with `host.ledger().ready()`.
    ///
    /// # Errors
    /// As those two.
    pub async fn open(name: &str, files: &LedgerFiles) -> Result<Self, LedgerError> {
        Self::prepare(name, files).await?.start().await
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's database handle.
    pub fn db(&self) -> &DbHub<Sqlite> {
        &self.db
    }

    /// The host's hub (its commander runs the ledger's commands).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The bank service.
    pub fn bank(&self) -> &Arc<Bank> {
        &self.bank
    }

    /// The host's state service.
    pub fn ledger(&self) -> &StateService<Ledger, Sqlite> {
        &self.bank.ledger
    }

    /// Stops the host: drops its hub, which stops its background tasks, and waits (at most
    /// `timeout`) until the state service's follower ended. Returns how it ended (`None`: not
    /// within `timeout`, something else still holds the hub).
    pub async fn shutdown(self, timeout: Duration) -> Option<TaskState> {
        let health = self.ledger().health();
        drop(self);
        tokio::time::timeout(timeout, health.ended()).await.ok()
    }
}

/// The state projected from the whole stream by a state service of its own, with no snapshot:
/// what every host's state must equal once it caught up.
///
/// # Errors
/// When the database cannot be opened, or the projection does not catch up within `timeout`.
pub async fn project_from_scratch(
    files: &LedgerFiles,
    timeout: Duration,
) -> Result<StateView<Accounts>, LedgerError> {
    let mut settings = DbSettings::default();
    settings.read_log = false;
    settings.trim = false;
    settings.events.process = false;
    let db = DbHub::<Sqlite>::open(&files.database.to_string_lossy(), settings).await?;
    let mut state = StateSettings::default();
    state.snapshots = SnapshotStorage::None;
    let ledger = StateService::with_settings(&db, Ledger, state);
    let _hub = Hub::builder()
        .with(db.clone())
        .with(ledger.clone())
        .start()
        .await?;
    let ready = tokio::time::timeout(timeout, ledger.ready()).await;
    ready.map_err(|_| ofx_diesel::Error::NotReady {
        projection: Ledger::NAME,
    })??;
    Ok(ledger.local_state().await?)
}
