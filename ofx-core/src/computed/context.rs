//! Dependency capture: which computation (or capture) the running task is inside.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::Computed;
use super::node::ErasedNode;

tokio::task_local! {
    static CONTEXT: Context;
}

/// What a compute call made by the running task reports to.
#[derive(Clone)]
pub(crate) enum Context {
    /// The task is running the body of this node: calls become its dependencies.
    Computing(Arc<dyn ErasedNode>),
    /// The task runs inside [`capture`]: the first call is recorded.
    Capturing(Arc<Capture>),
}

/// One [`capture`] in progress.
pub(crate) struct Capture {
    /// The first compute call made inside it.
    slot: Mutex<Option<Arc<dyn ErasedNode>>>,
    /// The context `capture` was called in: calls made inside the capture report to it too, so
    /// that a body that reads a dependency through `capture` still depends on it.
    parent: Option<Context>,
}

impl Context {
    /// The context of the running task, if any.
    #[inline]
    pub(crate) fn current() -> Option<Self> {
        CONTEXT.try_with(Self::clone).ok()
    }

    /// Runs `f` with the running task's context, if any (without cloning it).
    #[inline]
    pub(crate) fn with_current<R>(f: impl FnOnce(&Self) -> R) -> Option<R> {
        CONTEXT.try_with(f).ok()
    }

    /// Runs `future` with `self` as its context.
    pub(crate) fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CONTEXT.scope(self, future)
    }

    /// The computation that calls made in this context are dependencies of, if any: this one,
    /// or the one the innermost captures were called in.
    fn computation(&self) -> Option<&Arc<dyn ErasedNode>> {
        let mut context = self;
        loop {
            match context {
                Self::Computing(node) => return Some(node),
                Self::Capturing(capture) => context = capture.parent.as_ref()?,
            }
        }
    }

    /// Makes the running computation (if any) a dependent of `dependency` *before* it uses
    /// `dependency`'s value, waits for it or computes it, so that invalidating `dependency`
    /// from then on reaches it at once, and with it whoever waits for it. Returns `false`,
    /// registering nothing, if `dependency` is invalidated already: then the caller must not
    /// use it.
    ///
    /// Once the caller has the value, call [`record_captured`](Self::record_captured); if a
    /// wait gives none (the computation was abandoned), [`forget_pending`](Self::forget_pending).
    pub(crate) fn register_pending(&self, dependency: &Arc<dyn ErasedNode>) -> bool {
        self.register_shared(dependency.as_ref(), || Arc::clone(dependency))
    }

    /// [`register_pending`](Self::register_pending) for a dependency seen through a reference:
    /// `share` gives a reference to keep, asked for only if the running computation did not
    /// record it before (a value read again costs no reference count).
    #[inline]
    pub(crate) fn register_shared(
        &self,
        dependency: &dyn ErasedNode,
        share: impl FnOnce() -> Arc<dyn ErasedNode>,
    ) -> bool {
        self.computation()
            .is_none_or(|dependent| depend(dependent, dependency, share))
    }

    /// A cache hit on `dependency` in this context: [`register_shared`](Self::register_shared),
    /// then, if it is not invalidated, [`record_captured`](Self::record_captured). Returns
    /// whether the caller may use its value.
    #[inline]
    pub(crate) fn register_hit(
        &self,
        dependency: &dyn ErasedNode,
        share: impl Fn() -> Arc<dyn ErasedNode>,
    ) -> bool {
        if !self.register_shared(dependency, &share) {
            return false;
        }
        if matches!(self, Self::Capturing(_)) {
            self.record_captured(&share());
        }
        true
    }

    /// Undoes [`register_pending`](Self::register_pending) for a computation that was
    /// abandoned: it produced no value, so the running computation did not use it.
    pub(crate) fn forget_pending(&self, dependency: &Arc<dyn ErasedNode>) {
        if let Some(dependent) = self.computation() {
            dependent.core().remove_dependency(dependency.as_ref());
        }
    }

    /// Records `dependency` in the captures on the way to the running computation that have
    /// recorded nothing yet.
    pub(crate) fn record_captured(&self, dependency: &Arc<dyn ErasedNode>) {
        let mut context = self;
        while let Self::Capturing(capture) = context {
            let mut slot = capture
                .slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(Arc::clone(dependency));
            }
            drop(slot);
            match &capture.parent {
                Some(parent) => context = parent,
                None => return,
            }
        }
    }
}

