//! A counter service with command handlers, shared by the tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ofx_core::{
    Command, CommandContext, ComputeService, Hub, Operation, OperationItem, command_handler,
    compute_method, invalidate, service,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "counters.add")]
pub(crate) struct Add {
    pub(crate) key: usize,
    pub(crate) amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "counters.audit")]
pub(crate) struct Audit {
    pub(crate) key: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "counters.fail")]
pub(crate) struct Fail {
    pub(crate) key: usize,
    pub(crate) panic: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "counters.reset", backend)]
pub(crate) struct Reset;

/// The value before an `Add`, left for the invalidation branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Previous(pub(crate) u64);

impl OperationItem for Previous {
    const KEY: &'static str = "counters.previous";
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CounterError {
    #[error("counter {0} refused the change")]
    Refused(usize),
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
}

/// Counters in memory, read through compute methods, changed by commands.
pub(crate) struct Counters {
    pub(crate) hub: Hub,
    pub(crate) values: Vec<AtomicU64>,
    pub(crate) main_runs: AtomicU64,
    pub(crate) audits: Mutex<Vec<usize>>,
    /// What the invalidation branches ran, in order: `(command, key, previous)`.
    pub(crate) invalidations: Mutex<Vec<(&'static str, usize, Option<u64>)>>,
    pub(crate) reads: AtomicU64,
}

impl ComputeService for Counters {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Records that an invalidation branch ran (a macro: `invalidate!` keeps macro calls).
macro_rules! record {
    ($service:expr, $command:expr, $key:expr, $previous:expr) => {
        $service
            .invalidations
            .lock()
            .unwrap()
            .push(($command, $key, $previous))
    };
}

#[service]
impl Counters {
    #[compute_method]
    pub(crate) async fn value(&self, key: usize) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.values[key].load(Ordering::SeqCst)
    }

    #[compute_method]
    pub(crate) async fn audit_count(&self) -> usize {
        self.audits.lock().unwrap().len()
    }

    /// Adds to a counter, and audits it through a nested command.
    #[command_handler]
    pub(crate) async fn add(
        &self,
        command: Add,
        ctx: &CommandContext,
    ) -> Result<u64, CounterError> {
        invalidate! {
            self.value(command.key);
            record!(self, "add", command.key, ctx.items().get::<Previous>().map(|previous| previous.0));
        }
        self.main_runs.fetch_add(1, Ordering::SeqCst);
        let previous = self.values[command.key].fetch_add(command.amount, Ordering::SeqCst);
        ctx.items().set(Previous(previous))?;
        ctx.hub()
            .commander()
            .call(Audit { key: command.key })
            .await?;
        Ok(previous + command.amount)
    }

    #[command_handler]
    pub(crate) async fn audit(
        &self,
        command: Audit,
        ctx: &CommandContext,
    ) -> Result<(), CounterError> {
        invalidate! {
            self.audit_count();
            record!(self, "audit", command.key, ctx.items().get::<Previous>().map(|previous| previous.0));
        }
        self.main_runs.fetch_add(1, Ordering::SeqCst);
        self.audits.lock().unwrap().push(command.key);
        // The nested command's own items: the outer command's `Previous` is not visible here.
        assert!(ctx.items().get::<Previous>().is_none());
        ctx.items().set(Previous(1000))?;
        Ok(())
    }

    /// Writes, then fails (or panics).
    #[command_handler]
    pub(crate) async fn fail(
        &self,
        command: Fail,
        ctx: &CommandContext,
    ) -> Result<(), CounterError> {
        invalidate! {
            self.value(command.key);
            record!(self, "fail", command.key, None);
        }
        self.main_runs.fetch_add(1, Ordering::SeqCst);
        ctx.hub()
            .commander()
            .call(Audit { key: command.key })
            .await?;
        assert!(!command.panic, "told to panic");
        Err(CounterError::Refused(command.key))
    }

    #[command_handler]
    pub(crate) async fn reset(
        &self,
        _command: Reset,
        _ctx: &CommandContext,
    ) -> Result<(), CounterError> {
        for value in &self.values {
            value.store(0, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A hub with a `Counters` attached, and the operations it completed.
pub(crate) struct Host {
    pub(crate) counters: Arc<Counters>,
    pub(crate) operations: Arc<Mutex<Vec<Operation>>>,
}

struct Collect(Arc<Mutex<Vec<Operation>>>);

impl ofx_core::operation::CompletionListener for Collect {
    fn on_operation_completed(&self, operation: &Operation, _local: bool) {
        self.0.lock().unwrap().push(operation.clone());
    }
}

impl Host {
    pub(crate) fn new() -> Self {
        Self::with(Hub::builder())
    }

    pub(crate) fn with(builder: ofx_core::HubBuilder) -> Self {
        let operations = Arc::new(Mutex::new(Vec::new()));
        let hub = builder
            .completion_listener(Collect(operations.clone()))
            .build()
            .unwrap();
        let counters = Arc::new(Counters {
            hub: hub.clone(),
            values: (0..8).map(|_| AtomicU64::new(0)).collect(),
            main_runs: AtomicU64::new(0),
            audits: Mutex::new(Vec::new()),
            invalidations: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
        });
        hub.add_service(&counters).unwrap();
        Self {
            counters,
            operations,
        }
    }

    pub(crate) fn main_runs(&self) -> u64 {
        self.counters.main_runs.load(Ordering::SeqCst)
    }

    pub(crate) fn invalidations(&self) -> Vec<(&'static str, usize, Option<u64>)> {
        self.counters.invalidations.lock().unwrap().clone()
    }
}
