//! The todos service of the ofx demo: todos in SQLite behind cached compute methods, changed by
//! commands that write through the operation scope (the operation is logged in the same
//! transaction) and whose invalidation branches say what each change makes stale.
//!
//! Run the demo with `cargo run -p todos`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, OperationItem, command_handler, compute_method,
    invalidate, service,
};
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

/// The todo service: reads go through compute methods, writes through commands.
#[derive(Debug)]
pub struct Todos {
    hub: Hub,
    db: DbHub<Sqlite>,
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
    /// The service on `db` (its schema created if needed), attached to `hub`.
    ///
    /// # Errors
    /// When the schema cannot be created.
    pub async fn open(hub: &Hub, db: DbHub<Sqlite>) -> Result<Arc<Self>, TodoError> {
        db.connection().await?.batch_execute(SCHEMA).await?;
        let todos = Arc::new(Self {
            hub: hub.clone(),
            db,
            reads: AtomicU64::new(0),
        });
        hub.add_service(&todos)?;
        Ok(todos)
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
        drop(connection); // the nested command takes the scope's connection in turn
        ctx.items().set(TodoId(todo.id))?;
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
        diesel::update(todos::table.find(command.id))
            .set(todos::done.eq(true))
            .returning(Todo::as_returning())
            .get_result(&mut *connection)
            .await
            .optional()?
            .ok_or(TodoError::NotFound(command.id))
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
