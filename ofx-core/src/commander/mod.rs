//! The [`Commander`]: runs commands through the filter pipeline to their handlers, and an
//! outermost command's operation through its commit and completion.

mod handler;
pub mod pipeline;
pub mod reprocess;

use std::any::TypeId;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::Instrument;

pub use pipeline::{CommandFilter, Next};
pub use reprocess::{Permanent, ReprocessPolicy, Transient, TransientClassifier};

use crate::command::handler::{ErasedService, HandlerFns};
use crate::command::registry::{self, BoxedOutput, ErasedCommand};
use crate::command::{CallKind, Command, CommandContext, ContextItems, OperationItems};
use crate::operation::recorder::RecordedNested;
use crate::operation::{CommitOutcome, Committed, NestedOperation, Operation, OperationRecorder};
use crate::{Error, Hub, telemetry};

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

/// How [`Commander::call_by_name`] runs a command.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Context items for the filters and the handler.
    pub context_items: ContextItems,
    /// Whether the command comes from a client (a backend command is then refused).
    pub from_client: bool,
    /// Called with the outermost command's context before its main branch runs (on every try):
    /// what an event processor uses to begin the operation's scope with the event's claim, so
    /// that the event is marked done in the operation's own transaction.
    pub prepare: Option<PrepareCall>,
}

/// See [`CallOptions::prepare`].
pub type PrepareCall = Arc<dyn Fn(&CommandContext) -> Result<(), Error> + Send + Sync>;

impl CallOptions {
    /// The default options: no context items, not from a client, nothing prepared.
    pub fn new() -> Self {
        Self::default()
    }

    /// With these context items.
    #[must_use]
    pub fn context_items(mut self, items: ContextItems) -> Self {
        self.context_items = items;
        self
    }

    /// Coming from a client, or not.
    #[must_use]
    pub fn from_client(mut self, from_client: bool) -> Self {
        self.from_client = from_client;
        self
    }

    /// With `prepare` called before the main branch (see [`CallOptions::prepare`]).
    #[must_use]
    pub fn prepare(
        mut self,
        prepare: impl Fn(&CommandContext) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.prepare = Some(Arc::new(prepare));
        self
    }
}

impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("from_client", &self.from_client)
            .field("prepare", &self.prepare.is_some())
            .finish_non_exhaustive()
    }
}

/// A command to run, type-erased: from a typed call or decoded by name.
struct ErasedCall {
    type_id: TypeId,
    name: &'static str,
    backend: bool,
    encode: fn(&ErasedCommand) -> Result<serde_json::Value, serde_json::Error>,
    command: Arc<ErasedCommand>,
}

