//! [`InvalidateOnCompletion`]: runs invalidation branches in the invalidation pass.

use crate::command::registry::CommandFuture;
use crate::commander::{CommandCall, CommandFilter, Next};

/// The priority of [`InvalidateOnCompletion`].
pub const INVALIDATE_ON_COMPLETION: i32 = 10_000;

/// In the invalidation pass that follows an operation's completion (on the executing host and,
/// from the log, on every other), runs the handler's invalidation branch instead of its main
/// branch. Other calls go on to the main branch.
#[derive(Debug, Default)]
pub struct InvalidateOnCompletion;

impl CommandFilter for InvalidateOnCompletion {
    fn priority(&self) -> i32 {
        INVALIDATE_ON_COMPLETION
    }

    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
        if !call.context.is_invalidating() {
            return next.run(call);
        }
        let registration = call.registration;
        (registration.invalidate)(&*call.service, &*call.command, &call.context);
        Box::pin(std::future::ready(Ok(Box::new(()) as _)))
    }
}
