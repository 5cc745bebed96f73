//! The end of the pipeline: the handler's main branch, run with panics caught.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{CURRENT_CALL, CommandCall};
use crate::Error;
use crate::command::registry::{BoxedOutput, CommandFuture};

/// Runs the main branch of the call's handler, with the call as the task's current command (so
/// that commands it calls are nested).
pub(crate) fn run_main_branch(call: &CommandCall) -> CommandFuture<'_> {
    let handler = call.handler;
    let future = (handler.run)(&*call.service, &*call.command, &call.context);
    let future = CURRENT_CALL.scope(call.context.clone(), future);
    Box::pin(CatchUnwind {
        future: Box::pin(future),
        command: handler.command_name,
    })
}

/// Turns a panic in the handler into [`Error::HandlerPanicked`].
struct CatchUnwind<F> {
    future: Pin<Box<F>>,
    command: &'static str,
}

impl<F: Future<Output = Result<BoxedOutput, Error>>> Future for CatchUnwind<F> {
    type Output = Result<BoxedOutput, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let command = self.command;
        let future = self.future.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || future.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!(command, "command handler panicked");
                Poll::Ready(Err(Error::HandlerPanicked { command }))
            }
        }
    }
}