impl ErasedCall {
    fn of<C: Command>(command: C) -> Self {
        Self {
            type_id: TypeId::of::<C>(),
            name: C::NAME,
            backend: C::BACKEND,
            encode: registry::encode::<C>,
            command: Arc::new(command),
        }
    }
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
    /// An outermost command that fails for a transient reason before its commit runs again as
    /// a whole (see [`reprocess`]): its main branch may run more than once, its committed
    /// effects happen once.
    ///
    /// # Errors
    /// The handler's error ([`Error::Handler`], or [`Error::HandlerPanicked`]), why the command
    /// could not run ([`Error::NoHandler`], [`Error::ServiceDropped`], ...), or why its
    /// operation was not committed (the scope's error), or [`Error::CommitInDoubt`].
    pub async fn call<C: Command>(&self, command: C) -> Result<C::Output, Error> {
        Ok(self
            .run_typed(command, CallOptions::default())
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
        self.run_typed(command, CallOptions::default()).await
    }

    /// Runs `command` for a client: refused with [`Error::BackendCommand`] if it is a backend
    /// command.
    ///
    /// # Errors
    /// As [`call`](Self::call), and [`Error::BackendCommand`].
    pub async fn call_from_client<C: Command>(&self, command: C) -> Result<C::Output, Error> {
        Ok(self
            .run_typed(command, CallOptions::new().from_client(true))
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
        Ok(self
            .run_typed(command, CallOptions::new().context_items(items))
            .await?
            .output)
    }

    /// Runs the command registered under `name`, decoded from `command` through the closed
    /// registry (what an event processor or a web endpoint does). The output is the handler's,
    /// type-erased (downcast it to the command's output type).
    ///
    /// # Errors
    /// [`Error::UnknownCommandName`], [`Error::CommandJson`] when the JSON is not that command,
    /// [`Error::BackendCommand`] for a backend command from a client; then as
    /// [`call`](Self::call).
    pub async fn call_by_name(
        &self,
        name: &str,
        command: serde_json::Value,
        options: CallOptions,
    ) -> Result<Executed<BoxedOutput>, Error> {
        let registration =
            registry::registry()?
                .by_name(name)
                .ok_or_else(|| Error::UnknownCommandName {
                    name: name.to_owned(),
                })?;
        let decoded = (registration.decode)(command).map_err(|source| Error::CommandJson {
            command: name.to_owned(),
            source: Arc::new(source),
        })?;
        let call = ErasedCall {
            type_id: (registration.type_id)(),
            name: registration.name,
            backend: registration.backend,
            encode: registration.encode,
            command: Arc::from(decoded),
        };
        self.run(call, options).await
    }

    /// Like [`call_by_name`](Self::call_by_name), with the output encoded as JSON: `Some` when
    /// the command's output type implements `Serialize`, `None` when it does not (or, logged
    /// at warn level, when encoding it failed: the command committed all the same). What a web
    /// endpoint that runs commands by name uses.
    ///
    /// # Errors
    /// As [`call_by_name`](Self::call_by_name).
    pub async fn call_json(
        &self,
        name: &str,
        command: serde_json::Value,
        options: CallOptions,
    ) -> Result<Executed<Option<serde_json::Value>>, Error> {
        let executed = self.call_by_name(name, command, options).await?;
        let encoder = registry::registry()?
            .by_name(name)
            .and_then(|registration| (registration.output_encoder)());
        let output = encoder.and_then(|encode| match encode(&executed.output) {
            Ok(json) => Some(json),
            Err(error) => {
                tracing::warn!(command = name, operation = %executed.operation, %error,
                    "the command committed but its output could not be encoded as JSON");
                None
            }
        });
        Ok(Executed {
            output,
            operation: executed.operation,
            committed: executed.committed,
        })
    }

    /// Whether a command is registered under `name`, and if so whether it is a backend command
    /// (`Some(true)`: refused from clients).
    ///
    /// # Errors
    /// [`Error::DuplicateCommandName`] when the program's command registry is inconsistent.
    pub fn is_backend_command(name: &str) -> Result<Option<bool>, Error> {
        Ok(registry::registry()?
            .by_name(name)
            .map(|registration| registration.backend))
    }

    async fn run_typed<C: Command>(
        &self,
        command: C,
        options: CallOptions,
    ) -> Result<Executed<C::Output>, Error> {
        let executed = self.run(ErasedCall::of(command), options).await?;
        match executed.output.downcast::<C::Output>() {
            Ok(output) => Ok(Executed {
                output: *output,
                operation: executed.operation,
                committed: executed.committed,
            }),
            Err(_) => unreachable!("a handler's output is its command's output type"),
        }
    }

    /// Runs a command: nested in the task's current command, or outermost, with reprocessing.
    async fn run(
        &self,
        command: ErasedCall,
        options: CallOptions,
    ) -> Result<Executed<BoxedOutput>, Error> {
        if options.from_client && command.backend {
            return Err(Error::BackendCommand {
                command: command.name,
            });
        }
        let parent = CURRENT_CALL
            .try_with(Clone::clone)
            .ok()
            .filter(|parent| parent.hub.ptr_eq(&self.hub) && parent.kind != CallKind::Invalidation);
        if let Some(parent) = parent {
            let result = self.run_once(&command, Some(parent), &options).await;
            telemetry::nested_command_ended(command.name, telemetry::outcome(&result));
            return result;
        }
        let policy = self.hub.reprocess_policy();
        let started = Instant::now();
        let mut tries = 1;
        loop {
            match self.run_once(&command, None, &options).await {
                Err(error) if tries < policy.max_tries && self.hub.is_transient(&error) => {
                    telemetry::command_retried(command.name);
                    tries += 1;
                    let delay = policy.delay(tries);
                    tracing::info!(
                        command = command.name,
                        %error,
                        try_ = tries,
                        ?delay,
                        "the command failed for a transient reason before its commit; running it again"
                    );
                    self.hub.emit(|| crate::HubEvent::CommandRetried {
                        command: command.name,
                        next_try: tries,
                    });
                    tokio::time::sleep(delay).await;
                }
                result => {
                    telemetry::command_ended(command.name, telemetry::outcome(&result), started);
                    return result;
                }
            }
        }
    }

    /// One try of a command.
    async fn run_once(
        &self,
        command: &ErasedCall,
        parent: Option<CommandContext>,
        options: &CallOptions,
    ) -> Result<Executed<BoxedOutput>, Error> {
        let (handler, service) = self.hub.handler(command.type_id, || command.name)?;
        let context_items = options.context_items.clone();
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
                command_name: command.name,
            },
            None => CommandContext {
                hub: self.hub.clone(),
                operation: Arc::new(OperationRecorder::new(self.hub.host_id().clone())),
                items: OperationItems::new(),
                context_items,
                kind: CallKind::Outermost,
                from_client: options.from_client,
                command_name: command.name,
                nested_frames: Arc::from([]),
            },
        };
        let nested = context.kind == CallKind::Nested;
        let span = tracing::info_span!(
            "command",
            command = command.name,
            operation = %context.operation.uuid,
            nested,
            host = %self.hub.host_id(),
        );
        let call = CommandCall {
            handler,
            encode: command.encode,
            command: Arc::clone(&command.command),
            service,
            context,
        };
        self.run_call(call, options).instrument(span).await
    }

