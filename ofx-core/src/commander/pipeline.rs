//! The filter pipeline: [`CommandFilter`], [`Next`] and the order they run in.
//!
//! # Order
//!
//! Filters run by **priority, highest first**; each decides whether and when to call the rest
//! of the pipeline ([`Next::run`]), and the handler's main branch runs last. ofx has no filter
//! of its own: an operation's scope, commit and invalidation pass are moments of the
//! [operation's life](crate::operation), not filters.
//!
//! A filter sees **main branches only**: each outermost command, and each command nested in
//! one (see [`CommandContext::kind`](crate::CommandContext::kind)). It never sees an
//! invalidation pass, so it needs no guard for one. A filter's error (or its refusal) fails the
//! call like a handler's: the operation's scope is rolled back and nothing is invalidated.

use std::sync::Arc;

use super::CommandCall;
use crate::command::registry::CommandFuture;

/// A step of the command pipeline (logging, validation, authorization, scopes...).
///
/// ```
/// use ofx_core::{CommandCall, CommandFilter, CommandFuture, Next};
///
/// /// Refuses commands while the service is read-only.
/// #[derive(Debug)]
/// struct ReadOnly;
///
/// impl CommandFilter for ReadOnly {
///     fn priority(&self) -> i32 { 50_000 }
///
///     fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
///         Box::pin(async move {
///             Err(ofx_core::Error::Rejected(format!("read-only: {}", call.command_name())))
///         })
///     }
/// }
/// ```
pub trait CommandFilter: Send + Sync + 'static {
    /// Where the filter runs: higher first.
    fn priority(&self) -> i32;

    /// Handles `call`, calling `next.run(call)` to go on.
    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a>;
}

/// The rest of the pipeline after a filter.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    filters: &'a [Arc<dyn CommandFilter>],
}

impl<'a> Next<'a> {
    pub(crate) fn new(filters: &'a [Arc<dyn CommandFilter>]) -> Self {
        Self { filters }
    }

    /// Runs the next filter, or the handler's main branch after the last one.
    pub fn run(self, call: &'a CommandCall) -> CommandFuture<'a> {
        match self.filters.split_first() {
            Some((filter, rest)) => filter.run(call, Next { filters: rest }),
            None => super::handler::run_main_branch(call),
        }
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("filters", &self.filters.len())
            .finish()
    }
}

/// Sorts filters by priority, highest first (stable: equal priorities keep their order).
pub(crate) fn sorted(mut filters: Vec<Arc<dyn CommandFilter>>) -> Vec<Arc<dyn CommandFilter>> {
    filters.sort_by_key(|filter| std::cmp::Reverse(filter.priority()));
    filters
}
