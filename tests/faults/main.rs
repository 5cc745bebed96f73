//! The fault matrix: workloads run on several hosts while a fault is injected; the history of
//! every call, main-branch run, invalidation and listener call is checked against the database
//! (see `ofx_tests::checker`): nothing lost, nothing duplicated, no caller misled, nothing
//! stale once things settle.
//!
//! Two tiers: the fast one (the default, part of the README's test command) runs each scenario
//! small; `OFX_FAULTS=full` runs the full matrix (10,000-command soaks, 200 kills, a minute of
//! pinned MVCC horizon). Each scenario prints one summary line (`--nocapture` shows them).

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod delivery;
mod harness;
mod kills;
mod servers_faults;
mod skew;
mod soak;
mod transient;
mod watchers;
