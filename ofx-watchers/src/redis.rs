//! [`RedisWatcher`]: Redis pub/sub.
//!
//! Two connections per watcher, both made with the `redis` crate on tokio:
//! - the **subscriber** speaks RESP3 (Redis 6 or later), names itself with `CLIENT SETNAME`
//!   (so `CLIENT LIST` shows which host it belongs to), runs `SUBSCRIBE <channel>` and then
//!   receives the messages as push frames. It sends a `PING` every 30 s, so a silently dead
//!   connection is noticed too. When it breaks (server restart, `CLIENT KILL`, network), it is
//!   reopened with backoff, subscribed again, and the host is woken once, since messages
//!   published meanwhile were lost.
//! - the **publisher** runs `PUBLISH <channel> <message>` (the host id, then the hints), on a
//!   multiplexed connection opened at
//!   the first [`notify`](LogWatcher::notify) and kept; a broken one is replaced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ofx_core::{HostId, LogWatcher};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backoff::{self, Backoff};
use crate::shared::{self, CONNECT_TIMEOUT, Handle, Publish, Shared};
use crate::{Error, Result, WatcherStats};

/// How often the subscriber checks its connection with a `PING`.
const PING_PERIOD: Duration = Duration::from_secs(30);
/// How long a reply may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`LogWatcher`] over Redis pub/sub.
///
/// ```no_run
/// # async fn example() -> Result<(), ofx_watchers::Error> {
/// use ofx_core::{HostId, LogWatcher};
/// use ofx_watchers::RedisWatcher;
/// use tokio_util::sync::CancellationToken;
///
/// let stop = CancellationToken::new();
/// let watcher = RedisWatcher::start("redis://cache:6379", "orders", HostId::new(), stop).await?;
/// watcher.notify(); // after each commit
/// watcher.wakes().notified().await; // another host committed
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisWatcher {
    handle: Handle,
    channel: String,
    client_name: String,
}

impl RedisWatcher {
    /// Connects to the server at `url` (`redis://`, `rediss://` or `unix://`, as the `redis`
    /// crate parses them), subscribes to the channel of `log_name`, and starts the background
    /// tasks, which stop when `stop` is cancelled or the watcher dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when the URL is invalid or connecting (with RESP3) or `SUBSCRIBE`
    /// fails, and [`Error::Timeout`] when that takes longer than 5 s. Later failures are logged
    /// and retried.
    pub async fn start(
        url: &str,
        log_name: &str,
        host_id: HostId,
        stop: CancellationToken,
    ) -> Result<Arc<Self>> {
        let info = url
            .into_connection_info()
            .map_err(redis_error("parse the URL"))?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber = Client::open(info.clone().set_redis_settings(resp3))
            .map_err(redis_error("parse the URL"))?;
        let publisher = Client::open(info).map_err(redis_error("parse the URL"))?;
        let channel = Self::channel_for(log_name);
        let client_name = Self::client_name_for(&host_id);
        let handle = Handle::new("redis", host_id, &stop);
        let session = subscribe(&subscriber, &channel, &client_name).await?;
        let listener = Listener {
            client: subscriber,
            channel: channel.clone(),
            client_name: client_name.clone(),
            shared: Arc::clone(&handle.shared),
            stop: handle.stop.clone(),
        };
        ofx_core::background::spawn_supervised(
            "ofx watcher listener",
            Arc::clone(handle.shared.stats.listener_health()),
            listener.run(session),
        );
        handle.start_sender(Sender {
            client: publisher,
            channel: channel.clone(),
            connection: None,
        });
        Ok(Arc::new(Self {
            handle,
            channel,
            client_name,
        }))
    }

    /// The channel of `log_name`: `ofx:log:<log name>` (Redis channel names may hold any bytes).
    pub fn channel_for(log_name: &str) -> String {
        format!("ofx:log:{log_name}")
    }

    /// The connection name of the subscriber of `host_id`: `ofx-watcher:<host id>`, with the
    /// characters `CLIENT SETNAME` refuses (spaces, control and non-ASCII ones) replaced by `_`.
    pub fn client_name_for(host_id: &HostId) -> String {
        format!("ofx-watcher:{host_id}")
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect()
    }

