//! Procedural macros of ofx.
//!
//! An implementation detail of `ofx_core`, which re-exports them with their documentation:
//! depend on `ofx_core` and use `ofx_core::compute_method`, `ofx_core::invalidate!`,
//! `ofx_core::service`, `ofx_core::command_handler` and `ofx_core::Command`.
//!
//! Generated code names runtime items by absolute path (`::ofx_core::...`, hidden ones under
//! `::ofx_core::__private`), and its own locals with mixed-site hygiene, so that the user's
//! imports and names neither break it nor see it. Its errors are reported at the user's tokens.
//! `OFX_MACROS_DEBUG=<item name>` (or `*`) prints an expansion while compiling.

mod command_derive;
mod compute_method;
mod ctxt;
mod debug;
mod invalidate;
mod options;
mod service;

use proc_macro::TokenStream;

/// Makes an `async fn(&self, ..) -> T` a compute method: its results are cached per hub and
/// argument set, with the compute methods it calls recorded as its dependencies.
///
/// The method must be an `async fn` with a `&self` receiver, in an `impl` of a type that
/// implements `ComputeService`, with no generic parameters of its own (the `impl` may have
/// some). Each argument is part of the cache key (`Hash + Eq + Clone + Send + Sync + 'static`);
/// the result is cloned to every caller (`Clone + Send + Sync + 'static`). A `Result` that is
/// `Err` stays cached only for an error lifetime: short for a transient error, longer for a
/// permanent one.
///
/// In a [`#[service]`](macro@service) impl, the method is also a type (see there); its
/// future must then be `Send`.
///
/// Every compute method counts its calls and computations in its descriptor.
///
/// Options:
///
/// | option | meaning | default |
/// |---|---|---|
/// | `auto_invalidate = "5s"` | invalidate every result this long after computing it | never |
/// | `error_lifetime = "500ms"` | invalidate a transient `Err` result (any error not known to be permanent) this long after computing it | `"1s"` |
/// | `permanent_error_lifetime = "5m"` | invalidate a permanent `Err` result this long after computing it | `"30s"` |
/// | `is_transient = MyError::is_transient` | a `fn(&E) -> bool` (or closure) telling the method's transient errors from its permanent ones | an error is permanent when marked with `ofx_core::Error::permanent` in its chain (for a `std::error::Error`), transient otherwise |
/// | `invalidation_delay = "1s"` | carry out each invalidation of a cached result this long after it is asked for, folding those asked for meanwhile into one; the old result is served until then | at once |
/// | `consolidate` | when a result is invalidated, compute it again at once and invalidate what was computed from it only if the new result differs (`PartialEq`); needs the service added to its hub | off |
/// | `min_cache_duration = "10s"` | keep every result at least this long after computing it, however full the cache (invalidation still removes it) | none |
///
/// See `ofx_core::ComputeMethodOptions` for the details of each.
///
/// Durations are written as a whole number with a unit: `ms`, `s`, `m` or `h`.
#[proc_macro_attribute]
pub fn compute_method(args: TokenStream, item: TokenStream) -> TokenStream {
    compute_method::expand(args.into(), item.into()).into()
}

/// Invalidates the compute method calls it names, instead of computing them.
///
/// ```text
/// invalidate! {
///     self.count(cmd.owner);
///     if let Some(id) = maybe_id { self.get(id); }
/// }
/// ```
///
/// Each statement `receiver.method(args);` invalidates the cached value of that compute method
/// for exactly those arguments, checked against the method's real signature. Control flow
/// (`let`, `if`, `match`, `for`, blocks) and macro calls such as logging are kept; any other
/// expression statement is an error, and so is `.await`: invalidation is synchronous.
///
/// When it returns, the values it names and every value computed from them are out of the
/// cache: a call that starts afterwards, on any thread, computes them again. That holds while
/// another thread invalidates the same values: it waits for that thread to have taken out what
/// was computed from them (at most 1 s, for an event listener that would block it). Values of
/// methods with an `invalidation_delay`, and the dependents of `consolidate` methods, follow
/// their options.
#[proc_macro]
pub fn invalidate(input: TokenStream) -> TokenStream {
    invalidate::expand(input.into()).into()
}

/// Implements `ofx_core::Command`: `#[command(output = Type, name = "stable.name")]`, plus
/// `backend` for commands clients may not call. Registers the command's decoder under its name,
/// so that every host can replay it from the operation log.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    command_derive::expand(input.into()).into()
}

/// Makes an `impl` block a service: its `#[command_handler]`s handle their commands on every
/// hub the service is added to (`Hub::add_service`), and each of its `#[compute_method]`s is
/// also a type.
///
/// The `impl` may be generic (`impl<B: Backend> Todos<B>`): everything below is generated with
/// its generics and `where` clause, so each type argument is a service of its own.
///
/// - Each handler's leading `invalidate! { ... }` becomes its invalidation branch (run after
///   the commit, on every host), the rest its main branch (run once, where the command was
///   called); the method keeps its name and signature. It becomes an
///   `impl CommandHandler<C> for Todos<B>`.
/// - The type gets `impl Service for Todos<B>`, which lists the handlers for
///   `Hub::add_service` and the compute methods' descriptors (`Todos::compute_methods()`).
/// - Each compute method `get` becomes a value: a type named after the service and the method,
///   `TodosGetMethod<S>` (with the method's visibility; `S` is the service type, `Todos<B>`, so
///   that the type is never more visible than the service), returned by `Todos::get_method()`.
///   It implements `ComputeMethod`: `Todos::get_method().call(&todos, (id,))`,
///   `.invalidate(&todos, &(id,))` and `.descriptor()`.
///
/// The names `#[service]` adds are the method's name with `_method` (an associated function)
/// and the service's and method's names in `CamelCase` with `Method` (a type beside the
/// `impl`). Another item of the `impl` with the first name is an error at that item; another
/// item of the module with the second is reported by the compiler at the method's name.
///
/// A type has one `#[service]` impl; commands decode from the operation log through
/// `#[derive(Command)]`, which registers each command type by name.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    service::expand(args.into(), item.into()).into()
}

/// Marks a command handler in a `#[service]` impl: `async fn(&self, command: C, ctx:
/// &CommandContext) -> Result<C::Output, E>`, whose future is `Send`. One handler per command
/// type in a service.
///
/// **Its main branch may run more than once.** An outermost command that fails for a
/// transient reason before its commit (a serialization failure, a deadlock, a busy database, a
/// lost connection, an error marked `Error::transient`) runs again as a whole, with a fresh
/// context and operation items (`ofx_core::commander::reprocess`); an event's handler may also
/// run again after a failed or fenced-off run. Its *committed* effects happen once: a command
/// whose commit happened, or may have happened, is never run again. So keep side effects outside
/// the transaction (an e-mail, a call to another system) out of the main branch: add an event
/// for them (`ctx.add_event`), whose run is its own operation.
#[proc_macro_attribute]
pub fn command_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    service::lone_handler(args.into(), item.into()).into()
}
