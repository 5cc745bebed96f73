//! Procedural macros of ofx.
//!
//! An implementation detail of `ofx_core`, which re-exports them with their documentation:
//! depend on `ofx_core` and use `ofx_core::compute_method` and `ofx_core::invalidate!`.

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
/// implements `ComputeService`, with no generic parameters. Each argument is part of the cache
/// key (`Hash + Eq + Clone + Send + Sync + 'static`); the result is cloned to every caller
/// (`Clone + Send + Sync + 'static`). A `Result` that is `Err` stays cached only for the error
/// lifetime.
///
/// Options:
///
/// | option | meaning | default |
/// |---|---|---|
/// | `auto_invalidate = "5s"` | invalidate every result this long after computing it | never |
/// | `error_lifetime = "500ms"` | invalidate an `Err` result this long after computing it | `"1s"` |
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
#[proc_macro]
pub fn invalidate(input: TokenStream) -> TokenStream {
    invalidate::expand(input.into()).into()
}

/// Implements `ofx_core::Command`: `#[command(output = Type, name = "stable.name")]`, plus
/// `backend` for commands clients may not call.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    command_derive::expand(input.into()).into()
}

/// Makes an `impl` block a service whose `#[command_handler]`s are registered: each handler's
/// leading `invalidate! { ... }` becomes its invalidation branch (run after the commit, on
/// every host), the rest its main branch (run once, where the command was called).
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    service::expand(args.into(), item.into()).into()
}

/// Marks a command handler in a `#[service]` impl: `async fn(&self, command: C, ctx:
/// &CommandContext) -> Result<C::Output, E>`.
#[proc_macro_attribute]
pub fn command_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    service::lone_handler(args.into(), item.into()).into()
}
