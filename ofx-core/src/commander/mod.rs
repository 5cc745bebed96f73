//! The [`Commander`]: runs commands through the filter pipeline to their handlers, and an
//! outermost command's operation through its commit and completion.

mod handler;
pub mod pipeline;

use std::any::TypeId;
use std::sync::Arc;
use std::time::SystemTime;

pub use pipeline::{CommandFilter, Next};

use crate::command::handler::{ErasedService, HandlerFns};
use crate::command::registry::{self, ErasedCommand};
use crate::command::{CallKind, Command, CommandContext, ContextItems, OperationItems};
use crate::operation::recorder::RecordedNested;
use crate::operation::{CommitOutcome, Committed, NestedOperation, Operation, OperationRecorder};
use crate::{Error, Hub};

tokio::task_local! {
    /// The command whose main branch the task is running: a command called meanwhile is nested.
    static CURRENT_CALL: CommandContext;
}

/// Runs commands on one hub. Get it with [`Hub::commander`].
///
/// See [`pipeline`] for the filters a call goes through, and [`operation`](crate::operation)
/// for the life of the operation it records.
#[derive(Clone, Debug)]
pub struct Commander {
    hub: Hub,
}

/// What a successful [`Commander::call_committed`] returns: the handler's output, and where its
/// operation was committed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Executed<O> {
    /// The handler's output.
    pub output: O,
    /// The uuid of the operation.
    pub operation: uuid::Uuid,
    /// Where and when the operation was committed; `None` for a nested command, which commits
    /// with its outermost command.
    pub committed: Option<Committed>,
}

/// One command on its way through the pipeline: what filters see. Filters only ever see main
/// branches: an outermost command, or a command nested in one.
pub struct CommandCall {
    pub(crate) handler: HandlerFns,
    pub(crate) encode: fn(&ErasedCommand) -> Result<serde_json::Value, serde_json::Error>,
    pub(crate) command: Arc<ErasedCommand>,
    pub(crate) service: Arc<ErasedService>,
    pub(crate) context: CommandContext,
}

impl CommandCall {
    /// The command's name.
    pub fn command_name(&self) -> &'static str {
        self.handler.command_name
    }

    /// The command, if it is a `C`.
    pub fn command<C: Command>(&self) -> Option<&C> {
        self.command.downcast_ref()
    }

    /// The call's context.
    pub fn context(&self) -> &CommandContext {
        &self.context
    }

    fn encode(&self) -> Result<serde_json::Value, Error> {
        (self.encode)(&*self.command).map_err(|source| Error::CommandJson {
            command: self.handler.command_name.to_owned(),
            source: source.into(),
        })
    }

    /// The operation of this outermost call, once its main branch succeeded.
    fn finish_operation(&self) -> Result<Operation, Error> {
        let command = self.encode()?;
        Ok(self.context.operation.finish(
            self.handler.command_name,
            command,
            Arc::clone(&self.command),
            self.context.items.clone(),
        ))
    }
}

