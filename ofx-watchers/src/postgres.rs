//! [`PgWatcher`]: PostgreSQL `LISTEN` / `NOTIFY`.
//!
//! Two connections per watcher, both made with `tokio-postgres`:
//! - the **listener** runs `LISTEN "<channel>"` and then only receives notifications, read with
//!   [`Connection::poll_message`](tokio_postgres::Connection::poll_message). When it breaks
//!   (server restart, `pg_terminate_backend`, network), it is reopened with backoff, `LISTEN` is
//!   run again and the host is woken once, since notifications sent meanwhile were lost.
//! - the **sender** runs `SELECT pg_notify($1, $2)` with the message (this host's id, then the
//!   hints) as the payload. It is opened at the first [`notify`](LogWatcher::notify) and kept;
//!   a broken one is replaced.
//!
//! `notify` is called after the commit, on its own connection, rather than as a `NOTIFY`
//! inside the transaction: before PostgreSQL 19 a commit that carries a `NOTIFY` takes a global
//! lock that serializes concurrent writers, and a wake-up (with its hints) only tells of what
//! committed already, so sending it a moment later loses nothing.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ofx_core::{HostId, LogWatcher};
use tokio::sync::Notify;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket, Statement};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::shared::{self, CONNECT_TIMEOUT, Handle, Publish, Shared};
use crate::{Error, Result, WatcherStats};

/// The longest channel name PostgreSQL keeps (`NAMEDATALEN - 1`); longer ones are truncated.
const MAX_IDENTIFIER: usize = 63;
/// How much of the log's name is kept, readable, in the channel name.
const READABLE_PART: usize = 40;
/// TCP keepalive settings of the listener, so a silently dead peer is noticed in about a
/// minute (the operating system's default waits two hours).
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(30), Duration::from_secs(10), 3);

type PgConnection = tokio_postgres::Connection<Socket, NoTlsStream>;

/// A [`LogWatcher`] over PostgreSQL `LISTEN` / `NOTIFY`.
///
/// ```no_run
/// # async fn example() -> Result<(), ofx_watchers::Error> {
/// use ofx_core::{HostId, LogWatcher};
/// use ofx_watchers::PgWatcher;
/// use tokio_util::sync::CancellationToken;
///
/// let stop = CancellationToken::new();
/// let watcher = PgWatcher::start("postgres://app@db/app", "orders", HostId::new(), stop).await?;
/// watcher.notify(); // after each commit
/// watcher.wakes().notified().await; // another host committed
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgWatcher {
    handle: Handle,
    channel: String,
    application_name: String,
}

