//! The rules a compute method must follow, each reported at the offending token.

use syn::{FnArg, ImplItemFn, Pat, ReturnType, Type};

use crate::ctxt::Ctxt;

pub(super) fn check(cx: &Ctxt, method: &ImplItemFn) {
    let sig = &method.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(sig.fn_token, "`#[compute_method]` requires an `async fn`");
    }
    if let Some(constness) = &sig.constness {
        cx.error_spanned_by(constness, "`#[compute_method]` cannot be a `const fn`");
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(unsafety, "`#[compute_method]` cannot be an `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "`#[compute_method]` cannot have an ABI");
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "`#[compute_method]` cannot be variadic");
    }
    let generic_message = "`#[compute_method]` cannot be generic: each compute method has one cache, keyed by its argument types";
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(&sig.generics, generic_message);
    } else if let Some(where_clause) = &sig.generics.where_clause {
        cx.error_spanned_by(where_clause, generic_message);
    }
    check_receiver(cx, method);
    for input in sig.inputs.iter().skip(1) {
        if let FnArg::Typed(arg) = input {
            check_pattern(cx, &arg.pat);
            check_arg_type(cx, &arg.ty);
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output
        && let Type::ImplTrait(_) = &**ty
    {
        cx.error_spanned_by(
            ty,
            "`#[compute_method]` must name its return type: its values are cached",
        );
    }
}

fn check_receiver(cx: &Ctxt, method: &ImplItemFn) {
    let sig = &method.sig;
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            // `&self`, or the same written out: `self: &Self`.
            let by_shared_ref = matches!(
                &*receiver.ty,
                Type::Reference(reference)
                    if reference.mutability.is_none()
                        && matches!(&*reference.elem, Type::Path(path) if path.path.is_ident("Self"))
            );
            if !by_shared_ref {
                cx.error_spanned_by(
                    receiver,
                    "`#[compute_method]` takes `&self`: a cached value is shared, so its method cannot take `self` by value or `&mut self`",
                );
            }
        }
        _ => cx.error_spanned_by(
            &sig.ident,
            "`#[compute_method]` needs a `&self` receiver: compute methods are cached per service, so they must be methods of a `ComputeService`",
        ),
    }
}

fn check_pattern(cx: &Ctxt, pat: &Pat) {
    match pat {
        Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none() => {}
        other => cx.error_spanned_by(
            other,
            "`#[compute_method]` arguments are cache keys: bind each to a plain name (`id: TodoId`)",
        ),
    }
}

fn check_arg_type(cx: &Ctxt, ty: &Type) {
    match ty {
        Type::Reference(reference)
            if reference
                .lifetime
                .as_ref()
                .is_none_or(|lifetime| lifetime.ident != "static") =>
        {
            cx.error_spanned_by(
                ty,
                "`#[compute_method]` arguments are stored in the cache, so they must be owned: take `String` for `&str`, or `T`/`Arc<T>` for `&T`",
            );
        }
        Type::ImplTrait(_) => cx.error_spanned_by(
            ty,
            "`#[compute_method]` cannot take `impl Trait`: each compute method has one cache, keyed by its argument types",
        ),
        _ => {}
    }
}
