//! The synchronization primitives of the code the loom models check: the state word, edges and
//! value of a cached result (`computed::node`), and the set of recent operations of the completion
//! notifier (`operation::completion`). They are std's, re-exported (no cost), or, in the
//! models' build (`RUSTFLAGS="--cfg loom"`), loom's, which explore every interleaving of the
//! threads of a model (see `loom_models`).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::OnceLock;

#[cfg(loom)]
pub(crate) use loom_once::OnceLock;

#[cfg(loom)]
mod loom_once {
    use loom::sync::atomic::{AtomicBool, Ordering};

    /// std's `OnceLock` as loom sees it: loom has none, and a std one is invisible to it (it
    /// would never interleave another thread's read with its write). The value is published by
    /// the `Release` store of `set`, and seen by a `get` whose `Acquire` load sees that store,
    /// as std's publishes it. Only what `Node` uses (set once, by one thread).
    #[derive(Debug)]
    pub(crate) struct OnceLock<T> {
        value: std::sync::OnceLock<T>,
        published: AtomicBool,
    }

    impl<T> OnceLock<T> {
        pub(crate) fn new() -> Self {
            Self {
                value: std::sync::OnceLock::new(),
                published: AtomicBool::new(false),
            }
        }

        pub(crate) fn get(&self) -> Option<&T> {
            if self.published.load(Ordering::Acquire) {
                self.value.get()
            } else {
                None
            }
        }

        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            self.value.set(value)?;
            self.published.store(true, Ordering::Release);
            Ok(())
        }
    }
}
