//! One parser for the options of every ofx attribute, each macro with its allow-list.
//!
//! Options are `name` (a flag) or `name = value`, separated by commas; a value runs to the
//! next comma outside brackets (angle brackets included), so types such as `Vec<Todo>` and
//! `HashMap<K, V>` need no quoting.

use std::collections::BTreeMap;
use std::time::Duration;

use proc_macro2::{Ident, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{ParseStream, Parser};
use syn::{LitStr, Token, Type};

use crate::ctxt::Ctxt;

/// The options given to one attribute: name → value (none for a flag), each given once.
pub(crate) struct Options {
    values: BTreeMap<String, (Ident, Option<TokenStream>)>,
    /// The list did not parse (already reported): no option can be said to be missing.
    malformed: bool,
}

impl Options {
    /// Parses the options and reports unknown and repeated names at their span.
    pub(crate) fn parse(cx: &Ctxt, macro_name: &str, allowed: &[&str], args: TokenStream) -> Self {
        let mut values = BTreeMap::new();
        let parsed = match parse_list.parse2(args) {
            Ok(parsed) => parsed,
            Err(error) => {
                cx.syn_error(syn::Error::new(
                    error.span(),
                    format!(
                        "{error}: `#[{macro_name}]` takes `name = value` options and flags, separated by commas: {}",
                        list(allowed)
                    ),
                ));
                return Self {
                    values,
                    malformed: true,
                };
            }
        };
        for (name, value) in parsed {
            let text = name.to_string();
            if !allowed.contains(&text.as_str()) {
                cx.error_spanned_by(
                    &name,
                    format!(
                        "unknown option `{text}` of `#[{macro_name}]`; it accepts {}",
                        list(allowed)
                    ),
                );
                continue;
            }
            if values.contains_key(&text) {
                cx.error_spanned_by(&name, format!("option `{text}` is given twice"));
                continue;
            }
            values.insert(text, (name, value));
        }
        Self {
            values,
            malformed: false,
        }
    }

    /// Whether the list did not parse, an error already reported.
    pub(crate) fn is_malformed(&self) -> bool {
        self.malformed
    }

    /// Whether the flag `name` is given; a value given to it is an error.
    pub(crate) fn flag(&self, cx: &Ctxt, name: &str) -> bool {
        match self.values.get(name) {
            None => false,
            Some((_, None)) => true,
            Some((_, Some(value))) => {
                cx.error_spanned_by(value, format!("`{name}` is a flag: write `{name}` alone"));
                true
            }
        }
    }

    fn value(&self, cx: &Ctxt, name: &str, example: &str) -> Option<&TokenStream> {
        match self.values.get(name)? {
            (_, Some(value)) => Some(value),
            (ident, None) => {
                cx.error_spanned_by(
                    ident,
                    format!("`{name}` needs a value: `{name} = {example}`"),
                );
                None
            }
        }
    }

    /// The string literal given for `name`.
    pub(crate) fn string(&self, cx: &Ctxt, name: &str) -> Option<LitStr> {
        let value = self.value(cx, name, "\"...\"")?;
        match syn::parse2::<LitStr>(value.clone()) {
            Ok(text) => Some(text),
            Err(_) => {
                cx.error_spanned_by(
                    value,
                    format!("`{name}` takes a string: `{name} = \"...\"`"),
                );
                None
            }
        }
    }

    /// The expression given for `name` (a path to a function, or a closure).
    pub(crate) fn expr(&self, cx: &Ctxt, name: &str, example: &str) -> Option<syn::Expr> {
        let value = self.value(cx, name, example)?;
        match syn::parse2::<syn::Expr>(value.clone()) {
            Ok(expr) => Some(expr),
            Err(_) => {
                cx.error_spanned_by(
                    value,
                    format!("`{name}` takes a function: `{name} = {example}`"),
                );
                None
            }
        }
    }

    /// The type given for `name`.
    pub(crate) fn ty(&self, cx: &Ctxt, name: &str) -> Option<Type> {
        let value = self.value(cx, name, "Type")?;
        match syn::parse2::<Type>(value.clone()) {
            Ok(ty) => Some(ty),
            Err(_) => {
                cx.error_spanned_by(value, format!("`{name}` takes a type: `{name} = Type`"));
                None
            }
        }
    }

    /// The span of option `name`'s name, if given.
    pub(crate) fn name_of(&self, name: &str) -> Option<&Ident> {
        self.values.get(name).map(|(ident, _)| ident)
    }

    /// The duration given for `name`, if any, reporting a malformed value.
    pub(crate) fn duration(&self, cx: &Ctxt, name: &str) -> Option<Duration> {
        let value = self.value(cx, name, "\"1s\"")?;
        let hint = format!(
            "`{name}` takes a whole number and a unit: \"500ms\", \"5s\", \"2m\" or \"1h\""
        );
        let Ok(text) = syn::parse2::<LitStr>(value.clone()) else {
            cx.error_spanned_by(value, hint);
            return None;
        };
        let duration = parse_duration(&text.value());
        if duration.is_none() {
            cx.error_spanned_by(&text, hint);
        }
        duration
    }

    /// Like [`Options::duration`], and zero is an error.
    pub(crate) fn nonzero_duration(&self, cx: &Ctxt, name: &str) -> Option<Duration> {
        let duration = self.duration(cx, name)?;
        if duration.is_zero() {
            if let Some((_, Some(value))) = self.values.get(name) {
                cx.error_spanned_by(value, format!("`{name}` must be longer than zero"));
            }
            return None;
        }
        Some(duration)
    }
}

/// `name`, `name = tokens`, ... with an optional trailing comma.
fn parse_list(input: ParseStream<'_>) -> syn::Result<Vec<(Ident, Option<TokenStream>)>> {
    let mut options = Vec::new();
    while !input.is_empty() {
        let name: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let mut value = TokenStream::new();
            // `<` and `>` are not groups: count them, so the comma of `HashMap<K, V>` stays in
            // the value. The `>` of `->` (in `fn(A) -> B`) closes nothing.
            let mut depth = 0_usize;
            let mut after_joint_dash = false;
            loop {
                if input.is_empty() || (depth == 0 && input.peek(Token![,])) {
                    break;
                }
                let token: TokenTree = input.parse()?;
                let mut joint_dash = false;
                if let TokenTree::Punct(punct) = &token {
                    match punct.as_char() {
                        '<' => depth += 1,
                        '>' if !after_joint_dash => depth = depth.saturating_sub(1),
                        '-' => joint_dash = punct.spacing() == Spacing::Joint,
                        _ => {}
                    }
                }
                after_joint_dash = joint_dash;
                token.to_tokens(&mut value);
            }
            if value.is_empty() {
                return Err(input.error("expected a value after `=`"));
            }
            Some(value)
        } else if input.is_empty() || input.peek(Token![,]) {
            None
        } else {
            return Err(input.error(format!("expected `=` or `,` after `{name}`")));
        };
        options.push((name, value));
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(options)
}

/// Parses `500ms`, `5s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

fn list(allowed: &[&str]) -> String {
    allowed
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_list};
    use std::time::Duration;
    use syn::parse::Parser;

    #[test]
    fn a_value_runs_to_the_next_comma_outside_angle_brackets() {
        let tokens: proc_macro2::TokenStream = syn::parse_quote!(
            output = HashMap<u64, Vec<(String, bool)>>,
            name = "a.b",
            parser = fn(Vec<u8>) -> Result<u64, String>,
            backend
        );
        let options = parse_list.parse2(tokens).expect("parses");
        let values: Vec<_> = options
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_ref().map(ToString::to_string)))
            .collect();
        assert_eq!(
            values,
            [
                (
                    "output".to_owned(),
                    Some("HashMap < u64 , Vec < (String , bool) >>".to_owned())
                ),
                ("name".to_owned(), Some("\"a.b\"".to_owned())),
                (
                    "parser".to_owned(),
                    Some("fn (Vec < u8 >) -> Result < u64 , String >".to_owned())
                ),
                ("backend".to_owned(), None),
            ]
        );
    }

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 days"), None);
    }
}
