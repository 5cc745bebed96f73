//! The compile-time registry: every command type of the program, found through `inventory`, so
//! that a command read from the operation log is decoded by its name.
//!
//! Handlers are not here: each hub learns them from the services added to it
//! ([`Hub::add_service`](crate::Hub::add_service)).

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use serde::Serialize;

use super::Command;
use crate::Error;

/// A command, type-erased (it is the handler's command type inside).
pub type ErasedCommand = dyn std::any::Any + Send + Sync;
/// A handler's output, type-erased.
pub type BoxedOutput = Box<dyn std::any::Any + Send>;
/// The future of a handler or filter.
pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = Result<BoxedOutput, Error>> + Send + 'a>>;

/// One command type, submitted by `#[derive(Command)]`: how to decode it from the log by its
/// name, and how to encode it. Not public API.
#[derive(Debug)]
pub struct CommandRegistration {
    /// The command's name.
    pub name: &'static str,
    /// The command type's path, for errors.
    pub type_name: fn() -> &'static str,
    /// The command's type.
    pub type_id: fn() -> TypeId,
    /// Whether the command may not come from a client.
    pub backend: bool,
    /// Decodes the command from the log's JSON.
    pub decode: fn(serde_json::Value) -> Result<Box<ErasedCommand>, serde_json::Error>,
    /// Encodes the command for the log.
    pub encode: fn(&ErasedCommand) -> Result<serde_json::Value, serde_json::Error>,
    /// How to encode the command's output as JSON: `Some` when the output type implements
    /// `Serialize` (found by the derive), for endpoints that run commands by name.
    pub output_encoder: fn() -> Option<OutputEncoder>,
}

/// Encodes a handler's type-erased output as JSON (see [`CommandRegistration::output_encoder`]).
pub type OutputEncoder = fn(&BoxedOutput) -> Result<serde_json::Value, serde_json::Error>;

impl CommandRegistration {
    /// The registration of `C`.
    pub const fn of<C: Command>() -> Self {
        Self {
            name: C::NAME,
            type_name: std::any::type_name::<C>,
            type_id: TypeId::of::<C>,
            backend: C::BACKEND,
            decode: decode::<C>,
            encode: encode::<C>,
            output_encoder: no_output_encoder,
        }
    }

    /// With `output_encoder` (the derive passes one that finds it by type).
    pub const fn with_output_encoder(
        mut self,
        output_encoder: fn() -> Option<OutputEncoder>,
    ) -> Self {
        self.output_encoder = output_encoder;
        self
    }
}

fn no_output_encoder() -> Option<OutputEncoder> {
    None
}

/// Finds, by type, how to encode a command's output: `Some` when `O: Serialize`, `None`
/// otherwise. Generated code calls `(&&OutputProbe::<O>::NEW).output_encoder()` with both probe
/// traits in scope: method lookup picks [`ProbeSerialize`] when `O: Serialize` and falls back
/// to [`ProbeOpaque`].
pub struct OutputProbe<O>(std::marker::PhantomData<fn() -> O>);

impl<O> OutputProbe<O> {
    /// The probe.
    pub const NEW: Self = Self(std::marker::PhantomData);
}

impl<O> std::fmt::Debug for OutputProbe<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputProbe")
    }
}

/// The probe for outputs that implement `Serialize`.
pub trait ProbeSerialize {
    /// `Some(encoder)`.
    fn output_encoder(&self) -> Option<OutputEncoder>;
}

impl<O: Serialize + 'static> ProbeSerialize for &OutputProbe<O> {
    fn output_encoder(&self) -> Option<OutputEncoder> {
        Some(encode_output::<O>)
    }
}

/// The probe for every other output.
pub trait ProbeOpaque {
    /// `None`: the output cannot be encoded.
    fn output_encoder(&self) -> Option<OutputEncoder>;
}

impl<O> ProbeOpaque for OutputProbe<O> {
    fn output_encoder(&self) -> Option<OutputEncoder> {
        None
    }
}

fn encode_output<O: Serialize + 'static>(
    output: &BoxedOutput,
) -> Result<serde_json::Value, serde_json::Error> {
    match output.downcast_ref::<O>() {
        Some(output) => serde_json::to_value(output),
        None => unreachable!("an output is encoded by the registration of its command"),
    }
}

inventory::collect!(CommandRegistration);

/// Decodes a command of type `C` from the log.
///
/// # Errors
/// When the JSON is not a `C`.
pub fn decode<C: Command>(
    json: serde_json::Value,
) -> Result<Box<ErasedCommand>, serde_json::Error> {
    Ok(Box::new(serde_json::from_value::<C>(json)?))
}

/// Encodes a command of type `C` for the log.
///
/// # Errors
/// When `C`'s `Serialize` fails.
///
/// # Panics
/// When `command` is not a `C` (a registry is only called with its own type).
pub fn encode<C: Command>(command: &ErasedCommand) -> Result<serde_json::Value, serde_json::Error> {
    match command.downcast_ref::<C>() {
        Some(command) => serde_json::to_value(command),
        None => unreachable!("a command is encoded by the registration of its type"),
    }
}

/// Every command type of the program, by name and by type.
pub(crate) struct CommandRegistry {
    by_name: HashMap<&'static str, &'static CommandRegistration>,
    by_type: HashMap<TypeId, &'static CommandRegistration>,
}

impl CommandRegistry {
    /// The command logged under `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<&'static CommandRegistration> {
        self.by_name.get(name).copied()
    }

    /// The registration of the command type `type_id`.
    pub(crate) fn by_type(&self, type_id: TypeId) -> Option<&'static CommandRegistration> {
        self.by_type.get(&type_id).copied()
    }
}

/// The registry, checked once per process: a command name used by two types is an error every
/// hub reports when it is built.
pub(crate) fn registry() -> Result<&'static CommandRegistry, Error> {
    static REGISTRY: OnceLock<Result<CommandRegistry, Error>> = OnceLock::new();
    match REGISTRY.get_or_init(build) {
        Ok(registry) => Ok(registry),
        Err(error) => Err(error.clone()),
    }
}

fn build() -> Result<CommandRegistry, Error> {
    let mut commands: Vec<&'static CommandRegistration> =
        inventory::iter::<CommandRegistration>.into_iter().collect();
    commands.sort_by_key(|command| (command.name, (command.type_name)()));
    let mut by_name: HashMap<&'static str, &'static CommandRegistration> = HashMap::new();
    let mut by_type = HashMap::new();
    for command in commands {
        if let Some(first) = by_name.insert(command.name, command)
            && (first.type_id)() != (command.type_id)()
        {
            return Err(Error::DuplicateCommandName {
                name: command.name,
                first: (first.type_name)(),
                second: (command.type_name)(),
            });
        }
        by_type.insert((command.type_id)(), command);
    }
    Ok(CommandRegistry { by_name, by_type })
}
