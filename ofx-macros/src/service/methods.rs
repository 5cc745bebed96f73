//! The type `#[service]` makes for each `#[compute_method]` of its `impl`: the method as a value.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ImplItem, ImplItemFn, ItemImpl, Type};

use super::self_type::replace_self;
use crate::compute_method::Signature;
use crate::ctxt::Ctxt;

/// Whether the method carries `#[compute_method]`.
pub(super) fn is_compute_method(method: &ImplItemFn) -> bool {
    method.attrs.iter().any(is_compute_method_attr)
}

fn is_compute_method_attr(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "compute_method")
}

/// A valid compute method of the `impl`.
pub(super) struct ComputeMethod {
    name: Ident,
    vis: syn::Visibility,
    signature: Signature,
    /// The span of `#[compute_method]`, where that macro reports what its key type misses.
    attr_span: Span,
}

impl ComputeMethod {
    /// The method, if `#[compute_method]` accepts it (it reports the errors otherwise).
    pub(super) fn parse(method: &ImplItemFn) -> Option<Self> {
        let attr = method
            .attrs
            .iter()
            .find(|attr| is_compute_method_attr(attr))?;
        let args = match &attr.meta {
            syn::Meta::Path(_) => TokenStream::new(),
            syn::Meta::List(list) => list.tokens.clone(),
            syn::Meta::NameValue(_) => return None,
        };
        Some(Self {
            name: method.sig.ident.clone(),
            vis: method.vis.clone(),
            signature: crate::compute_method::signature(args, method)?,
            attr_span: attr.span(),
        })
    }

    /// The method's name without `r#`.
    fn bare_name(&self) -> String {
        let name = self.name.to_string();
        name.strip_prefix("r#").map(str::to_owned).unwrap_or(name)
    }

    /// The associated function that returns the method's type: `get_method`.
    fn accessor(&self) -> Ident {
        format_ident!("{}_method", self.bare_name(), span = self.name.span())
    }

    /// The hidden associated function `#[compute_method]` makes, returning the descriptor.
    pub(super) fn descriptor_fn(&self) -> Ident {
        format_ident!("__ofx_compute_method_{}", self.bare_name())
    }
}

/// Reports an item of the `impl` that has the name `#[service]` gives a compute method's
/// accessor (`get_method` for `get`), at that item.
pub(super) fn check_names(cx: &Ctxt, items: &[ImplItem], methods: &[ComputeMethod]) {
    for method in methods {
        let accessor = method.accessor();
        let taken = items.iter().find_map(|item| match item {
            ImplItem::Fn(other) if other.sig.ident == accessor => Some(&other.sig.ident),
            ImplItem::Const(other) if other.ident == accessor => Some(&other.ident),
            _ => None,
        });
        if let Some(taken) = taken {
            cx.error_spanned_by(
                taken,
                format!(
                    "`#[service]` names the compute method `{}` as a value `{accessor}()`: rename this item",
                    method.bare_name()
                ),
            );
        }
    }
}

/// `get` → `Get`, `count_by_owner` → `CountByOwner`.
fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect::<String>()
            })
        })
        .collect()
}

/// The method's accessor (an item of the `impl`), and its type with the type's `impl`s (items
/// after the `impl`).
pub(super) fn descriptor_type(
    item: &ItemImpl,
    service_name: &Ident,
    method: &ComputeMethod,
) -> (ImplItem, TokenStream) {
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let name = &method.name;
    let bare_name = method.bare_name();
    let vis = &method.vis;
    let type_name = format_ident!(
        "{}{}Method",
        service_name,
        camel_case(&bare_name),
        span = name.span()
    );
    let accessor = method.accessor();
    let descriptor_fn = method.descriptor_fn();
    let arg_types: Vec<Type> = method
        .signature
        .args
        .iter()
        .map(|(_, ty)| replace_self(ty, self_ty))
        .collect();
    let arg_names: Vec<&Ident> = method.signature.args.iter().map(|(name, _)| name).collect();
    // As in `#[compute_method]`'s expansion: one argument's key type `(A,)` takes A's span, so
    // that a bound it misses is reported once, at A; a tuple of several, the span of
    // `#[compute_method]`.
    let args_ty = match arg_types.as_slice() {
        [ty] => quote_spanned!(ty.span()=> (#ty,)),
        _ => quote_spanned!(method.attr_span=> (#(#arg_types,)*)),
    };
    let output = replace_self(&method.signature.output, self_ty);
    let service = Ident::new("__ofx_service", Span::mixed_site());
    let args = Ident::new("__ofx_args", Span::mixed_site());
    // Not generic over the `impl`'s parameters: over the service type, so that the type is as
    // visible as the service at most (a public method of a private service is fine).
    let param = Ident::new("S", Span::mixed_site());
    let service_text = quote!(#self_ty).to_string().replace(' ', "");
    let type_doc = format!(
        " The compute method `{service_name}::{bare_name}` as a value, for the service type `S` \
         (`{service_text}`): made by `{service_name}::{accessor}()`. Through \
         `ofx_core::ComputeMethod` it calls the method with an argument tuple, invalidates the \
         value cached for one, and gives the method's descriptor."
    );
    let accessor_doc = format!(
        " The compute method [`Self::{bare_name}`] as a value (a `{type_name}`): see \
         `ofx_core::ComputeMethod`."
    );
    let accessor_item: ImplItem = syn::parse_quote_spanned! {name.span()=>
        #[doc = #accessor_doc]
        #[inline]
        #[must_use]
        #[allow(dead_code, unreachable_pub)]
        #vis const fn #accessor() -> #type_name<Self> {
            #type_name(::ofx_core::__private::PhantomData)
        }
    };
    // The method is called at its name: a future that is not `Send` is reported there.
    let call = quote_spanned!(name.span()=> <#self_ty>::#name(#service, #(#arg_names),*));
    let future_ty = quote_spanned!(name.span()=>
        impl ::ofx_core::__private::Future<Output = #output> + ::core::marker::Send + '_
    );
    // At the method's name: a user's item of the same name is reported there.
    let definition = quote_spanned! {name.span()=>
        #[doc = #type_doc]
        #[allow(dead_code, unreachable_pub)]
        #vis struct #type_name<#param>(::ofx_core::__private::PhantomData<fn() -> #param>);
    };
    let types = quote! {
        #definition

        impl<#param> ::core::clone::Clone for #type_name<#param> {
            #[inline]
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<#param> ::core::marker::Copy for #type_name<#param> {}

        impl<#param> ::core::fmt::Debug for #type_name<#param> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(::core::stringify!(#type_name))
            }
        }

        impl #impl_generics ::ofx_core::ComputeMethod for #type_name<#self_ty> #where_clause {
            type Service = #self_ty;
            type Args = #args_ty;
            type Output = #output;

            #[inline]
            fn descriptor(self) -> &'static ::ofx_core::__private::ComputeMethodDescriptor {
                <#self_ty>::#descriptor_fn()
            }

            #[inline]
            fn call(
                self,
                #service: &#self_ty,
                #args: #args_ty,
            ) -> #future_ty {
                let (#(#arg_names,)*) = #args;
                #call
            }
        }
    };
    (accessor_item, types)
}

#[cfg(test)]
mod tests {
    use super::camel_case;

    #[test]
    fn method_names_become_camel_case() {
        assert_eq!(camel_case("get"), "Get");
        assert_eq!(camel_case("count_by_owner"), "CountByOwner");
        assert_eq!(camel_case("_private"), "Private");
        assert_eq!(camel_case("get2"), "Get2");
        assert_eq!(camel_case("get__all"), "GetAll");
    }
}
