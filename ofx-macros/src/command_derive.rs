//! `#[derive(Command)]`: implements `ofx_core::Command` and registers the command's name.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::ctxt::Ctxt;
use crate::options::Options;

/// Options `#[command(...)]` accepts.
const OPTIONS: &[&str] = &["output", "name", "backend"];

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let cx = Ctxt::new();
    let mut options = None;
    for attr in input
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("command"))
    {
        if options.is_some() {
            cx.error_spanned_by(attr, "give all options in one `#[command(...)]`");
            continue;
        }
        match attr.meta.require_list() {
            Ok(list) => {
                options = Some(Options::parse(&cx, "command", OPTIONS, list.tokens.clone()))
            }
            Err(error) => cx.syn_error(error),
        }
    }
    let ident = &input.ident;
    let suggestion = snake_case(&ident.to_string());
    let (output, name, backend) = match &options {
        Some(options) => (
            options.ty(&cx, "output"),
            options.string(&cx, "name"),
            options.flag(&cx, "backend"),
        ),
        None => (None, None, false),
    };
    if output.is_none()
        && options
            .as_ref()
            .is_none_or(|options| options.name_of("output").is_none())
    {
        cx.error_spanned_by(
            ident,
            format!("`#[derive(Command)]` needs what a successful call returns: add `#[command(output = Type, name = \"{suggestion}\")]`"),
        );
    }
    if name.is_none()
        && options
            .as_ref()
            .is_none_or(|options| options.name_of("name").is_none())
    {
        cx.error_spanned_by(
            ident,
            format!(
                "`#[derive(Command)]` needs a stable name, the command's identity in the operation log: add `name = \"{suggestion}\"` to `#[command(...)]`"
            ),
        );
    }
    if let Some(name) = &name
        && name.value().trim().is_empty()
    {
        cx.error_spanned_by(name, "a command's name cannot be empty");
    }
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "a command cannot be generic: the operation log finds it by its name alone",
        );
    }
    if let Err(error) = cx.check() {
        return error.to_compile_error();
    }
    let (Some(output), Some(name)) = (output, name) else {
        return TokenStream::new();
    };
    let expansion = quote! {
        #[automatically_derived]
        impl ::ofx_core::Command for #ident {
            type Output = #output;
            const NAME: &'static str = #name;
            const BACKEND: bool = #backend;
        }

        const _: () = {
            ::ofx_core::__private::inventory::submit! {
                ::ofx_core::__private::CommandRegistration {
                    name: #name,
                    type_name: ::core::any::type_name::<#ident>,
                }
            }
        };
    };
    crate::debug::dump("derive(Command)", &ident.to_string(), &expansion);
    expansion
}

/// `AddTodo` → `add_todo`, for the suggested name.
fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if index > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}
