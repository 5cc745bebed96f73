//! Hostile tests of hints (operations carried by wake-ups, see `ofx_core::watcher`), from the
//! public API: each test tries to make host B lose an invalidation, complete an operation twice,
//! crash, hang, or grow without bound, by feeding B's watcher hints that are lost, malformed,
//! forged, duplicated, early, late, or concurrent. A failing test is a violation of the
//! documented promise it names.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)]

#[cfg(feature = "sqlite")]
mod kit;

#[cfg(feature = "sqlite")]
mod bad;
#[cfg(feature = "sqlite")]
mod forged;
#[cfg(feature = "sqlite")]
mod lost;
#[cfg(feature = "sqlite")]
mod once;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
mod pg;
