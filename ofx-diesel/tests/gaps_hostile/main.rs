//! Hostile tests of the PostgreSQL log reader's gaps and start (see `LogReader`, sections
//! "Where a reader starts" and "Gaps"), from the public API, plain SQL and
//! `DbHub::set_commit_fault`: each test tries to make a reader miss a committed operation,
//! replay one twice, or wait for something that cannot bring a row. A failing test is a
//! violation of the documented promise it names.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)]

#[cfg(feature = "postgres")]
mod gate;
#[cfg(feature = "postgres")]
mod kit;

#[cfg(feature = "postgres")]
mod nested;
#[cfg(feature = "postgres")]
mod restart;
#[cfg(feature = "postgres")]
mod start;
#[cfg(feature = "postgres")]
mod stress;
