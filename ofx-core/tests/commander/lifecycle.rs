//! The moments of an operation: scope commit outcomes, after-commit hooks, panics in
//! invalidation branches, replays that fail until their service is attached, extensions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ofx_core::{
    AfterCommitHook, Command, CommandContext, CommitOutcome, Committed, ComputeService, Error, Hub,
    HubExtension, Operation, OperationScope, ReplayError, ScopeFuture, capture, command_handler,
    compute_method, invalidate, service,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "lifecycle.write")]
struct Write {
    key: u64,
    /// What the test scope answers at commit.
    outcome: Outcome,
    /// Whether the invalidation branch panics.
    panic: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Outcome {
    /// No storing scope: committed in memory.
    InMemory,
    Committed,
    NotCommitted,
    InDoubt,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "lifecycle.touch")]
struct Touch {
    key: u64,
}

/// What happened, in order.
type Journal = Arc<Mutex<Vec<String>>>;

struct Store {
    hub: Hub,
    journal: Journal,
    writes: AtomicU64,
}

impl ComputeService for Store {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Notes a step in the journal (a macro: `invalidate!` keeps macro calls as written).
macro_rules! note {
    ($store:expr, $text:expr) => {
        $store.journal.lock().unwrap().push($text)
    };
}

#[service]
impl Store {
    #[compute_method]
    async fn value(&self, key: u64) -> u64 {
        key + self.writes.load(Ordering::SeqCst)
    }

