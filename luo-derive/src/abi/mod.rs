// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `#[derive(Abi)]`: proves at compile time that a hand-written handover struct has a C
//! layout without implicit padding and only ABI-safe fields, and implements
//! `luo_abi::abi::AbiType` with the reserved-field check run on every read.
//!
//! In the phases of the attributes: [`parse`] reads the representation, the `#[abi(...)]`
//! attributes and the fields into the model (reporting what does not parse), [`validate`]
//! reports every rule the struct breaks, and [`expand`] writes the layout proofs and the
//! trait impls, or on any error only the trait impls, so a struct with a mistake does not
//! also make every struct and handler using it fail.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::diag::Errors;

/// Expands the derive.
pub fn expand(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::new();
    let s = parse::parse(&input, &mut errors);
    validate::validate(&s, &mut errors);
    match errors.check() {
        Ok(()) => expand::generate(&s),
        Err(e) => {
            let fallback = expand::fallback(&s);
            quote::quote!(#e #fallback)
        }
    }
}
