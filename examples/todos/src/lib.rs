//! The todos service of the ofx demo: todos in SQLite behind cached compute methods, changed by
//! commands that write through the operation scope (the operation is logged in the same
//! transaction) and whose invalidation branches say what each change makes stale.
//!
//! The commands also append to a stream, `todos.history`, that a **state service** projects into
//! each owner's figures ([`History`], [`Figures`]) on every host, in memory: what
//! [`Todos::figures`] reads.
//!
//! Run the demo with `cargo run -p todos`, or serve it on two hosts with
//! `cargo run -p todos -- serve` ([`web`]).

pub mod web;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, OperationItem, command_handler, compute_method,
    invalidate, service,
};
use ofx_diesel::state::{Projection, Rejection, StateService};
use ofx_diesel::{DbHub, Sqlite};
use serde::{Deserialize, Serialize};

diesel::table! {
    /// The todos.
    todos (id) {
        /// Its id.
        id -> BigInt,
        /// Who owns it.
        owner -> Text,
        /// What to do.
        title -> Text,
        /// Whether it is done.
        done -> Bool,
    }
}

diesel::table! {
    /// Each owner's activity log.
    activity (id) {
        /// Its order.
        id -> BigInt,
        /// Whose log.
        owner -> Text,
        /// What happened.
        text -> Text,
    }
}

/// The example's schema (idempotent).
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS todos (
        id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
        owner TEXT NOT NULL,
        title TEXT NOT NULL,
        done BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX IF NOT EXISTS todos_owner ON todos (owner);
    CREATE TABLE IF NOT EXISTS activity (
        id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
        owner TEXT NOT NULL,
        text TEXT NOT NULL
    );
";

/// A todo item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = todos)]
pub struct Todo {
    /// Its id.
    pub id: i64,
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
    NotFound(i64),
    /// A title must say something.
    #[error("a todo needs a title")]
    EmptyTitle,
    /// The runtime failed.
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
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
    pub id: i64,
    /// Its new title.
    pub title: String,
}

/// Marks a todo done.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Todo, name = "todos.complete")]
pub struct CompleteTodo {
    /// Which todo.
    pub id: i64,
}

/// Removes a todo.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "todos.remove")]
pub struct RemoveTodo {
    /// Which todo.
    pub id: i64,
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
pub struct TodoId(pub i64);

impl OperationItem for TodoId {
    const KEY: &'static str = "todos.id";
}

/// The owner of the todo a command removed (gone from the store by the time invalidation runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner(pub String);

impl OperationItem for Owner {
    const KEY: &'static str = "todos.owner";
}

/// What happened to the todos: the events of the `todos.history` stream, appended by the
/// commands in their own transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HistoryEvent {
    /// A todo was added for `owner`.
    Added {
        /// Whose todo.
        owner: String,
    },
    /// A todo of `owner`'s was marked done (only the first time).
    Completed {
        /// Whose todo.
        owner: String,
    },
    /// A todo of `owner`'s was removed.
    Removed {
        /// Whose todo.
        owner: String,
    },
}

/// One owner's figures: how many todos were ever added, completed and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Todos added.
    pub added: u64,
    /// Todos completed.
    pub completed: u64,
    /// Todos removed.
    pub removed: u64,
}

/// The projected state: every owner's figures (a few owners: cloning it per applied batch is
/// cheap).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryState {
    /// Figures by owner.
    pub owners: BTreeMap<String, Figures>,
}

/// The projection of the `todos.history` stream into [`HistoryState`].
#[derive(Debug, Clone, Copy, Default)]
pub struct History;

impl Projection for History {
    type Event = HistoryEvent;
    type State = HistoryState;
    const NAME: &'static str = "todos.history";
    const VERSION: u32 = 1;

    fn initial(&self) -> HistoryState {
        HistoryState::default()
    }

    fn apply(
        &self,
        state: &mut HistoryState,
        event: HistoryEvent,
        _position: u64,
    ) -> Result<(), Rejection> {
        let (owner, field): (String, fn(&mut Figures) -> &mut u64) = match event {
            HistoryEvent::Added { owner } => (owner, |f| &mut f.added),
            HistoryEvent::Completed { owner } => (owner, |f| &mut f.completed),
            HistoryEvent::Removed { owner } => (owner, |f| &mut f.removed),
        };
        *field(state.owners.entry(owner).or_default()) += 1;
        Ok(())
    }
}

