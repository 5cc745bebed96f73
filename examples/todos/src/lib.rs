//! The todos service of the ofx demo: an in-memory store behind cached compute methods, changed
//! by commands whose invalidation branches say what each change makes stale.
//!
//! Run the demo with `cargo run -p todos`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ofx_core::{
    Command, CommandContext, ComputeService, Hub, OperationItem, command_handler, compute_method,
    invalidate, service,
};
use serde::{Deserialize, Serialize};

/// A todo item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    /// Its id.
    pub id: u64,
    /// Who owns it.
    pub owner: String,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TodoError {
    /// No todo has this id.
    #[error("no todo {0}")]
    NotFound(u64),
    /// A title must say something.
    #[error("a todo needs a title")]
    EmptyTitle,
    /// The runtime failed.
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
}

/// Adds a todo.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Todo, name = "todos.add")]
pub struct AddTodo {
    /// Who owns it.
    pub owner: String,
    /// What to do.
    pub title: String,
}

/// Renames a todo.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Todo, name = "todos.rename")]
pub struct RenameTodo {
    /// Which todo.
    pub id: u64,
    /// Its new title.
    pub title: String,
}

/// Marks a todo done.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Todo, name = "todos.complete")]
pub struct CompleteTodo {
    /// Which todo.
    pub id: u64,
}

/// Removes a todo.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "todos.remove")]
pub struct RemoveTodo {
    /// Which todo.
    pub id: u64,
}

/// Appends a line to an owner's activity log; called (nested) by the other commands.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "todos.log_activity", backend)]
pub struct LogActivity {
    /// Whose log.
    pub owner: String,
    /// What happened.
    pub text: String,
}

/// The id a command created or touched, for its invalidation branch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TodoId(pub u64);

impl OperationItem for TodoId {
    const KEY: &'static str = "todos.id";
}

/// The owner of the todo a command removed (gone from the store by the time invalidation runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner(pub String);

impl OperationItem for Owner {
    const KEY: &'static str = "todos.owner";
}

/// The todo service: reads go through compute methods, writes through commands.
#[derive(Debug)]
pub struct Todos {
    hub: Hub,
    store: Mutex<BTreeMap<u64, Todo>>,
    activity: Mutex<BTreeMap<String, Vec<String>>>,
    next_id: AtomicU64,
    /// How many times a compute method read the store, for the demo and tests.
    pub reads: AtomicU64,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[service]
impl Todos {
    /// An empty service, attached to `hub`.
    pub fn new(hub: &Hub) -> Arc<Self> {
        let todos = Arc::new(Self {
            hub: hub.clone(),
            store: Mutex::new(BTreeMap::new()),
            activity: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            reads: AtomicU64::new(0),
        });
        hub.add_service(&todos);
        todos
    }

    fn read_store(&self) -> MutexGuard<'_, BTreeMap<u64, Todo>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        lock(&self.store)
    }

    /// One todo.
    #[compute_method]
    pub async fn get(&self, id: u64) -> Option<Todo> {
        tracing::info!(id, "computing get");
        self.read_store().get(&id).cloned()
    }

    /// The ids of an owner's todos.
    #[compute_method]
    pub async fn list(&self, owner: String) -> Vec<u64> {
        tracing::info!(%owner, "computing list");
        self.read_store()
            .values()
            .filter(|todo| todo.owner == owner)
            .map(|todo| todo.id)
            .collect()
    }

    /// How many of an owner's todos are not done: computed from `list` and `get`, so it depends
    /// on them.
    #[compute_method]
    pub async fn open_count(&self, owner: String) -> usize {
        tracing::info!(%owner, "computing open_count");
        let mut open = 0;
        for id in self.list(owner).await {
            if self.get(id).await.is_some_and(|todo| !todo.done) {
                open += 1;
            }
        }
        open
    }

    /// An owner's activity log.
    #[compute_method]
    pub async fn activity(&self, owner: String) -> Vec<String> {
        lock(&self.activity)
            .get(&owner)
            .cloned()
            .unwrap_or_default()
    }

    /// Adds a todo; logs it with a nested command.
    #[command_handler]
    pub async fn add(&self, command: AddTodo, ctx: &CommandContext) -> Result<Todo, TodoError> {
        invalidate! {
            self.list(command.owner.clone());
            if let Some(TodoId(id)) = ctx.items().get::<TodoId>() {
                self.get(id);
            }
        }
        if command.title.trim().is_empty() {
            return Err(TodoError::EmptyTitle);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let todo = Todo {
            id,
            owner: command.owner.clone(),
            title: command.title.clone(),
            done: false,
        };
        lock(&self.store).insert(id, todo.clone());
        ctx.items().set(TodoId(id))?;
        let text = format!("added {id}: {}", command.title);
        ctx.hub()
            .commander()
            .call(LogActivity {
                owner: command.owner,
                text,
            })
            .await?;
        Ok(todo)
    }

    /// Renames a todo.
    #[command_handler]
    pub async fn rename(
        &self,
        command: RenameTodo,
        _ctx: &CommandContext,
    ) -> Result<Todo, TodoError> {
        invalidate! {
            self.get(command.id);
        }
        let mut store = lock(&self.store);
        let todo = store
            .get_mut(&command.id)
            .ok_or(TodoError::NotFound(command.id))?;
        todo.title = command.title;
        Ok(todo.clone())
    }

    /// Marks a todo done (which changes `open_count`, through `get`).
    #[command_handler]
    pub async fn complete(
        &self,
        command: CompleteTodo,
        _ctx: &CommandContext,
    ) -> Result<Todo, TodoError> {
        invalidate! {
            self.get(command.id);
        }
        let mut store = lock(&self.store);
        let todo = store
            .get_mut(&command.id)
            .ok_or(TodoError::NotFound(command.id))?;
        todo.done = true;
        Ok(todo.clone())
    }

    /// Removes a todo; its owner goes to the invalidation branch as an item.
    #[command_handler]
    pub async fn remove(&self, command: RemoveTodo, ctx: &CommandContext) -> Result<(), TodoError> {
        invalidate! {
            self.get(command.id);
            if let Some(Owner(owner)) = ctx.items().get::<Owner>() {
                self.list(owner);
            }
        }
        let todo = lock(&self.store)
            .remove(&command.id)
            .ok_or(TodoError::NotFound(command.id))?;
        ctx.items().set(Owner(todo.owner.clone()))?;
        let text = format!("removed {}", command.id);
        ctx.hub()
            .commander()
            .call(LogActivity {
                owner: todo.owner,
                text,
            })
            .await?;
        Ok(())
    }

    /// Appends to an owner's activity log.
    #[command_handler]
    pub async fn log_activity(
        &self,
        command: LogActivity,
        _ctx: &CommandContext,
    ) -> Result<(), TodoError> {
        invalidate! {
            self.activity(command.owner.clone());
        }
        lock(&self.activity)
            .entry(command.owner)
            .or_default()
            .push(command.text);
        Ok(())
    }
}
