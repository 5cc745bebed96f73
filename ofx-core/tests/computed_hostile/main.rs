//! Hostile tests of three `#[compute_method]` options: `consolidate`, `invalidation_delay` and
//! `min_cache_duration`, of the hit path (`hit_path`) and of invalidations racing each other
//! (`concurrent`). Each test states one promise of
//! `ofx_core::ComputeMethodOptions`'s documentation and tries to break it from the public API,
//! with gates that hold computations mid-flight and tokio's paused clock instead of sleeps.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod lab;

mod concurrent;
mod consolidate;
mod delay;
mod eviction_races;
mod hit_path;
mod min_cache;
