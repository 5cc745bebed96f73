//! A TCP proxy between a host and PostgreSQL that breaks the first `COMMIT` it sees after being
//! armed, the ways a network can: it reads the client's messages (PostgreSQL's frontend
//! protocol), and a `COMMIT` triggers the armed [`Fault`]: a simple-protocol query `Q` whose
//! text is exactly `COMMIT` (what diesel-async's transaction manager sends), or the `Bind` of a
//! statement prepared as `COMMIT` with what follows it up to its `Sync` (the commit an
//! operation pipelines behind its row). It can also cut the connection that sends the next
//! `BEGIN`, in either protocol ([`Proxy::arm_begin`]). Everything else is forwarded as it
//! comes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does with the `COMMIT` it intercepts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Closes both connections before `COMMIT` reaches the server: the server sees its client
    /// gone in the middle of the transaction and aborts it.
    CutBeforeCommit,
    /// Forwards `COMMIT` to the server, then closes the client's connection; the server's reply
    /// never reaches the client.
    ForwardThenCutClient,
    /// Closes the client's connection, then forwards `COMMIT` on the still open server
    /// connection this long after.
    CutClientThenForwardAfter(Duration),
    /// Closes the client's connection and holds `COMMIT` (the server's session stays open, in
    /// its transaction) until [`Proxy::release`]; then forwards it.
    CutClientAndHold,
    /// Closes both connections before `COMMIT` reaches the server, and refuses every new
    /// connection until [`Proxy::accept_again`].
    CutAllAndRefuse,
}

/// The proxy; dropping it closes every connection it holds.
pub(crate) struct Proxy {
    url: String,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    armed: Mutex<Option<Fault>>,
    intercepted: AtomicU64,
    begin_armed: AtomicBool,
    begins_cut: AtomicU64,
    refusing: AtomicBool,
    release: tokio::sync::Notify,
    /// Counts the server's replies read after the client was cut off (dropped, not forwarded).
    dropped_replies: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

/// `PROTOCOL` codes of the untyped requests a client may send before its startup message.
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

impl Proxy {
    /// A proxy to the server of `url` (`postgres://user@host:port/database`), listening on a
    /// free local port.
    pub(crate) async fn start(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
        let (user, rest) = rest.split_once('@').expect("a URL with a user");
        let (authority, database) = rest.split_once('/').expect("a URL with a database");
        let upstream = tokio::net::lookup_host(authority)
            .await
            .expect("the server's address resolves")
            .next()
            .expect("the server has an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            armed: Mutex::new(None),
            intercepted: AtomicU64::new(0),
            begin_armed: AtomicBool::new(false),
            begins_cut: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
            dropped_replies: tokio::sync::watch::Sender::new(0),
            stop: CancellationToken::new(),
        });
        tokio::spawn(accept(listener, Arc::clone(&shared)));
        Self {
            url: format!("{scheme}://{user}@127.0.0.1:{port}/{database}"),
            shared,
        }
    }

    /// The URL of the database through the proxy.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Makes the next `COMMIT` (on any connection) suffer `fault`.
    pub(crate) fn arm(&self, fault: Fault) {
        *self
            .shared
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    /// Makes the next `BEGIN` (on any connection) close both sides of its connection before
    /// it reaches the server: what a connection that died while idle in the pool does to the
    /// first statement sent on it.
    pub(crate) fn arm_begin(&self) {
        self.shared.begin_armed.store(true, Ordering::SeqCst);
    }

    /// How many `BEGIN`s the proxy cut so far.
    pub(crate) fn begins_cut(&self) -> u64 {
        self.shared.begins_cut.load(Ordering::SeqCst)
    }

    /// How many `COMMIT`s the proxy intercepted so far.
    pub(crate) fn intercepted(&self) -> u64 {
        self.shared.intercepted.load(Ordering::SeqCst)
    }

    /// Forwards the `COMMIT` held by [`Fault::CutClientAndHold`], and waits until the server
    /// replied to it (the commit is then visible to every new transaction).
    pub(crate) async fn release_and_await_reply(&self) {
        let mut replies = self.shared.dropped_replies.subscribe();
        let before = *replies.borrow_and_update();
        self.shared.release.notify_one();
        replies
            .wait_for(|dropped| *dropped > before)
            .await
            .expect("the proxy runs");
    }

    /// Accepts connections again after [`Fault::CutAllAndRefuse`].
    pub(crate) fn accept_again(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client); // the client sees its connection closed during startup
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let stop = shared.stop.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve(shared, client) => {}
            }
        });
    }
}

/// The client's half for writing, shared by both directions: whoever takes it out cuts the
/// server's replies off from the client.
type ClientWriter = Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>;

async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    // Messages are forwarded one write each: without this, Nagle's algorithm holds a write
    // until the previous one is acknowledged (tens of milliseconds, with delayed ACKs).
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let client_write: ClientWriter = Arc::new(tokio::sync::Mutex::new(Some(client_write)));
    let cut_server = CancellationToken::new();
    let replies = tokio::spawn(server_to_client(
        Arc::clone(&shared),
        server_read,
        Arc::clone(&client_write),
        cut_server.clone(),
    ));
    client_to_server(
        &shared,
        client_read,
        server_write,
        &client_write,
        &cut_server,
    )
    .await;
    cut_server.cancel();
    let _ = replies.await;
}

