//! [`Ctxt`]: collects every error of one macro call, to report them all at once.

use std::cell::RefCell;

/// An error accumulator. Consume it with [`Ctxt::check`]; dropping it unchecked is a bug.
pub(crate) struct Ctxt {
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records an error at `span`'s tokens.
    pub(crate) fn error_spanned_by<T: quote::ToTokens>(
        &self,
        tokens: T,
        message: impl std::fmt::Display,
    ) {
        self.syn_error(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        if let Some(errors) = self.errors.borrow_mut().as_mut() {
            errors.push(error);
        }
    }

    /// All errors recorded, combined into one.
    pub(crate) fn check(self) -> syn::Result<()> {
        let errors = self.errors.borrow_mut().take().unwrap_or_default();
        let mut errors = errors.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.errors.borrow().is_some() {
            panic!("forgot to check for errors");
        }
    }
}
