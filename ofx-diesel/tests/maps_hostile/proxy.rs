//! A TCP proxy between a host and PostgreSQL that can stall (hold every byte, connections
//! open) or go away (close every connection and refuse new ones), and come back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forwards everything.
    Pass,
    /// Forwards nothing, keeps the connections open.
    Stall,
    /// Closes every connection and refuses new ones.
    Down,
}

/// The proxy; dropping it closes every connection.
pub(crate) struct Proxy {
    url: String,
    mode: watch::Sender<Mode>,
    /// Connections numbered below this are black holes (a network path gone silent).
    silent_below: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy to the server of `url` (`postgres://user@host:port/database`).
    pub(crate) async fn start(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
        let (user, rest) = rest.split_once('@').expect("a URL with a user");
        let (authority, database) = rest.split_once('/').expect("a URL with a database");
        let upstream = tokio::net::lookup_host(authority)
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = watch::Sender::new(Mode::Pass);
        let stop = CancellationToken::new();
        let silent_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        tokio::spawn(accept(
            listener,
            upstream,
            mode.subscribe(),
            stop.clone(),
            Arc::clone(&silent_below),
            next,
        ));
        Self {
            url: format!("{scheme}://{user}@127.0.0.1:{port}/{database}"),
            mode,
            silent_below,
            stop,
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Every connection open now goes silent for good (its bytes are held, it stays open);
    /// new connections pass: a stalled connection, a reachable server.
    pub(crate) fn silence_open_connections(&self) {
        // Connections accepted from now on are numbered from `u64::MAX / 2`.
        self.silent_below.store(u64::MAX / 2, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stop: CancellationToken,
    silent_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
) {
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        if *mode.borrow() == Mode::Down {
            drop(client);
            continue;
        }
        let mode = mode.clone();
        let stop = stop.clone();
        // Numbered above every silenced one once connections were silenced.
        let floor = if silent_below.load(Ordering::SeqCst) > 0 {
            u64::MAX / 2
        } else {
            0
        };
        let id = floor + next.fetch_add(1, Ordering::SeqCst);
        let silent = Silent {
            id,
            below: Arc::clone(&silent_below),
        };
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                () = stop.cancelled() => {}
                () = pump(client_read, server_write, mode.clone(), silent.clone()) => {}
                () = pump(server_read, client_write, mode, silent) => {}
            }
        });
    }
}

/// Whether a connection was silenced.
#[derive(Clone)]
struct Silent {
    id: u64,
    below: Arc<AtomicU64>,
}

impl Silent {
    fn is_silent(&self) -> bool {
        self.id < self.below.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` while the mode lets it; returns (closing both) when it goes down.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    silent: Silent,
) {
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = mode.wait_for(|mode| *mode == Mode::Down) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.is_silent() {
            // A black hole: held until the proxy goes down.
            let _ = mode.wait_for(|mode| *mode == Mode::Down).await;
            return;
        }
        // Held while stalled.
        match mode.wait_for(|mode| *mode != Mode::Stall).await {
            Ok(mode) if *mode == Mode::Pass => {}
            _ => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
