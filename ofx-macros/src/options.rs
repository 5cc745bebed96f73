//! One parser for the options of every ofx attribute, each macro with its allow-list.

use std::collections::BTreeMap;
use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, MetaNameValue, Token};

use crate::ctxt::Ctxt;

/// The options given to one attribute: name → value, each given once.
pub(crate) struct Options {
    values: BTreeMap<String, (Span, Expr)>,
}

impl Options {
    /// Parses `name = value, ...` and reports unknown and repeated names at their span.
    pub(crate) fn parse(cx: &Ctxt, macro_name: &str, allowed: &[&str], args: TokenStream) -> Self {
        let mut values = BTreeMap::new();
        let parsed = match Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(args) {
            Ok(parsed) => parsed,
            Err(error) => {
                cx.syn_error(syn::Error::new(
                    error.span(),
                    format!(
                        "expected options as `name = value`: `#[{macro_name}({})]`",
                        example(allowed)
                    ),
                ));
                return Self { values };
            }
        };
        for option in parsed {
            let Some(name) = option.path.get_ident().map(ToString::to_string) else {
                cx.error_spanned_by(&option.path, format!("unknown option of `#[{macro_name}]`"));
                continue;
            };
            if !allowed.contains(&name.as_str()) {
                cx.error_spanned_by(
                    &option.path,
                    format!(
                        "unknown option `{name}` of `#[{macro_name}]`; it accepts {}",
                        list(allowed)
                    ),
                );
                continue;
            }
            if values.contains_key(&name) {
                cx.error_spanned_by(&option.path, format!("option `{name}` is given twice"));
                continue;
            }
            let span = option
                .path
                .get_ident()
                .map_or_else(Span::call_site, proc_macro2::Ident::span);
            values.insert(name, (span, option.value));
        }
        Self { values }
    }

    /// The duration given for `name`, if any, reporting a malformed value.
    pub(crate) fn duration(&self, cx: &Ctxt, name: &str) -> Option<Duration> {
        let (_, value) = self.values.get(name)?;
        let text = match value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(text),
                ..
            }) => text,
            other => {
                cx.error_spanned_by(
                    other,
                    format!(
                        "`{name}` takes a duration such as \"500ms\", \"5s\", \"2m\" or \"1h\""
                    ),
                );
                return None;
            }
        };
        match parse_duration(&text.value()) {
            Some(duration) => Some(duration),
            None => {
                report_duration(cx, name, text);
                None
            }
        }
    }
}

impl Options {
    /// Like [`Options::duration`], and zero is an error.
    pub(crate) fn nonzero_duration(&self, cx: &Ctxt, name: &str) -> Option<Duration> {
        let duration = self.duration(cx, name)?;
        if duration.is_zero() {
            if let Some((_, value)) = self.values.get(name) {
                cx.error_spanned_by(value, format!("`{name}` must be longer than zero"));
            }
            return None;
        }
        Some(duration)
    }
}

fn report_duration(cx: &Ctxt, name: &str, text: &LitStr) {
    cx.error_spanned_by(
        text,
        format!("`{name}` takes a whole number and a unit: \"500ms\", \"5s\", \"2m\" or \"1h\""),
    );
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

fn example(allowed: &[&str]) -> String {
    allowed
        .first()
        .map_or_else(String::new, |name| format!("{name} = \"1s\""))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

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
