//! What a command handler becomes: its main branch under its own name, and an `impl` of
//! `CommandHandler` for its command whose `handle` runs that main branch and whose
//! `invalidate` runs the invalidation branch; and the `impl` of `Service` that lists them.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ImplItemFn, ItemImpl};

use super::handler::Handler;
use super::methods::ComputeMethod;
use super::self_type::replace_self;

/// The user's method, with only its main branch as its body.
pub(super) fn main_branch(handler: &Handler) -> ImplItemFn {
    // `async` is required of a handler, so a body that does not await is no lint's business.
    let mut main = handler.main.clone();
    main.attrs
        .push(syn::parse_quote!(#[allow(clippy::unused_async)]));
    // An argument the invalidation branch uses is used, even if the main branch does not.
    if handler.invalidation.is_some() {
        for arg in [&handler.command, &handler.context] {
            if let syn::Pat::Ident(pat) = &*arg.pat {
                let ident = &pat.ident;
                main.block.stmts.insert(
                    0,
                    syn::parse_quote_spanned!(ident.span()=> let _ = &#ident;),
                );
            }
        }
    }
    main
}

/// A hygienic name at `span`: user code cannot see it, errors about it point at `span`.
fn hidden(name: &str, span: Span) -> Ident {
    Ident::new(name, Span::mixed_site().located_at(span))
}

/// `impl CommandHandler<C> for Service`, after the `impl`.
pub(super) fn handler_impl(item: &ItemImpl, handler: &Handler) -> TokenStream {
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let name = &handler.main.sig.ident;
    let command = &handler.command.ty;
    let command_in_header = replace_self(command, self_ty);
    let output = &handler.output;
    let command_var = hidden("__ofx_command", command.span());
    let context_var = hidden("__ofx_ctx", handler.context.ty.span());
    let future_var = hidden("__ofx_future", Span::call_site());
    // Call-site hygiene, so that the call below is all at the return type's span (a local of
    // the generated block: the user's code cannot see it).
    let result_var = Ident::new("__ofx_result", Span::call_site());
    let result_arg = Ident::new("__ofx_result", output.span());
    // The return type is checked at its span, the command type at its own (as are its other
    // uses below): each mistake is reported once, where it was made.
    let command_output = quote_spanned!(command.span()=> <#command as ::ofx_core::Command>::Output);
    let result = quote_spanned!(output.span()=>
        ::ofx_core::__private::handler_result::<#command_output, #output>(#result_arg)
    );
    // A main branch whose future is not `Send` is reported at the handler's name.
    let future_ty = quote_spanned!(name.span()=>
        impl ::ofx_core::__private::Future<
            Output = ::core::result::Result<#command_output, ::ofx_core::Error>,
        > + ::core::marker::Send + '__ofx
    );
    let handler_trait =
        quote_spanned!(command.span()=> ::ofx_core::CommandHandler<#command_in_header>);
    let invalidate = match &handler.invalidation {
        Some((path, body)) => {
            let command_pat = &handler.command.pat;
            let context_pat = &handler.context.pat;
            quote! {
                #[allow(unused_variables, clippy::redundant_clone)]
                fn invalidate(
                    &self,
                    #command_var: &#command,
                    #context_var: &::ofx_core::CommandContext,
                ) {
                    let #command_pat = ::core::clone::Clone::clone(#command_var);
                    let #context_pat = #context_var;
                    // The user's own path to `invalidate!`, so that their import of it counts
                    // as used.
                    #path! { #body }
                }
            }
        }
        None => quote! {
            #[inline]
            fn invalidate(&self, _: &#command, _: &::ofx_core::CommandContext) {}
        },
    };
    quote! {
        impl #impl_generics #handler_trait for #self_ty #where_clause {
            #[inline]
            #[allow(clippy::manual_async_fn)]
            fn handle<'__ofx>(
                &'__ofx self,
                #command_var: #command,
                #context_var: &'__ofx ::ofx_core::CommandContext,
            ) -> #future_ty {
                let #future_var = Self::#name(self, #command_var, #context_var);
                async move {
                    let #result_var = #future_var.await;
                    #result
                }
            }

            #invalidate
        }
    }
}

/// `impl Service for Service`: its handlers and its compute methods.
pub(super) fn service_impl(
    item: &ItemImpl,
    handlers: &[Handler],
    compute_methods: &[ComputeMethod],
) -> TokenStream {
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let list = hidden("__ofx_handlers", Span::call_site());
    let adds = handlers.iter().map(|handler| {
        let command = &handler.command.ty;
        quote_spanned!(command.span()=> #list.add::<#command>();)
    });
    let handlers_fn = if handlers.is_empty() {
        quote! {
            #[inline]
            fn handlers(_: &mut ::ofx_core::ServiceHandlers<Self>) {}
        }
    } else {
        quote! {
            fn handlers(#list: &mut ::ofx_core::ServiceHandlers<Self>) {
                #(#adds)*
            }
        }
    };
    let descriptors = compute_methods.iter().map(ComputeMethod::descriptor_fn);
    quote! {
        impl #impl_generics ::ofx_core::Service for #self_ty #where_clause {
            #handlers_fn

            fn compute_methods() -> ::std::vec::Vec<&'static ::ofx_core::__private::ComputeMethodDescriptor> {
                ::std::vec![#(Self::#descriptors()),*]
            }
        }
    }
}
