//! The ledger demo: a bank ledger kept by ofx's state service on two hosts that share a SQLite
//! file (in the temporary directory; no server), woken by the file-system watcher. It shows
//! readiness, a command on host A read by `current_state()` on host B, `local_state()` with
//! its position and lag, a compute method invalidated on both hosts when the state advances,
//! a transfer refused for insufficient funds, the status and its `/status` route, and host B
//! restarted from its snapshot.
//!
//! Run with `cargo run -p ledger` (`RUST_LOG=info` shows the runtime's logs on stderr).

// The demo's output is what it prints.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ledger::{Accounts, Deposit, Host, LedgerError, LedgerFiles, Transfer};
use ofx_core::background::TaskState;
use ofx_core::{ComputedState, capture};
use ofx_diesel::state::{StateService, StateStatus, status_router};
use ofx_diesel::{Sqlite, state::Projection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the demo waits for anything before it gives up.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let files = LedgerFiles::temporary();
    println!("ledger: two hosts on {}", files.database.display());
    let outcome = demo(&files).await;
    files.remove();
    outcome
}

async fn demo(files: &LedgerFiles) -> Result<(), Error> {
    println!("\n1. readiness");
    let prepared = Host::prepare("a", files).await?;
    println!(
        "   A (hub not started): is_ready() = {}, local_state() -> {}",
        prepared.ledger().is_ready(),
        describe(
            prepared
                .ledger()
                .local_state()
                .await
                .map(|view| view.position)
        )
    );
    let started = Instant::now();
    let a = prepared.start().await?;
    within(a.ledger().ready()).await??;
    println!(
        "   A ready after {}: is_ready() = {}",
        ms(started.elapsed()),
        a.ledger().is_ready()
    );
    let b = Host::open("b", files).await?;
    within(b.ledger().ready()).await??;
    println!(
        "   B ready: position {}",
        b.ledger().local_state().await?.position
    );

    println!("\n2. commands on host A, current_state() on host B");
    let commander = a.hub().commander();
    for (account, amount) in [("alice", 100), ("bob", 50)] {
        let receipt = commander
            .call(Deposit {
                account: account.into(),
                amount,
            })
            .await?;
        println!(
            "   A: deposit {amount} to {account} -> position {}, balance {}",
            receipt.position, receipt.balance
        );
    }
    let view = b.ledger().current_state().await?;
    println!(
        "   B: current_state() at position {}: {}",
        view.position,
        balances(&view)
    );
    let view = b.ledger().local_state().await?;
    println!(
        "   B: local_state() at position {} of {} (lag: {} events, {})",
        view.position,
        view.head,
        view.lag_events,
        ms(view.lag)
    );

    println!("\n3. a compute method that reads the state, invalidated on both hosts");
    let (on_a, computed_a) = capture(a.bank().balance("alice".into())).await?;
    let (on_b, computed_b) = capture(b.bank().balance("alice".into())).await?;
    println!(
        "   balance(alice): A {}, B {} (computed, then cached)",
        on_a?, on_b?
    );
    let called = Instant::now();
    let receipt = commander
        .call(Transfer {
            from: "alice".into(),
            to: "bob".into(),
            amount: 30,
        })
        .await?;
    let returned = called.elapsed();
    println!(
        "   A: transfer 30 alice -> bob -> position {}, alice has {} (decided in {} attempt, {})",
        receipt.position,
        receipt.balance,
        receipt.attempts,
        ms(returned)
    );
    println!(
        "   A: balance(alice) when call returned: {:?} (read-your-writes)",
        computed_a.state()
    );
    let already = computed_b.state() == ComputedState::Invalidated;
    within(computed_b.when_invalidated()).await?;
    println!(
        "   B: balance(alice) invalidated {} after A's call started ({} when it returned; B's follower is woken by the watcher)",
        ms(called.elapsed()),
        if already { "already" } else { "not yet" }
    );
    println!(
        "   balance(alice): A {}, B {}; computed A {} times, B {} times",
        a.bank().balance("alice".into()).await?,
        b.bank().balance("alice".into()).await?,
        a.bank().balance_computations(),
        b.bank().balance_computations()
    );

    println!("\n4. a transfer beyond the balance");
    let before = a.ledger().current_state().await?.position;
    let refused = commander
        .call(Transfer {
            from: "bob".into(),
            to: "alice".into(),
            amount: 500,
        })
        .await;
    match refused {
        Ok(receipt) => return Err(format!("an overdraft was accepted: {receipt:?}").into()),
        Err(error) => match LedgerError::of_call(&error) {
            Some(refusal @ LedgerError::InsufficientFunds { .. }) => {
                println!("   A: refused: {refusal}");
            }
            _ => return Err(error.into()),
        },
    }
    let after = a.ledger().current_state().await?.position;
    println!("   stream head before {before}, after {after}: nothing appended");

    println!("\n5. status");
    print_status("A", &a.ledger().status());
    print_status("B", &b.ledger().status());
    let (address, server) = serve_status(a.ledger()).await?;
    println!(
        "   GET http://{address}/status (host A) -> {}",
        get_status(address).await?
    );
    server.abort();

    println!("\n6. host B restarts from its snapshot");
    let saved = b.ledger().save_snapshot().await?;
    println!("   B: snapshot saved at position {}", show(saved));
    let stopped = b.shutdown(PATIENCE).await;
    println!("   B stopped (its follower: {})", ended(stopped));
    let receipt = commander
        .call(Deposit {
            account: "carol".into(),
            amount: 25,
        })
        .await?;
    println!(
        "   A: deposit 25 to carol while B is down -> position {}",
        receipt.position
    );
    let prepared = Host::prepare("b", files).await?;
    let (address, server) = serve_status(prepared.ledger()).await?;
    println!(
        "   GET http://{address}/status (host B, not started) -> {}",
        get_status(address).await?
    );
    let b = prepared.start().await?;
    within(b.ledger().ready()).await??;
    let status = b.ledger().status();
    println!(
        "   B ready: loaded the snapshot at position {}, caught up to position {} (head {})",
        show(status.loaded_snapshot),
        status.position,
        status.head
    );
    println!(
        "   GET http://{address}/status (host B, ready) -> {}",
        get_status(address).await?
    );
    server.abort();
    let on_b = b.ledger().current_state().await?;
    let on_a = a.ledger().current_state().await?;
    let fresh = ledger::project_from_scratch(files, PATIENCE).await?;
    println!("   B: {}", balances(&on_b));
    println!(
        "   B equals A: {}, equals a fresh projection of the stream: {}; money in the bank: {}",
        *on_b.state == *on_a.state,
        *on_b.state == *fresh.state,
        on_b.total()
    );
    // Stop both hosts (their background tasks end with their hubs, which the commander holds
    // too) before the files go.
    drop(commander);
    let (a, b) = (a.shutdown(PATIENCE).await, b.shutdown(PATIENCE).await);
    println!(
        "\nhosts stopped (followers: A {}, B {})",
        ended(a),
        ended(b)
    );
    Ok(())
}

