//! Hostile tests of the database write and read paths (the SQLite writer turn, PostgreSQL
//! checkout without a test query, the single-hop commit, the log reader's one-round-trip read
//! and the prefix trimmer), from the public API only (plus `DbHub::set_commit_fault`). Each test
//! names the promise it checks; a failing one is a violation.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub, dead_code)]

mod kit;

#[cfg(feature = "sqlite")]
mod writer_turn;

#[cfg(feature = "postgres")]
mod stale;

#[cfg(feature = "sqlite")]
mod reader;
