// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 1: the struct attribute's arguments as values. Reports unknown and duplicate keys
//! and values of the wrong form (a path where a string is needed, a feature without its bit);
//! what the values mean is for the model and the rules for validation.

use proc_macro2::{Span, TokenStream};
use syn::{Ident, LitStr, Path};

use crate::args::{self, Arg, ArgValue};
use crate::diag::Errors;

use super::ATTR;

const KEYS: &[&str] = &[
    "compatible",
    "name",
    "abi",
    "reads",
    "state",
    "flbs",
    "subsystems",
    "features",
    "active",
    "depends_on",
];

/// One feature bit of a feature-negotiated ABI: `NAME(bit = N, fields = [...], required)`.
pub struct Feature {
    pub name: Ident,
    pub bit: u32,
    /// The ABI fields that only mean something while the feature is active.
    pub fields: Vec<Ident>,
    pub required: bool,
}

/// The arguments of `#[liveupdate_handler(...)]`, each as given (`None` or empty when absent or
/// malformed).
pub struct HandlerArgs {
    pub compatible: Option<LitStr>,
    /// `name = "..."` and the span of its key.
    pub name: Option<(LitStr, Span)>,
    pub abi: Option<Path>,
    pub reads: Vec<LitStr>,
    pub state: Option<Path>,
    pub flbs: Vec<Path>,
    pub subsystems: Vec<Path>,
    /// `features(...)`, at the span of its key.
    pub features: Option<(Span, Vec<Feature>)>,
    pub active: Option<Vec<Ident>>,
    pub depends_on: Vec<LitStr>,
    /// The keys written, even those whose value did not parse (already reported, so not
    /// reported again as missing).
    pub given: Vec<String>,
}

impl HandlerArgs {
    pub fn given(&self, key: &str) -> bool {
        self.given.iter().any(|k| k == key)
    }
}

/// Parses the arguments, reporting what is malformed.
pub fn parse(tokens: TokenStream, errors: &mut Errors) -> HandlerArgs {
    let raw = match args::parse_args(tokens) {
        Ok(a) => a,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let list = args::check_keys(raw, KEYS, ATTR, errors);
    let mut out = HandlerArgs {
        compatible: None,
        name: None,
        abi: None,
        reads: Vec::new(),
        state: None,
        flbs: Vec::new(),
        subsystems: Vec::new(),
        features: None,
        active: None,
        depends_on: Vec::new(),
        given: list.iter().map(|a| a.key.to_string()).collect(),
    };
    for a in &list {
        match a.key.to_string().as_str() {
            "compatible" => out.compatible = args::lit_str(a, errors),
            "name" => out.name = args::lit_str(a, errors).map(|l| (l, a.key.span())),
            "abi" => out.abi = args::path(a, errors),
            "reads" => out.reads = args::str_array(a, errors),
            "state" => out.state = args::path(a, errors),
            "flbs" => out.flbs = args::path_array(a, errors),
            "subsystems" => out.subsystems = args::path_array(a, errors),
            "features" => out.features = Some((a.key.span(), features(a, errors))),
            "active" => out.active = Some(args::ident_array(a, errors)),
            "depends_on" => out.depends_on = args::str_array(a, errors),
            _ => {}
        }
    }
    out
}

/// `features(NAME(bit = N, fields = [...], required), ...)`.
fn features(a: &Arg, errors: &mut Errors) -> Vec<Feature> {
    let ArgValue::List(t) = &a.value else {
        errors.at(
            args::value_span(a),
            "`features` takes a list: features(NAME(bit = N, fields = [field, ...], required), ...)",
        );
        return Vec::new();
    };
    let list = match args::parse_args(t.clone()) {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    list.iter().filter_map(|f| feature(f, errors)).collect()
}

/// One `NAME(bit = N, fields = [...], required)`.
fn feature(f: &Arg, errors: &mut Errors) -> Option<Feature> {
    let ArgValue::List(inner) = &f.value else {
        errors.at(
            f.key.span(),
            format!(
                "feature `{}` needs its bit: {}(bit = N, fields = [...])",
                f.key, f.key
            ),
        );
        return None;
    };
    let inner = match args::parse_args(inner.clone()) {
        Ok(l) => args::check_keys(
            l,
            &["bit", "fields", "required"],
            &format!("feature `{}`", f.key),
            errors,
        ),
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let mut bit = None;
    let mut bit_given = false;
    let mut fields = Vec::new();
    let mut required = false;
    for i in &inner {
        match i.key.to_string().as_str() {
            "bit" => {
                bit_given = true;
                if let Some((b, span)) = args::int(i, errors) {
                    if b >= 64 {
                        errors.at(
                            span,
                            format!(
                                "feature bit {b} does not fit the 64-bit feature words; use 0..=63"
                            ),
                        );
                    } else {
                        bit = Some(b as u32);
                    }
                }
            }
            "fields" => fields = args::ident_array(i, errors),
            "required" => match i.value {
                ArgValue::Flag => required = true,
                _ => errors.at(i.key.span(), "`required` is a flag and takes no value"),
            },
            _ => {}
        }
    }
    match bit {
        Some(bit) => Some(Feature {
            name: f.key.clone(),
            bit,
            fields,
            required,
        }),
        None if bit_given => None,
        None => {
            errors.at(f.key.span(), format!("feature `{}` needs `bit = N`", f.key));
            None
        }
    }
}
