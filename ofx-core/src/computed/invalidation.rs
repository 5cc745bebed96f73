//! Invalidation: marking values out of date, transitively, without recursion.

use std::sync::Arc;

use super::node::{COMPUTING, COMPUTING_INVALIDATED, CONSISTENT, ErasedNode, INVALIDATED};

/// Invalidates `nodes` and everything computed from them. Idempotent and thread-safe: each
/// node's state moves once, and only the thread that moved it walks its dependents.
pub(crate) fn invalidate_all(nodes: Vec<Arc<dyn ErasedNode>>) {
    let mut pending = nodes;
    while let Some(node) = pending.pop() {
        invalidate_one(node.as_ref(), &mut pending);
    }
}

/// Invalidates one node; pushes its dependents to `pending`.
pub(crate) fn invalidate_one(node: &dyn ErasedNode, pending: &mut Vec<Arc<dyn ErasedNode>>) {
    let core = node.core();
    loop {
        match core.state() {
            CONSISTENT => {
                if core.transition(CONSISTENT, INVALIDATED).is_err() {
                    continue;
                }
                node.detach();
                pending.extend(core.take_edges());
                core.notify_all();
                tracing::trace!(
                    method = core.method().name(),
                    version = core.version(),
                    "invalidated"
                );
                return;
            }
            COMPUTING => {
                if core.transition(COMPUTING, COMPUTING_INVALIDATED).is_err() {
                    continue;
                }
                // New callers must not wait for a value computed from what just changed: they
                // start a fresh computation. This one's callers still get its value.
                node.detach();
                return;
            }
            _ => return,
        }
    }
}

/// Ends a computation whose value was stored: the node becomes consistent, or, if it was
/// invalidated while computing, invalidated (it is never served from the cache).
/// Returns whether it became consistent.
pub(crate) fn finish_computing(node: &dyn ErasedNode) -> bool {
    let core = node.core();
    if core.transition(COMPUTING, CONSISTENT).is_ok() {
        core.notify_all();
        return true;
    }
    abandon(node);
    false
}

/// Ends a computation that was invalidated meanwhile, or that will never produce a value (its
/// caller was dropped or its body panicked): the node is removed and its waiters woken.
pub(crate) fn abandon(node: &dyn ErasedNode) {
    let core = node.core();
    for from in [COMPUTING, COMPUTING_INVALIDATED] {
        if core.transition(from, INVALIDATED).is_ok() {
            node.detach();
            let dependents = core.take_edges();
            core.notify_all();
            invalidate_all(dependents);
            return;
        }
    }
}
