//! `#[compute_method]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;

use crate::ctxt::Ctxt;

/// Options `#[compute_method(...)]` accepts.
const OPTIONS: &[&str] = &[
    "auto_invalidate",
    "error_lifetime",
    "permanent_error_lifetime",
    "is_transient",
    "invalidation_delay",
    "min_cache_duration",
    "consolidate",
];

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let method: syn::ImplItemFn = match syn::parse2(item.clone()) {
        Ok(method) => method,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "`#[compute_method]` goes on an `async fn` in an `impl` block",
            );
            return with_error(item, &error);
        }
    };
    let cx = Ctxt::new();
    let model = parse::ComputeMethod::from_syn(&cx, args, &method);
    validate::check(&cx, &method);
    match cx.check() {
        Ok(()) => {
            let expansion = expand::expand(&model);
            crate::debug::dump("compute_method", &method.sig.ident.to_string(), &expansion);
            expansion
        }
        // One mistake, one error: emit the user's method untouched beside the error.
        Err(error) => with_error(quote!(#method), &error),
    }
}

/// What `#[service]` needs of a compute method of its `impl`: its arguments and its return
/// type. `None` when `#[compute_method]` will report the method as invalid (then `#[service]`
/// adds nothing for it: one mistake, one error).
pub(crate) struct Signature {
    /// The arguments after `&self`: the names the wrapper binds them to, and their types.
    pub(crate) args: Vec<(syn::Ident, syn::Type)>,
    /// The return type; `()` when none.
    pub(crate) output: syn::Type,
}

pub(crate) fn signature(args: TokenStream, method: &syn::ImplItemFn) -> Option<Signature> {
    let cx = Ctxt::new();
    let model = parse::ComputeMethod::from_syn(&cx, args, method);
    validate::check(&cx, method);
    let signature = Signature {
        args: model
            .args
            .iter()
            .map(|arg| (arg.name.clone(), arg.ty.clone()))
            .collect(),
        output: model.output.clone(),
    };
    cx.check().ok().map(|()| signature)
}

fn with_error(item: TokenStream, error: &syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}
