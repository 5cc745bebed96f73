//! [`NestedOperationLogger`]: records nested commands in the outer operation.

use std::sync::Arc;

use crate::command::CallKind;
use crate::command::registry::CommandFuture;
use crate::commander::{CommandCall, CommandFilter, Next};
use crate::operation::{NestedOperation, RecordedNested};

/// The priority of [`NestedOperationLogger`].
pub const NESTED_OPERATION_LOGGER: i32 = 1_000_000;

/// When a command called from inside another handler succeeds, appends it with its own
/// operation items to the outer operation, so that every host replays its invalidation too.
/// A nested command that fails is not recorded.
#[derive(Debug, Default)]
pub struct NestedOperationLogger;

impl CommandFilter for NestedOperationLogger {
    fn priority(&self) -> i32 {
        NESTED_OPERATION_LOGGER
    }

    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
        if call.context.kind != CallKind::Nested {
            return next.run(call);
        }
        Box::pin(async move {
            let output = next.run(call).await?;
            let command = (call.registration.encode)(&*call.command).map_err(|source| {
                crate::Error::CommandJson {
                    command: call.registration.command_name.to_owned(),
                    source: source.into(),
                }
            })?;
            call.context.operation.push_nested(RecordedNested {
                record: NestedOperation {
                    command_name: call.registration.command_name.to_owned(),
                    command,
                    items: call.context.items.to_json(),
                },
                command: Arc::clone(&call.command),
                items: call.context.items.clone(),
            });
            Ok(output)
        })
    }
}
