//! The invalidation pass of an operation: owned by completion, run on the executing host after
//! the commit and on every other host from the log. It calls the handlers' invalidation
//! branches directly (never through the filter pipeline): the nested commands' first, in
//! execution order, then the outer command's.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use super::{Operation, OperationRecorder};
use crate::command::registry::{CommandRegistry, ErasedCommand, registry};
use crate::command::{CallKind, CommandContext, ContextItems, OperationItems};
use crate::{Error, Hub};

/// What an invalidation pass did.
#[derive(Debug, Default)]
pub(crate) struct PassReport {
    /// The first command that could not be invalidated (undecodable, or its service or
    /// handler missing on this hub); the others ran.
    pub(crate) error: Option<PassError>,
    /// Invalidation branches that panicked (each logged; the pass went on).
    pub(crate) panics: u64,
}

/// Why a command of an operation could not be invalidated.
#[derive(Debug)]
pub(crate) enum PassError {
    /// Its row cannot be decoded by this program: retrying cannot help.
    Undecodable(Error),
    /// Its handler or service is not (yet) on this hub: retrying may help.
    Unavailable(Error),
}

impl PassError {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Self::Undecodable(error) | Self::Unavailable(error) => error,
        }
    }
}

/// Runs the invalidation branches of `operation`'s commands on `hub`.
pub(crate) fn run(hub: &Hub, operation: &Operation) -> PassReport {
    let mut report = PassReport::default();
    let registry = match registry() {
        Ok(registry) => registry,
        Err(error) => {
            report.error = Some(PassError::Unavailable(error));
            return report;
        }
    };
    let steps = steps(registry, operation, &mut report);
    let recorder = Arc::new(OperationRecorder::replaying(operation));
    for (command, items) in steps {
        let type_id = (*command).type_id();
        let found = hub.handler(type_id, || {
            registry
                .by_type(type_id)
                .map_or("(a command type without `#[derive(Command)]`)", |command| {
                    command.name
                })
        });
        let (handler, service) = match found {
            Ok(found) => found,
            Err(error) => {
                report.error.get_or_insert(PassError::Unavailable(error));
                continue;
            }
        };
        let context = CommandContext {
            hub: hub.clone(),
            operation: Arc::clone(&recorder),
            items,
            context_items: ContextItems::default(),
            kind: CallKind::Invalidation,
            from_client: false,
            command_name: handler.command_name,
            nested_frames: Arc::from([]),
        };
        let branch = AssertUnwindSafe(|| (handler.invalidate)(&*service, &*command, &context));
        if std::panic::catch_unwind(branch).is_err() {
            report.panics += 1;
            tracing::error!(
                operation = %operation.uuid,
                command = handler.command_name,
                "an invalidation branch panicked; the pass goes on"
            );
        }
    }
    report
}

/// The typed commands of the pass, in order: the executing host's own, or decoded by name.
fn steps(
    registry: &CommandRegistry,
    operation: &Operation,
    report: &mut PassReport,
) -> Vec<(Arc<ErasedCommand>, OperationItems)> {
    if let Some(local) = &operation.local {
        return local
            .nested
            .iter()
            .chain(std::iter::once(&local.outer))
            .map(|(command, items)| (Arc::clone(command), items.clone()))
            .collect();
    }
    let records = operation
        .nested
        .iter()
        .map(|nested| (&nested.command_name, &nested.command, &nested.items));
    let outer = std::iter::once((
        &operation.command_name,
        &operation.command,
        &operation.items,
    ));
    let mut steps = Vec::with_capacity(operation.nested.len() + 1);
    for (name, json, items) in records.chain(outer) {
        match decode(registry, operation, name, json) {
            Ok(command) => {
                steps.push((Arc::from(command), OperationItems::from_json(items.clone())));
            }
            Err(error) => {
                tracing::warn!(operation = %operation.uuid, command = %name, %error, "cannot replay a command");
                report.error.get_or_insert(PassError::Undecodable(error));
            }
        }
    }
    steps
}

fn decode(
    registry: &CommandRegistry,
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
