//! ofx over HTTP with [axum]: commands by name as JSON, and **live values** of compute methods
//! over server-sent events.
//!
//! - [`Ofx`] is the state the routes share: the hub, the services, the limits and the shutdown
//!   signal; [`OfxService`] and [`OfxHub`] extract a service or the hub in your own handlers.
//! - [`Ofx::command_router`] serves `POST /{name}`: the command registered under `name`,
//!   decoded from the JSON body by the program's closed command registry and run for a client
//!   (see [`commands`] for the statuses).
//! - [`Ofx::live`] serves a compute method's value as an SSE stream: the value first (`init`),
//!   then a new frame (`update`) after each invalidation of it or of anything it was computed
//!   from, on this host or replayed from any other. See [`live`] for framing, resume and
//!   coalescing.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::Router;
//! use ofx_axum::Ofx;
//! use ofx_core::{compute_method, service, ComputeService, Hub};
//!
//! struct Clock { hub: Hub }
//! impl ComputeService for Clock { fn hub(&self) -> &Hub { &self.hub } }
//!
//! #[service]
//! impl Clock {
//!     #[compute_method]
//!     pub async fn greeting(&self, name: String) -> String { format!("hello, {name}") }
//! }
//!
//! # async fn ctrl_c() {} // tokio::signal::ctrl_c with tokio's `signal` feature
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new()?;
//! let clock = Arc::new(Clock { hub: hub.clone() });
//! hub.add_service(&clock)?;
//! let ofx = Ofx::builder(&hub).service(clock.clone()).build();
//! let app = Router::new()
//!     .nest("/commands", ofx.command_router())
//!     // GET /live/greeting?args=["ann"]
//!     .route("/live/greeting", ofx.live(&clock, Clock::greeting_method()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = ofx.clone();
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         ctrl_c().await;
//!         shutdown.shutdown(); // live streams end, so the graceful shutdown can finish
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod commands;
pub mod live;
mod state;

pub use commands::CommandResponse;
pub use live::{LiveArgsRejection, LiveFrameId};
pub use state::{ErrorAnswer, Ofx, OfxBuilder, OfxHub, OfxService, OfxSettings};
