//! The call path of a compute method: hit, single-flight wait, or computation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::ComputeKey;
use super::context::Context;
use super::invalidation::{abandon, complete, invalidate_all, invalidate_now};
use super::method::ComputeMethodDescriptor;
use super::node::{COMPUTING, CONSISTENT, ErasedNode, Node, NodeCore, Removal};
use super::table::MethodTable;
use crate::__private::Outcome;
use crate::event::HubEvent;
use crate::{ComputeService, Hub};

/// What a lookup found.
enum Lookup<S, K, T> {
    /// A consistent value (registered as a dependency of the running computation, if any).
    Hit(T),
    /// Another caller is computing it.
    Wait(Arc<Node<S, K, T>>),
    /// This caller inserted the node and must compute it.
    Lead(Arc<Node<S, K, T>>),
}

/// Calls the compute method `method` of `service` with `key`: returns the cached value, waits
/// for the computation in flight, or runs `body` and caches what it returns.
pub async fn compute<S, K, T, F, Fut>(
    service: &S,
    method: &'static ComputeMethodDescriptor,
    key: K,
    classify: Option<crate::__private::Classify<T>>,
    body: F,
) -> T
where
    S: ComputeService,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
    F: FnOnce(K) -> Fut,
    Fut: Future<Output = T>,
{
    let hub = service.hub();
    let mut body = Some(body);
    // A computation registers as a dependent of what it calls *before* it uses the value (a
    // hit), waits for it, or computes it: once registered, invalidating the dependency reaches
    // the dependent (and whoever waits for it) at once, before `invalidate!` returns; and a
    // dependency invalidated before is never used, the call looks again. So no computation
    // still in the cache, or in flight, was computed from an invalidated value.
    loop {
        match lookup::<S, K, T>(hub, method, &key) {
            Lookup::Hit(value) => return value,
            Lookup::Wait(node) => {
                method.count_wait();
                let context = Context::current();
                let erased: Arc<dyn ErasedNode> = node.clone();
                if let Some(context) = &context
                    && !context.register_pending(&erased)
                {
                    // Invalidated since the lookup: look again.
                    continue;
                }
                match node.wait_output().await {
                    Some(value) => {
                        if let Some(context) = &context {
                            context.record_captured(&erased);
                        }
                        return value;
                    }
                    None => {
                        // Its leader was dropped or panicked: look again, maybe lead.
                        if let Some(context) = &context {
                            context.forget_pending(&erased);
                        }
                        continue;
                    }
                }
            }
            Lookup::Lead(node) => {
                let context = Context::current();
                let erased: Arc<dyn ErasedNode> = node.clone();
                if let Some(context) = &context
                    && !context.register_pending(&erased)
                {
                    // Invalidated as soon as inserted: give it up (whoever joined it looks
                    // again too) and look again.
                    abandon(erased.as_ref());
                    continue;
                }
                let Some(body) = body.take() else {
                    unreachable!("a caller leads at most once: it returns after leading")
                };
                let value = lead(hub, node, key, classify, body).await;
                if let Some(context) = &context {
                    context.record_captured(&erased);
                }
                return value;
            }
        }
    }
}

/// The value of `method` for `key` if a hit can serve it without the call path: it is cached,
/// consistent and was read before (its value is published in its slot). The wrapper of a
/// compute method tries this before it builds the future of [`compute`], which handles
/// everything else (`None`).
#[inline]
pub fn cached<S, K, T>(service: &S, method: &'static ComputeMethodDescriptor, key: &K) -> Option<T>
where
    S: ComputeService,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    let table = service.hub().registry().table::<S, K, T>(method);
    let guard = scc::Guard::new();
    let slot = table.map().peek(key, &guard)?;
    let value = slot.value()?;
    hit(&table, method, slot.node()).then(|| value.clone())
}

/// [`compute`] for a consolidating method (`#[compute_method(consolidate)]`): the first call
/// on a hub that knows the service also tells the method's table how to recompute and compare
/// its values (`recompute`, the method's own wrapper on the service's `Arc`).
pub async fn compute_consolidated<S, K, T, F, Fut>(
    service: &S,
    method: &'static ComputeMethodDescriptor,
    key: K,
    classify: Option<crate::__private::Classify<T>>,
    body: F,
    recompute: super::table::Recompute<S, K, T>,
) -> T
where
    S: ComputeService,
    K: ComputeKey,
    T: Clone + PartialEq + Send + Sync + 'static,
    F: FnOnce(K) -> Fut,
    Fut: Future<Output = T>,
{
    let hub = service.hub();
    {
        let table = hub.registry().table::<S, K, T>(method);
        if table.consolidator().is_none() {
            table.learn_consolidation(hub, method, recompute, <T as PartialEq>::eq);
        }
    }
    compute(service, method, key, classify, body).await
}