    #[command_handler]
    async fn write(&self, command: Write, ctx: &CommandContext) -> Result<u64, Error> {
        invalidate! {
            self.value(command.key);
            if command.panic { panic!("an invalidation branch panics"); }
            note!(self, format!("invalidate {}", command.key));
        }
        if command.outcome != Outcome::InMemory {
            let scope = ctx.operation_scope(1, "test-store", || {
                let scope = Arc::new(TestScope {
                    outcome: command.outcome,
                    journal: self.journal.clone(),
                    rolled_back: AtomicBool::new(false),
                });
                (Arc::clone(&scope), scope)
            })?;
            scope.journal.lock().unwrap().push("write".to_owned());
        }
        ctx.hub()
            .commander()
            .call(Touch { key: command.key })
            .await?;
        Ok(self.writes.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[command_handler]
    async fn touch(&self, command: Touch, _ctx: &CommandContext) -> Result<(), Error> {
        invalidate! {
            note!(self, format!("invalidate nested {}", command.key));
        }
        let _ = command.key; // read by the invalidation branch only
        Ok(())
    }
}

/// A storing scope that answers what the command says.
struct TestScope {
    outcome: Outcome,
    journal: Journal,
    rolled_back: AtomicBool,
}

impl OperationScope for TestScope {
    fn commit<'a>(&'a self, operation: &'a Operation) -> ScopeFuture<'a, CommitOutcome> {
        Box::pin(async move {
            self.journal
                .lock()
                .unwrap()
                .push(format!("commit {} nested", operation.nested.len()));
            match self.outcome {
                Outcome::NotCommitted => {
                    CommitOutcome::NotCommitted(Error::Rejected("refused".to_owned()))
                }
                Outcome::InDoubt => CommitOutcome::InDoubt(Error::Rejected("lost".to_owned())),
                _ => CommitOutcome::Committed(Committed::new(Some(42), SystemTime::now())),
            }
        })
    }

    fn rollback(&self) -> ScopeFuture<'_, ()> {
        Box::pin(async move {
            self.rolled_back.store(true, Ordering::SeqCst);
            self.journal.lock().unwrap().push("rollback".to_owned());
        })
    }

    fn after_commit(&self, _hub: &Hub, operation: &Operation) {
        self.journal
            .lock()
            .unwrap()
            .push(format!("scope after commit {:?}", operation.sequence));
    }
}

struct Hook(Journal, &'static str);

impl AfterCommitHook for Hook {
    fn after_commit(&self, _hub: &Hub, operation: &Operation) {
        self.0
            .lock()
            .unwrap()
            .push(format!("hook {} {:?}", self.1, operation.sequence));
    }
}

fn store(builder: ofx_core::HubBuilder, journal: &Journal) -> Arc<Store> {
    let hub = builder.build().unwrap();
    let store = Arc::new(Store {
        hub: hub.clone(),
        journal: journal.clone(),
        writes: AtomicU64::new(0),
    });
    hub.add_service(&store).unwrap();
    store
}

fn write(key: u64, outcome: Outcome) -> Write {
    Write {
        key,
        outcome,
        panic: false,
    }
}

fn take(journal: &Journal) -> Vec<String> {
    std::mem::take(&mut *journal.lock().unwrap())
}

#[tokio::test]
async fn a_committed_operation_runs_its_hooks_in_order_then_its_invalidation() {
    let journal = Journal::default();
    let builder = Hub::builder()
        .after_commit(Hook(journal.clone(), "first"))
        .after_commit(Hook(journal.clone(), "second"));
    let store = store(builder, &journal);
    let (_, cached) = capture(store.value(1)).await.unwrap();
    let executed = store
        .hub
        .commander()
        .call_committed(write(1, Outcome::Committed))
        .await
        .unwrap();
    assert_eq!(executed.output, 1);
    assert_eq!(executed.committed.unwrap().sequence, Some(42));
    assert!(!cached.is_consistent());
    assert_eq!(
        take(&journal),
        [
            "write",
            "commit 1 nested",
            "scope after commit Some(42)",
            "hook first Some(42)",
            "hook second Some(42)",
            "invalidate nested 1",
            "invalidate 1",
        ]
    );
}

#[tokio::test]
async fn an_operation_without_a_storing_scope_commits_in_memory_without_a_sequence() {
    let journal = Journal::default();
    let store = store(Hub::builder(), &journal);
    let executed = store
        .hub
        .commander()
        .call_committed(write(2, Outcome::InMemory))
        .await
        .unwrap();
    assert_eq!(executed.committed.unwrap().sequence, None);
    assert_eq!(take(&journal), ["invalidate nested 2", "invalidate 2"]);
}

#[tokio::test]
async fn not_committed_is_the_scopes_error_and_invalidates_nothing() {
    let journal = Journal::default();
    let store = store(
        Hub::builder().after_commit(Hook(journal.clone(), "h")),
        &journal,
    );
    let (_, cached) = capture(store.value(3)).await.unwrap();
    let error = store
        .hub
        .commander()
        .call(write(3, Outcome::NotCommitted))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Rejected(ref reason) if reason == "refused"),
        "{error:?}"
    );
    assert!(cached.is_consistent(), "nothing was invalidated");
    assert_eq!(take(&journal), ["write", "commit 1 nested"]);
}

#[tokio::test]
async fn in_doubt_is_its_own_error_and_invalidates_nothing() {
    let journal = Journal::default();
    let store = store(Hub::builder(), &journal);
    let (_, cached) = capture(store.value(4)).await.unwrap();
    let error = store
        .hub
        .commander()
        .call(write(4, Outcome::InDoubt))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CommitInDoubt { .. }), "{error:?}");
    assert!(cached.is_consistent());
}

#[tokio::test]
async fn a_failed_main_branch_rolls_the_scope_back() {
    let journal = Journal::default();
    let store = store(Hub::builder().filter(RefuseTouch), &journal);
    let error = store
        .hub
        .commander()
        .call(write(5, Outcome::Committed))
        .await
        .unwrap_err();
    assert!(
        matches!(error.handler_error::<Error>(), Some(Error::Rejected(_))),
        "{error:?}"
    );
    assert_eq!(take(&journal), ["write", "rollback"]);
}

/// Refuses the nested `Touch`, failing the outer command after its scope began.
struct RefuseTouch;

impl ofx_core::CommandFilter for RefuseTouch {
    fn priority(&self) -> i32 {
        0
    }

    fn run<'a>(
        &'a self,
        call: &'a ofx_core::CommandCall,
        next: ofx_core::Next<'a>,
    ) -> ofx_core::CommandFuture<'a> {
        if call.command::<Touch>().is_some() {
            return Box::pin(async { Err(Error::Rejected("no touching".to_owned())) });
        }
        next.run(call)
    }
}

