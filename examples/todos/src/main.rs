//! The ofx demo: cached compute methods, a dependent value, an invalidation and the
//! recomputation, shown in the log.
//!
//! Run with `cargo run -p todos`.

use std::sync::atomic::Ordering;

use ofx_core::{Hub, capture};
use todos::Todos;
use tracing::info;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();

    let todos = Todos::new(Hub::new()?);
    todos.add("alice", "write the docs");
    todos.add("alice", "ship it");

    info!("1. first call: open_count computes, and computes list and get as its dependencies");
    let (open, computed) = capture(todos.open_count("alice".to_owned())).await?;
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
    let open = todos.open_count("alice".to_owned()).await;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!("3. complete todo 1: invalidates get(1), and through it open_count(alice)");
    todos.complete(1);
    info!(state = ?computed.state(), "the old open_count(alice)");

    info!("4. next call: open_count and get(1) are recomputed; list and get(2) are still cached");
    let open = todos.open_count("alice".to_owned()).await;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );
    Ok(())
}