/// The state service that keeps [`History`] on a host.
pub type HistoryService = StateService<History, Sqlite>;

/// An owner's figures as [`Todos::figures`] returns them, with the stream position they are
/// at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerFigures {
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// The position in the `todos.history` stream of the last event applied on this host.
    pub position: u64,
}

/// The todo service: reads go through compute methods, writes through commands.
#[derive(Debug)]
pub struct Todos {
    hub: Hub,
    db: DbHub<Sqlite>,
    history: HistoryService,
    /// How many times a compute method read the database, for the demo and tests.
    pub reads: AtomicU64,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// A compute method's view of a database failure (cached for the error lifetime, then retried).
fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

#[service]
impl Todos {
    /// The last two steps of a host on `db` (whose watcher, if any, is set): starts a hub with
    /// the database and the history's state service, adds the service, and waits until the
    /// state service caught up with the stream (commands need it).
    ///
    /// # Errors
    /// When the hub cannot start, the schema cannot be created, or the state service cannot
    /// load.
    pub async fn start(db: DbHub<Sqlite>) -> Result<(Hub, Arc<Self>), TodoError> {
        let history = StateService::new(&db, History);
        let hub = Hub::builder()
            .with(db.clone())
            .with(history.clone())
            .start()
            .await?;
        let todos = Self::open(&hub, db, history).await?;
        todos.history.ready().await?;
        Ok((hub, todos))
    }

    /// The service on `db` (its schema created if needed), attached to `hub`, appending to and
    /// reading `history` (attached to `hub` too, for commands to run: see
    /// [`start`](Self::start)).
    ///
    /// # Errors
    /// When the schema cannot be created.
    pub async fn open(
        hub: &Hub,
        db: DbHub<Sqlite>,
        history: HistoryService,
    ) -> Result<Arc<Self>, TodoError> {
        db.connection().await?.batch_execute(SCHEMA).await?;
        let todos = Arc::new(Self {
            hub: hub.clone(),
            db,
            history,
            reads: AtomicU64::new(0),
        });
        hub.add_service(&todos)?;
        Ok(todos)
    }

    /// The history's state service (for its status).
    pub fn history(&self) -> &HistoryService {
        &self.history
    }

    /// Appends `event` to the history, in the running command's transaction.
    async fn record(&self, ctx: &CommandContext, event: HistoryEvent) -> Result<(), TodoError> {
        self.history
            .transaction(ctx, |_, appends| {
                appends.push(event.clone());
                Ok::<_, TodoError>(())
            })
            .await?;
        Ok(())
    }

    /// One todo.
    #[compute_method]
    pub async fn get(&self, id: i64) -> Result<Option<Todo>, String> {
        tracing::info!(id, "computing get");
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut connection = self.db.connection().await.map_err(failed)?;
        todos::table
            .find(id)
            .select(Todo::as_select())
            .first(&mut *connection)
            .await
            .optional()
            .map_err(failed)
    }

    /// The ids of an owner's todos.
    #[compute_method]
    pub async fn list(&self, owner: String) -> Result<Vec<i64>, String> {
        tracing::info!(%owner, "computing list");
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut connection = self.db.connection().await.map_err(failed)?;
        todos::table
            .filter(todos::owner.eq(owner))
            .order(todos::id)
            .select(todos::id)
            .load(&mut *connection)
            .await
            .map_err(failed)
    }

    /// How many of an owner's todos are not done: computed from `list` and `get`, so it depends
    /// on them.
    #[compute_method]
    pub async fn open_count(&self, owner: String) -> Result<usize, String> {
        tracing::info!(%owner, "computing open_count");
        let mut open = 0;
        for id in self.list(owner).await? {
            if self.get(id).await?.is_some_and(|todo| !todo.done) {
                open += 1;
            }
        }
        Ok(open)
    }