#[tokio::test]
async fn a_second_storing_scope_in_one_operation_is_refused() {
    let journal = Journal::default();
    let hub = Hub::new().unwrap();
    let store = Arc::new(Store {
        hub: hub.clone(),
        journal: journal.clone(),
        writes: AtomicU64::new(0),
    });
    hub.add_service(&store).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    // A filter that asks for another storage's scope inside the operation.
    struct Second(Mutex<Option<tokio::sync::oneshot::Sender<Error>>>);
    impl ofx_core::CommandFilter for Second {
        fn priority(&self) -> i32 {
            0
        }
        fn run<'a>(
            &'a self,
            call: &'a ofx_core::CommandCall,
            next: ofx_core::Next<'a>,
        ) -> ofx_core::CommandFuture<'a> {
            Box::pin(async move {
                let output = next.run(call).await?;
                if call.command::<Write>().is_some() {
                    let refused = call
                        .context()
                        .operation_scope(2, "other-store", || {
                            let scope = Arc::new(TestScope {
                                outcome: Outcome::Committed,
                                journal: Journal::default(),
                                rolled_back: AtomicBool::new(false),
                            });
                            (Arc::clone(&scope), scope)
                        })
                        .map(|_| ())
                        .unwrap_err();
                    if let Some(tx) = self.0.lock().unwrap().take() {
                        let _ = tx.send(refused);
                    }
                }
                Ok(output)
            })
        }
    }
    let hub2 = Hub::builder()
        .filter(Second(Mutex::new(tx.lock().unwrap().take())))
        .build()
        .unwrap();
    let store2 = Arc::new(Store {
        hub: hub2.clone(),
        journal,
        writes: AtomicU64::new(0),
    });
    hub2.add_service(&store2).unwrap();
    hub2.commander()
        .call(write(6, Outcome::Committed))
        .await
        .unwrap();
    let refused = rx.await.unwrap();
    assert!(
        matches!(
            refused,
            Error::ScopeConflict {
                active: "test-store",
                requested: "other-store"
            }
        ),
        "{refused:?}"
    );
    drop(store);
}

#[tokio::test]
async fn a_panicking_invalidation_branch_is_caught_and_the_work_goes_on() {
    let journal = Journal::default();
    let store = store(Hub::builder(), &journal);
    let (_, cached) = capture(store.value(7)).await.unwrap();
    let panicking = Write {
        key: 7,
        outcome: Outcome::InMemory,
        panic: true,
    };
    // The commit happened: the caller gets its result.
    assert_eq!(store.hub.commander().call(panicking).await.unwrap(), 1);
    assert_eq!(store.hub.notifier().panic_count(), 1);
    assert!(
        !cached.is_consistent(),
        "what ran before the panic took effect"
    );
    assert_eq!(
        take(&journal),
        ["invalidate nested 7"],
        "the nested branch ran; the outer one stopped at its panic"
    );
    // Later commands still invalidate.
    let (_, cached) = capture(store.value(8)).await.unwrap();
    store
        .hub
        .commander()
        .call(write(8, Outcome::InMemory))
        .await
        .unwrap();
    assert!(!cached.is_consistent());
}

#[tokio::test]
async fn a_replay_with_a_panicking_branch_is_completed_and_counted() {
    let journal = Journal::default();
    let a = store(
        Hub::builder().completion_listener(Keep::default()),
        &journal,
    );
    let b = store(Hub::builder(), &Journal::default());
    let operation = operation_of(
        &a,
        Write {
            key: 9,
            outcome: Outcome::InMemory,
            panic: true,
        },
    )
    .await;
    let (_, cached) = capture(b.value(9)).await.unwrap();
    assert!(b.hub.commander().replay(operation).await.unwrap());
    assert_eq!(b.hub.notifier().panic_count(), 1);
    assert!(!cached.is_consistent());
}

#[tokio::test]
async fn a_replay_fails_until_its_service_is_attached_then_succeeds() {
    let a = store(Hub::builder(), &Journal::default());
    let operation = operation_of(&a, write(10, Outcome::InMemory)).await;
    // Host B runs, but its service is not attached yet.
    let b_hub = Hub::new().unwrap();
    let error = b_hub
        .commander()
        .replay(operation.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReplayError::Unavailable(Error::NoHandler { .. })),
        "{error:?}"
    );
    assert!(
        !b_hub.notifier().is_known(operation.uuid),
        "it can be tried again"
    );
    let journal = Journal::default();
    let b = Arc::new(Store {
        hub: b_hub.clone(),
        journal: journal.clone(),
        writes: AtomicU64::new(0),
    });
    b_hub.add_service(&b).unwrap();
    assert!(b_hub.commander().replay(operation).await.unwrap());
    assert_eq!(take(&journal), ["invalidate nested 10", "invalidate 10"]);
}

