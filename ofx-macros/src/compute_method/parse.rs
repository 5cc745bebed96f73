//! The model of one compute method, read from its `syn` node.

use std::time::Duration;

use proc_macro2::TokenStream;
use syn::{FnArg, Ident, ImplItemFn, Pat, ReturnType, Type};

use super::OPTIONS;
use crate::ctxt::Ctxt;
use crate::options::Options;

/// A compute method as the expander needs it.
pub(super) struct ComputeMethod<'a> {
    pub(super) method: &'a ImplItemFn,
    pub(super) args: Vec<Arg<'a>>,
    /// The declared return type; `()` when none.
    pub(super) output: Type,
    pub(super) auto_invalidate: Option<Duration>,
    pub(super) error_lifetime: Option<Duration>,
    pub(super) permanent_error_lifetime: Option<Duration>,
    /// `is_transient = path`: the method's own classification of its errors.
    pub(super) is_transient: Option<syn::Expr>,
    pub(super) invalidation_delay: Option<Duration>,
    pub(super) min_cache_duration: Option<Duration>,
    pub(super) consolidate: bool,
}

/// One argument after `&self`.
pub(super) struct Arg<'a> {
    /// The name the wrapper binds it to.
    pub(super) name: Ident,
    pub(super) ty: &'a Type,
}

impl<'a> ComputeMethod<'a> {
    pub(super) fn from_syn(cx: &Ctxt, args: TokenStream, method: &'a ImplItemFn) -> Self {
        let options = Options::parse(cx, "compute_method", OPTIONS, args);
        let output = match &method.sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => (**ty).clone(),
        };
        Self {
            method,
            args: method
                .sig
                .inputs
                .iter()
                .filter_map(|input| match input {
                    FnArg::Typed(typed) => Some(typed),
                    FnArg::Receiver(_) => None,
                })
                .enumerate()
                .map(|(index, typed)| Arg {
                    name: match &*typed.pat {
                        Pat::Ident(pat) => Ident::new(&pat.ident.to_string(), pat.ident.span()),
                        _ => quote::format_ident!("__ofx_arg{}", index),
                    },
                    ty: &typed.ty,
                })
                .collect(),
            output,
            auto_invalidate: options.nonzero_duration(cx, "auto_invalidate"),
            error_lifetime: options.duration(cx, "error_lifetime"),
            permanent_error_lifetime: options.duration(cx, "permanent_error_lifetime"),
            is_transient: options.expr(cx, "is_transient", "MyError::is_transient"),
            invalidation_delay: options.nonzero_duration(cx, "invalidation_delay"),
            min_cache_duration: options.nonzero_duration(cx, "min_cache_duration"),
            consolidate: options.flag(cx, "consolidate"),
        }
    }
}
