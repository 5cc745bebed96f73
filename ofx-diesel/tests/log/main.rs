//! The operation log on SQLite: the outbox scope, the reader on a second hub, bad rows and the
//! trimmer, against real database files.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod commit_verification;
mod common;
mod hosts;
mod lifecycle;
mod poison_row;
mod reprocess;
mod scenarios;
mod typed_errors;

#[cfg(feature = "postgres")]
mod gaps;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod private_server;
#[cfg(feature = "postgres")]
mod proxy;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "postgres")]
mod stale_connections;
#[cfg(feature = "sqlite")]
mod writer_turn;