/// The operation `command` records on `store`'s hub, as another host reads it.
async fn operation_of(store: &Store, command: Write) -> Operation {
    let keep = Keep::default();
    let hub = Hub::builder()
        .completion_listener(keep.clone())
        .build()
        .unwrap();
    let writer = Arc::new(Store {
        hub: hub.clone(),
        journal: Journal::default(),
        writes: AtomicU64::new(0),
    });
    hub.add_service(&writer).unwrap();
    let _ = hub.commander().call(command).await;
    let _ = store;
    let operation = keep.0.lock().unwrap().pop().unwrap();
    Operation::from_json(&operation.to_json().unwrap()).unwrap()
}

#[derive(Clone, Default)]
struct Keep(Arc<Mutex<Vec<Operation>>>);

impl ofx_core::operation::CompletionListener for Keep {
    fn on_operation_completed(&self, operation: &Operation, _local: bool) {
        self.0.lock().unwrap().push(operation.clone());
    }
}

#[derive(Debug)]
struct Named(&'static str, Journal);

impl HubExtension for Named {
    fn name(&self) -> &'static str {
        self.0
    }

    fn attach<'a>(&'a self, hub: &'a Hub) -> ScopeFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.1.lock().unwrap().push(format!("attach {}", self.0));
            if self.0 == "broken" {
                return Err(Error::Rejected("cannot start".to_owned()));
            }
            hub.attachment(self.0, || 1_u8);
            Ok(())
        })
    }
}

#[tokio::test]
async fn extensions_attach_in_order_and_only_through_start() {
    let journal = Journal::default();
    let builder = Hub::builder()
        .with(Named("first", journal.clone()))
        .with(Named("second", journal.clone()));
    let error = builder.clone().build().unwrap_err();
    assert!(
        matches!(&error, Error::ExtensionsNeedStart { extensions } if extensions == "first, second"),
        "{error:?}"
    );
    let hub = builder.start().await.unwrap();
    assert_eq!(take(&journal), ["attach first", "attach second"]);
    assert!(hub.existing_attachment::<u8>("second").is_some());
    let error = Hub::builder()
        .with(Named("broken", journal.clone()))
        .with(Named("never", journal.clone()))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Rejected(_)), "{error:?}");
    assert_eq!(take(&journal), ["attach broken"], "the hub does not start");
}

#[tokio::test]
async fn a_background_task_that_panics_is_marked_crashed_never_silent() {
    use ofx_core::background::{TaskHealth, TaskState, spawn_supervised};
    let crashing = TaskHealth::new();
    spawn_supervised("test task", crashing.clone(), async {
        panic!("a bug in a background loop");
    });
    assert_eq!(crashing.ended().await, TaskState::Crashed);
    assert!(crashing.crashed());
    let finishing = TaskHealth::new();
    spawn_supervised("test task", finishing.clone(), async {});
    assert_eq!(finishing.ended().await, TaskState::Stopped);
}

#[tokio::test]
async fn operations_tell_the_hubs_event_listener() {
    use ofx_core::{EventCounter, HubEventKind};
    let events = EventCounter::new();
    let journal = Journal::default();
    let a = store(Hub::builder().event_listener(events.clone()), &journal);
    let panicking = Write {
        key: 11,
        outcome: Outcome::InMemory,
        panic: true,
    };
    a.hub.commander().call(panicking).await.unwrap();
    assert_eq!(events.completed("lifecycle.write"), 1);
    assert_eq!(events.count(HubEventKind::InvalidationPanicked), 1);

    let b_events = EventCounter::new();
    let b_hub = Hub::builder()
        .event_listener(b_events.clone())
        .build()
        .unwrap();
    let operation = operation_of(&a, write(12, Outcome::InMemory)).await;
    b_hub.commander().replay(operation).await.unwrap_err();
    assert_eq!(b_events.count(HubEventKind::ReplayFailed), 1);
    assert_eq!(b_events.count(HubEventKind::OperationCompleted), 0);
}
