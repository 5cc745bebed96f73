//! The [`Commander`]: runs commands through the filter pipeline to their handlers.

pub mod filters;
mod handler;
pub mod pipeline;

use std::any::TypeId;
use std::sync::Arc;

pub use pipeline::{CommandFilter, Next};

use crate::command::registry::{ErasedCommand, HandlerRegistration, registry};
use crate::command::{CallKind, Command, CommandContext, ContextItems, OperationItems};
use crate::operation::{Operation, OperationRecorder};
use crate::{Error, Hub};

tokio::task_local! {
    /// The command whose main branch the task is running: a command called meanwhile is nested.
    static CURRENT_CALL: CommandContext;
}

/// Runs commands on one hub. Get it with [`Hub::commander`].
///
/// See [`pipeline`] for the filters a call goes through.
#[derive(Clone, Debug)]
pub struct Commander {
    hub: Hub,
}

/// One command on its way through the pipeline: what filters see.
pub struct CommandCall {
    pub(crate) registration: &'static HandlerRegistration,
    pub(crate) command: Arc<ErasedCommand>,
    pub(crate) service: Arc<ErasedCommand>,
    pub(crate) context: CommandContext,
}

impl CommandCall {
    /// The command's name.
    pub fn command_name(&self) -> &'static str {
        self.registration.command_name
    }

    /// The command, if it is a `C`.
    pub fn command<C: Command>(&self) -> Option<&C> {
        self.command.downcast_ref()
    }

    /// The call's context.
    pub fn context(&self) -> &CommandContext {
        &self.context
    }

    /// The operation of this outermost call, once its handler succeeded: what an operation
    /// scope stores before committing. Built once; the in-memory scope reuses it.
    ///
    /// # Errors
    /// [`Error::CommandJson`] if the command cannot be serialized.
    pub fn finish_operation(&self) -> Result<Operation, Error> {
        let registration = self.registration;
        let command =
            (registration.encode)(&*self.command).map_err(|source| Error::CommandJson {
                command: registration.command_name.to_owned(),
                source: source.into(),
            })?;
        Ok(self.context.operation.finish(
            registration.command_name,
            command,
            Arc::clone(&self.command),
            self.context.items.clone(),
        ))
    }
}

impl std::fmt::Debug for CommandCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCall")
            .field("command", &self.registration.command_name)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Commander {
    pub(crate) fn new(hub: Hub) -> Self {
        Self { hub }
    }

    /// Runs `command`: its main branch once, then (on success) the invalidation branches of
    /// its nested commands and its own, before returning. Called from inside a handler, the
    /// command joins the running operation as a nested command.
    ///
    /// # Errors
    /// The handler's error ([`Error::Handler`], or [`Error::HandlerPanicked`]), or why the
    /// command could not run ([`Error::NoHandler`], [`Error::ServiceNotAttached`], ...).
    pub async fn call<C: Command>(&self, command: C) -> Result<C::Output, Error> {
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
        self.run(command, true, ContextItems::default()).await
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
        self.run(command, false, items).await
    }

    async fn run<C: Command>(
        &self,
        command: C,
        from_client: bool,
        context_items: ContextItems,
    ) -> Result<C::Output, Error> {
        let registration = registry()?
            .by_type(TypeId::of::<C>())
            .ok_or(Error::NoHandler { command: C::NAME })?;
        let service = self.hub.service(registration)?;
        let parent = CURRENT_CALL
            .try_with(Clone::clone)
            .ok()
            .filter(|parent| parent.hub.ptr_eq(&self.hub) && parent.kind != CallKind::Invalidation);
        let context = match parent {
            // A nested command shares its parent's context items (and so its operation scope,
            // such as a database transaction); items given to `call_with` are added to them.
            Some(parent) => CommandContext {
                hub: self.hub.clone(),
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
            },
        };
        let call = CommandCall {
            registration,
            command: Arc::new(command),
            service,
            context,
        };
        let output = Next::new(self.hub.filters()).run(&call).await?;
        match output.downcast::<C::Output>() {
            Ok(output) => Ok(*output),
            Err(_) => unreachable!("a handler's output is its command's output type"),
        }
    }

    /// Replays an operation completed on another host: runs only the invalidation branches of
    /// its nested commands and of its command, decoded through the registry by name. An
    /// operation this hub completed already is skipped (returns `false`).
    ///
    /// # Errors
    /// [`Error::UnknownCommand`] or [`Error::CommandJson`] for a command this program cannot
    /// decode (the other commands of the operation are still invalidated).
    pub async fn replay(&self, operation: &Operation) -> Result<bool, Error> {
        let mut operation = operation.clone();
        operation.local = None;
        self.hub
            .notifier()
            .notify(&self.hub, &operation, false)
            .await
    }
}

/// The invalidation pass of an operation: its nested commands in order, then its command.
/// A command that cannot be decoded is reported, after the others ran.
pub(crate) async fn invalidate_operation(hub: &Hub, operation: &Operation) -> Result<(), Error> {
    let registry = registry()?;
    let mut steps = Vec::with_capacity(operation.nested.len() + 1);
    let mut first_error = None;
    if let Some(local) = &operation.local {
        for (command, items) in local.nested.iter().chain(std::iter::once(&local.outer)) {
            steps.push((Arc::clone(command), items.clone()));
        }
    } else {
        let records = operation
            .nested
            .iter()
            .map(|nested| (&nested.command_name, &nested.command, &nested.items));
        let outer = std::iter::once((
            &operation.command_name,
            &operation.command,
            &operation.items,
        ));
        for (name, json, items) in records.chain(outer) {
            match decode(registry, operation, name, json) {
                Ok(command) => {
                    steps.push((Arc::from(command), OperationItems::from_json(items.clone())))
                }
                Err(error) => {
                    tracing::warn!(operation = %operation.uuid, command = %name, %error, "cannot replay a command");
                    first_error.get_or_insert(error);
                }
            }
        }
    }
    let recorder = Arc::new(OperationRecorder::replaying(operation));
    for (command, items) in steps {
        let Some(registration) = registry.by_type((*command).type_id()) else {
            continue;
        };
        let service = match hub.service(registration) {
            Ok(service) => service,
            Err(error) => {
                first_error.get_or_insert(error);
                continue;
            }
        };
        let call = CommandCall {
            registration,
            command,
            service,
            context: CommandContext {
                hub: hub.clone(),
                operation: Arc::clone(&recorder),
                items,
                context_items: ContextItems::default(),
                kind: CallKind::Invalidation,
                from_client: false,
                command_name: registration.command_name,
            },
        };
        if let Err(error) = Next::new(hub.filters()).run(&call).await {
            tracing::warn!(operation = %operation.uuid, command = registration.command_name, %error, "invalidation failed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn decode(
    registry: &crate::command::registry::CommandRegistry,
    operation: &Operation,
    name: &str,
    json: &serde_json::Value,
) -> Result<Box<ErasedCommand>, Error> {
    let registration = registry
        .by_name(name)
        .ok_or_else(|| Error::UnknownCommand {
            name: name.to_owned(),
            operation: operation.uuid,
        })?;
    (registration.decode)(json.clone()).map_err(|source| Error::CommandJson {
        command: name.to_owned(),
        source: source.into(),
    })
}
