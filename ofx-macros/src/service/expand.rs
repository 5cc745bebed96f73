//! What a command handler becomes: its main branch under its own name, a hidden invalidation
//! branch, and a registration that routes its command to both.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, Type};

use super::handler::Handler;

/// The methods a handler becomes inside the `impl`.
pub(super) fn methods(handler: &Handler) -> Vec<ImplItem> {
    let main = &handler.main;
    let name = &main.sig.ident;
    let invalidation_fn = format_ident!("__ofx_invalidation_{}", name);
    let command = &handler.command;
    let context = &handler.context;
    // The user's own path to `invalidate!`, so that their import of it counts as used.
    let (path, body) = handler.invalidation.clone().unwrap_or_else(|| {
        (
            syn::parse_quote!(::ofx_core::invalidate),
            TokenStream::new(),
        )
    });
    let invalidation: ImplItem = syn::parse_quote! {
        /// The invalidation branch of the handler of the same name.
        #[doc(hidden)]
        #[allow(unused_variables, clippy::needless_pass_by_value, clippy::unused_self)]
        fn #invalidation_fn(&self, #command, #context) {
            #path! { #body }
        }
    };
    // `async` is required of a handler, so a body that does not await is no lint's business.
    let mut main = main.clone();
    main.attrs
        .push(syn::parse_quote!(#[allow(clippy::unused_async)]));
    vec![ImplItem::Fn(main), invalidation]
}

/// The registration of one handler, after the `impl`.
pub(super) fn registration(service: &Type, handler: &Handler) -> TokenStream {
    let name = &handler.main.sig.ident;
    let invalidation_fn = format_ident!("__ofx_invalidation_{}", name);
    let command = &handler.command.ty;
    let output = &handler.output;
    // The return type is checked at its span, the command type at its own (as are its other
    // uses below): each mistake is reported once, where it was made.
    let command_output = quote_spanned!(command.span()=> <#command as ::ofx_core::Command>::Output);
    let future = quote_spanned!(output.span()=>
        ::ofx_core::__private::handler_future::<#command_output, #output, _>(service.#name(command, ctx))
    );
    quote! {
        const _: () = {
            fn __ofx_run<'a>(
                service: &'a ::ofx_core::__private::ErasedCommand,
                command: &'a ::ofx_core::__private::ErasedCommand,
                ctx: &'a ::ofx_core::CommandContext,
            ) -> ::ofx_core::__private::CommandFuture<'a> {
                let service = ::ofx_core::__private::downcast::<#service>(service);
                let command = ::core::clone::Clone::clone(::ofx_core::__private::downcast::<#command>(command));
                #future
            }

            fn __ofx_invalidate(
                service: &::ofx_core::__private::ErasedCommand,
                command: &::ofx_core::__private::ErasedCommand,
                ctx: &::ofx_core::CommandContext,
            ) {
                let service = ::ofx_core::__private::downcast::<#service>(service);
                let command = ::core::clone::Clone::clone(::ofx_core::__private::downcast::<#command>(command));
                service.#invalidation_fn(command, ctx);
            }

            ::ofx_core::__private::inventory::submit! {
                ::ofx_core::__private::HandlerRegistration {
                    command_name: <#command as ::ofx_core::Command>::NAME,
                    command_type_name: ::core::any::type_name::<#command>,
                    command_type: ::core::any::TypeId::of::<#command>,
                    service_type: ::core::any::TypeId::of::<#service>,
                    service_type_name: ::core::any::type_name::<#service>,
                    backend: <#command as ::ofx_core::Command>::BACKEND,
                    run: __ofx_run,
                    invalidate: __ofx_invalidate,
                    decode: ::ofx_core::__private::decode_command::<#command>,
                    encode: ::ofx_core::__private::encode_command::<#command>,
                }
            }
        };
    }
}
