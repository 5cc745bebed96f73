//! Live values: a compute method's value over server-sent events, kept current.
//!
//! A live stream ([`Ofx::live`], or [`Ofx::live_stream`] in a handler of your own) computes
//! the method's value for its arguments (a cache hit when it is cached) and sends it, then
//! waits for that value to be invalidated (by a command on this host, by an operation replayed
//! from another host's log, or because something it was computed from was), computes it again
//! and sends the new value; until the client goes away or the routes shut down
//! ([`Ofx::shutdown`]).
//!
//! # Frames
//!
//! ```text
//! event: init
//! id: 42@1017
//! retry: 1000
//! data: {"title":"milk","done":false}
//!
//! event: update
//! id: 57@1018
//! data: {"title":"milk","done":true}
//! ```
//!
//! - `event` is `init` for the first frame of a connection, `update` after; `error` (with a
//!   message as data) when the value could not be computed or encoded (or its compute method
//!   panicked), which ends the stream. A recomputation that yields the same JSON as the last
//!   frame sends nothing.
//! - `id` is a [`LiveFrameId`]: the value's version (greater for every recomputation on this
//!   host) and the operation log position this host had replayed through before computing it
//!   (every operation committed at or below it, by any host, is reflected in the value);
//!   `42` alone on a hub without a log reader.
//! - `data` is the value as JSON.
//!
//! # Resume and coalescing
//!
//! A client that reconnects (a browser's `EventSource` does by itself, sending the last id it
//! saw as `Last-Event-ID`) gets the **current** value at once, as an `init` frame: never the
//! frames it missed. A stream computes its next frame only when the connection can take it, so
//! a **slow client gets the latest value, never a backlog**: however many times the value was
//! invalidated while the client was not reading, the next frame is computed once, from the
//! state at that moment (what the operating system's socket buffers hold is all that can be
//! in flight: with small values, that can be many frames). Keep-alive comments are sent while
//! nothing changes ([`OfxSettings::keep_alive`](crate::OfxSettings::keep_alive)).
//!
//! # Shutdown
//!
//! [`Ofx::shutdown`] ends every stream the next time the server polls it. A client that stopped
//! reading (its socket buffers full) is never polled again, so its connection keeps axum's
//! graceful shutdown waiting: bound the wait after the signal
//! (`tokio::time::timeout(grace, server)`), as the todos demo does.
//!
//! # Cost
//!
//! An open stream holds one cached value alive and waits on it: a commit that invalidates
//! something else costs it nothing. The values live streams show stay in the hub's cache, so
//! give the hub a [capacity](ofx_core::HubBuilder::capacity) above the number of distinct live
//! values served: a value evicted to make room is recomputed by its stream (and sent only if it
//! changed).

use std::convert::Infallible;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use futures_util::{FutureExt, Stream};
use ofx_core::{ComputeMethod, ComputeService, Computed, capture};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::Ofx;

/// A live frame's `id`: the value's version and the log position it reflects, written
/// `version@position` (`version` alone when the host has no log position).
///
/// ```
/// use ofx_axum::LiveFrameId;
///
/// let id: LiveFrameId = "42@1017".parse()?;
/// assert_eq!((id.version, id.position), (42, Some(1017)));
/// assert_eq!(id.to_string(), "42@1017");
/// assert_eq!("7".parse::<LiveFrameId>()?.position, None);
/// # Ok::<(), ofx_axum::live::BadFrameId>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LiveFrameId {
    /// The computed value's version: greater for every recomputation on the host.
    pub version: u64,
    /// The operation log position the host had replayed through before computing the value.
    pub position: Option<i64>,
}

impl fmt::Display for LiveFrameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(position) => write!(f, "{}@{position}", self.version),
            None => write!(f, "{}", self.version),
        }
    }
}

/// A text that is not a [`LiveFrameId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a live frame id (`version@position` or `version`)")]
pub struct BadFrameId(String);

impl FromStr for LiveFrameId {
    type Err = BadFrameId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadFrameId(text.to_owned());
        let (version, position) = match text.split_once('@') {
            Some((version, position)) => (version, Some(position.parse().map_err(|_| bad())?)),
            None => (text, None),
        };
        Ok(Self {
            version: version.parse().map_err(|_| bad())?,
            position,
        })
    }
}

