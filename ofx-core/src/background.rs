//! Background tasks that never die silently: [`spawn_supervised`] and [`TaskHealth`].
//!
//! Log readers, trimmers and watchers run as tokio tasks. A task that ends other than by being
//! asked to stop (a panic, a bug) is logged at error level and marked in its [`TaskHealth`],
//! which the component's stats expose.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

/// What a background task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Not started yet.
    Idle,
    /// Running.
    Running,
    /// Ended because it was asked to (its stop token, or its hub dropped).
    Stopped,
    /// Ended unexpectedly (it panicked): logged at error level.
    Crashed,
}

/// The health of one background task, shared with its owner's stats.
#[derive(Debug)]
pub struct TaskHealth {
    state: watch::Sender<TaskState>,
}

impl Default for TaskHealth {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(TaskState::Idle),
        }
    }
}

impl TaskHealth {
    /// A health record for a task not started yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The task's state.
    pub fn state(&self) -> TaskState {
        *self.state.borrow()
    }

    /// Whether the task ended unexpectedly.
    pub fn crashed(&self) -> bool {
        self.state() == TaskState::Crashed
    }

    /// Waits until the task has ended (stopped or crashed), and returns how.
    pub async fn ended(&self) -> TaskState {
        let mut state = self.state.subscribe();
        match state
            .wait_for(|state| matches!(state, TaskState::Stopped | TaskState::Crashed))
            .await
        {
            Ok(state) => *state,
            // The sender lives in `self`: it cannot be gone while borrowed.
            Err(_) => self.state(),
        }
    }

    fn set(&self, state: TaskState) {
        self.state.send_replace(state);
    }
}

/// Spawns `task` on the current tokio runtime, marking `health` running, then stopped when it
/// returns, or crashed (with an error log naming `name`) when it panics.
///
/// # Panics
/// Outside a tokio runtime, as `tokio::spawn`.
pub fn spawn_supervised<F>(name: &'static str, health: Arc<TaskHealth>, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    health.set(TaskState::Running);
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        match handle.await {
            Ok(()) => health.set(TaskState::Stopped),
            Err(error) if error.is_cancelled() => {
                // The runtime shut down: not a fault of the task.
                health.set(TaskState::Stopped);
            }
            Err(error) => {
                health.set(TaskState::Crashed);
                tracing::error!(task = name, %error, "a background task ended unexpectedly");
            }
        }
    });
}
