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
    match cx.check() {
        Ok(()) => quote!({ #(#rewritten)* }),
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
