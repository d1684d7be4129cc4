// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The error context of one macro invocation, in the manner of serde_derive's `Ctxt`: every
//! phase (parse, model, validate) pushes its errors here and goes on, so one item reports all
//! its problems at once, each a `compile_error!` at the span of the tokens at fault.
//!
//! The context must be consumed with [`Errors::check`] before it is dropped: dropping an
//! unchecked context would silently lose the errors (and expand an invalid item as if it were
//! valid), so `Drop` treats it as a bug of this crate and panics. No input reaches that panic;
//! the unit tests and the trybuild cases run every path that creates a context.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// Collected errors of one macro invocation; consume with [`Errors::check`].
pub struct Errors {
    errors: Vec<syn::Error>,
    checked: bool,
}

impl Errors {
    pub fn new() -> Self {
        Errors {
            errors: Vec::new(),
            checked: false,
        }
    }

    /// An error at `span`.
    pub fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.errors.push(syn::Error::new(span, msg));
    }

    /// An error spanning the tokens of `t`.
    pub fn spanned(&mut self, t: &impl ToTokens, msg: impl std::fmt::Display) {
        self.errors.push(syn::Error::new_spanned(t, msg));
    }

    /// A parse error.
    pub fn push(&mut self, e: syn::Error) {
        self.errors.push(e);
    }

    /// Consumes the context: `Ok` when nothing was reported, otherwise every error as
    /// `compile_error!` invocations, in the order they were reported.
    pub fn check(mut self) -> Result<(), TokenStream> {
        self.checked = true;
        let errors = std::mem::take(&mut self.errors);
        if errors.is_empty() {
            return Ok(());
        }
        Err(errors.iter().map(syn::Error::to_compile_error).collect())
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        if !self.checked && !std::thread::panicking() {
            panic!("luo-derive bug: an error context was dropped without `check()`");
        }
    }
}

/// `Err(errors)` as tokens: the `compile_error!`s, or nothing.
pub fn tokens(r: Result<(), TokenStream>) -> TokenStream {
    r.err().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_returns_every_error_in_order() {
        let mut cx = Errors::new();
        cx.at(Span::call_site(), "first");
        cx.at(Span::call_site(), "second");
        let out = cx.check().expect_err("two errors").to_string();
        let (a, b) = (out.find("first"), out.find("second"));
        assert!(a.is_some() && b.is_some() && a < b, "{out}");
    }

    #[test]
    fn an_empty_context_checks_ok() {
        assert!(Errors::new().check().is_ok());
    }

    #[test]
    #[should_panic(expected = "dropped without `check()`")]
    fn an_unchecked_context_is_a_bug() {
        let mut cx = Errors::new();
        cx.at(Span::call_site(), "lost");
    }
}