/// Copies the server's bytes to the client while the client's writer is there; after it was
/// taken, reads and drops them (the server's session stays open).
async fn server_to_client(
    shared: Arc<Shared>,
    mut server: OwnedReadHalf,
    client: ClientWriter,
    cut_server: CancellationToken,
) {
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            () = cut_server.cancelled() => return,
            read = server.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                client.lock().await.take(); // the server closed: so does the client's side
                return;
            }
            Ok(n) => n,
        };
        let mut writer = client.lock().await;
        match writer.as_mut() {
            Some(client) => {
                if client.write_all(&buffer[..n]).await.is_err() {
                    writer.take();
                }
            }
            None => {
                shared.dropped_replies.send_modify(|dropped| *dropped += 1);
            }
        }
    }
}

/// Forwards the client's messages to the server, one whole message at a time, until the client
/// closes or a `COMMIT` meets an armed fault. Returns when the server connection may close.
async fn client_to_server(
    shared: &Shared,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    client_writer: &ClientWriter,
    cut_server: &CancellationToken,
) {
    // Untyped messages first: SSL / GSS requests (answered by one byte, which the other
    // direction forwards), then the startup message.
    loop {
        let Ok(length) = client.read_i32().await else {
            return;
        };
        let mut body = vec![0_u8; usize::try_from(length - 4).unwrap_or(0)];
        if client.read_exact(&mut body).await.is_err() {
            return;
        }
        let code = body
            .get(..4)
            .map(|code| i32::from_be_bytes(code.try_into().unwrap()));
        if server.write_all(&length.to_be_bytes()).await.is_err()
            || server.write_all(&body).await.is_err()
        {
            return;
        }
        if code != Some(SSL_REQUEST) && code != Some(GSSENC_REQUEST) {
            break;
        }
    }
    // The statements this connection prepared, by name: their text.
    let mut statements = std::collections::HashMap::<Vec<u8>, Vec<u8>>::new();
    loop {
        let Some(Message {
            tag,
            body,
            bytes: mut message,
        }) = read_message(&mut client).await
        else {
            return;
        };
        if tag == b'P' {
            // Parse: statement name, query text.
            let mut parts = body.split(|byte| *byte == 0);
            if let (Some(name), Some(query)) = (parts.next(), parts.next()) {
                statements.insert(name.to_vec(), query.to_vec());
            }
        }
        // Bind: portal name, statement name.
        let bound = (tag == b'B')
            .then(|| body.split(|byte| *byte == 0).nth(1))
            .flatten()
            .and_then(|statement| statements.get(statement));
        let begins = (tag == b'Q' && body.starts_with(b"BEGIN"))
            || bound.is_some_and(|query| query.starts_with(b"BEGIN"));
        if begins && shared.begin_armed.swap(false, Ordering::SeqCst) {
            shared.begins_cut.fetch_add(1, Ordering::SeqCst);
            client_writer.lock().await.take();
            drop(client);
            cut_server.cancel();
            drop(server);
            return;
        }
        let binds_commit = bound.is_some_and(|query| query == b"COMMIT");
        if binds_commit
            && shared
                .armed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        {
            // The commit is its Bind, Execute and Sync: held together.
            loop {
                let Some(next) = read_message(&mut client).await else {
                    return;
                };
                message.extend_from_slice(&next.bytes);
                if next.tag == b'S' {
                    break;
                }
            }
        }
        if (tag == b'Q' && body == b"COMMIT\0") || binds_commit {
            let fault = shared
                .armed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(fault) = fault {
                shared.intercepted.fetch_add(1, Ordering::SeqCst);
                apply(
                    shared,
                    fault,
                    client,
                    server,
                    &message,
                    client_writer,
                    cut_server,
                )
                .await;
                return;
            }
        }
        if server.write_all(&message).await.is_err() {
            return;
        }
    }
}

/// One typed message of the frontend protocol.
struct Message {
    tag: u8,
    body: Vec<u8>,
    /// The whole message as read (tag, length, body), to forward.
    bytes: Vec<u8>,
}

/// Reads the client's next typed message; `None` once the client is gone.
async fn read_message(client: &mut OwnedReadHalf) -> Option<Message> {
    let tag = client.read_u8().await.ok()?;
    let length = client.read_i32().await.ok()?;
    let mut body = vec![0_u8; usize::try_from(length - 4).unwrap_or(0)];
    client.read_exact(&mut body).await.ok()?;
    let mut bytes = Vec::with_capacity(body.len() + 5);
    bytes.push(tag);
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&body);
    Some(Message { tag, body, bytes })
}

async fn apply(
    shared: &Shared,
    fault: Fault,
    client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    commit: &[u8],
    client_writer: &ClientWriter,
    cut_server: &CancellationToken,
) {
    // Taking the client's writer out first: no byte from the server reaches the client again.
    let writer = client_writer.lock().await.take();
    let cut_client = move || drop((writer, client));
    match fault {
        Fault::CutBeforeCommit => {
            cut_client();
            cut_server.cancel();
            drop(server);
            return;
        }
        Fault::CutAllAndRefuse => {
            shared.refusing.store(true, Ordering::SeqCst);
            cut_client();
            cut_server.cancel();
            drop(server);
            return;
        }
        Fault::ForwardThenCutClient => {
            let _ = server.write_all(commit).await;
            cut_client();
        }
        Fault::CutClientThenForwardAfter(delay) => {
            cut_client();
            tokio::time::sleep(delay).await;
            let _ = server.write_all(commit).await;
        }
        Fault::CutClientAndHold => {
            cut_client();
            shared.release.notified().await;
            let _ = server.write_all(commit).await;
        }
    }
    // The server's session stays open (replies drained) until the proxy is dropped.
    shared.stop.cancelled().await;
}