/// Waits for `future`, at most [`PATIENCE`].
async fn within<F: Future>(future: F) -> Result<F::Output, Error> {
    tokio::time::timeout(PATIENCE, future)
        .await
        .map_err(|_| format!("nothing happened within {PATIENCE:?}").into())
}

fn describe(result: Result<u64, ofx_diesel::Error>) -> String {
    match result {
        Ok(position) => format!("Ok(position {position})"),
        Err(error @ ofx_diesel::Error::NotReady { .. }) => format!("Err(NotReady: {error})"),
        Err(error) => format!("Err({error})"),
    }
}

fn balances(accounts: &Accounts) -> String {
    let balances: Vec<String> = accounts
        .balances()
        .iter()
        .map(|(account, balance)| format!("{account} {balance}"))
        .collect();
    balances.join(", ")
}

fn ended(state: Option<TaskState>) -> String {
    state.map_or_else(|| "still running".to_owned(), |state| format!("{state:?}"))
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn show(position: Option<u64>) -> String {
    position.map_or_else(|| "none".to_owned(), |position| position.to_string())
}

fn print_status(host: &str, status: &StateStatus) {
    println!(
        "   {host}: {} v{} ready={} position={} head={} lag_events={} caught_up={} quarantined={} last_error={} loaded_snapshot={} saved_snapshot={}",
        status.projection,
        status.version,
        status.ready,
        status.position,
        status.head,
        status.lag_events,
        status.caught_up,
        status.quarantined,
        status.last_error.as_deref().unwrap_or("none"),
        show(status.loaded_snapshot),
        show(status.saved_snapshot),
    );
}

/// Serves `/status` of `ledger` on 127.0.0.1 at a port the system picks.
async fn serve_status<P: Projection>(
    ledger: &StateService<P, Sqlite>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let router = status_router([ledger.clone()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            eprintln!("the status server failed: {error}");
        }
    });
    Ok((address, server))
}

/// `GET /status` over a plain HTTP/1.1 connection: the status line, and whether the JSON says
/// ready.
async fn get_status(address: SocketAddr) -> Result<String, Error> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET /status HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await??;
    let status_line = response.lines().next().unwrap_or_default().to_owned();
    let ready = response.contains("\"ready\":true");
    Ok(format!("{status_line} (ready in the JSON: {ready})"))
}