    /// An owner's todos, in order: computed from `list` and `get`, so it depends on them (what
    /// the web page shows live).
    #[compute_method]
    pub async fn view(&self, owner: String) -> Result<Vec<Todo>, String> {
        let mut todos = Vec::new();
        for id in self.list(owner).await? {
            todos.extend(self.get(id).await?);
        }
        Ok(todos)
    }

    /// An owner's figures, from the history's state on this host: invalidated when the state
    /// advances here (after a command on this host, or once this host followed another's).
    #[compute_method]
    pub async fn figures(&self, owner: String) -> Result<OwnerFigures, String> {
        let view = self.history.local_state().await.map_err(failed)?;
        Ok(OwnerFigures {
            figures: view.owners.get(&owner).copied().unwrap_or_default(),
            position: view.position,
        })
    }

    /// An owner's activity log.
    #[compute_method]
    pub async fn activity(&self, owner: String) -> Result<Vec<String>, String> {
        let mut connection = self.db.connection().await.map_err(failed)?;
        activity::table
            .filter(activity::owner.eq(owner))
            .order(activity::id)
            .select(activity::text)
            .load(&mut *connection)
            .await
            .map_err(failed)
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
        let mut connection = self.db.operation_connection(ctx).await?;
        let todo: Todo = diesel::insert_into(todos::table)
            .values((
                todos::owner.eq(&command.owner),
                todos::title.eq(&command.title),
            ))
            .returning(Todo::as_returning())
            .get_result(&mut *connection)
            .await?;
        drop(connection); // the state service and the nested command take it in turn
        ctx.items().set(TodoId(todo.id))?;
        self.record(
            ctx,
            HistoryEvent::Added {
                owner: command.owner.clone(),
            },
        )
        .await?;
        let text = format!("added {}: {}", todo.id, command.title);
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
        ctx: &CommandContext,
    ) -> Result<Todo, TodoError> {
        invalidate! {
            self.get(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::update(todos::table.find(command.id))
            .set(todos::title.eq(&command.title))
            .returning(Todo::as_returning())
            .get_result(&mut *connection)
            .await
            .optional()?
            .ok_or(TodoError::NotFound(command.id))
    }

    /// Marks a todo done (which changes `open_count`, through `get`).
    #[command_handler]
    pub async fn complete(
        &self,
        command: CompleteTodo,
        ctx: &CommandContext,
    ) -> Result<Todo, TodoError> {
        invalidate! {
            self.get(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        let completed = diesel::update(todos::table.find(command.id).filter(todos::done.eq(false)))
            .set(todos::done.eq(true))
            .returning(Todo::as_returning())
            .get_result(&mut *connection)
            .await
            .optional()?;
        let Some(todo) = completed else {
            // Done already (nothing to write, nothing to record), or not there.
            return todos::table
                .find(command.id)
                .select(Todo::as_select())
                .first(&mut *connection)
                .await
                .optional()?
                .ok_or(TodoError::NotFound(command.id));
        };
        drop(connection);
        self.record(
            ctx,
            HistoryEvent::Completed {
                owner: todo.owner.clone(),
            },
        )
        .await?;
        Ok(todo)
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
        let mut connection = self.db.operation_connection(ctx).await?;
        let owner: String = diesel::delete(todos::table.find(command.id))
            .returning(todos::owner)
            .get_result(&mut *connection)
            .await
            .optional()?
            .ok_or(TodoError::NotFound(command.id))?;
        drop(connection);
        ctx.items().set(Owner(owner.clone()))?;
        self.record(
            ctx,
            HistoryEvent::Removed {
                owner: owner.clone(),
            },
        )
        .await?;
        let text = format!("removed {}", command.id);
        ctx.hub()
            .commander()
            .call(LogActivity { owner, text })
            .await?;
        Ok(())
    }

    /// Appends to an owner's activity log.
    #[command_handler]
    pub async fn log_activity(
        &self,
        command: LogActivity,
        ctx: &CommandContext,
    ) -> Result<(), TodoError> {
        invalidate! {
            self.activity(command.owner.clone());
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::insert_into(activity::table)
            .values((
                activity::owner.eq(&command.owner),
                activity::text.eq(&command.text),
            ))
            .execute(&mut *connection)
            .await?;
        Ok(())
    }
}
