//! The code a compute method becomes: the cached wrapper under the user's name, the user's body
//! as a hidden method, the method's descriptor and its typed invalidation entry.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::ComputeMethod;

pub(super) fn expand(model: &ComputeMethod<'_>) -> TokenStream {
    let method = model.method;
    let sig = &method.sig;
    let name = &sig.ident;
    let vis = &method.vis;
    let attrs = &method.attrs;
    let output = &model.output;
    let inputs = &sig.inputs;
    let block = &method.block;
    let lint_attrs = attrs.iter().filter(|attr| {
        attr.path().is_ident("allow")
            || attr.path().is_ident("expect")
            || attr.path().is_ident("warn")
    });

    let body_fn = format_ident!("__ofx_compute_body_{}", name);
    let descriptor_fn = format_ident!("__ofx_compute_method_{}", name);
    let invalidate_fn = format_ident!("__ofx_invalidate_{}", name);

    let arg_names: Vec<_> = model.args.iter().map(|arg| &arg.name).collect();
    let arg_types: Vec<_> = model.args.iter().map(|arg| arg.ty).collect();
    let key_asserts: Vec<_> = model
        .args
        .iter()
        .map(|arg| {
            let ty = arg.ty;
            quote_spanned!(ty.span()=> ::ofx_core::__private::assert_compute_key::<#ty>();)
        })
        .collect();
    let output_assert =
        quote_spanned!(output.span()=> ::ofx_core::__private::assert_compute_output::<#output>(););
    // The receiver `&self`: where "`Users` does not implement `ComputeService`" is reported.
    let receiver_span = sig
        .inputs
        .first()
        .map_or_else(Span::call_site, Spanned::span);
    let service_assert =
        quote_spanned!(receiver_span=> ::ofx_core::__private::assert_compute_service::<Self>(););
    let self_ty = quote_spanned!(receiver_span=> Self);
    // One argument: the key type `(A,)` takes A's span, so a bound it misses is reported once.
    let key_ty = match arg_types.as_slice() {
        [ty] => quote_spanned!(ty.span()=> (#ty,)),
        _ => quote!((#(#arg_types,)*)),
    };
    // Chosen by type, so `Result` aliases under any name count: see `__private::ErrorProbe`.
    // With `is_transient = f`, `f` classifies the errors (the output must be a `Result`: the
    // call is at `f`'s span, where a mismatch is reported).
    let is_error = match &model.is_transient {
        Some(is_transient) => quote_spanned! {is_transient.span()=>
            ::core::option::Option::Some(
                (|value: &#output| ::ofx_core::__private::classify_by(value, #is_transient))
                    as ::ofx_core::__private::Classify<#output>,
            )
        },
        None => quote! {{
            #[allow(unused_imports)]
            use ::ofx_core::__private::{ProbeOther as _, ProbeResult as _, ProbeResultError as _};
            (&&&::ofx_core::__private::ErrorProbe::<#output>::NEW).classify_fn()
        }},
    };
    let options = options(model);
    // Hygienic: the user's arguments may have any name.
    let method_var = syn::Ident::new("__ofx_method", Span::mixed_site());
    let key_var = syn::Ident::new("__ofx_call_key", Span::mixed_site());
    let value_var = syn::Ident::new("__ofx_cached", Span::mixed_site());
    let name_text = name.to_string();
    let wrapper_args = model.args.iter().map(|arg| {
        let (name, ty) = (&arg.name, arg.ty);
        quote!(#name: #ty)
    });

    // A consolidating method recomputes an invalidated value through its own wrapper, on the
    // service's `Arc`, and compares the values: `PartialEq`, checked at the output's span.
    let recompute_fn = format_ident!("__ofx_recompute_{}", name);
    let (entry, recompute_arg, recompute_item, consolidated_assert) = if model.consolidate {
        let service_var = syn::Ident::new("__ofx_service", Span::mixed_site());
        let key_var = syn::Ident::new("__ofx_key", Span::mixed_site());
        (
            // At the output's span: a missing `PartialEq` is then reported once, there.
            quote_spanned!(output.span()=> compute_consolidated),
            quote!(Self::#recompute_fn,),
            quote! {
                #[doc(hidden)]
                #[allow(clippy::type_complexity)]
                fn #recompute_fn(
                    #service_var: ::std::sync::Arc<Self>,
                    #key_var: (#(#arg_types,)*),
                ) -> ::ofx_core::__private::RecomputeFuture<#output> {
                    ::std::boxed::Box::pin(async move {
                        let (#(#arg_names,)*) = #key_var;
                        #service_var.#name(#(#arg_names),*).await
                    })
                }
            },
            quote_spanned!(output.span()=> ::ofx_core::__private::assert_consolidated_output::<#output>();),
        )
    } else {
        (quote!(compute), quote!(), quote!(), quote!())
    };

    quote! {
        #(#attrs)*
        #vis async fn #name(&self, #(#wrapper_args),*) -> #output {
            #service_assert
            #(#key_asserts)*
            #output_assert
            #consolidated_assert
            let #method_var = Self::#descriptor_fn();
            #method_var.count_call();
            let #key_var: #key_ty = (#(#arg_names,)*);
            // A hit on a value read before, without building the call's future.
            if let ::core::option::Option::Some(#value_var) =
                ::ofx_core::__private::cached::<#self_ty, #key_ty, #output>(self, #method_var, &#key_var)
            {
                return #value_var;
            }
            ::ofx_core::__private::#entry(
                self,
                #method_var,
                { #key_var },
                #is_error,
                |(#(#arg_names,)*)| {
                    #method_var.count_computation();
                    self.#body_fn(#(#arg_names),*)
                },
                #recompute_arg
            )
            .await
        }

        #recompute_item

        #[doc(hidden)]
        #(#lint_attrs)*
        async fn #body_fn(#inputs) -> #output #block

        #[doc(hidden)]
        #[inline]
        fn #descriptor_fn() -> &'static ::ofx_core::__private::ComputeMethodDescriptor {
            static DESCRIPTOR: ::ofx_core::__private::ComputeMethodDescriptor =
                ::ofx_core::__private::ComputeMethodDescriptor::new(#name_text, #options);
            &DESCRIPTOR
        }

        /// Invalidates the cached value of this compute method for these arguments; used by
        /// `invalidate!`.
        #[doc(hidden)]
        #[allow(clippy::too_many_arguments)]
        #vis fn #invalidate_fn(&self, #(#arg_names: #arg_types),*) {
            // The same checks as the wrapper's, at the same spans: rustc prints identical
            // errors once, and the call below then fails at those spans too (deduplicated).
            #service_assert
            #(#key_asserts)*
            #output_assert
            ::ofx_core::__private::invalidate::<#self_ty, #key_ty, #output>(
                self,
                Self::#descriptor_fn(),
                &(#(#arg_names,)*),
            );
        }
    }
}

fn options(model: &ComputeMethod<'_>) -> TokenStream {
    let mut options = quote!(::ofx_core::__private::ComputeMethodOptions::DEFAULT);
    if let Some(delay) = model.auto_invalidate {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        options = quote!(#options.with_auto_invalidate(::ofx_core::__private::Duration::from_millis(#millis)));
    }
    if let Some(lifetime) = model.error_lifetime {
        let millis = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        options = quote!(#options.with_error_lifetime(::ofx_core::__private::Duration::from_millis(#millis)));
    }
    if let Some(delay) = model.invalidation_delay {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        options = quote!(#options.with_invalidation_delay(::ofx_core::__private::Duration::from_millis(#millis)));
    }
    if let Some(lifetime) = model.permanent_error_lifetime {
        let millis = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        options = quote!(#options.with_permanent_error_lifetime(::ofx_core::__private::Duration::from_millis(#millis)));
    }
    if model.consolidate {
        options = quote!(#options.with_consolidation());
    }
    if let Some(duration) = model.min_cache_duration {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        options = quote!(#options.with_min_cache_duration(::ofx_core::__private::Duration::from_millis(#millis)));
    }
    options
}
