//! Integration tests of compute methods: caching, dependencies, invalidation, single flight,
//! cancellation, error lifetime, invalidation delay, minimum cache duration, consolidation, eviction and hub isolation.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

mod cancellation;
mod capacity;
mod consolidation;
mod events;
mod eviction;
mod exactness;
mod graph;
mod lifetime;
mod options;
mod single_flight;
mod stress;
