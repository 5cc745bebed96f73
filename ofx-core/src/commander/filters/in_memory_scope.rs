//! [`InMemoryOperationScope`]: completes the operation of an outermost command.

use crate::command::CallKind;
use crate::command::registry::CommandFuture;
use crate::commander::{CommandCall, CommandFilter, Next};

/// The priority of [`InMemoryOperationScope`].
pub const IN_MEMORY_OPERATION_SCOPE: i32 = 100_000;

/// The scope of an operation that is not stored: after the outermost command's handler (and
/// any inner scope, such as a database transaction) succeeded, it builds the [`Operation`]
/// and hands it to the hub's completion notifier, which runs the invalidation pass before the
/// call returns (read-your-writes). A failed command records nothing and invalidates nothing.
///
/// [`Operation`]: crate::Operation
#[derive(Debug, Default)]
pub struct InMemoryOperationScope;

impl CommandFilter for InMemoryOperationScope {
    fn priority(&self) -> i32 {
        IN_MEMORY_OPERATION_SCOPE
    }

    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
        if call.context.kind != CallKind::Outermost {
            return next.run(call);
        }
        Box::pin(async move {
            let output = next.run(call).await?;
            let operation = call.finish_operation()?;
            let hub = &call.context.hub;
            hub.notifier().notify(hub, &operation, true).await?;
            Ok(output)
        })
    }
}
