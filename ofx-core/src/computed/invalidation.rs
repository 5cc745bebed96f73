//! Invalidation: marking values out of date, transitively, without recursion.

use std::sync::Arc;

use super::in_flight::Run;
use super::node::{
    COMPUTING, COMPUTING_INVALIDATED, CONSISTENT, ErasedNode, INVALIDATED, Node, Nodes, Removal,
};

/// How an invalidation treats a method's invalidation delay and consolidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Asked for (by `invalidate!`, a dependency, ...): a delay puts it off, a consolidating
    /// method keeps its dependents until it compared its new value.
    Asked,
    /// The end of a delay or of a lifetime: now, but a consolidating method still consolidates.
    Timer,
    /// Everything at once (`Hub::invalidate_everything`): now, and the dependents too.
    Everything,
}

/// Invalidates `nodes` and everything computed from them. Idempotent and thread-safe: each
/// node's state moves once, and only the thread that moved it walks its dependents.
///
/// A consistent node of a method with an invalidation delay is not invalidated now: its
/// invalidation is scheduled (once) for the end of the delay. A consistent node of a
/// consolidating method is invalidated now, but its dependents only if its new value differs
/// (see `ErasedNode::consolidate`).
///
/// It returns once every value computed from `nodes` left the cache, also those another thread
/// is invalidating at the same time (see `in_flight`).
pub(crate) fn invalidate_all(nodes: Vec<Arc<dyn ErasedNode>>) {
    run(Vec::new(), nodes, Mode::Asked, true);
}

/// Like [`invalidate_all`], but `nodes` themselves are invalidated now, whatever their
/// methods' invalidation delays (a timer says so); their dependents follow the usual rule.
pub(crate) fn invalidate_now(nodes: Vec<Arc<dyn ErasedNode>>) {
    run(nodes, Vec::new(), Mode::Timer, true);
}

/// Invalidates `nodes` and everything computed from them now, with no delay or consolidation.
pub(crate) fn invalidate_everything(nodes: Vec<Arc<dyn ErasedNode>>) {
    run(Vec::new(), nodes, Mode::Everything, true);
}

/// Invalidates `first` in `mode`, then `pending` and every dependent met, in `mode` unless it
/// is [`Mode::Timer`] (then [`Mode::Asked`]). With `waits`, returns only once the values met
/// invalidated by another thread's invalidation are walked (see `in_flight`).
fn run(first: Nodes, mut pending: Nodes, mode: Mode, waits: bool) {
    let mut walk = Run::begin(waits);
    for node in &first {
        invalidate_one(node, &mut pending, mode, &mut walk);
    }
    let mode = if mode == Mode::Timer {
        Mode::Asked
    } else {
        mode
    };
    while let Some(node) = pending.pop() {
        invalidate_one(&node, &mut pending, mode, &mut walk);
    }
    walk.end();
}

