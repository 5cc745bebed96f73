//! `#[service]` on an `impl` block: implements `CommandHandler<C>` for each of its
//! `#[command_handler]`s and `Service` for the type, and makes a type for each of its
//! `#[compute_method]`s.
//!
//! Why on the `impl` and not only on the method: a handler's trait `impl` and a compute
//! method's type must name the service type, and an attribute on a method cannot see the type
//! of its `impl` (items nested in a method cannot name `Self`). The `impl` attribute sees it,
//! with the `impl`'s generics, and a `#[command_handler]` without it is a compile error saying
//! so.
//!
//! # What it generates
//!
//! For `#[service] impl<B: Backend> Todos<B> { .. }` (generics and `where` clause carried over
//! to every `impl` below):
//!
//! - per `#[command_handler] async fn add(&self, command: AddTodo, ctx: &CommandContext)`:
//!   `impl<B: Backend> CommandHandler<AddTodo> for Todos<B>`, whose `handle` calls `add` (the
//!   main branch: the method keeps its name, signature and body, minus the leading
//!   `invalidate! { .. }`) and whose `invalidate` runs that `invalidate!` block (the
//!   invalidation branch);
//! - per `#[compute_method] async fn get(&self, id: u64) -> T`: a type named after the service
//!   and the method, `TodosGetMethod<S>`, with the method's visibility, that implements
//!   `ComputeMethod` for `S = Todos<B>`, and an associated function `Todos::get_method()`
//!   that returns it. The type is generic over the service type so that it is no more visible
//!   than the service: it can name a private service in a public `impl`;
//! - `impl<B: Backend> Service for Todos<B>`, listing the handlers (for `Hub::add_service`)
//!   and the compute methods' descriptors.

mod expand;
mod handler;
mod methods;
mod self_type;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ImplItem, ItemImpl};

use crate::ctxt::Ctxt;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut item: ItemImpl = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(error) => {
            let error = syn::Error::new(error.span(), "`#[service]` goes on an `impl` block")
                .to_compile_error();
            return quote!(#item #error);
        }
    };
    let cx = Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(&args, "`#[service]` takes no options");
    }
    if let Some((_, path, _)) = &item.trait_ {
        cx.error_spanned_by(
            path,
            "`#[service]` goes on an inherent `impl`, not a trait `impl`",
        );
    }
    // On a trait `impl`, handlers are left as written: methods generated beside them would only
    // add errors (a trait `impl` cannot have them).
    let expand_items = item.trait_.is_none();
    let mut handlers = Vec::new();
    let mut compute_methods = Vec::new();
    let mut items = Vec::with_capacity(item.items.len());
    for impl_item in std::mem::take(&mut item.items) {
        match impl_item {
            ImplItem::Fn(method) if handler::is_handler(&method) => {
                let parsed = if expand_items {
                    handler::Handler::parse(&cx, method.clone())
                } else {
                    None
                };
                if let Some(parsed) = parsed {
                    items.push(ImplItem::Fn(expand::main_branch(&parsed)));
                    handlers.push(parsed);
                } else {
                    // Invalid: kept as written, its attribute marked as handled, so one mistake
                    // gives one error, calls to the method still resolve, and the import of
                    // `command_handler` counts as used.
                    let mut method = method;
                    handler::mark_handled(&mut method);
                    items.push(ImplItem::Fn(method));
                }
            }
            ImplItem::Fn(method) if expand_items && methods::is_compute_method(&method) => {
                if let Some(parsed) = methods::ComputeMethod::parse(&method) {
                    compute_methods.push(parsed);
                }
                items.push(ImplItem::Fn(method));
            }
            other => items.push(other),
        }
    }
    handler::check_distinct(&cx, &handlers);
    let service_name = if compute_methods.is_empty() {
        None
    } else {
        self_type::name(&cx, &item.self_ty)
    };
    methods::check_names(&cx, &items, &compute_methods);
    item.items = items;
    if let Err(error) = cx.check() {
        let error = error.to_compile_error();
        return quote!(#item #error);
    }
    let descriptor_types = match &service_name {
        Some(service_name) => compute_methods
            .iter()
            .map(|method| methods::descriptor_type(&item, service_name, method))
            .collect(),
        None => Vec::new(),
    };
    let mut accessors = Vec::new();
    let mut method_types = TokenStream::new();
    for (accessor, types) in descriptor_types {
        accessors.push(accessor);
        method_types.extend(types);
    }
    item.items.extend(accessors);
    let handler_impls = handlers
        .iter()
        .map(|handler| expand::handler_impl(&item, handler));
    let service_impl = expand::service_impl(&item, &handlers, &compute_methods);
    let expansion = quote! {
        #item
        #(#handler_impls)*
        #service_impl
        #method_types
    };
    let self_ty = &item.self_ty;
    crate::debug::dump("service", &quote!(#self_ty).to_string(), &expansion);
    expansion
}

/// `#[command_handler]` alone: it is handled by `#[service]`, which removes it, so reaching it
/// means the `impl` lacks `#[service]`.
pub(crate) fn lone_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    if args.to_string() == "__registered_by_service" {
        return item;
    }
    let span = syn::parse2::<syn::ImplItemFn>(item.clone())
        .map(|method| method.sig.ident.span())
        .unwrap_or_else(|_| proc_macro2::Span::call_site());
    let error = syn::Error::new(
        span,
        "`#[command_handler]` needs `#[ofx_core::service]` on its `impl` block, which registers the handler",
    )
    .to_compile_error();
    quote!(#item #error)
}