impl std::fmt::Debug for CommandCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCall")
            .field("command", &self.handler.command_name)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Commander {
    pub(crate) fn new(hub: Hub) -> Self {
        Self { hub }
    }

    /// Runs `command`: its main branch once, then (on success) commits its operation and runs
    /// the invalidation branches of its nested commands and its own, before returning. Called
    /// from inside a handler, the command joins the running operation as a nested command.
    ///
    /// # Errors
    /// The handler's error ([`Error::Handler`], or [`Error::HandlerPanicked`]), why the command
    /// could not run ([`Error::NoHandler`], [`Error::ServiceDropped`], ...), or why its
    /// operation was not committed (the scope's error), or [`Error::CommitInDoubt`].
    pub async fn call<C: Command>(&self, command: C) -> Result<C::Output, Error> {
        Ok(self
            .run(command, false, ContextItems::default())
            .await?
            .output)
    }

    /// Like [`call`](Self::call), also telling where the operation was committed: its
    /// sequence number in the operation log lets a caller wait until another host replayed
    /// it (read-your-writes across hosts).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_committed<C: Command>(
        &self,
        command: C,
    ) -> Result<Executed<C::Output>, Error> {
        self.run(command, false, ContextItems::default()).await
    }

    /// Runs `command` for a client: refused with [`Error::BackendCommand`] if it is a backend
    /// command.
    ///
    /// # Errors
    /// As [`call`](Self::call), and [`Error::BackendCommand`].
    pub async fn call_from_client<C: Command>(&self, command: C) -> Result<C::Output, Error> {
        if C::BACKEND {
            return Err(Error::BackendCommand { command: C::NAME });
        }
        Ok(self
            .run(command, true, ContextItems::default())
            .await?
            .output)
    }

    /// Runs `command` with context items set beforehand (for filters and the handler).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_with<C: Command>(
        &self,
        command: C,
        items: ContextItems,
    ) -> Result<C::Output, Error> {
        Ok(self.run(command, false, items).await?.output)
    }

    async fn run<C: Command>(
        &self,
        command: C,
        from_client: bool,
        context_items: ContextItems,
    ) -> Result<Executed<C::Output>, Error> {
        let (handler, service) = self.hub.handler(TypeId::of::<C>(), || C::NAME)?;
        let parent = CURRENT_CALL
            .try_with(Clone::clone)
            .ok()
            .filter(|parent| parent.hub.ptr_eq(&self.hub) && parent.kind != CallKind::Invalidation);
        let context = match parent {
            // A nested command shares its parent's operation (and so its scope, such as a
            // database transaction) and context items; items given to `call_with` are added.
            Some(parent) => CommandContext {
                hub: self.hub.clone(),
                nested_frames: parent.nested_frames_with(parent.operation.next_frame()),
                operation: parent.operation,
                items: OperationItems::new(),
                context_items: parent.context_items.merged(context_items),
                kind: CallKind::Nested,
                from_client: parent.from_client,
                command_name: C::NAME,
            },
            None => CommandContext {
                hub: self.hub.clone(),
                operation: Arc::new(OperationRecorder::new(self.hub.host_id().clone())),
                items: OperationItems::new(),
                context_items,
                kind: CallKind::Outermost,
                from_client,
                command_name: C::NAME,
                nested_frames: Arc::from([]),
            },
        };
        let call = CommandCall {
            handler,
            encode: registry::encode::<C>,
            command: Arc::new(command),
            service,
            context,
        };
        let result = Next::new(self.hub.filters()).run(&call).await;
        let operation = call.context.operation.uuid;
        let succeeded = result.is_ok();
        let committed = if call.context.kind == CallKind::Nested {
            end_nested(&call, succeeded).await?;
            record_nested(&call, succeeded)?;
            None
        } else {
            Some(self.commit(&call, succeeded).await?)
        };
        let output = result?;
        match output.downcast::<C::Output>() {
            Ok(output) => Ok(Executed {
                output: *output,
                operation,
                committed,
            }),
            Err(_) => unreachable!("a handler's output is its command's output type"),
        }
    }

    /// The outermost command's end: its operation built once, committed by its scope, the
    /// after-commit hooks, then local completion (the invalidation pass). When the main branch
    /// failed, the scope is rolled back and nothing is recorded or invalidated.
    async fn commit(&self, call: &CommandCall, succeeded: bool) -> Result<Committed, Error> {
        let recorder = &call.context.operation;
        let scope = recorder.take_scope();
        if !succeeded {
            if let Some(scope) = scope {
                scope.rollback().await;
            }
            // The caller gets the main branch's error.
            return Ok(Committed::new(None, SystemTime::now()));
        }
        let mut operation = match call.finish_operation() {
            Ok(operation) => operation,
            Err(error) => {
                if let Some(scope) = scope {
                    scope.rollback().await;
                }
                return Err(error);
            }
        };
        let outcome = match &scope {
            Some(scope) => scope.commit(&operation).await,
            None => CommitOutcome::Committed(Committed::new(None, SystemTime::now())),
        };
        let committed = match outcome {
            CommitOutcome::Committed(committed) => committed,
            CommitOutcome::NotCommitted(error) => return Err(error),
            CommitOutcome::InDoubt(error) => {
                return Err(Error::CommitInDoubt {
                    operation: operation.uuid,
                    source: Arc::new(error),
                });
            }
        };
        operation.sequence = committed.sequence;
        operation.committed_at = Some(committed.at);
        if let Some(scope) = &scope {
            scope.after_commit(&self.hub, &operation);
        }
        for hook in self.hub.after_commit_hooks() {
            hook.after_commit(&self.hub, &operation);
        }
        self.hub
            .notifier()
            .complete_local(&self.hub, operation)
            .await;
        Ok(committed)
    }

    /// Replays an operation completed on another host: runs only the invalidation branches of
    /// its nested commands and of its command, decoded through the registry by name. An
    /// operation this hub completed already is skipped (returns `false`). The same as
    /// [`OperationCompletionNotifier::complete_remote`](crate::OperationCompletionNotifier::complete_remote).
    ///
    /// # Errors
    /// [`ReplayError`](crate::operation::ReplayError): undecodable, or not replayable yet.
    pub async fn replay(
        &self,
        operation: Operation,
    ) -> Result<bool, crate::operation::ReplayError> {
        let mut operation = operation;
        operation.local = None;
        self.hub
            .notifier()
            .complete_remote(&self.hub, operation)
            .await
    }
}

/// Tells the operation's storing scope (if one began) that a nested command ended: its writes
/// are kept if it succeeded, undone if it failed (a database rolls back to the savepoint taken
/// when the nested command first wrote), so that a failed nested command whose error the outer
/// handler swallows leaves nothing behind, as it leaves no invalidation.
async fn end_nested(call: &CommandCall, succeeded: bool) -> Result<(), Error> {
    let Some(frame) = call.context.nested_frames.last().copied() else {
        return Ok(());
    };
    let Some(scope) = call.context.operation.active_scope() else {
        return Ok(());
    };
    match scope.end_nested(frame, succeeded).await {
        Ok(()) => Ok(()),
        // The nested command failed already: the caller gets that error; this one is logged.
        Err(error) if !succeeded => {
            tracing::error!(command = call.handler.command_name, %error, "undoing a failed nested command's writes failed; the operation will not commit");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Records a nested command that succeeded, with its own items, in the outer operation, so that
/// every host replays its invalidation too. A nested command that failed is not recorded.
fn record_nested(call: &CommandCall, succeeded: bool) -> Result<(), Error> {
    if !succeeded {
        return Ok(());
    }
    let command = call.encode()?;
    call.context.operation.push_nested(RecordedNested {
        record: NestedOperation::new(
            call.handler.command_name,
            command,
            call.context.items.to_json(),
        ),
        command: Arc::clone(&call.command),
        items: call.context.items.clone(),
    });
    Ok(())
}
