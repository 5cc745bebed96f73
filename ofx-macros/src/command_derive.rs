//! `#[derive(Command)]`: implements `ofx_core::Command` and registers the command's decoder
//! under its name.

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
    match &options {
        // One mistake, one error: the whole attribute is missing.
        None => cx.error_spanned_by(
            ident,
            format!(
                "`#[derive(Command)]` needs `#[command(output = Type, name = \"{suggestion}\")]`: `output` is what a successful call returns, `name` the command's stable identity in the operation log"
            ),
        ),
        // A list that did not parse is reported already: nothing can be said to be missing.
        Some(options) if options.is_malformed() => {}
        Some(options) => {
            if output.is_none() && options.name_of("output").is_none() {
                cx.error_spanned_by(
                    ident,
                    "`#[derive(Command)]` needs what a successful call returns: add `output = Type` to `#[command(...)]`",
                );
            }
            if name.is_none() && options.name_of("name").is_none() {
                cx.error_spanned_by(
                    ident,
                    format!(
                        "`#[derive(Command)]` needs a stable name, the command's identity in the operation log: add `name = \"{suggestion}\"` to `#[command(...)]`"
                    ),
                );
            }
        }
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
                ::ofx_core::__private::CommandRegistration::of::<#ident>()
                    .with_output_encoder({
                        fn output_encoder() -> ::core::option::Option<::ofx_core::__private::OutputEncoder> {
                            #[allow(unused_imports)]
                            use ::ofx_core::__private::{ProbeOpaque as _, ProbeSerialize as _};
                            (&&::ofx_core::__private::OutputProbe::<#output>::NEW).output_encoder()
                        }
                        output_encoder
                    })
            }
        };
    };
    crate::debug::dump("derive(Command)", &ident.to_string(), &expansion);
    expansion
}

/// `AddTodo` → `add_todo`, `ImportHTTPFeed` → `import_http_feed`, for the suggested name.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let previous = index.checked_sub(1).map(|index| chars[index]);
            let next = chars.get(index + 1);
            // A word starts after a lowercase letter or a digit, and at the last capital of an
            // acronym followed by a lowercase letter (`HTTPFeed` → `http_feed`).
            let starts_word = previous.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                || (previous.is_some_and(char::is_uppercase)
                    && next.is_some_and(|n| n.is_lowercase()));
            if starts_word {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn suggested_names_are_snake_case() {
        assert_eq!(snake_case("AddTodo"), "add_todo");
        assert_eq!(snake_case("ImportHTTPFeed"), "import_http_feed");
        assert_eq!(snake_case("HTTP"), "http");
        assert_eq!(snake_case("V2Command"), "v2_command");
        assert_eq!(snake_case("Add_Todo"), "add_todo");
        assert_eq!(snake_case("Reset"), "reset");
    }
}
