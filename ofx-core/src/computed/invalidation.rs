//! Invalidation: marking values out of date, transitively, without recursion.

use std::sync::Arc;

use super::node::{
    COMPUTING, COMPUTING_INVALIDATED, CONSISTENT, ErasedNode, INVALIDATED, Nodes, Removal,
};

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
                pending.extend(left_cache(node, Removal::Invalidated).0);
                return;
            }
            COMPUTING => {
                if core.transition(COMPUTING, COMPUTING_INVALIDATED).is_err() {
                    continue;
                }
                // New callers must not wait for a value computed from what just changed: they
                // start a fresh computation. This one's callers still get its value.
                node.detach(Removal::Invalidated);
                // Its dependents, those that used its value and those still waiting for it
                // (they register before they wait), are computed from what changed: new callers
                // must not join them either, whether they are cached or still computing.
                pending.extend(core.take_edges());
                core.notify_all();
                return;
            }
            _ => return,
        }
    }
}

/// Evicts `node` if it is consistent: invalidates it, told as evicted, and everything computed
/// from it. Returns what it was computed from, or `None` if it was not consistent anymore.
pub(crate) fn evict(node: &dyn ErasedNode) -> Option<Nodes> {
    if node.core().transition(CONSISTENT, INVALIDATED).is_err() {
        return None;
    }
    let (dependents, dependencies) = left_cache(node, Removal::Evicted);
    invalidate_all(dependents);
    Some(dependencies)
}

/// The rest of invalidating a consistent node, once its state moved: removes it from its table,
/// takes its edges and wakes its waiters. Returns its dependents, to invalidate, and its
/// dependencies.
fn left_cache(node: &dyn ErasedNode, removal: Removal) -> (Nodes, Nodes) {
    let core = node.core();
    node.detach(removal);
    let edges = core.take_all_edges();
    core.notify_all();
    tracing::trace!(
        method = core.method().name(),
        version = core.version(),
        ?removal,
        "invalidated"
    );
    edges
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
///
/// From `COMPUTING` (abandoned: no value was produced), its dependents are *not* invalidated:
/// they registered only to wait for it, get no value from it and look again, so nothing they
/// compute comes from it; invalidating them would only make them recompute for nothing.
/// From `COMPUTING_INVALIDATED`, its dependents were invalidated by the invalidation, which
/// took them; any left (that invalidation is still between its state change and taking them)
/// are invalidated here.
pub(crate) fn abandon(node: &dyn ErasedNode) {
    let core = node.core();
    if core.transition(COMPUTING, INVALIDATED).is_ok() {
        node.detach(Removal::Cleanup);
        drop(core.take_edges());
        core.notify_all();
    } else if core.transition(COMPUTING_INVALIDATED, INVALIDATED).is_ok() {
        node.detach(Removal::Cleanup);
        let dependents = core.take_edges();
        core.notify_all();
        invalidate_all(dependents);
    }
}
