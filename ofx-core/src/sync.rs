//! The synchronization primitives of the code the loom models check: the state word and edges
//! of a cached result (`computed::node`), and the set of recent operations of the completion
//! notifier (`operation::completion`). They are std's, re-exported (no cost), or, in the
//! models' build (`RUSTFLAGS="--cfg loom"`), loom's, which explore every interleaving of the
//! threads of a model (see `loom_models`).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
