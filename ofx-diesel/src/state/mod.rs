//! The **state service**: a state projected from an append-only stream of domain events, kept
//! in memory on every host, readable only once it has caught up, and cached as snapshots.
//!
//! Not to be confused with [`events`](crate::events) (commands delivered later, once): the
//! state service's **stream** holds domain events, the source of truth of a state, and they
//! are never "run", only applied, in order, by every host.
//!
//! ## The pieces
//!
//! | piece | what it is |
//! |---|---|
//! | [`Projection`] | a name, a version, the initial state and a pure `apply` of one event to the state |
//! | the stream | rows of `ofx_stream_events`: positions dense from 1 per stream, appended inside a command's operation |
//! | [`StateService`] | one projection followed on one hub: added with `HubBuilder::with` after its `DbHub` |
//!
//! ## Readiness
//!
//! A state service loads its newest valid snapshot (if any) and catches up with the stream
//! before anything may read it: until then every read fails with [`Error::NotReady`](crate::Error::NotReady)
//! (typed, so that a web layer can answer 503), [`is_ready`](StateService::is_ready) is false
//! and [`ready`](StateService::ready) waits. A failing initial load is retried with capped
//! backoff; its last error is in the [`status`](StateService::status). Put the status behind
//! the load balancer's health check (the `http` feature's [`status_router`]) so that no
//! request reaches a host that cannot answer.
//!
//! ## Current or local state
//!
//! - [`current_state`](StateService::current_state) first catches up with the stream as of
//!   the call: it sees every append committed before it, from any host. It waits for one
//!   refresh that *started* after the call (concurrent callers share it), and fails with
//!   [`Error::Unavailable`](crate::Error::Unavailable) when that does not finish within a timeout (5 s by default, per
//!   call with [`current_state_within`](StateService::current_state_within)): the database
//!   is unreachable or stalled.
//! - [`local_state`](StateService::local_state) returns what this host has now, with its
//!   position and lag. It never fails once the service is ready: the way to keep answering
//!   while the database is away.
//!
//! Both register a dependency when called inside a compute method: a compute method that
//! reads the state is invalidated whenever the state advances on its host (on every host, as
//! each follows the stream), so that no cached view of the state is stale after quiescence.
//!
//! ## Writing
//!
//! [`StateService::transaction`] runs inside a command's handler: it gives a decision closure
//! the state as of the stream's head (this host's state, plus whatever the stream has beyond
//! it, read in the command's own transaction), and appends the events it returns at the next
//! positions, in the command's transaction: the events, the command's other writes and its
//! operation commit together or not at all. When another host appended first (the positions
//! are taken), the closure runs again on the newer state (optimistic concurrency), at most
//! [`StateSettings::max_append_attempts`] times, then [`Error::AppendConflict`](crate::Error::AppendConflict).
//!
//! Dense positions make any two concurrent appends to one stream conflict, so by default
//! appenders **queue** rather than decide in vain ([`StateSettings::queue_appends`]): on
//! PostgreSQL a transaction-scoped advisory lock on the stream is taken before the head is
//! read and held until the command commits; SQLite's operation transactions hold the write
//! lock from their start. The optimistic retry then only serves appends from writers outside
//! that protocol. Under `DbSettings::serializable` (PostgreSQL), a transaction's snapshot is
//! taken at its first statement, before the lock is granted: a concurrent append makes it fail
//! with a serialization failure, which is transient, so the whole command runs again under the
//! hub's `ReprocessPolicy`: give it more tries (say `ReprocessPolicy::tries(30)`) for a
//! contended stream.
//!
//! **Read-your-writes**: when a command that appended returns, this host's state services
//! following the stream have its events, and what read their state was invalidated (the
//! commit waits for them, at most the current-state timeout; not when their refreshes are
//! failing).
//!
//! ## Following
//!
//! Every host's state service reads the stream after its position, in batches, applies them to
//! a copy of its state and publishes the copy (an `Arc`, replaced per batch: readers never
//! block the follower nor see half a batch). It is woken by this host's commits that appended,
//! by the database's watcher (other hosts' commits, as the log reader is), by
//! `current_state`, and polls as a safety net.
//!
//! States are copied per applied batch: use a persistent collection (`imbl`, `rpds`) for a
//! large state, so that the copy shares all but what changed.
//!
//! ## Snapshots
//!
//! After readiness and then every [`StateSettings::snapshot_every`] events (at most every
//! [`snapshot_period`](StateSettings::snapshot_period)), the state is saved with serde, keyed by
//! the projection's name and version, in a table of the database (shared by every host) or a
//! directory ([`SnapshotStorage`]). Start-up loads the newest snapshot of this version and
//! catches up from its position. A snapshot of another version, or a corrupt one (its
//! checksum or decoding fails), is ignored with a warning: the state is rebuilt from the
//! stream.
//!
//! ## Bad events
//!
//! An event that does not decode, or that [`Projection::apply`] rejects or panics on, is
//! **quarantined**: kept aside with the reason (in `ofx_state_quarantine` and in memory,
//! [`StateService::quarantined`]), logged and counted, and the stream goes on without it.
//! Whatever a failing `apply` did to the state is undone (the batch is applied again from the
//! published state without that event), so a rejection needs no care in `apply`.

mod apply;
mod follower;
#[cfg(feature = "http")]
mod http;
mod projection;
pub(crate) mod rows;
mod service;
mod settings;
mod snapshot;
mod status;
mod telemetry;

#[cfg(feature = "http")]
pub use http::status_router;
pub use projection::{Projection, Rejection};
pub(crate) use service::StreamFollower;
pub use service::{Appended, Appends, StateService, StateView};
pub use settings::{SnapshotStorage, StateSettings};
pub use status::{QuarantineReason, Quarantined, StateStatus, StatusSource, UnavailableCause};
