//! # ofx-core
//!
//! The runtime of ofx, a framework for multi-host CQRS services whose caches behave as one:
//! a value computed on any host is served from memory until something it was computed from
//! changes, and then it is recomputed.
//!
//! This crate holds what needs no database: memoized **compute methods** with automatic
//! dependency tracking and invalidation, **commands** run through a filter pipeline whose
//! handlers are split into a main branch and an invalidation branch, **operations** that record
//! them for replay on other hosts, and the [`Hub`] that is one host's runtime.
//!
//! ## Concepts
//!
//! | concept | what it is |
//! |---|---|
//! | [`Hub`] | one host's runtime: its [`HostId`] and its bounded cache. Two hubs are two hosts. |
//! | compute method | an `async fn(&self, ..) -> T` marked [`#[compute_method]`](compute_method), memoized per hub, method and arguments. |
//! | [`Computed`] | one cached result: computing, consistent or invalidated; its version, dependencies and dependents. |
//! | dependency | a compute method called while another computes (in the same task) is a dependency of it: invalidating the dependency invalidates the dependent. |
//! | [`invalidate!`] | names compute method calls to invalidate instead of compute: `invalidate! { self.get(id); }`. |
//! | [`Command`] | a serializable request that changes state, with a stable name (`#[derive(Command)]`). |
//! | command handler | `#[command_handler] async fn(&self, command: C, ctx: &CommandContext) -> Result<C::Output, E>` in a [`#[service]`](service) impl. Its leading `invalidate! { .. }` is the **invalidation branch** (run after success on every host); the rest is the **main branch** (run once). It becomes a [`CommandHandler<C>`] of the service. |
//! | [`Service`] | a type with a [`#[service]`](service) impl, possibly generic: [`Hub::add_service`] routes its commands to an instance, on that hub. Each of its compute methods is also a type, a [`ComputeMethod`]. |
//! | [`Commander`] | runs a command through the [filter pipeline](commander::pipeline) to its handler; a command called inside a handler is **nested**. |
//! | [`Operation`] | the record of one executed command: uuid, host, command, [operation items](OperationItems), nested commands, its log sequence and commit time. |
//! | [`OperationScope`] | where an operation commits: begun lazily by the storage a handler uses (ofx-diesel's database transaction), answering a typed [`CommitOutcome`]: committed (with its sequence), not committed, or in doubt. Without one, an operation commits in memory. |
//! | [`OperationCompletionNotifier`] | learns that operations completed (here after the commit, or replayed from another host's log), once per uuid, and runs their invalidation pass: nested commands first, then the outer one, each branch's panic caught. |
//! | event | a command a main branch adds to its operation ([`CommandContext::add_event`], with [`EventOptions`](operation::EventOptions): a delay, a due time, a deduplicating key, debounce): stored with the operation by its scope, run later, once, on one host, as an operation of its own (ofx-diesel's event processor). |
//! | reprocessing | an outermost command that failed for a transient reason before its commit runs again as a whole ([`commander::reprocess`], [`ReprocessPolicy`]); a commit in doubt never does. |
//! | [`HubExtension`] | how a storage (a database with its log reader, trimmer and watcher) adds itself to a hub in one step: `Hub::builder().with(db).start().await`. |
//!
//! ## Example
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use ofx_core::{compute_method, invalidate, ComputeService, Hub};
//!
//! struct Prices { hub: Hub, base: AtomicU64 }
//!
//! impl ComputeService for Prices {
//!     fn hub(&self) -> &Hub { &self.hub }
//! }
//!
//! impl Prices {
//!     #[compute_method]
//!     async fn base(&self) -> u64 { self.base.load(Ordering::SeqCst) }
//!
//!     #[compute_method]
//!     async fn with_tax(&self, percent: u64) -> u64 {
//!         self.base().await * (100 + percent) / 100   // `base()` becomes a dependency
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ofx_core::Error> {
//! let prices = Prices { hub: Hub::new()?, base: AtomicU64::new(100) };
//! assert_eq!(prices.with_tax(20).await, 120);
//!
//! prices.base.store(200, Ordering::SeqCst);
//! assert_eq!(prices.with_tax(20).await, 120);   // still cached
//!
//! invalidate! { prices.base(); }                // invalidates base() and with_tax(20)
//! assert_eq!(prices.with_tax(20).await, 240);
//! # Ok(()) }
//! ```
//!
//! ## Commands
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use ofx_core::{command_handler, compute_method, invalidate, service};
//! use ofx_core::{Command, CommandContext, ComputeService, Hub};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Command)]
//! #[command(output = u64, name = "prices.set_base")]
//! struct SetBase { base: u64 }
//!
//! struct Prices { hub: Hub, base: AtomicU64 }
//! impl ComputeService for Prices { fn hub(&self) -> &Hub { &self.hub } }
//!
//! #[service]
//! impl Prices {
//!     #[compute_method]
//!     async fn base(&self) -> u64 { self.base.load(Ordering::SeqCst) }
//!
//!     #[command_handler]
//!     async fn set_base(&self, command: SetBase, _ctx: &CommandContext) -> Result<u64, ofx_core::Error> {
//!         invalidate! { self.base(); }           // the invalidation branch
//!         Ok(self.base.swap(command.base, Ordering::SeqCst))  // the main branch
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ofx_core::Error> {
//! let hub = Hub::new()?;
//! let prices = Arc::new(Prices { hub: hub.clone(), base: AtomicU64::new(100) });
//! hub.add_service(&prices)?;                     // one line per service
//! assert_eq!(prices.base().await, 100);
//! assert_eq!(hub.commander().call(SetBase { base: 150 }).await?, 100);
//! assert_eq!(prices.base().await, 150);          // invalidated before `call` returned
//! # Ok(()) }
//! ```
//!
//! ## Where to find things
//!
//! - [`computed`]: the semantics of cached values, invalidation, eviction and capture.
//! - [`compute_method`] and [`invalidate!`]: the macros and their options.
//! - [`command`], [`commander`], [`operation`]: commands, the pipeline (its order is documented
//!   in [`commander::pipeline`]), and the life of an operation (documented in [`operation`]).
//! - [`background`]: background tasks that never die silently.
//!
//! ## Promises
//!
//! - **Read-your-writes**: when `call` returns, this host's invalidations are done.
//! - **No stale read after an invalidation**: a compute call that starts after an
//!   invalidation returned never gets a value computed from what was invalidated, whatever is in
//!   flight (tested with the interleavings forced by barriers, in `tests/computed`).
//! - **No false failure**: a call fails with the storage's error only when its operation
//!   certainly did not commit; when the storage cannot know, [`Error::CommitInDoubt`].
//! - **Filters see main branches only**; the invalidation pass never goes through them.
//! - **A panic in an invalidation branch** is caught, logged with the operation and command,
//!   counted ([`OperationCompletionNotifier::panic_count`]); the caller still gets its result,
//!   and a log reader goes on.
//! - [`Hub`], [`HubBuilder`]: a host's runtime and its settings.
//! - [`event`]: what happens on a hub, told to a listener ([`EventCounter`] for tests).
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `macros` | yes | re-exports [`compute_method`], [`invalidate!`], [`service`], [`command_handler`] and `#[derive(Command)]` from `ofx-macros` |
//!
//! ## Requirements
//!
//! Compute methods run on tokio: time-based invalidation (`auto_invalidate`, the lifetime of
//! cached errors) uses tokio timers of the runtime the method was called on.

pub mod background;
pub mod command;
pub mod commander;
pub mod computed;
mod error;
pub mod event;
mod extension;
mod host_id;
mod hub;
pub mod operation;
mod service;
mod sync;
pub mod telemetry;
pub mod watcher;

#[doc(hidden)]
pub mod __private;

pub use command::registry::CommandFuture;
pub use command::{
    CallKind, Command, CommandContext, CommandHandler, ContextItems, OperationItem, OperationItems,
    ServiceHandlers,
};
pub use commander::{
    CallOptions, CommandCall, CommandFilter, Commander, Executed, Next, Permanent, ReprocessPolicy,
    Transient,
};
pub use computed::{ComputeScope, Computed, ComputedState, capture};
pub use error::{Error, HandlerError, Result};
pub use event::{EventCounter, HubEvent, HubEventKind, HubEventListener};
pub use extension::HubExtension;
pub use host_id::HostId;
pub use hub::{DEFAULT_CAPACITY, EventScopeStarter, Hub, HubBuilder, WeakHub};
pub use operation::{
    AfterCommitHook, CommitOutcome, Committed, NestedOperation, Operation,
    OperationCompletionNotifier, OperationScope, ReplayError, ScopeFuture,
};
pub use service::{ComputeMethod, ComputeOutput, ComputeService, Service};
pub use watcher::{LogWatcher, LogWatcherFactory};

#[cfg(feature = "macros")]
pub use ofx_macros::{Command, command_handler, compute_method, invalidate, service};
