//! Events with guaranteed delivery, on SQLite and PostgreSQL: produced in the command's
//! transaction, claimed by one host under a lease, run once, retried, dead, redriven.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod ahead;
mod common;
mod fencing;
mod smoke;
