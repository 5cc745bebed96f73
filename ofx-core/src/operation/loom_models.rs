//! loom models of the completion notifier's deduplication: the same operation completed
//! concurrently from two paths (the local completion after the commit, and this host's log
//! reader replaying the same row; or two replays). loom runs each model under every
//! interleaving of its threads, on the real `RecentOperations::complete_once` (its mutex is
//! loom's in this build: see `crate::sync`); the invalidation pass is a counter.
//!
//! Run with (a minute or so, most of it building):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p ofx-core --release --lib loom
//! ```

// A thread of a model that panicked (an assertion) fails the model: `join().unwrap()` passes
// its panic on.
#![allow(clippy::unwrap_used)]

use loom::future::block_on;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use uuid::Uuid;

use super::completion::{Completion, RecentOperations};

const OPERATION: Uuid = Uuid::from_u128(0x0f0f);

/// Completes `OPERATION` on `recent` with a pass that counts its runs and succeeds or fails.
fn complete(
    recent: &RecentOperations,
    passes: &AtomicUsize,
    succeeds: bool,
) -> Completion<&'static str> {
    block_on(recent.complete_once(OPERATION, || {
        passes.fetch_add(1, Ordering::Relaxed);
        if succeeds { Ok(()) } else { Err("unavailable") }
    }))
}

/// Two paths complete the same operation: one runs the pass and tells the listeners (gets
/// `Done`), the other does nothing.
#[test]
fn two_completions_run_the_pass_once() {
    loom::model(|| {
        let recent = Arc::new(RecentOperations::default());
        let passes = Arc::new(AtomicUsize::new(0));
        let replay = {
            let (recent, passes) = (Arc::clone(&recent), Arc::clone(&passes));
            thread::spawn(move || complete(&recent, &passes, true))
        };
        let local = complete(&recent, &passes, true);
        let replay = replay.join().unwrap();

        assert_eq!(passes.load(Ordering::Relaxed), 1, "the pass ran twice");
        let told = [&local, &replay]
            .iter()
            .filter(|completion| ***completion == Completion::Done)
            .count();
        assert_eq!(told, 1, "the listeners were told {told} times");
        assert!(recent.is_known(OPERATION));
    });
}

/// The local pass fails (its uuid is forgotten, "the log reader will replay it") while this
/// host's log reader meets the same row: it skips it if `is_known`, else replays it. Whatever
/// the interleaving, an operation the reader counts as done (skipped, or `Known`) was
/// invalidated by a pass that succeeded; otherwise the reader's own pass ran.
#[test]
fn a_failed_local_pass_is_replayed() {
    loom::model(|| {
        let recent = Arc::new(RecentOperations::default());
        let passes = Arc::new(AtomicUsize::new(0));
        let successes = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (recent, successes) = (Arc::clone(&recent), Arc::clone(&successes));
            thread::spawn(move || {
                // `ofx_diesel`'s reader: `is_known`, then `complete_remote`.
                if recent.is_known(OPERATION) {
                    return Completion::Known;
                }
                block_on(recent.complete_once(OPERATION, || {
                    successes.fetch_add(1, Ordering::Relaxed);
                    Ok::<(), &str>(())
                }))
            })
        };
        let local = complete(&recent, &passes, false);
        let reader = reader.join().unwrap();

        assert_eq!(
            successes.load(Ordering::Relaxed),
            1,
            "the reader took the operation for done ({reader:?}) but no pass succeeded: \
             its invalidation is lost"
        );
        assert_eq!(reader, Completion::Done);
        assert!(matches!(local, Completion::Failed(_) | Completion::Known));
    });
}