/// Looks `key` up, inserting a computing node on a miss. Synchronous, so that no map guard
/// lives across an `.await`.
///
/// A hit inside a computation registers the dependency here, on the node the map holds: a
/// value the computation read before costs no reference count, a new one costs one.
#[inline]
fn lookup<S, K, T>(hub: &Hub, method: &'static ComputeMethodDescriptor, key: &K) -> Lookup<S, K, T>
where
    S: 'static,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    let table = hub.registry().table::<S, K, T>(method);
    loop {
        let guard = scc::Guard::new();
        if let Some(slot) = table.map().peek(key, &guard) {
            let node = slot.node();
            // A published value is current (see `Slot`): the hit reads neither the node's state
            // nor its value, unless it is a computation's dependency.
            // If it was invalidated since it was published, it is found invalidated, and
            // removed, below.
            if let Some(value) = slot.value()
                && hit(&table, method, node)
            {
                return Lookup::Hit(value.clone());
            }
            let core = node.core();
            match core.state() {
                CONSISTENT => {
                    if let Some(value) = node.output() {
                        if hit(&table, method, node) {
                            table.publish(node, value);
                            return Lookup::Hit(value.clone());
                        }
                        // Invalidated since it was read: do not use it, look again (it is
                        // found invalidated, and removed, below).
                        continue;
                    }
                }
                COMPUTING => return Lookup::Wait(Arc::clone(node)),
                _ => {}
            }
            // Invalidated (computing or not) but not yet removed: help remove it, then look
            // again. A caller never joins a computation that was invalidated.
            let node = Arc::clone(node);
            drop(guard);
            node.detach(Removal::Cleanup);
            continue;
        }
        drop(guard);
        let node = Arc::new(Node::new(
            NodeCore::new(method, hub.next_version()),
            key.clone(),
            table.weak(),
        ));
        if table.try_insert(&node) {
            let weak = Arc::downgrade(&node);
            hub.registry().inserted(weak);
            return Lookup::Lead(node);
        }
    }
}

/// A hit on the consistent `node`: registers it as a dependency of the running
/// computation, if any. Returns whether the caller may use its value (`false`: it was
/// invalidated meanwhile).
#[inline]
fn hit<S, K, T>(
    table: &MethodTable<S, K, T>,
    method: &'static ComputeMethodDescriptor,
    node: &Arc<Node<S, K, T>>,
) -> bool
where
    S: 'static,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    let usable = Context::with_current(|context| {
        context.register_hit(node.as_ref(), || Arc::clone(node) as Arc<dyn ErasedNode>)
    });
    if usable == Some(false) {
        return false;
    }
    table.emit(|| HubEvent::CacheHit {
        method: method.name(),
    });
    true
}

/// Abandons the computation if its leader is dropped (cancelled, or unwinding from a panic)
/// before the value is stored, so no key stays "computing".
struct LeaderGuard<'a>(Option<&'a dyn ErasedNode>);

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            tracing::debug!(
                method = node.core().method().name(),
                "computation abandoned"
            );
            abandon(node);
        }
    }
}

async fn lead<S, K, T, F, Fut>(
    hub: &Hub,
    node: Arc<Node<S, K, T>>,
    key: K,
    classify: Option<crate::__private::Classify<T>>,
    body: F,
) -> T
where
    S: 'static,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
    F: FnOnce(K) -> Fut,
    Fut: Future<Output = T>,
{
    let mut guard = LeaderGuard(Some(node.as_ref()));
    let method = node.core().method();
    hub.emit(|| HubEvent::Computed {
        method: method.name(),
    });
    tracing::trace!(
        method = method.name(),
        version = node.core().version(),
        "computing"
    );
    let context = Context::Computing(Arc::clone(&node) as Arc<dyn ErasedNode>);
    let value = context.scope(body(key)).await;
    // Before the guard is disarmed: if classifying the value panics, the computation is
    // abandoned (its waiters look again) rather than left computing.
    let outcome = classify.map_or(Outcome::Value, |classify| classify(&value));
    let options = method.options();
    if let Some(duration) = options.min_cache_duration {
        node.core().keep_for(duration);
    }
    guard.0 = None;
    drop(guard);
    if complete(node.as_ref(), value.clone()) {
        let lifetime = match outcome {
            Outcome::Value => options.auto_invalidate,
            Outcome::TransientError => Some(options.error_lifetime),
            Outcome::PermanentError => Some(options.permanent_error_lifetime),
        };
        if let Some(lifetime) = lifetime {
            schedule_invalidation(hub, &node, lifetime);
        }
    }
    // Evict now that what this computation read is registered as in use (and this value too,
    // if a computation called it).
    hub.registry().evict_if_over_capacity();
    value
}

/// Invalidates `node` after `delay`, unless the hub is dropped first.
fn schedule_invalidation<S, K, T>(hub: &Hub, node: &Arc<Node<S, K, T>>, delay: Duration)
where
    S: 'static,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    let node: Arc<dyn ErasedNode> = Arc::clone(node) as Arc<dyn ErasedNode>;
    if delay.is_zero() {
        invalidate_now(vec![node]);
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No timer without a runtime: an expiring value is not kept at all.
        tracing::warn!(
            method = node.core().method().name(),
            "no tokio runtime to expire this value: it is invalidated at once"
        );
        invalidate_now(vec![node]);
        return;
    };
    let node = Arc::downgrade(&node);
    let shutdown = hub.shutdown_token();
    // The lifetime runs from now, not from when the task first runs.
    let deadline = tokio::time::Instant::now() + delay;
    runtime.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                if let Some(node) = node.upgrade() {
                    invalidate_now(vec![node]);
                }
            }
            () = shutdown.cancelled() => {}
        }
    });
}

/// Invalidates the value of `method` for `key` on the service's hub, and everything computed
/// from it. Does nothing if it is not cached.
pub fn invalidate<S, K, T>(service: &S, method: &'static ComputeMethodDescriptor, key: &K)
where
    S: ComputeService,
    K: ComputeKey,
    T: Clone + Send + Sync + 'static,
{
    let Some(table) = service.hub().registry().existing_table::<S, K, T>(method) else {
        return;
    };
    match table.get(key) {
        Some(node) => invalidate_all(vec![node as Arc<dyn ErasedNode>]),
        // Not cached, or just taken out by another thread's invalidation, which may still be
        // invalidating what was computed from it.
        None => super::in_flight::settle(),
    }
}