/// Why a live request was refused: its arguments are not the method's (400), or the routes
/// are shut down (503).
#[derive(Debug)]
pub struct LiveArgsRejection {
    status: StatusCode,
    message: String,
}

impl LiveArgsRejection {
    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What it says.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for LiveArgsRejection {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// The query of a live route: `args`, the method's arguments as a JSON array (`["ann", 3]`;
/// absent for a method without arguments).
#[derive(Debug, Deserialize)]
struct LiveQuery {
    args: Option<String>,
}

/// Decodes a live route's arguments: the query's `args` as JSON, `null` when absent (a
/// method without arguments).
///
/// # Errors
/// When they are not the method's arguments (400).
fn decode_args<A: DeserializeOwned>(query: &LiveQuery) -> Result<A, LiveArgsRejection> {
    let text = query.args.as_deref().unwrap_or("null");
    let decoded = serde_json::from_str(text).or_else(|error| {
        // `[]` is how a client writes "no arguments": the unit tuple's JSON is `null`.
        if text.trim() == "[]" {
            serde_json::from_str("null").map_err(|_| error)
        } else {
            Err(error)
        }
    });
    decoded.map_err(|error| LiveArgsRejection {
        status: StatusCode::BAD_REQUEST,
        message: format!("`args` must be the method's arguments as a JSON array: {error}"),
    })
}

/// The `Last-Event-ID` a reconnecting client sent, if it is one of ours.
fn last_event_id(headers: &HeaderMap) -> Option<LiveFrameId> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Ofx {
    /// A `GET` route that streams `method`'s value for the arguments in the query
    /// (`?args=["ann"]`, the arguments as a JSON array; none for a method without arguments)
    /// as server-sent events: see the [module documentation](self). Answers 400 when the
    /// arguments are not the method's, 503 once [`shut down`](Ofx::shutdown).
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use ofx_core::{compute_method, service, ComputeService, Hub};
    /// # struct Todos { hub: Hub }
    /// # impl ComputeService for Todos { fn hub(&self) -> &Hub { &self.hub } }
    /// # #[service] impl Todos { #[compute_method] pub async fn titles(&self, owner: String) -> Vec<String> { vec![] } }
    /// # fn routes(ofx: &ofx_axum::Ofx, todos: &Arc<Todos>) -> axum::Router {
    /// axum::Router::new().route("/live/titles", ofx.live(todos, Todos::titles_method()))
    /// // new EventSource('/live/titles?args=' + encodeURIComponent(JSON.stringify(['ann'])))
    /// # }
    /// ```
    pub fn live<M, St>(&self, service: &Arc<M::Service>, method: M) -> MethodRouter<St>
    where
        M: ComputeMethod,
        M::Args: DeserializeOwned,
        M::Output: Serialize,
        St: Clone + Send + Sync + 'static,
    {
        let ofx = self.clone();
        let service = Arc::clone(service);
        get(move |query: Query<LiveQuery>, headers: HeaderMap| {
            let ofx = ofx.clone();
            let service = Arc::clone(&service);
            async move {
                if ofx.is_shut_down() {
                    return LiveArgsRejection {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "the server is shutting down".to_owned(),
                    }
                    .into_response();
                }
                match decode_args::<M::Args>(&query) {
                    Ok(args) => ofx
                        .live_stream(service, method, args, last_event_id(&headers))
                        .into_response(),
                    Err(rejection) => rejection.into_response(),
                }
            }
        })
    }

    /// The live stream of `method`'s value for `args`, for a handler of your own (arguments
    /// from the path, authorization, ...): see the [module documentation](self).
    /// `last_event_id` is what the client sent to resume (it gets the current value at once
    /// either way; it is logged).
    pub fn live_stream<M>(
        &self,
        service: Arc<M::Service>,
        method: M,
        args: M::Args,
        last_event_id: Option<LiveFrameId>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + use<M>>
    where
        M: ComputeMethod,
        M::Output: Serialize,
    {
        if let Some(last) = last_event_id {
            tracing::debug!(method = method.descriptor().name(), %last, "a live stream resumes");
        }
        let live = Live {
            service,
            method,
            args,
            computed: None,
            shutdown: self.shutdown_token().clone(),
            reconnect_after: self.settings().reconnect_after,
            first: true,
            ended: false,
            last_data: None,
            hint_given_up: None,
        };
        Sse::new(futures_util::stream::unfold(live, Live::next))
            .keep_alive(KeepAlive::new().interval(self.settings().keep_alive))
    }
}

/// One live stream's state between frames.
struct Live<M: ComputeMethod> {
    service: Arc<M::Service>,
    method: M,
    args: M::Args,
    /// The value last sent, whose invalidation the stream waits for.
    computed: Option<Computed>,
    shutdown: CancellationToken,
    reconnect_after: std::time::Duration,
    first: bool,
    ended: bool,
    /// The value of the last frame sent: a recomputation to the same value sends nothing.
    last_data: Option<serde_json::Value>,
    /// A hinted position the log did not reach within [`HINT_CATCH_UP`]: not waited for again
    /// (a hint's position is the sending host's word).
    hint_given_up: Option<i64>,
}

/// How long a frame waits for the log reader to read through the operations its value reflects
/// from hints (see `Live::log_position`): a read, normally well under a millisecond.
const HINT_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

impl<M> Live<M>
where
    M: ComputeMethod,
    M::Output: Serialize,
{
    /// The log position to put in the next frame's id, read before computing its value. When
    /// the hub replayed operations from other hosts' hints ahead of its log reader
    /// ([`Hub::hinted_position`](ofx_core::Hub::hinted_position)), the value about to be
    /// computed reflects them: waits (at most [`HINT_CATCH_UP`]) for the reader to read that
    /// far, so that the frame's id says so, and a client waiting for a frame at or past its
    /// command's position gets this one.
    async fn log_position(&mut self) -> Option<i64> {
        let hub = self.service.hub();
        let position = hub.log_position();
        match (position, hub.hinted_position()) {
            (Some(position), Some(hinted))
                if hinted > position && self.hint_given_up.is_none_or(|given| hinted > given) =>
            {
                match tokio::time::timeout(HINT_CATCH_UP, hub.log_position_reached(hinted)).await {
                    Ok(reached) => Some(reached),
                    Err(_) => {
                        self.hint_given_up = Some(hinted);
                        hub.log_position()
                    }
                }
            }
            _ => position,
        }
    }

    /// The next frame: at once for the first, after the last value's invalidation for the
    /// others; `None` when the stream ends (shutdown, or after an error frame).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self.ended {
            return None;
        }
        if let Some(computed) = self.computed.take() {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                () = computed.when_invalidated() => {}
            }
        }
        loop {
            let position = self.log_position().await;
            let call = capture(self.method.call(&self.service, self.args.clone()));
            let captured = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                captured = AssertUnwindSafe(call).catch_unwind() => captured,
            };
            let (value, computed) = match captured {
                Ok(Ok(captured)) => captured,
                Ok(Err(error)) => {
                    let frame =
                        self.error_frame(format!("the value could not be computed: {error}"));
                    return Some((Ok(frame), self));
                }
                Err(_panic) => {
                    let frame = self.error_frame("the compute method panicked".to_owned());
                    return Some((Ok(frame), self));
                }
            };
            // Compared as JSON values, not text: a map's entries may serialize in another
            // order each time (a `HashMap`), while a JSON object compares by its entries.
            let json = match serde_json::to_value(&value) {
                Ok(json) => json,
                Err(error) => {
                    let frame =
                        self.error_frame(format!("the value could not be encoded: {error}"));
                    return Some((Ok(frame), self));
                }
            };
            if self.last_data.as_ref() == Some(&json) {
                // Recomputed to the same value (invalidated by a change that did not change
                // it, or evicted): nothing to send; wait for the next invalidation.
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return None,
                    () = computed.when_invalidated() => continue,
                }
            }
            let id = LiveFrameId {
                version: computed.version(),
                position,
            };
            let kind = if self.first { "init" } else { "update" };
            let mut event = Event::default().event(kind).id(id.to_string());
            if self.first {
                event = event.retry(self.reconnect_after);
            }
            let event = event.data(json.to_string());
            self.first = false;
            self.computed = Some(computed);
            self.last_data = Some(json);
            return Some((Ok(event), self));
        }
    }

    fn error_frame(&mut self, message: String) -> Event {
        tracing::warn!(method = self.method.descriptor().name(), %message, "a live stream ends");
        self.ended = true;
        Event::default().event("error").data(message)
    }
}
