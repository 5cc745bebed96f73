//! The ofx demo: cached compute methods, a dependent value, commands whose invalidation branches
//! make exactly the stale values recompute, shown in the log.
//!
//! Run with `cargo run -p todos`.

use std::sync::atomic::Ordering;

use ofx_core::{Hub, capture};
use todos::{AddTodo, CompleteTodo, RemoveTodo, RenameTodo, Todos};
use tracing::info;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();

    let hub = Hub::new()?;
    let todos = Todos::new(&hub);
    let commander = hub.commander();
    let alice = || "alice".to_owned();
    commander
        .call(AddTodo {
            owner: alice(),
            title: "write the docs".into(),
        })
        .await?;
    commander
        .call(AddTodo {
            owner: alice(),
            title: "ship it".into(),
        })
        .await?;

    info!("1. first call: open_count computes, and computes list and get as its dependencies");
    let (open, computed) = capture(todos.open_count(alice())).await?;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );
    info!(
        dependencies = computed.dependencies().len(),
        "open_count depends on list + 2 × get"
    );

    info!("2. second call: served from the cache, nothing is computed");
    let open = todos.open_count(alice()).await;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!(
        "3. CompleteTodo(1): its invalidation branch invalidates get(1), and through it open_count(alice)"
    );
    commander.call(CompleteTodo { id: 1 }).await?;
    info!(state = ?computed.state(), "the old open_count(alice)");

    info!("4. next call: open_count and get(1) are recomputed; list and get(2) are still cached");
    let open = todos.open_count(alice()).await;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!(
        "5. RenameTodo(2) invalidates get(2) only; RemoveTodo(2) passes the owner to its invalidation branch"
    );
    commander
        .call(RenameTodo {
            id: 2,
            title: "ship it today".into(),
        })
        .await?;
    commander.call(RemoveTodo { id: 2 }).await?;
    let open = todos.open_count(alice()).await;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!("6. every command logged activity through a nested command, invalidated with it");
    for line in todos.activity(alice()).await {
        info!(%line, "activity(alice)");
    }
    Ok(())
}
