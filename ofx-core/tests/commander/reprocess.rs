//! Reprocessing: an outermost command that failed for a transient reason runs again as a whole,
//! at most `max_tries` times; a permanent error, a disabled policy, a commit in doubt never run
//! again; a nested command's transient error retries its outermost command, not the nested call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ofx_core::{
    Command, CommandContext, CommitOutcome, Committed, ComputeService, Error, EventCounter, Hub,
    HubBuilder, HubEventKind, Operation, OperationScope, ReprocessPolicy, ScopeFuture,
    command_handler, service,
};
use serde::{Deserialize, Serialize};

/// The error the tests' handlers fail with.
#[derive(Debug, thiserror::Error)]
#[error("the resource is busy")]
struct Busy;

/// Fails with `Error::transient` on its first `transient_runs` runs, then returns its run.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u32, name = "reprocess.flaky")]
struct Flaky {
    transient_runs: u32,
}

/// Fails with a plain handler error (transient only by the hub's classifier) on its first
/// `failing_runs` runs; `permanent` marks it permanent.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u32, name = "reprocess.classified")]
struct Classified {
    failing_runs: u32,
    permanent: bool,
}

/// Calls `Inner`, which fails transiently on its first run; propagates its error or swallows it.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u32, name = "reprocess.outer")]
struct Outer {
    swallow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "reprocess.inner")]
struct Inner;

/// Begins a storing scope that answers as told at commit.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u32, name = "reprocess.stored")]
struct Stored {
    answer: Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    /// The first commit is certainly not committed, for a transient reason; the next commits.
    NotCommittedOnce,
    /// Every commit is in doubt; the scope's error is marked transient.
    InDoubt,
}

struct Runs {
    hub: Hub,
    /// Main-branch runs by command name.
    runs: Mutex<HashMap<&'static str, u32>>,
    /// Commits the test scope was asked for.
    commits: Arc<AtomicU32>,
}

impl ComputeService for Runs {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Runs {
    /// Counts a main-branch run of `command`; returns its number (1 for the first).
    fn run(&self, command: &'static str) -> u32 {
        let mut runs = self.runs.lock().unwrap();
        let count = runs.entry(command).or_default();
        *count += 1;
        *count
    }

    fn runs(&self, command: &'static str) -> u32 {
        self.runs.lock().unwrap().get(command).copied().unwrap_or(0)
    }
}

#[service]
impl Runs {
    #[command_handler]
    async fn flaky(&self, command: Flaky, _ctx: &CommandContext) -> Result<u32, Error> {
        let run = self.run(Flaky::NAME);
        if run <= command.transient_runs {
            return Err(Error::transient(Busy));
        }
        Ok(run)
    }

    #[command_handler]
    async fn classified(&self, command: Classified, _ctx: &CommandContext) -> Result<u32, Error> {
        let run = self.run(Classified::NAME);
        if run <= command.failing_runs {
            return Err(if command.permanent {
                Error::permanent(Busy)
            } else {
                Error::handler(Busy)
            });
        }
        Ok(run)
    }

    #[command_handler]
    async fn outer(&self, command: Outer, ctx: &CommandContext) -> Result<u32, Error> {
        let run = self.run(Outer::NAME);
        let nested = ctx.hub().commander().call(Inner).await;
        if !command.swallow {
            nested?;
        }
        Ok(run)
    }

    #[command_handler]
    async fn inner(&self, _command: Inner, _ctx: &CommandContext) -> Result<(), Error> {
        if self.run(Inner::NAME) == 1 {
            return Err(Error::transient(Busy));
        }
        Ok(())
    }

