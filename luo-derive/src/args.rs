// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Parsing `key = value, key(...), ...` attribute arguments with spanned errors: unknown keys
//! (listing the valid ones) and duplicate keys are reported, and parsing goes on.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprArray, ExprLit, Ident, Lit, LitStr, Path, Token};

use crate::diag::Errors;

/// One `key = value` or `key(...)` argument.
pub struct Arg {
    pub key: Ident,
    pub value: ArgValue,
}

pub enum ArgValue {
    /// `key = expr`
    Expr(Expr),
    /// `key(...)`
    List(TokenStream),
    /// `key`
    Flag,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            ArgValue::Expr(input.parse()?)
        } else if input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            ArgValue::List(content.parse()?)
        } else {
            ArgValue::Flag
        };
        Ok(Arg { key, value })
    }
}

/// Parses a comma-separated argument list.
pub fn parse_args(tokens: TokenStream) -> syn::Result<Vec<Arg>> {
    let p = Punctuated::<Arg, Token![,]>::parse_terminated;
    Ok(p.parse2(tokens)?.into_iter().collect())
}

/// Checks keys against `valid`, reporting unknown and duplicate ones; returns the arguments
/// with known, first-seen keys.
pub fn check_keys(args: Vec<Arg>, valid: &[&str], what: &str, errors: &mut Errors) -> Vec<Arg> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for a in args {
        let k = a.key.to_string();
        if !valid.contains(&k.as_str()) {
            errors.at(
                a.key.span(),
                format!(
                    "unknown key `{k}` in {what}; valid keys are: {}",
                    valid.join(", ")
                ),
            );
            continue;
        }
        if seen.contains(&k) {
            errors.at(
                a.key.span(),
                format!("duplicate key `{k}` in {what}; give each key once"),
            );
            continue;
        }
        seen.push(k);
        out.push(a);
    }
    out
}

/// The expression without the invisible groups `macro_rules!` wraps fragments in
/// (`$compat:literal` arrives as a group holding the literal).
pub fn ungroup(e: &Expr) -> &Expr {
    match e {
        Expr::Group(g) => ungroup(&g.expr),
        Expr::Paren(p) => ungroup(&p.expr),
        other => other,
    }
}

fn value(a: &Arg) -> Option<&Expr> {
    match &a.value {
        ArgValue::Expr(e) => Some(ungroup(e)),
        _ => None,
    }
}

/// A string literal value.
pub fn lit_str(a: &Arg, errors: &mut Errors) -> Option<LitStr> {
    match value(a) {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        })) => Some(s.clone()),
        _ => {
            errors.at(
                value_span(a),
                format!("`{}` takes a string literal: {} = \"...\"", a.key, a.key),
            );
            None
        }
    }
}

/// A path value (`abi = some::Type`).
pub fn path(a: &Arg, errors: &mut Errors) -> Option<Path> {
    match value(a) {
        Some(Expr::Path(p)) if p.qself.is_none() => Some(p.path.clone()),
        _ => {
            errors.at(
                value_span(a),
                format!("`{}` takes a type path: {} = path::to::Type", a.key, a.key),
            );
            None
        }
    }
}

/// An array of string literals (`reads = ["a", "b"]`).
pub fn str_array(a: &Arg, errors: &mut Errors) -> Vec<LitStr> {
    let mut out = Vec::new();
    match value(a) {
        Some(Expr::Array(ExprArray { elems, .. })) => {
            for e in elems {
                match ungroup(e) {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => out.push(s.clone()),
                    other => errors.spanned(
                        other,
                        format!(
                            "`{}` takes an array of string literals: {} = [\"...\"]",
                            a.key, a.key
                        ),
                    ),
                }
            }
        }
        _ => errors.at(
            value_span(a),
            format!(
                "`{}` takes an array of string literals: {} = [\"...\"]",
                a.key, a.key
            ),
        ),
    }
    out
}

/// An array of paths (`flbs = [A, b::B]`).
pub fn path_array(a: &Arg, errors: &mut Errors) -> Vec<Path> {
    let mut out = Vec::new();
    match value(a) {
        Some(Expr::Array(ExprArray { elems, .. })) => {
            for e in elems {
                match ungroup(e) {
                    Expr::Path(p) if p.qself.is_none() => out.push(p.path.clone()),
                    other => errors.spanned(
                        other,
                        format!(
                            "`{}` takes an array of type paths: {} = [Type, ...]",
                            a.key, a.key
                        ),
                    ),
                }
            }
        }
        _ => errors.at(
            value_span(a),
            format!(
                "`{}` takes an array of type paths: {} = [Type, ...]",
                a.key, a.key
            ),
        ),
    }
    out
}

/// An array of identifiers (`fields = [a, b]`).
pub fn ident_array(a: &Arg, errors: &mut Errors) -> Vec<Ident> {
    path_array(a, errors)
        .into_iter()
        .filter_map(|p| match p.get_ident() {
            Some(i) => Some(i.clone()),
            None => {
                errors.spanned(&p, format!("`{}` takes plain names", a.key));
                None
            }
        })
        .collect()
}

/// An integer literal value.
pub fn int(a: &Arg, errors: &mut Errors) -> Option<(u64, Span)> {
    match value(a) {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        })) => match i.base10_parse::<u64>() {
            Ok(v) => Some((v, i.span())),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        _ => {
            errors.at(
                value_span(a),
                format!("`{}` takes an integer: {} = N", a.key, a.key),
            );
            None
        }
    }
}

/// The span of an argument's value (its key for a flag).
pub fn value_span(a: &Arg) -> Span {
    use syn::spanned::Spanned;
    match &a.value {
        ArgValue::Expr(e) => e.span(),
        ArgValue::List(t) => {
            let mut it = t.clone().into_iter();
            it.next().map_or(a.key.span(), |t| t.span())
        }
        ArgValue::Flag => a.key.span(),
    }
}