/// Records that `dependent` is computed from `dependency`. Returns `false`, recording nothing,
/// if `dependency` is invalidated. `share` gives the reference to `dependency` that `dependent`
/// keeps, asked for only when the edge is new.
fn depend(
    dependent: &Arc<dyn ErasedNode>,
    dependency: &dyn ErasedNode,
    share: impl FnOnce() -> Arc<dyn ErasedNode>,
) -> bool {
    // The dependent's side first, where a dependency recorded before is found (then it had
    // `dependent` as its dependent already, or it refused it: see below). One lock per side.
    if !dependent
        .core()
        .add_dependency(super::node::address_of(dependency), share)
    {
        return true;
    }
    // Once on the dependency's side, an invalidation of `dependency` reaches `dependent`.
    if dependency.core().add_dependent(Arc::downgrade(dependent)) {
        return true;
    }
    // Invalidated already. Another task of the same computation may have found it recorded
    // above and used its value meanwhile: `dependent` may be computed from an invalidated
    // value, so it is invalidated too (its value goes to its callers, never to the cache).
    dependent.core().remove_dependency(dependency);
    super::invalidation::invalidate_all(vec![Arc::clone(dependent)]);
    false
}

/// Runs `future` and returns its output with the [`Computed`] of the first compute method it
/// called, to inspect or to await its invalidation.
///
/// ```
/// use ofx_core::{compute_method, capture, ComputeService, Hub};
///
/// struct Clock { hub: Hub }
/// impl ComputeService for Clock { fn hub(&self) -> &Hub { &self.hub } }
///
/// impl Clock {
///     #[compute_method]
///     async fn now(&self) -> u64 { 42 }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let clock = Clock { hub: Hub::new().unwrap() };
/// let (value, computed) = capture(clock.now()).await.unwrap();
/// assert_eq!(value, 42);
/// assert!(computed.is_consistent());
/// ofx_core::invalidate! { clock.now(); }
/// computed.when_invalidated().await; // returns at once: it is invalidated already
/// # }
/// ```
///
/// # Errors
/// [`Error::NothingCaptured`](crate::Error::NothingCaptured) when `future` called no compute
/// method.
pub async fn capture<F: Future>(future: F) -> crate::Result<(F::Output, Computed)> {
    let capture = Arc::new(Capture {
        slot: Mutex::new(None),
        parent: Context::current(),
    });
    let output = Context::Capturing(Arc::clone(&capture)).scope(future).await;
    let captured = capture
        .slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match captured {
        Some(node) => Ok((output, Computed::new(node))),
        None => Err(crate::Error::NothingCaptured),
    }
}

/// The dependency-capture context of the running task, to carry into a task it spawns.
///
/// Compute calls made by the running task are recorded as dependencies of the computation it
/// runs. That context lives in the task (a task-local), so it follows `.await`s but not
/// [`tokio::spawn`]: calls made by a spawned task are not dependencies of anything unless the
/// spawned future is wrapped with [`ComputeScope::run`].
///
/// ```
/// use ofx_core::ComputeScope;
/// # async fn example() {
/// let scope = ComputeScope::current();
/// let handle = tokio::spawn(scope.run(async { /* compute calls here are captured */ }));
/// # handle.await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct ComputeScope(Option<Context>);

impl ComputeScope {
    /// The running task's context (empty outside computations and captures).
    pub fn current() -> Self {
        Self(Context::current())
    }

    /// Runs `future` inside this context.
    pub async fn run<F: Future>(self, future: F) -> F::Output {
        match self.0 {
            Some(context) => context.scope(future).await,
            None => future.await,
        }
    }
}

impl std::fmt::Debug for ComputeScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            None => "none",
            Some(Context::Computing(_)) => "computing",
            Some(Context::Capturing(_)) => "capturing",
        };
        f.debug_tuple("ComputeScope").field(&kind).finish()
    }
}