impl PgWatcher {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` string, as
    /// [`tokio_postgres::Config`] parses them), runs `LISTEN` on the channel of `log_name`, and
    /// starts the background tasks, which stop when `stop` is cancelled or the watcher dropped.
    ///
    /// Unless the URL sets one, both connections get the `application_name`
    /// `ofx-watcher <host id>` (cut to 63 bytes), which `pg_stat_activity` shows.
    ///
    /// # Errors
    ///
    /// [`Error::Postgres`] when the URL is invalid or connecting or `LISTEN` fails, and
    /// [`Error::Timeout`] when that takes longer than 5 s. Later failures are logged and retried.
    pub async fn start(
        url: &str,
        log_name: &str,
        host_id: HostId,
        stop: CancellationToken,
    ) -> Result<Arc<Self>> {
        let mut config: Config = url.parse().map_err(pg("parse the URL"))?;
        if config.get_application_name().is_none() {
            config.application_name(cut(&format!("ofx-watcher {host_id}"), MAX_IDENTIFIER));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE.0)
            .keepalives_interval(KEEPALIVE.1)
            .keepalives_retries(KEEPALIVE.2);
        let application_name = config.get_application_name().unwrap_or_default().to_owned();
        let channel = Self::channel_for(log_name);
        let handle = Handle::new("postgres", host_id, &stop);
        let session = listen(&config, &channel, &handle.shared).await?;
        let listener = Listener {
            config: config.clone(),
            channel: channel.clone(),
            shared: Arc::clone(&handle.shared),
            stop: handle.stop.clone(),
        };
        ofx_core::background::spawn_supervised(
            "ofx watcher listener",
            Arc::clone(handle.shared.stats.listener_health()),
            listener.run(session),
        );
        handle.start_sender(Sender {
            config,
            channel: channel.clone(),
            stop: handle.stop.clone(),
            connection: None,
        });
        Ok(Arc::new(Self {
            handle,
            channel,
            application_name,
        }))
    }

    /// The channel of `log_name`: `ofx_`, the name's letters, digits and underscores
    /// (lowercased, others replaced by `_`, at most 40), `_`, and 16 hex digits of a stable hash
    /// of the whole name, so it fits PostgreSQL's 63 bytes and different names never share one.
    pub fn channel_for(log_name: &str) -> String {
        let readable: String = log_name
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '_' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .take(READABLE_PART)
            .collect();
        let hash = shared::stable_hash(log_name.as_bytes());
        format!("ofx_{readable}_{hash:016x}")
    }

    /// The channel this watcher listens and sends on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The `application_name` of its connections.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// This host's id, the first line of its messages.
    pub fn host_id(&self) -> &HostId {
        &self.handle.shared.host_id
    }

    /// What this watcher did so far.
    pub fn stats(&self) -> &WatcherStats {
        &self.handle.shared.stats
    }
}

impl LogWatcher for PgWatcher {
    fn notify(&self) {
        self.handle.notify();
    }

    fn wakes(&self) -> Arc<Notify> {
        self.handle.wakes()
    }

    fn notify_committed(&self, operation: &ofx_core::Operation) {
        self.handle.notify_committed(operation);
    }

    fn hints(&self) -> Option<Arc<ofx_core::watcher::WakeHints>> {
        Some(self.handle.hints())
    }
}

// ===== listening =====

/// A listening connection, with when it was made.
struct Session {
    /// Kept: dropping the client ends the connection.
    _client: Client,
    connection: PgConnection,
    since: Instant,
}

/// Connects and runs `LISTEN`; notifications that arrive meanwhile go to `shared`.
async fn listen(config: &Config, channel: &str, shared: &Shared) -> Result<Session> {
    shared::timeout("connecting and LISTEN", CONNECT_TIMEOUT, async {
        let (client, mut connection) = config.connect(NoTls).await.map_err(pg("connect"))?;
        {
            let sql = format!("LISTEN \"{channel}\"");
            let listen = client.batch_execute(&sql);
            tokio::pin!(listen);
            // The connection only makes progress while polled: drive it until LISTEN completes.
            loop {
                tokio::select! {
                    result = &mut listen => {
                        result.map_err(pg("LISTEN"))?;
                        break;
                    }
                    message = poll_fn(|cx| connection.poll_message(cx)) => {
                        if let Some(error) = receive(message, channel, shared) {
                            return Err(error);
                        }
                    }
                }
            }
        }
        Ok(Session {
            _client: client,
            connection,
            since: Instant::now(),
        })
    })
    .await
}

/// Handles one message from the listening connection; the error that ended it, if it did.
fn receive(
    message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    channel: &str,
    shared: &Shared,
) -> Option<Error> {
    match message {
        Some(Ok(AsyncMessage::Notification(notification))) => {
            if notification.channel() == channel {
                shared.on_message(notification.payload().as_bytes());
            }
            None
        }
        Some(Ok(AsyncMessage::Notice(notice))) => {
            tracing::debug!(%notice, "notice on the LISTEN connection");
            None
        }
        Some(Ok(_)) => None, // a kind of message added in a later tokio-postgres
        Some(Err(source)) => Some(Error::Postgres {
            action: "receive notifications",
            source,
        }),
        None => Some(Error::Closed {
            server: "PostgreSQL",
        }),
    }
}

/// The task that receives notifications and reconnects.
struct Listener {
    config: Config,
    channel: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Listener {
    async fn run(self, mut session: Session) {
        let mut backoff = Backoff::new();
        loop {
            let error = loop {
                let message = tokio::select! {
                    () = self.stop.cancelled() => return,
                    message = poll_fn(|cx| session.connection.poll_message(cx)) => message,
                };
                if let Some(error) = receive(message, &self.channel, &self.shared) {
                    break error;
                }
            };
            tracing::warn!(%error, channel = %self.channel, "lost the PostgreSQL LISTEN connection; reconnecting");
            backoff.connection_ended(session.since.elapsed());
            drop(session);
            let reconnected = shared::reconnect(
                "PostgreSQL LISTEN",
                &self.shared,
                &self.stop,
                &mut backoff,
                || listen(&self.config, &self.channel, &self.shared),
            )
            .await;
            match reconnected {
                Some(reconnected) => session = reconnected,
                None => return,
            }
        }
    }
}

// ===== sending =====

/// Sends `pg_notify` on a kept connection.
struct Sender {
    config: Config,
    channel: String,
    stop: CancellationToken,
    connection: Option<(Client, Statement)>,
}

impl Sender {
    async fn connect(&self) -> Result<(Client, Statement)> {
        shared::timeout("connecting to send pg_notify", CONNECT_TIMEOUT, async {
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg("connect"))?;
            let stop = self.stop.clone();
            // Ends when the client is dropped (the sender stopped or replaced it) or at `stop`.
            tokio::spawn(async move {
                tokio::select! {
                    result = connection => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "the PostgreSQL connection for pg_notify closed");
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
            let statement = client
                .prepare("SELECT pg_notify($1, $2)")
                .await
                .map_err(pg("prepare pg_notify"))?;
            Ok((client, statement))
        })
        .await
    }

    async fn send(&mut self, message: &str) -> Result<()> {
        let (client, statement) = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        client
            .execute(&statement, &[&self.channel, &message])
            .await
            .map_err(pg("send pg_notify"))?;
        self.connection = Some((client, statement));
        Ok(())
    }
}

impl Publish for Sender {
    async fn publish(&mut self, message: &str) -> Result<()> {
        let kept = self.connection.is_some();
        match self.send(message).await {
            // The kept connection may have died since its last use: try once on a new one.
            Err(error) if kept => {
                tracing::debug!(%error, "pg_notify failed on the kept connection; reconnecting");
                self.send(message).await
            }
            result => result,
        }
    }

    fn reset(&mut self) {
        self.connection = None;
    }
}

/// Wraps a driver error with what was being done.
fn pg(action: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |source| Error::Postgres { action, source }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

crate::factory::watcher_factory!(PgWatcher, String, url: &str => url.to_owned(), "the server at `url`");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_and_differ() {
        let long = "Ünïcode/Log Name ".repeat(20);
        for name in ["orders", "Orders", "a.b", "a_b", "", long.as_str()] {
            let channel = PgWatcher::channel_for(name);
            assert!(channel.len() <= MAX_IDENTIFIER, "{channel} is too long");
            assert!(
                channel
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{channel} needs quoting beyond double quotes"
            );
            assert_eq!(channel, PgWatcher::channel_for(name), "not deterministic");
        }
        assert_ne!(PgWatcher::channel_for("a.b"), PgWatcher::channel_for("a_b"));
        assert_ne!(
            PgWatcher::channel_for("orders"),
            PgWatcher::channel_for("Orders")
        );
        assert!(PgWatcher::channel_for("orders").starts_with("ofx_orders_"));
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("hi", 63), "hi");
    }
}