    /// The channel this watcher subscribes and publishes to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The name of its subscriber connection, as `CLIENT LIST` shows it.
    pub fn client_name(&self) -> &str {
        &self.client_name
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

impl LogWatcher for RedisWatcher {
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

// ===== subscribing =====

/// A subscribed connection and the push frames it receives, with when it was made.
struct Session {
    connection: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    since: Instant,
}

/// Connects with RESP3, names the connection and subscribes.
async fn subscribe(client: &Client, channel: &str, client_name: &str) -> Result<Session> {
    shared::timeout("connecting and SUBSCRIBE", CONNECT_TIMEOUT, async {
        let (pushes_tx, pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(pushes_tx);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(redis_error("connect"))?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(client_name)
            .exec_async(&mut connection)
            .await
            .map_err(redis_error("CLIENT SETNAME"))?;
        connection
            .subscribe(channel)
            .await
            .map_err(redis_error("SUBSCRIBE"))?;
        Ok(Session {
            connection,
            pushes,
            since: Instant::now(),
        })
    })
    .await
}

/// The task that receives messages and reconnects.
struct Listener {
    client: Client,
    channel: String,
    client_name: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Listener {
    async fn run(self, mut session: Session) {
        let mut backoff = Backoff::new();
        loop {
            let Some(error) = self.receive(&mut session).await else {
                return; // stopped
            };
            tracing::warn!(%error, channel = %self.channel, "lost the Redis subscription; reconnecting");
            backoff.connection_ended(session.since.elapsed());
            drop(session);
            let reconnected = shared::reconnect(
                "Redis SUBSCRIBE",
                &self.shared,
                &self.stop,
                &mut backoff,
                || subscribe(&self.client, &self.channel, &self.client_name),
            )
            .await;
            match reconnected {
                Some(reconnected) => session = reconnected,
                None => return,
            }
        }
    }

    /// Receives until the connection breaks (its error) or the watcher stops (`None`).
    async fn receive(&self, session: &mut Session) -> Option<Error> {
        loop {
            let ping = tokio::time::sleep(backoff::jitter(PING_PERIOD, 0.1));
            tokio::pin!(ping);
            let push = tokio::select! {
                () = self.stop.cancelled() => return None,
                push = session.pushes.recv() => push,
                () = &mut ping => {
                    let pong = redis::cmd("PING")
                        .query_async::<Value>(&mut session.connection)
                        .await;
                    match pong {
                        Ok(_) => continue,
                        Err(source) => return Some(Error::Redis { action: "PING", source }),
                    }
                }
            };
            let Some(push) = push else {
                return Some(Error::Closed { server: "Redis" });
            };
            match push.kind {
                PushKind::Message => self.on_message(&push.data),
                PushKind::Disconnection => return Some(Error::Closed { server: "Redis" }),
                _ => {} // subscription confirmations
            }
        }
    }

    /// A `message` push: `[channel, payload]`.
    fn on_message(&self, data: &[Value]) {
        match data {
            [Value::BulkString(channel), Value::BulkString(payload)]
                if *channel == self.channel.as_bytes() =>
            {
                self.shared.on_message(payload);
            }
            [Value::BulkString(_), _] => {} // another channel of a shared connection
            _ => {
                tracing::debug!(?data, "unexpected Redis message; waking anyway");
                self.shared.on_foreign_message();
            }
        }
    }
}

// ===== publishing =====

/// Runs `PUBLISH` on a kept multiplexed connection.
struct Sender {
    client: Client,
    channel: String,
    connection: Option<MultiplexedConnection>,
}

impl Sender {
    async fn send(&mut self, message: &str) -> Result<()> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(redis_error("connect"))?
            }
        };
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async::<i64>(&mut connection)
            .await
            .map_err(redis_error("PUBLISH"))?;
        self.connection = Some(connection);
        Ok(())
    }
}

impl Publish for Sender {
    async fn publish(&mut self, message: &str) -> Result<()> {
        let kept = self.connection.is_some();
        match self.send(message).await {
            // The kept connection may have died since its last use: try once on a new one.
            Err(error) if kept => {
                tracing::debug!(%error, "PUBLISH failed on the kept connection; reconnecting");
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
fn redis_error(action: &'static str) -> impl Fn(RedisError) -> Error {
    move |source| Error::Redis { action, source }
}

crate::factory::watcher_factory!(RedisWatcher, String, url: &str => url.to_owned(), "the server at `url`");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_accepted_by_client_setname() {
        let name = RedisWatcher::client_name_for(&HostId::from_string("my host\n1-é"));
        assert_eq!(name, "ofx-watcher:my_host_1-_");
    }

    #[test]
    fn channels_keep_the_log_name() {
        assert_eq!(RedisWatcher::channel_for("orders"), "ofx:log:orders");
    }
}
