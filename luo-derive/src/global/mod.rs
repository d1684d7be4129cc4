// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The global-state attributes: `#[liveupdate_flb(...)]` (upstream FLB),
//! `#[liveupdate_global_state(...)]` (handler-scoped state, one object per handler) and
//! `#[liveupdate_subsystem(...)]` (v4-style subsystems). On the struct they implement the ABI
//! trait of the form and (FLB, subsystem) build the generated ops table and raw struct; on
//! the impl they work as `#[vtable]`.
//!
//! In the phases of the handler attribute: [`model`] parses the arguments into the model
//! (for these forms the arguments are the model) and validates it, [`expand`] writes the
//! code, or on any error the fallback that keeps the impl free of follow-on errors.

mod expand;
mod model;

use proc_macro2::TokenStream;
use quote::quote;
use syn::Item;

use crate::common;
use crate::diag::Errors;
use crate::vtable::VtableSpec;

/// The impl side of an FLB.
pub const FLB_IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_flb]",
    trait_name: "FlbState",
    table: "liveupdate_flb_ops",
    required: &[
        (
            "preserve",
            "fn preserve(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)>",
        ),
        (
            "unpreserve",
            "fn unpreserve(&self, cx: &StateCtx<'_>, ser: Self::Ser, obj: Arc<Self::Outgoing>)",
        ),
        (
            "retrieve",
            "fn retrieve(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming>",
        ),
        (
            "finish",
            "fn finish(&self, cx: &StateCtx<'_>, obj: Arc<Self::Incoming>)",
        ),
    ],
    optional: &[],
    has_consts: &[],
    use_const: "USE_LIVEUPDATE_FLB_ATTR",
    type_defaults: &[],
};

/// The impl side of handler-scoped state.
pub const STATE_IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_global_state]",
    trait_name: "HandlerState",
    table: "liveupdate_fh_global_state_ops",
    required: &[
        (
            "create",
            "fn create(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)>",
        ),
        (
            "restore",
            "fn restore(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming>",
        ),
        (
            "destroy",
            "fn destroy(&self, cx: &StateCtx<'_>, obj: StateObj<Self::Outgoing, Self::Incoming>)",
        ),
    ],
    optional: &[],
    has_consts: &[],
    use_const: "USE_LIVEUPDATE_GLOBAL_STATE_ATTR",
    type_defaults: &[],
};

/// The impl side of a subsystem.
pub const SUBSYSTEM_IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_subsystem]",
    trait_name: "Subsystem",
    table: "liveupdate_subsystem_ops",
    required: &[
        (
            "prepare",
            "fn prepare(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)>",
        ),
        (
            "cancel",
            "fn cancel(&self, cx: &StateCtx<'_>, obj: Self::Outgoing)",
        ),
        (
            "boot",
            "fn boot(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming>",
        ),
        (
            "finish",
            "fn finish(&self, cx: &StateCtx<'_>, obj: Self::Incoming)",
        ),
    ],
    optional: &["freeze"],
    has_consts: &["freeze"],
    use_const: "USE_LIVEUPDATE_SUBSYSTEM_ATTR",
    type_defaults: &[],
};
/// Which of the three attributes.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Flb,
    State,
    Subsystem,
}

impl Form {
    fn attr(self) -> &'static str {
        match self {
            Form::Flb => "#[liveupdate_flb(...)]",
            Form::State => "#[liveupdate_global_state(...)]",
            Form::Subsystem => "#[liveupdate_subsystem(...)]",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Form::Flb => &["compatible", "abi", "lock", "immediate"],
            Form::State => &["abi", "lock"],
            Form::Subsystem => &["name", "abi", "lock"],
        }
    }
}
/// Expands `#[liveupdate_flb(...)]` on a struct.
pub fn expand_flb(args: TokenStream, item: Item) -> TokenStream {
    expand(Form::Flb, args, item)
}

/// Expands `#[liveupdate_global_state(...)]` on a struct.
pub fn expand_state(args: TokenStream, item: Item) -> TokenStream {
    expand(Form::State, args, item)
}

/// Expands `#[liveupdate_subsystem(...)]` on a struct.
pub fn expand_subsystem(args: TokenStream, item: Item) -> TokenStream {
    expand(Form::Subsystem, args, item)
}

/// Parse and model → validate → expand (or fall back).
fn expand(form: Form, args: TokenStream, item: Item) -> TokenStream {
    let mut errors = Errors::new();
    let Some(s) = common::expect_struct(&item, form.attr(), &mut errors) else {
        let e = crate::diag::tokens(errors.check());
        return quote!(#item #e);
    };
    let m = model::parse(form, &s.ident, args, &mut errors);
    model::validate(form, &m, &mut errors);
    let (errs, body) = match errors.check() {
        Ok(()) => (quote!(), expand::generate(form, &m)),
        Err(e) => (e, expand::fallback(form, &m)),
    };
    quote! {
        #s
        #errs
        #body
    }
}
