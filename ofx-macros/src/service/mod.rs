//! `#[service]` on an `impl` block: splits its `#[command_handler]`s into main and invalidation
//! branches and registers them.
//!
//! Why on the `impl` and not only on the method: a handler is registered in a `static` that
//! must name the service type, and an attribute on a method cannot see the type of its `impl`
//! (items nested in a method cannot name `Self`). The `impl` attribute sees it, and a
//! `#[command_handler]` without it is a compile error saying so.

mod expand;
mod handler;

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
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "`#[service]` cannot be on a generic `impl`: its command handlers are registered for one service type",
        );
    }
    // On a trait or generic `impl`, handlers are left as written: methods generated beside them
    // would only add errors (a trait `impl` cannot have them).
    let expand_handlers = item.trait_.is_none() && item.generics.params.is_empty();
    let mut handlers = Vec::new();
    let mut items = Vec::with_capacity(item.items.len());
    for impl_item in std::mem::take(&mut item.items) {
        match impl_item {
            ImplItem::Fn(method) if handler::is_handler(&method) => {
                let parsed = if expand_handlers {
                    handler::Handler::parse(&cx, method.clone())
                } else {
                    None
                };
                if let Some(parsed) = parsed {
                    items.extend(expand::methods(&parsed));
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
            other => items.push(other),
        }
    }
    item.items = items;
    if let Err(error) = cx.check() {
        let error = error.to_compile_error();
        return quote!(#item #error);
    }
    let registrations = handlers
        .iter()
        .map(|handler| expand::registration(&item.self_ty, handler));
    let expansion = quote! {
        #item
        #(#registrations)*
    };
    crate::debug::dump("service", &quote!(#item.self_ty).to_string(), &expansion);
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
