//! The todos service of the ofx demo: an in-memory store behind cached compute methods.
//!
//! Run the demo with `cargo run -p todos`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};

/// A todo item.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The todo service: reads go through compute methods, writes invalidate what they change.
#[derive(Debug)]
pub struct Todos {
    hub: Hub,
    store: Mutex<BTreeMap<u64, Todo>>,
    next_id: AtomicU64,
    /// How many times each compute method body ran, for the demo and tests.
    pub reads: AtomicU64,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Todos {
    /// An empty service on `hub`.
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            store: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            reads: AtomicU64::new(0),
        }
    }

    fn read_store(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Todo>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// How many of an owner's todos are not done: computed from `list` and `get`, so it
    /// depends on them.
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

    /// Adds a todo and invalidates the owner's list (and so everything computed from it).
    pub fn add(&self, owner: &str, title: &str) -> Todo {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let todo = Todo {
            id,
            owner: owner.to_owned(),
            title: title.to_owned(),
            done: false,
        };
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, todo.clone());
        invalidate! {
            self.list(owner.to_owned());
            self.get(id);
        }
        todo
    }

    /// Marks a todo done and invalidates it (and so the open count computed from it).
    pub fn complete(&self, id: u64) -> Option<Todo> {
        let todo = {
            let mut store = self
                .store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let todo = store.get_mut(&id)?;
            todo.done = true;
            todo.clone()
        };
        invalidate! { self.get(id); }
        Some(todo)
    }
}
