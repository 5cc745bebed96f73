//! The compile-time registry: every command type and every handler, found through `inventory`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use super::CommandContext;
use crate::Error;

/// A command, type-erased (it is the handler's command type inside).
pub type ErasedCommand = dyn Any + Send + Sync;
/// A handler's output, type-erased.
pub type BoxedOutput = Box<dyn Any + Send>;
/// The future of a handler or filter.
pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = Result<BoxedOutput, Error>> + Send + 'a>>;

/// One command type, submitted by `#[derive(Command)]`: lets a hub refuse two types with one
/// name. Not public API.
#[derive(Debug)]
pub struct CommandRegistration {
    /// The command's name.
    pub name: &'static str,
    /// The command type's path, for errors.
    pub type_name: fn() -> &'static str,
}

inventory::collect!(CommandRegistration);

/// One command handler, submitted by `#[ofx_core::service]`: routes the command to its
/// service's method, decodes it from the log, and runs its invalidation branch. Not public API.
pub struct HandlerRegistration {
    /// The command's name.
    pub command_name: &'static str,
    /// The command type's path, for errors.
    pub command_type_name: fn() -> &'static str,
    /// The command's type.
    pub command_type: fn() -> TypeId,
    /// The service's type.
    pub service_type: fn() -> TypeId,
    /// The service type's path, for errors.
    pub service_type_name: fn() -> &'static str,
    /// Whether the command may not come from a client.
    pub backend: bool,
    /// Runs the main branch: the service and the command are of the registered types.
    pub run:
        for<'a> fn(&'a ErasedCommand, &'a ErasedCommand, &'a CommandContext) -> CommandFuture<'a>,
    /// Runs the invalidation branch.
    pub invalidate: fn(&ErasedCommand, &ErasedCommand, &CommandContext),
    /// Decodes the command from the log's JSON.
    pub decode: fn(serde_json::Value) -> Result<Box<ErasedCommand>, serde_json::Error>,
    /// Encodes the command for the log.
    pub encode: fn(&ErasedCommand) -> Result<serde_json::Value, serde_json::Error>,
}

inventory::collect!(HandlerRegistration);

impl std::fmt::Debug for HandlerRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerRegistration")
            .field("command", &self.command_name)
            .field("command_type", &(self.command_type_name)())
            .field("service", &(self.service_type_name)())
            .finish_non_exhaustive()
    }
}

/// Every handler of the program, by command type and by command name.
pub(crate) struct CommandRegistry {
    by_type: HashMap<TypeId, &'static HandlerRegistration>,
    by_name: HashMap<&'static str, &'static HandlerRegistration>,
}

impl CommandRegistry {
    pub(crate) fn by_type(&self, type_id: TypeId) -> Option<&'static HandlerRegistration> {
        self.by_type.get(&type_id).copied()
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<&'static HandlerRegistration> {
        self.by_name.get(name).copied()
    }
}

/// The registry, checked once per process: a command name used by two types, or a command with
/// two handlers, is an error every hub reports when it starts.
pub(crate) fn registry() -> Result<&'static CommandRegistry, Error> {
    static REGISTRY: OnceLock<Result<CommandRegistry, Error>> = OnceLock::new();
    match REGISTRY.get_or_init(build) {
        Ok(registry) => Ok(registry),
        Err(error) => Err(error.clone()),
    }
}

fn build() -> Result<CommandRegistry, Error> {
    let mut names: HashMap<&'static str, &'static str> = HashMap::new();
    let mut commands: Vec<&'static CommandRegistration> =
        inventory::iter::<CommandRegistration>.into_iter().collect();
    commands.sort_by_key(|command| (command.name, (command.type_name)()));
    for command in commands {
        let type_name = (command.type_name)();
        if let Some(first) = names.insert(command.name, type_name)
            && first != type_name
        {
            return Err(Error::DuplicateCommandName {
                name: command.name,
                first,
                second: type_name,
            });
        }
    }
    let mut by_type = HashMap::new();
    let mut by_name = HashMap::new();
    for handler in inventory::iter::<HandlerRegistration> {
        if let Some(first) = by_type.insert((handler.command_type)(), handler) {
            return Err(Error::DuplicateHandler {
                command: handler.command_name,
                first: (first.service_type_name)(),
                second: (handler.service_type_name)(),
            });
        }
        by_name.insert(handler.command_name, handler);
    }
    Ok(CommandRegistry { by_type, by_name })
}
