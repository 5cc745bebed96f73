//! The service type of a `#[service]` impl: its name, and `Self` spelled out in types used
//! outside the `impl`.

use syn::visit_mut::VisitMut;
use syn::{Ident, Type};

use crate::ctxt::Ctxt;

/// The name of the service type (`Todos` for `crate::todos::Todos<B>`), which the types made
/// for its compute methods start with.
pub(super) fn name(cx: &Ctxt, self_ty: &Type) -> Option<Ident> {
    match self_ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .map(|segment| segment.ident.clone()),
        Type::Group(group) => name(cx, &group.elem),
        Type::Paren(paren) => name(cx, &paren.elem),
        other => {
            cx.error_spanned_by(
                other,
                "`#[service]` with compute methods goes on the `impl` of a named type (a struct or an enum): each compute method becomes a type named after it",
            );
            None
        }
    }
}

/// `ty` with `Self` replaced by `self_ty`, for a type written in the `impl` and used in an item
/// outside it (where `Self` is another type, or nothing).
pub(super) fn replace_self(ty: &Type, self_ty: &Type) -> Type {
    let mut ty = ty.clone();
    ReplaceSelf { self_ty }.visit_type_mut(&mut ty);
    ty
}

struct ReplaceSelf<'a> {
    self_ty: &'a Type,
}

impl VisitMut for ReplaceSelf<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::Path(path) = ty
            && path.qself.is_none()
            && path.path.leading_colon.is_none()
            && path
                .path
                .segments
                .first()
                .is_some_and(|segment| segment.ident == "Self")
        {
            let self_ty = self.self_ty;
            if path.path.segments.len() == 1 {
                *ty = self_ty.clone();
                return;
            }
            // `Self::Assoc` → `<Service>::Assoc`.
            let rest: Vec<_> = path.path.segments.iter().skip(1).cloned().collect();
            *ty = syn::parse_quote!(<#self_ty>::#(#rest)::*);
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }

    fn visit_qself_mut(&mut self, qself: &mut syn::QSelf) {
        self.visit_type_mut(&mut qself.ty);
    }
}

#[cfg(test)]
mod tests {
    use super::replace_self;
    use quote::ToTokens;

    #[test]
    fn self_is_replaced_in_every_position() {
        let self_ty: syn::Type = syn::parse_quote!(Todos<B>);
        let cases = [
            ("Self", "Todos < B >"),
            ("Vec<Self>", "Vec < Todos < B > >"),
            ("<Self as Backend>::Id", "< Todos < B > as Backend > :: Id"),
            ("Self::Id", "< Todos < B > > :: Id"),
            ("(u64, Option<Self>)", "(u64 , Option < Todos < B > >)"),
            ("SelfMade", "SelfMade"),
        ];
        for (written, expected) in cases {
            let ty: syn::Type = syn::parse_str(written).expect("a type");
            assert_eq!(
                replace_self(&ty, &self_ty).to_token_stream().to_string(),
                expected,
                "{written}"
            );
        }
    }
}
