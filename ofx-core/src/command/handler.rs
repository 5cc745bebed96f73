//! [`CommandHandler`]: a service's handler of one command type, and [`ServiceHandlers`]: the
//! list of them a [`Service`] gives its hub.

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::{Arc, Weak};

use super::registry::{BoxedOutput, CommandFuture, ErasedCommand};
use super::{Command, CommandContext};
use crate::{Error, Service};

/// The handler of the command `C` in a service: its main branch and its invalidation branch.
///
/// `#[service]` implements it for each `#[command_handler]` of its `impl` (the `impl`'s
/// generics and `where` clause carried over), and lists it in the service's
/// [`Service::handlers`]; [`Hub::add_service`](crate::Hub::add_service) then routes `C` to that
/// service instance on that hub. The runtime calls it: run a command with
/// [`Commander::call`](crate::Commander::call), not with [`handle`](Self::handle), which skips
/// the filters, the operation and its invalidation pass.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no handler of the command `{C}`",
    label = "no `#[command_handler]` of `{Self}` takes `{C}`",
    note = "write `#[command_handler] async fn handle(&self, command: {C}, ctx: &CommandContext) -> Result<_, _>` in the `#[service]` impl of `{Self}`"
)]
//
// `C: Command` is required by each method rather than by the trait, and `Self: Service` by
// `ServiceHandlers::add` rather than as a supertrait, so that generated code for a mistake
// reports it once (at the user's span), not once per use.
pub trait CommandHandler<C> {
    /// The main branch: runs once, where the command was called, inside its operation.
    fn handle<'a>(
        &'a self,
        command: C,
        ctx: &'a CommandContext,
    ) -> impl Future<Output = Result<C::Output, Error>> + Send + 'a
    where
        C: Command;

    /// The invalidation branch: runs after the operation committed, on every host, with the
    /// operation items the main branch set. Synchronous: it does no I/O.
    fn invalidate(&self, command: &C, ctx: &CommandContext)
    where
        C: Command;
}

/// A service instance, type-erased (it is the handler's service type inside).
pub(crate) type ErasedService = dyn Any + Send + Sync;

/// How to run one command's handler on a service, its types erased.
#[derive(Clone, Copy)]
pub(crate) struct HandlerFns {
    /// The command's name.
    pub(crate) command_name: &'static str,
    /// The service's type.
    pub(crate) service_type: TypeId,
    /// The service type's path, for errors.
    pub(crate) service_name: &'static str,
    /// Runs the main branch.
    pub(crate) run:
        for<'a> fn(&'a ErasedService, &'a ErasedCommand, &'a CommandContext) -> CommandFuture<'a>,
    /// Runs the invalidation branch.
    pub(crate) invalidate: fn(&ErasedService, &ErasedCommand, &CommandContext),
}

/// One command's handler on one hub: how to run it, and the service instance (weak: services
/// hold their hub).
pub(crate) struct HandlerEntry {
    pub(crate) fns: HandlerFns,
    pub(crate) service: Weak<ErasedService>,
}

/// The command handlers of one service instance, as its [`Service::handlers`] lists them for
/// [`Hub::add_service`](crate::Hub::add_service).
pub struct ServiceHandlers<S> {
    service: Weak<S>,
    entries: Vec<(TypeId, HandlerEntry)>,
}

impl<S: Service> ServiceHandlers<S> {
    pub(crate) fn new(service: &Arc<S>) -> Self {
        Self {
            service: Arc::downgrade(service),
            entries: Vec::new(),
        }
    }

    /// Routes the command `C` to this service's [`CommandHandler<C>`]. Adding one command twice
    /// keeps one route.
    pub fn add<C: Command>(&mut self)
    where
        S: CommandHandler<C>,
    {
        let command = TypeId::of::<C>();
        self.entries.retain(|(known, _)| *known != command);
        let service: Weak<ErasedService> = self.service.clone();
        self.entries.push((
            command,
            HandlerEntry {
                fns: HandlerFns {
                    command_name: C::NAME,
                    service_type: TypeId::of::<S>(),
                    service_name: std::any::type_name::<S>(),
                    run: run::<S, C>,
                    invalidate: invalidate::<S, C>,
                },
                service,
            },
        ));
    }

    /// The names of the commands added so far.
    pub fn command_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|(_, entry)| entry.fns.command_name)
    }

    pub(crate) fn into_entries(self) -> Vec<(TypeId, HandlerEntry)> {
        self.entries
    }
}

impl<S> std::fmt::Debug for ServiceHandlers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandlers")
            .field("service", &std::any::type_name::<S>())
            .field(
                "commands",
                &self
                    .entries
                    .iter()
                    .map(|(_, entry)| entry.fns.command_name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The value behind a type-erased reference, of the type its entry was made for.
#[inline]
fn downcast<T: 'static>(value: &(dyn Any + Send + Sync)) -> &T {
    match value.downcast_ref() {
        Some(value) => value,
        None => unreachable!("a handler entry is called with the types it was made for"),
    }
}

fn run<'a, S: Service + CommandHandler<C>, C: Command>(
    service: &'a ErasedService,
    command: &'a ErasedCommand,
    ctx: &'a CommandContext,
) -> CommandFuture<'a> {
    let service = downcast::<S>(service);
    let command = downcast::<C>(command).clone();
    // Fully qualified: the service may have an inherent method of the same name.
    let future = <S as CommandHandler<C>>::handle(service, command, ctx);
    Box::pin(async move { Ok(Box::new(future.await?) as BoxedOutput) })
}

fn invalidate<S: Service + CommandHandler<C>, C: Command>(
    service: &ErasedService,
    command: &ErasedCommand,
    ctx: &CommandContext,
) {
    <S as CommandHandler<C>>::invalidate(downcast::<S>(service), downcast::<C>(command), ctx);
}
