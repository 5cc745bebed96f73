//! A service with compute methods and two handlers: a nested call, operation items read by
//! the invalidation branch, and `invalidate!` imported by the user and used only inside
//! handlers, which must count as a use of the import.

#![deny(warnings)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ofx_core::{
    Command, CommandContext, ComputeService, Hub, OperationItem, command_handler, compute_method,
    invalidate, service,
};
use serde::{Deserialize, Serialize};

/// Adds a todo; returns the new count of its owner.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
pub struct AddTodo {
    pub owner: u64,
    pub title: String,
}

/// Records who changed what; called from inside `add`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "todo.audit", backend)]
pub struct Audit {
    pub owner: u64,
}

/// The count before an `AddTodo`, left for its invalidation branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous(pub u64);

impl OperationItem for Previous {
    const KEY: &'static str = "todo.previous";
}

/// Why a todo command failed.
#[derive(Debug, thiserror::Error)]
pub enum TodoError {
    /// The title was empty.
    #[error("a todo needs a title")]
    EmptyTitle,
    /// The runtime failed.
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
}

/// Todos in memory.
pub struct Todos {
    hub: Hub,
    counts: Mutex<Vec<u64>>,
    audits: AtomicU64,
    previous_seen: Mutex<Vec<Option<Previous>>>,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Records what an invalidation branch read: `invalidate!` keeps macro calls as written.
macro_rules! remember {
    ($service:expr, $previous:expr) => {
        $service.previous_seen.lock().unwrap().push($previous)
    };
}

#[service]
impl Todos {
    /// How many todos `owner` has.
    #[compute_method]
    pub async fn count(&self, owner: u64) -> u64 {
        self.counts.lock().unwrap()[usize::try_from(owner).unwrap()]
    }

    /// How many audits ran.
    #[compute_method]
    pub async fn audits(&self) -> u64 {
        self.audits.load(Ordering::SeqCst)
    }

    /// A plain method beside the handlers.
    pub fn owners(&self) -> usize {
        self.counts.lock().unwrap().len()
    }

    #[command_handler]
    pub async fn add(&self, command: AddTodo, ctx: &CommandContext) -> Result<u64, TodoError> {
        invalidate! {
            self.count(command.owner);
            let previous = ctx.items().get::<Previous>();
            remember!(self, previous);
        }
        if command.title.is_empty() {
            return Err(TodoError::EmptyTitle);
        }
        let previous = {
            let mut counts = self.counts.lock().unwrap();
            let count = &mut counts[usize::try_from(command.owner).unwrap()];
            *count += 1;
            *count - 1
        };
        ctx.items().set(Previous(previous))?;
        ctx.hub()
            .commander()
            .call(Audit {
                owner: command.owner,
            })
            .await?;
        Ok(previous + 1)
    }

    /// A handler of a unit-output command, with an unused context.
    #[command_handler]
    async fn audit(&self, command: Audit, _ctx: &CommandContext) -> Result<(), TodoError> {
        invalidate! {
            self.audits();
        }
        let _ = command.owner;
        self.audits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let hub = Hub::new().unwrap();
    let todos = Arc::new(Todos {
        hub: hub.clone(),
        counts: Mutex::new(vec![0; 4]),
        audits: AtomicU64::new(0),
        previous_seen: Mutex::new(Vec::new()),
    });
    hub.add_service(&todos).unwrap();
    assert_eq!(todos.owners(), 4);

    assert_eq!(todos.count(1).await, 0);
    assert_eq!(todos.audits().await, 0);
    let commander = hub.commander();
    let count = commander
        .call(AddTodo {
            owner: 1,
            title: "write tests".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(count, 1);
    // Both invalidation branches ran before `call` returned.
    assert_eq!(todos.count(1).await, 1);
    assert_eq!(todos.audits().await, 1);
    assert_eq!(
        todos.previous_seen.lock().unwrap().as_slice(),
        &[Some(Previous(0))]
    );

    let error = commander
        .call(AddTodo {
            owner: 1,
            title: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("a todo needs a title"),
        "{error}"
    );
    assert!(matches!(
        commander.call_from_client(Audit { owner: 0 }).await,
        Err(ofx_core::Error::BackendCommand { .. })
    ));
}