    #[command_handler]
    async fn stored(&self, command: Stored, ctx: &CommandContext) -> Result<u32, Error> {
        let run = self.run(Stored::NAME);
        ctx.operation_scope(1, "answering", || {
            let scope = Arc::new(AnsweringScope {
                answer: command.answer,
                commits: Arc::clone(&self.commits),
            });
            (Arc::clone(&scope), scope)
        })?;
        Ok(run)
    }
}

/// A storing scope that answers its commits as its command said.
struct AnsweringScope {
    answer: Answer,
    commits: Arc<AtomicU32>,
}

impl OperationScope for AnsweringScope {
    fn commit<'a>(&'a self, _operation: &'a Operation) -> ScopeFuture<'a, CommitOutcome> {
        Box::pin(async move {
            let commit = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
            match self.answer {
                Answer::NotCommittedOnce if commit == 1 => {
                    CommitOutcome::NotCommitted(Error::transient(Busy))
                }
                Answer::InDoubt => CommitOutcome::InDoubt(Error::transient(Busy)),
                Answer::NotCommittedOnce => {
                    CommitOutcome::Committed(Committed::new(Some(7), SystemTime::now()))
                }
            }
        })
    }

    fn rollback(&self) -> ScopeFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A hub built from `builder` with the `Runs` service, and the counter of its events.
fn host(builder: HubBuilder) -> (Arc<Runs>, EventCounter) {
    let events = EventCounter::new();
    let hub = builder.event_listener(events.clone()).build().unwrap();
    let runs = Arc::new(Runs {
        hub: hub.clone(),
        runs: Mutex::new(HashMap::new()),
        commits: Arc::new(AtomicU32::new(0)),
    });
    hub.add_service(&runs).unwrap();
    (runs, events)
}

/// A policy of `tries` tries with short waits.
fn quick(tries: u32) -> ReprocessPolicy {
    let mut policy = ReprocessPolicy::tries(tries);
    policy.initial_delay = Duration::from_millis(1);
    policy
}

fn retries(events: &EventCounter, command: &str) -> u64 {
    events.count_for(HubEventKind::CommandRetried, command)
}

#[tokio::test]
async fn a_transient_error_is_retried_until_the_command_succeeds() {
    let (runs, events) = host(Hub::builder().reprocessing(quick(5)));
    let run = runs
        .hub
        .commander()
        .call(Flaky { transient_runs: 3 })
        .await
        .unwrap();
    assert_eq!(run, 4, "the fourth try succeeded");
    assert_eq!(runs.runs(Flaky::NAME), 4);
    assert_eq!(retries(&events, Flaky::NAME), 3);
    assert_eq!(events.completed(Flaky::NAME), 1, "one operation completed");
}

#[tokio::test]
async fn the_default_policy_tries_three_times_then_returns_the_error() {
    let (runs, events) = host(Hub::builder());
    assert_eq!(runs.hub.reprocess_policy().max_tries, 3);
    let error = runs
        .hub
        .commander()
        .call(Flaky { transient_runs: 10 })
        .await
        .unwrap_err();
    assert_eq!(runs.runs(Flaky::NAME), 3, "max_tries runs in all");
    assert_eq!(retries(&events, Flaky::NAME), 2);
    assert!(runs.hub.is_transient(&error), "the last error: {error:?}");
    assert!(
        error.to_string().contains("the resource is busy"),
        "the handler's error is returned: {error}"
    );
    assert_eq!(events.completed(Flaky::NAME), 0);
}

#[tokio::test]
async fn a_disabled_policy_never_runs_a_command_again() {
    let (runs, events) = host(Hub::builder().reprocessing(ReprocessPolicy::disabled()));
    assert_eq!(ReprocessPolicy::disabled().max_tries, 1);
    let error = runs
        .hub
        .commander()
        .call(Flaky { transient_runs: 1 })
        .await
        .unwrap_err();
    assert!(runs.hub.is_transient(&error));
    assert_eq!(runs.runs(Flaky::NAME), 1);
    assert_eq!(retries(&events, Flaky::NAME), 0);
}

#[tokio::test]
async fn an_error_the_hubs_classifier_recognizes_is_retried_unless_marked_permanent() {
    let busy = |error: &(dyn std::error::Error + 'static)| error.is::<Busy>();
    let (runs, events) = host(
        Hub::builder()
            .reprocessing(quick(3))
            .transient_if("busy", busy),
    );
    let run = runs
        .hub
        .commander()
        .call(Classified {
            failing_runs: 2,
            permanent: false,
        })
        .await
        .unwrap();
    assert_eq!(run, 3);
    assert_eq!(retries(&events, Classified::NAME), 2);

    let (runs, events) = host(
        Hub::builder()
            .reprocessing(quick(3))
            .transient_if("busy", busy),
    );
    let error = runs
        .hub
        .commander()
        .call(Classified {
            failing_runs: 1,
            permanent: true,
        })
        .await
        .unwrap_err();
    assert!(error.is_permanent(), "{error:?}");
    assert!(!runs.hub.is_transient(&error), "permanent wins: {error:?}");
    assert_eq!(runs.runs(Classified::NAME), 1, "never run again");
    assert_eq!(retries(&events, Classified::NAME), 0);

    // Without the classifier, the same plain error is not transient.
    let (runs, events) = host(Hub::builder().reprocessing(quick(3)));
    runs.hub
        .commander()
        .call(Classified {
            failing_runs: 1,
            permanent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(runs.runs(Classified::NAME), 1);
    assert_eq!(retries(&events, Classified::NAME), 0);
}

#[tokio::test]
async fn a_nested_commands_transient_error_runs_the_outermost_command_again() {
    let (runs, events) = host(Hub::builder().reprocessing(quick(3)));
    let run = runs
        .hub
        .commander()
        .call(Outer { swallow: false })
        .await
        .unwrap();
    assert_eq!(run, 2, "the outer command ran again");
    assert_eq!(runs.runs(Outer::NAME), 2);
    assert_eq!(
        runs.runs(Inner::NAME),
        2,
        "the nested command ran once per outer try, not retried alone"
    );
    assert_eq!(retries(&events, Outer::NAME), 1);
    assert_eq!(retries(&events, Inner::NAME), 0, "nested calls never retry");
    assert_eq!(events.completed(Outer::NAME), 1);
}

#[tokio::test]
async fn a_nested_transient_error_the_outer_handler_swallows_retries_nothing() {
    let (runs, events) = host(Hub::builder().reprocessing(quick(3)));
    let run = runs
        .hub
        .commander()
        .call(Outer { swallow: true })
        .await
        .unwrap();
    assert_eq!(run, 1);
    assert_eq!(runs.runs(Outer::NAME), 1);
    assert_eq!(runs.runs(Inner::NAME), 1);
    assert_eq!(events.count(HubEventKind::CommandRetried), 0);
}

#[tokio::test]
async fn a_commit_certainly_not_done_for_a_transient_reason_is_retried() {
    let (runs, events) = host(Hub::builder().reprocessing(quick(3)));
    let executed = runs
        .hub
        .commander()
        .call_committed(Stored {
            answer: Answer::NotCommittedOnce,
        })
        .await
        .unwrap();
    assert_eq!(executed.output, 2);
    assert_eq!(executed.committed.unwrap().sequence, Some(7));
    assert_eq!(runs.commits.load(Ordering::SeqCst), 2);
    assert_eq!(retries(&events, Stored::NAME), 1);
}

#[tokio::test]
async fn a_commit_in_doubt_is_never_retried_even_for_a_transient_reason() {
    let (runs, events) = host(Hub::builder().reprocessing(quick(5)));
    let error = runs
        .hub
        .commander()
        .call(Stored {
            answer: Answer::InDoubt,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CommitInDoubt { .. }), "{error:?}");
    assert!(!runs.hub.is_transient(&error));
    assert_eq!(runs.runs(Stored::NAME), 1, "the main branch ran once");
    assert_eq!(runs.commits.load(Ordering::SeqCst), 1);
    assert_eq!(retries(&events, Stored::NAME), 0);
    assert_eq!(events.completed(Stored::NAME), 0);
}
