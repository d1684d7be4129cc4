// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phases 1 to 3 of the global-state attributes: the arguments parsed into the model (for
//! these forms the arguments are the model), then the rules of each form.

use proc_macro2::{Span, TokenStream};
use syn::{Ident, LitStr, Path};

use crate::args::{self, ArgValue};
use crate::common::check_compat;
use crate::diag::Errors;

use super::Form;

/// An FLB, handler-scoped state or subsystem as its struct attribute describes it.
pub struct Model {
    pub ident: Ident,
    /// The FLB's compatible string or the subsystem's name.
    pub name: Option<LitStr>,
    pub abi: Option<Path>,
    pub lock: Option<Path>,
    /// FLB only: the data word is the 8-byte value itself (`immediate`).
    pub immediate: bool,
    /// `compatible` or `name` was written (possibly malformed, already reported).
    name_given: bool,
    /// `abi` was written (possibly malformed, already reported).
    abi_given: bool,
}

/// Parses the arguments, reporting what is malformed.
pub fn parse(form: Form, ident: &Ident, args: TokenStream, errors: &mut Errors) -> Model {
    let raw = match args::parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let args = args::check_keys(raw, form.keys(), form.attr(), errors);
    let mut m = Model {
        ident: ident.clone(),
        name: None,
        abi: None,
        lock: None,
        immediate: false,
        name_given: args
            .iter()
            .any(|a| a.key == "compatible" || a.key == "name"),
        abi_given: args.iter().any(|a| a.key == "abi"),
    };
    for a in &args {
        match a.key.to_string().as_str() {
            "compatible" | "name" => m.name = args::lit_str(a, errors),
            "abi" => m.abi = args::path(a, errors),
            "lock" => m.lock = args::path(a, errors),
            "immediate" => match a.value {
                ArgValue::Flag => m.immediate = true,
                _ => errors.at(
                    a.key.span(),
                    "`immediate` is a flag: write `immediate`, without a value",
                ),
            },
            _ => {}
        }
    }
    m
}

/// Reports every rule of `form` that `m` breaks: the FLB's compatible string and the
/// subsystem's name are given and fit their fields, and every form names its ABI type.
pub fn validate(form: Form, m: &Model, errors: &mut Errors) {
    match form {
        Form::Flb => match &m.name {
            Some(c) => check_compat(c, "the FLB compatible string", Some("liveupdate_flb.compatible"), errors),
            None if m.name_given => {}
            None => errors.at(
                Span::call_site(),
                "#[liveupdate_flb(...)] needs `compatible = \"name-vN\"`: the string written to luo_flb_ser.name",
            ),
        },
        Form::Subsystem => match &m.name {
            Some(c) => check_compat(c, "the subsystem name", None, errors),
            None if m.name_given => {}
            None => errors.at(
                Span::call_site(),
                "#[liveupdate_subsystem(...)] needs `name = \"...\"`: the subsystem's unique name, which also names its handover data",
            ),
        },
        Form::State => {}
    }
    if m.abi.is_none() && !m.abi_given {
        errors.at(
            Span::call_site(),
            format!(
                "{} needs `abi = path::to::Type`: the ABI struct the state hands over",
                form.attr()
            ),
        );
    }
}