    /// The rest of one try, in its `command` span: the pipeline, then the nested command's
    /// end or the outermost command's commit.
    async fn run_call(
        &self,
        call: CommandCall,
        options: &CallOptions,
    ) -> Result<Executed<BoxedOutput>, Error> {
        let result = match &options.prepare {
            Some(prepare) => match prepare(&call.context) {
                Ok(()) => Next::new(self.hub.filters()).run(&call).await,
                Err(error) => Err(error),
            },
            None => Next::new(self.hub.filters()).run(&call).await,
        };
        let operation = call.context.operation.uuid;
        let succeeded = result.is_ok();
        let committed = if call.context.kind == CallKind::Nested {
            end_nested(&call, succeeded).await?;
            record_nested(&call, succeeded)?;
            None
        } else {
            Some(self.commit(&call, succeeded).await?)
        };
        Ok(Executed {
            output: result?,
            operation,
            committed,
        })
    }

    /// The outermost command's end: its operation built once, committed by its scope, the
    /// after-commit hooks, then local completion (the invalidation pass). When the main branch
    /// failed, the scope is rolled back and nothing is recorded or invalidated.
    async fn commit(&self, call: &CommandCall, succeeded: bool) -> Result<Committed, Error> {
        let recorder = &call.context.operation;
        let mut scope = recorder.take_scope();
        if succeeded
            && scope.is_none()
            && recorder.has_events()
            && let Some(begin) = self.hub.event_scope()
        {
            // Events, but no write: the hub's home of events stores the operation.
            begin(&call.context)?;
            scope = recorder.take_scope();
        }
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
        if !operation.events.is_empty()
            && !scope.as_ref().is_some_and(|scope| scope.stores_events())
        {
            if let Some(scope) = scope {
                scope.rollback().await;
            }
            return Err(Error::EventsNotStored {
                command: call.handler.command_name,
            });
        }
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
    if !succeeded {
        // Its events go with its writes.
        call.context.operation.drop_events_of(frame);
    }
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
