//! One `#[command_handler]`: its parts, checked, and its body split into two branches.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::visit::Visit;
use syn::{Block, Expr, FnArg, ImplItemFn, Pat, PatType, ReturnType, Stmt, Type};

use crate::ctxt::Ctxt;

/// Whether the method carries `#[command_handler]`.
pub(super) fn is_handler(method: &ImplItemFn) -> bool {
    method.attrs.iter().any(is_handler_attr)
}

pub(super) fn is_handler_attr(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "command_handler")
}

/// A command handler: the method without its attribute, its command and context arguments,
/// and its body split into the invalidation branch and the main branch.
pub(super) struct Handler {
    /// The method, with only the main branch as its body.
    pub(super) main: ImplItemFn,
    pub(super) command: PatType,
    pub(super) context: PatType,
    pub(super) output: Type,
    /// The leading `invalidate! { ... }`: the macro's path as the user wrote it, and its tokens.
    pub(super) invalidation: Option<(syn::Path, TokenStream)>,
}

/// Marks the method's `#[command_handler]` as handled by `#[service]`: the attribute then
/// expands to the method unchanged, and the user's import of it counts as used (also when the
/// handler is invalid, so that its error comes alone).
pub(super) fn mark_handled(method: &mut ImplItemFn) {
    for attr in &mut method.attrs {
        if is_handler_attr(attr) {
            let path = attr.path().clone();
            *attr = syn::parse_quote!(#[#path(__registered_by_service)]);
        }
    }
}

impl Handler {
    pub(super) fn parse(cx: &Ctxt, mut method: ImplItemFn) -> Option<Self> {
        for attr in method.attrs.iter().filter(|attr| is_handler_attr(attr)) {
            if let syn::Meta::List(list) = &attr.meta {
                cx.error_spanned_by(list, "`#[command_handler]` takes no options");
            }
        }
        mark_handled(&mut method);
        let sig = &method.sig;
        if sig.asyncness.is_none() {
            cx.error_spanned_by(sig.fn_token, "`#[command_handler]` requires an `async fn`");
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &sig.generics,
                "`#[command_handler]` cannot be generic: it handles one command type",
            );
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some() && receiver.mutability.is_none() => {}
            Some(FnArg::Receiver(receiver)) => {
                cx.error_spanned_by(receiver, "`#[command_handler]` takes `&self`");
            }
            _ => cx.error_spanned_by(&sig.ident, "`#[command_handler]` needs a `&self` receiver"),
        }
        let command = match inputs.next() {
            // A lone reference is the context: the command before it is what is missing.
            Some(FnArg::Typed(arg))
                if matches!(&*arg.ty, Type::Reference(_)) && inputs.len() == 0 =>
            {
                cx.error_spanned_by(
                    arg,
                    "`#[command_handler]` needs a command argument before the context, taken by value: `async fn handle(&self, command: MyCommand, ctx: &CommandContext)`",
                );
                None
            }
            Some(FnArg::Typed(command)) => Some(command.clone()),
            _ => {
                cx.error_spanned_by(
                    &sig.ident,
                    "`#[command_handler]` needs a command argument that implements `Command`: `async fn handle(&self, command: MyCommand, ctx: &CommandContext)`",
                );
                None
            }
        };
        let context = match (&command, inputs.next()) {
            (_, Some(FnArg::Typed(context))) if matches!(&*context.ty, Type::Reference(reference) if reference.mutability.is_none()) => {
                Some(context.clone())
            }
            (_, Some(other)) => {
                cx.error_spanned_by(
                    other,
                    "the second argument of a `#[command_handler]` is `ctx: &CommandContext`",
                );
                None
            }
            // Without a command, its error says what the signature should be.
            (None, None) => None,
            (Some(command), None) => {
                cx.error_spanned_by(
                    command,
                    "`#[command_handler]` needs a context argument after the command: add `ctx: &CommandContext`",
                );
                None
            }
        };
        if let Some(extra) = inputs.next() {
            cx.error_spanned_by(
                extra,
                "`#[command_handler]` takes only `&self`, the command and `ctx: &CommandContext`",
            );
        }
        for arg in [&command, &context].into_iter().flatten() {
            if !matches!(&*arg.pat, Pat::Ident(_) | Pat::Wild(_)) {
                cx.error_spanned_by(&arg.pat, "bind the argument to a name");
            }
        }
        let output = match &sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => {
                cx.error_spanned_by(
                    &sig.ident,
                    "`#[command_handler]` must return `Result<Output, E>`, where `Output` is its command's output",
                );
                None
            }
        };
        let invalidation = split(cx, &mut method.block);
        Some(Self {
            main: method,
            command: command?,
            context: context?,
            output: output?,
            invalidation,
        })
    }
}

/// Reports a command handled twice in one `impl`, at the second handler's command type (types
/// compared as written; an alias of the same type is reported by the compiler, as conflicting
/// `impl`s of `CommandHandler`).
pub(super) fn check_distinct(cx: &Ctxt, handlers: &[Handler]) {
    for (index, handler) in handlers.iter().enumerate() {
        let ty = handler.command.ty.to_token_stream().to_string();
        if let Some(first) = handlers[..index]
            .iter()
            .find(|first| first.command.ty.to_token_stream().to_string() == ty)
        {
            cx.error_spanned_by(
                &handler.command.ty,
                format!(
                    "`{}` already handles this command: a service has one handler per command type",
                    first.main.sig.ident
                ),
            );
        }
    }
}

/// Takes the leading `invalidate! { ... }` out of the body; reports one anywhere else.
fn split(cx: &Ctxt, block: &mut Block) -> Option<(syn::Path, TokenStream)> {
    let invalidation = match block.stmts.first() {
        Some(stmt) => invalidate_tokens(stmt),
        None => None,
    };
    if invalidation.is_some() {
        block.stmts.remove(0);
    }
    let mut misplaced = Misplaced { cx };
    misplaced.visit_block(block);
    invalidation
}

fn invalidate_tokens(stmt: &Stmt) -> Option<(syn::Path, TokenStream)> {
    let mac = match stmt {
        Stmt::Macro(stmt) => &stmt.mac,
        Stmt::Expr(Expr::Macro(expr), _) => &expr.mac,
        _ => return None,
    };
    is_invalidate(&mac.path).then(|| (mac.path.clone(), mac.tokens.clone()))
}

fn is_invalidate(path: &syn::Path) -> bool {
    path.segments
        .last()
        .is_some_and(|segment| segment.ident == "invalidate")
}

/// Reports `invalidate!` anywhere but first in the body.
struct Misplaced<'a> {
    cx: &'a Ctxt,
}

impl<'ast> Visit<'ast> for Misplaced<'_> {
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if is_invalidate(&mac.path) {
            self.cx.error_spanned_by(
                &mac.path,
                "`invalidate!` must be the first statement of a `#[command_handler]`: it becomes the invalidation branch, which runs after the commit on every host",
            );
        }
    }
}