/// Invalidates one node (or schedules it, or consolidates it, as its method and `mode` say);
/// pushes the dependents to invalidate to `pending`.
fn invalidate_one(node: &Arc<dyn ErasedNode>, pending: &mut Nodes, mode: Mode, walk: &mut Run) {
    let core = node.core();
    loop {
        match core.state() {
            CONSISTENT => {
                let options = core.method().options();
                if mode == Mode::Asked
                    && let Some(delay) = options.invalidation_delay
                    && defer(node, delay)
                {
                    return;
                }
                // Out of its table before its state moves: a hit on its published value does
                // not read its state, and an invalidation that finds it invalidated already
                // returns, so the value must be out of reach by then.
                node.detach(Removal::Cleanup);
                if core.transition(CONSISTENT, INVALIDATED).is_err() {
                    continue;
                }
                let (dependents, dependencies) = left_cache(node.as_ref(), Removal::Invalidated);
                drop(dependencies);
                if options.consolidate && mode != Mode::Everything && !dependents.is_empty() {
                    if let Err(dependents) = node.consolidate(dependents) {
                        pending.extend(dependents);
                    }
                } else {
                    pending.extend(dependents);
                }
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
            _ => {
                walk.met_invalidated();
                return;
            }
        }
    }
}

/// Makes `dependents` (of the consolidated value at address `old`, which did not change)
/// dependents of `node`, its new value, in place of the old one; those it refuses (it was
/// invalidated meanwhile) are invalidated.
pub(crate) fn adopt(node: &Arc<dyn ErasedNode>, dependents: Nodes, old: usize) {
    let mut refused = Vec::new();
    for dependent in dependents {
        if node.core().add_dependent(Arc::downgrade(&dependent)) {
            // A dependent invalidated meanwhile has no edges left: nothing to replace.
            dependent.core().replace_dependency(old, node);
        } else {
            refused.push(dependent);
        }
    }
    invalidate_all(refused);
}

/// Dependents kept by a consolidation in progress: invalidated when dropped armed.
pub(crate) struct InvalidateOnDrop(Option<Nodes>);

impl InvalidateOnDrop {
    pub(crate) fn new(nodes: Nodes) -> Self {
        Self(Some(nodes))
    }

    /// Takes the nodes out: dropping does nothing anymore.
    pub(crate) fn disarm(&mut self) -> Nodes {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for InvalidateOnDrop {
    fn drop(&mut self) {
        if let Some(nodes) = self.0.take() {
            invalidate_all(nodes);
        }
    }
}

/// Schedules the invalidation of `node` `delay` from now, unless one is scheduled already.
/// Returns `false` when there is no tokio runtime to wait on: then invalidate it now.
fn defer(node: &Arc<dyn ErasedNode>, delay: std::time::Duration) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    if !node.core().claim_delayed_invalidation() {
        return true;
    }
    tracing::trace!(
        method = node.core().method().name(),
        version = node.core().version(),
        ?delay,
        "invalidation delayed"
    );
    // The delay runs from now, not from when the task first runs.
    let deadline = tokio::time::Instant::now() + delay;
    // If the task never gets to the end of the delay (its runtime shuts down first), dropping
    // it invalidates the node then: its claim must not outlive it, or every later invalidation
    // would be folded into one that never comes.
    let mut pending = InvalidateNowOnDrop(Some(Arc::downgrade(node)));
    runtime.spawn(async move {
        tokio::time::sleep_until(deadline).await;
        pending.fire();
    });
    true
}

/// A delayed invalidation not carried out yet: carried out when dropped.
struct InvalidateNowOnDrop(Option<std::sync::Weak<dyn ErasedNode>>);

impl InvalidateNowOnDrop {
    fn fire(&mut self) {
        if let Some(node) = self.0.take().and_then(|node| node.upgrade()) {
            invalidate_now(vec![node]);
        }
    }
}

impl Drop for InvalidateNowOnDrop {
    fn drop(&mut self) {
        self.fire();
    }
}

/// Evicts `node` if it is consistent: invalidates it, told as evicted, and everything computed
/// from it. Returns what it was computed from, or `None` if it was not consistent anymore.
pub(crate) fn evict(node: &dyn ErasedNode) -> Option<Nodes> {
    // Out of its table first, as in `invalidate_one`.
    node.detach(Removal::Cleanup);
    if node.core().transition(CONSISTENT, INVALIDATED).is_err() {
        return None;
    }
    let (dependents, dependencies) = left_cache(node, Removal::Evicted);
    // Under the evictor's lock, which another invalidation's listener may need: no waiting.
    // (An evicted value has no live dependent: these are invalidated already, or computing.)
    run(Vec::new(), dependents, Mode::Asked, false);
    Some(dependencies)
}

/// The rest of invalidating a consistent node, once it left its table and its state moved:
/// tells why, takes its edges and wakes its waiters. Returns its dependents, to invalidate, and
/// its dependencies.
fn left_cache(node: &dyn ErasedNode, removal: Removal) -> (Nodes, Nodes) {
    let core = node.core();
    node.tell(removal);
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

/// Ends a computation that returned `value`: stores it (for the callers waiting for it), then
/// makes the node consistent, or, if it was invalidated while computing, invalidated (it is
/// never served from the cache). Returns whether it became consistent.
///
/// Racing an invalidation of the node (`invalidate_one`), whatever the interleaving: the node
/// ends invalidated, its waiters get `value`, and whoever awaits its invalidation is woken
/// (checked by `loom_models::computed`).
pub(crate) fn complete<S, K, T>(node: &Node<S, K, T>, value: T) -> bool
where
    S: 'static,
    K: super::ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    node.core().end_recording();
    node.set_output(value);
    finish_computing(node)
}

/// Ends a computation whose value was stored: the node becomes consistent, or, if it was
/// invalidated while computing, invalidated (it is never served from the cache).
/// Returns whether it became consistent.
fn finish_computing(node: &dyn ErasedNode) -> bool {
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
