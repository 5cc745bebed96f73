//! loom models of a cached result's state word: a computation that ends (stores its value, then
//! moves the node to consistent) racing an invalidation of the node, direct or through a
//! dependency. loom runs each model under every interleaving of its threads (and every
//! outcome its memory orderings allow), on the real `Node` (its state word, edges, value and
//! event are loom's in this build: see `crate::sync`) and the real `complete`,
//! `invalidate_all`, `Node::wait_output` and `Computed::when_invalidated`.
//!
//! Run with (a minute or so, most of it building):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p ofx-core --release --lib loom
//! ```
//!
//! The invariant, in every interleaving: the invalidation is never lost (the node ends
//! invalidated: a value stored after the invalidation is never left consistent), whoever
//! awaits the node's invalidation is woken, and whoever waits for its value gets it, once.
//! loom reports a waiter never woken as a deadlock.

// A thread of a model that panicked (an assertion) fails the model: `join().unwrap()` passes
// its panic on.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Weak};

use loom::future::block_on;
use loom::thread;

use super::Computed;
use super::context::Context;
use super::invalidation::complete;
use super::method::{ComputeMethodDescriptor, ComputeMethodOptions};
use super::node::{ErasedNode, INVALIDATED, Node, NodeCore};

static METHOD: ComputeMethodDescriptor =
    ComputeMethodDescriptor::new("loom::value", ComputeMethodOptions::DEFAULT);

type Value = Node<(), u32, u32>;

/// A node whose computation is running (as `lookup` inserts it), outside any table.
fn computing(key: u32) -> Arc<Value> {
    Arc::new(Node::new(NodeCore::new(&METHOD, 1), key, Weak::new()))
}

fn erased(node: &Arc<Value>) -> Arc<dyn ErasedNode> {
    Arc::clone(node) as Arc<dyn ErasedNode>
}

/// Runs `model` under loom, up to 3 preemptions per interleaving (a bug that needs more is
/// unlikely; unbounded, a model of 3 threads takes minutes).
fn check(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(model);
}

/// Who waits on the node, in a thread of the model.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    /// A caller that joined the computation (`Node::wait_output`): gets the value.
    ForValue,
    /// A live stream showing the value (`Computed::when_invalidated`): is woken.
    ForInvalidation,
}

impl Waiter {
    fn spawn(self, node: &Arc<Value>) -> thread::JoinHandle<()> {
        match self {
            Self::ForValue => {
                let node = Arc::clone(node);
                thread::spawn(move || {
                    let value = block_on(node.wait_output());
                    assert!(value.is_some(), "a caller waiting for the value lost it");
                })
            }
            Self::ForInvalidation => {
                let computed = Computed::new(erased(node));
                thread::spawn(move || block_on(computed.when_invalidated()))
            }
        }
    }
}

/// `complete` (the leader stores its value) against `Computed::invalidate` of the same node.
fn complete_races_a_direct_invalidation(waiter: Waiter) {
    check(move || {
        let node = computing(0);
        let waiter = waiter.spawn(&node);
        let invalidator = {
            let computed = Computed::new(erased(&node));
            thread::spawn(move || computed.invalidate())
        };

        complete(node.as_ref(), 7);

        invalidator.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(
            node.core().state(),
            INVALIDATED,
            "the invalidation was lost: the value stays cached"
        );
    });
}

#[test]
fn complete_races_a_direct_invalidation_with_a_waiter_for_the_value() {
    complete_races_a_direct_invalidation(Waiter::ForValue);
}

#[test]
fn complete_races_a_direct_invalidation_with_a_waiter_for_the_invalidation() {
    complete_races_a_direct_invalidation(Waiter::ForInvalidation);
}

/// The leader of `node` reads `dependency` (a cache hit: it registers as its dependent, as
/// `compute` does, then uses its value) and stores its value, while `dependency` is
/// invalidated. Whether the invalidation comes before the registration (refused: the
/// computation is invalidated at once) or after (it reaches the computation through the
/// edge), `node` ends invalidated.
fn complete_races_the_invalidation_of_a_dependency(waiter: Waiter) {
    check(move || {
        let dependency = computing(1);
        assert!(complete(dependency.as_ref(), 1));
        let node = computing(0);
        let waiter = waiter.spawn(&node);
        let invalidator = {
            let computed = Computed::new(erased(&dependency));
            thread::spawn(move || computed.invalidate())
        };

        let context = Context::Computing(erased(&node));
        let read = context
            .register_pending(&erased(&dependency))
            .then(|| dependency.output().copied());
        complete(node.as_ref(), read.flatten().map_or(0, |read| read + 1));

        invalidator.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(dependency.core().state(), INVALIDATED);
        assert_eq!(
            node.core().state(),
            INVALIDATED,
            "the invalidation of a dependency was lost: a stale value stays cached"
        );
    });
}

#[test]
fn complete_races_the_invalidation_of_a_dependency_with_a_waiter_for_the_value() {
    complete_races_the_invalidation_of_a_dependency(Waiter::ForValue);
}

#[test]
fn complete_races_the_invalidation_of_a_dependency_with_a_waiter_for_the_invalidation() {
    complete_races_the_invalidation_of_a_dependency(Waiter::ForInvalidation);
}
