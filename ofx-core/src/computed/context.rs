//! Dependency capture: which computation (or capture) the running task is inside.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::Computed;
use super::invalidation::invalidate_all;
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
    Capturing(Arc<Mutex<Option<Arc<dyn ErasedNode>>>>),
}

impl Context {
    /// The context of the running task, if any.
    #[inline]
    pub(crate) fn current() -> Option<Self> {
        CONTEXT.try_with(Self::clone).ok()
    }

    /// Whether the running task is inside a computation or capture.
    #[inline]
    pub(crate) fn is_active() -> bool {
        CONTEXT.try_with(|_| ()).is_ok()
    }

    /// Runs `future` with `self` as its context.
    pub(crate) fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CONTEXT.scope(self, future)
    }

    /// Records that the running computation used `dependency`.
    pub(crate) fn register(&self, dependency: Arc<dyn ErasedNode>) {
        match self {
            Self::Computing(dependent) => {
                dependent.core().add_dependency(Arc::clone(&dependency));
                let weak = Arc::downgrade(dependent);
                if !dependency.core().add_dependent(weak) {
                    // It was invalidated before we got here: what we computed from it is stale.
                    invalidate_all(vec![Arc::clone(dependent)]);
                }
            }
            Self::Capturing(slot) => {
                let mut slot = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if slot.is_none() {
                    *slot = Some(dependency);
                }
            }
        }
    }
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
    let slot = Arc::new(Mutex::new(None));
    let output = Context::Capturing(Arc::clone(&slot)).scope(future).await;
    let captured = slot
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
