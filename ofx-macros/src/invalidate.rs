//! `invalidate! { ... }`: compute method calls rewritten into invalidations.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::visit::Visit;
use syn::{Block, Expr, ExprMethodCall, Stmt};

use crate::ctxt::Ctxt;

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let stmts = match syn::parse::Parser::parse2(Block::parse_within, input) {
        Ok(stmts) => stmts,
        Err(error) => return error.to_compile_error(),
    };
    let cx = Ctxt::new();
    let mut no_await = NoAwait { cx: &cx };
    for stmt in &stmts {
        no_await.visit_stmt(stmt);
    }
    let rewritten: Vec<Stmt> = stmts
        .into_iter()
        .map(|stmt| rewrite_stmt(&cx, stmt))
        .collect();
    let fallbacks = fallbacks(&rewritten);
    match cx.check() {
        Ok(()) => quote!({ #fallbacks #(#rewritten)* }),
        Err(error) => {
            let error = error.to_compile_error();
            quote!({ #error })
        }
    }
}

/// Rewrites the compute method calls a statement names.
pub(crate) fn rewrite_stmt(cx: &Ctxt, stmt: Stmt) -> Stmt {
    match stmt {
        Stmt::Expr(expr, _) => Stmt::Expr(rewrite_expr(cx, expr), Some(Default::default())),
        other => other,
    }
}

fn rewrite_block(cx: &Ctxt, mut block: Block) -> Block {
    block.stmts = block
        .stmts
        .into_iter()
        .map(|stmt| rewrite_stmt(cx, stmt))
        .collect();
    block
}

fn rewrite_expr(cx: &Ctxt, expr: Expr) -> Expr {
    match expr {
        Expr::MethodCall(call) => Expr::MethodCall(rewrite_call(cx, call)),
        Expr::Block(mut block) => {
            block.block = rewrite_block(cx, block.block);
            Expr::Block(block)
        }
        Expr::If(mut expr_if) => {
            expr_if.then_branch = rewrite_block(cx, expr_if.then_branch);
            if let Some((else_token, otherwise)) = expr_if.else_branch {
                expr_if.else_branch = Some((else_token, Box::new(rewrite_expr(cx, *otherwise))));
            }
            Expr::If(expr_if)
        }
        Expr::Match(mut expr_match) => {
            for arm in &mut expr_match.arms {
                let body = std::mem::replace(&mut *arm.body, Expr::Verbatim(TokenStream::new()));
                *arm.body = rewrite_expr(cx, body);
            }
            Expr::Match(expr_match)
        }
        Expr::ForLoop(mut expr_for) => {
            expr_for.body = rewrite_block(cx, expr_for.body);
            Expr::ForLoop(expr_for)
        }
        Expr::Group(mut group) => {
            *group.expr = rewrite_expr(cx, *group.expr);
            Expr::Group(group)
        }
        Expr::Paren(mut paren) => {
            *paren.expr = rewrite_expr(cx, *paren.expr);
            Expr::Paren(paren)
        }
        // `.await` is reported by `NoAwait`: one mistake, one error.
        Expr::Await(expr_await) => Expr::Await(expr_await),
        // Logging and other macros run as written; `()` does nothing.
        Expr::Macro(mac) => Expr::Macro(mac),
        Expr::Tuple(tuple) if tuple.elems.is_empty() => Expr::Tuple(tuple),
        other => {
            cx.error_spanned_by(
                &other,
                "`invalidate!` takes compute method calls such as `self.get(id);` (and `let`, `if`, `match`, `for` around them): this is not one",
            );
            other
        }
    }
}

/// `receiver.method(args)` → `receiver.__ofx_invalidate_method(args)`, at the user's span, so a
/// method that is not a compute method, or arguments of the wrong types, are reported there.
fn rewrite_call(cx: &Ctxt, mut call: ExprMethodCall) -> ExprMethodCall {
    if let Some(turbofish) = &call.turbofish {
        cx.error_spanned_by(
            turbofish,
            "compute methods are not generic: remove the turbofish",
        );
    }
    call.method = format_ident!(
        "__ofx_invalidate_{}",
        call.method,
        span = call.method.span()
    );
    call
}

/// Reports every `.await`: invalidation is synchronous and does no I/O.
struct NoAwait<'a> {
    cx: &'a Ctxt,
}

impl<'ast> Visit<'ast> for NoAwait<'_> {
    fn visit_expr_await(&mut self, node: &'ast syn::ExprAwait) {
        self.cx.error_spanned_by(
            node.await_token,
            "`invalidate!` cannot `.await`: invalidation runs synchronously and must do no I/O; compute what it needs before, or pass it in operation items",
        );
        syn::visit::visit_expr_await(self, node);
    }

    fn visit_expr_async(&mut self, node: &'ast syn::ExprAsync) {
        self.cx.error_spanned_by(
            node.async_token,
            "`invalidate!` cannot start async work: invalidation runs synchronously",
        );
    }
}

/// For each method the block invalidates, a trait method of the same generated name on every
/// `ComputeService`, found only when the type has no such inherent method (the method is not a
/// compute method), and whose unmet bound says so in words.
fn fallbacks(stmts: &[Stmt]) -> TokenStream {
    struct Calls(Vec<(syn::Ident, usize)>);
    impl<'ast> Visit<'ast> for Calls {
        fn visit_expr_method_call(&mut self, call: &'ast ExprMethodCall) {
            let name = call.method.to_string();
            if name.starts_with("__ofx_invalidate_")
                && !self.0.iter().any(|(ident, _)| *ident == name)
            {
                self.0.push((call.method.clone(), call.args.len()));
            }
            syn::visit::visit_expr_method_call(self, call);
        }
    }
    let mut calls = Calls(Vec::new());
    for stmt in stmts {
        calls.visit_stmt(stmt);
    }
    calls
        .0
        .iter()
        .map(|(method, arity)| {
            let method_text = method.to_string();
            let original = method_text.trim_start_matches("__ofx_invalidate_");
            let method = syn::Ident::new(&method_text, proc_macro2::Span::mixed_site());
            let marker = format_ident!(
                "__OfxIsComputeMethod_{}",
                original,
                span = proc_macro2::Span::mixed_site()
            );
            let fallback = format_ident!(
                "__OfxNotComputeMethod_{}",
                original,
                span = proc_macro2::Span::mixed_site()
            );
            let message = format!("`{original}` is not a compute method of `{{Self}}`");
            let label = "`invalidate!` takes calls of `#[compute_method]`s only";
            let note = format!(
                "mark `{original}` with `#[compute_method]`, or call it outside `invalidate!`"
            );
            let params: Vec<_> = (0..*arity).map(|i| format_ident!("__A{}", i)).collect();
            quote! {
                #[allow(non_camel_case_types, dead_code)]
                #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
                trait #marker {}
                #[allow(non_camel_case_types, dead_code)]
                trait #fallback {
                    fn #method<#(#params),*>(&self, #(_: #params),*) where Self: #marker {}
                }
                impl<__S: ::ofx_core::ComputeService + ?::core::marker::Sized> #fallback for __S {}
            }
        })
        .collect()
}
