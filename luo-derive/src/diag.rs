//! Error accumulation (the `Ctxt` of serde_derive, the `DiagCtxt` of pin-init): every check
//! pushes its error here and expansion goes on, so one item reports all its problems at once.
//! The macros never panic; every error becomes a `compile_error!` at its span.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// Collected errors of one macro invocation.
#[derive(Default)]
pub struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    pub fn new() -> Self {
        Errors::default()
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

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Every error as `compile_error!` invocations.
    pub fn to_compile_errors(&self) -> TokenStream {
        self.errors
            .iter()
            .map(syn::Error::to_compile_error)
            .collect()
    }
}
