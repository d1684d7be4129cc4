// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `#[liveupdate_handler(...)]` on a handler struct: implements `HandlerAbi`, builds one
//! generated `liveupdate_file_ops` table and one `liveupdate_file_handler` per version
//! (the version written, then each version read), the trampolines, the handler-scoped
//! state's `liveupdate_fh_global_state_ops`, the readers of older versions, and the feature
//! negotiation of a feature-negotiated ABI.
//!
//! In four phases, each its own module: [`parse`] turns the arguments into values (reporting
//! what does not parse), [`model`] derives what the arguments mean (the version written, the
//! ABI type of each version read, the globals once each) without judging it, [`validate`]
//! reports every rule the model breaks, and [`expand`] writes the code, or on any error the
//! fallback that keeps the handler's own code free of follow-on errors.

mod expand;
mod features;
mod model;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;
use syn::Item;

use crate::common;
use crate::diag::Errors;
use crate::vtable::VtableSpec;

const ATTR: &str = "#[liveupdate_handler(...)]";

/// The impl side: `impl FileHandler for X`.
pub const IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_handler]",
    trait_name: "FileHandler",
    table: "liveupdate_file_ops",
    required: &[
        (
            "can_preserve",
            "fn can_preserve(&self, file: &dyn File) -> bool",
        ),
        (
            "preserve",
            "fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(Self::Ser, Self::Private)>",
        ),
        (
            "unpreserve",
            "fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, ser: Self::Ser, private: Self::Private)",
        ),
        (
            "retrieve",
            "fn retrieve(&self, cx: &Ctx<'_, Self>, data: Self::Read) -> Result<FileRef>",
        ),
        (
            "finish",
            "fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, Self::Read>)",
        ),
    ],
    optional: &["freeze", "unfreeze", "can_finish", "get_id"],
    has_consts: &[
        "can_preserve",
        "preserve",
        "unpreserve",
        "freeze",
        "unfreeze",
        "retrieve",
        "can_finish",
        "finish",
        "get_id",
    ],
    use_const: "USE_LIVEUPDATE_HANDLER_ATTR",
    type_defaults: &[("Private", "()")],
};

/// Expands the struct attribute: parse → model → validate → expand (or fall back).
pub fn expand_struct(args: TokenStream, item: Item) -> TokenStream {
    let mut errors = Errors::new();
    let Some(s) = common::expect_struct(&item, ATTR, &mut errors) else {
        let e = crate::diag::tokens(errors.check());
        return quote!(#item #e);
    };
    let args = parse::parse(args, &mut errors);
    let model = model::Model::new(&s.ident, args);
    validate::validate(&model, &mut errors);
    let (errs, body) = match errors.check() {
        Ok(()) => (quote!(), expand::generate(&model)),
        Err(e) => (e, expand::fallback(&model)),
    };
    quote! {
        #s
        #errs
        #body
    }
}
