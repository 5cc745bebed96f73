//! The multi-host invariants of DESIGN §4, proven against real databases: no stale read after
//! quiescence (randomized, several hosts and writers) and exactly-once main branches.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod cluster;
mod lost_wakeups;
mod no_stale_read;
