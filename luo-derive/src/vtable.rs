//! The impl side of every attribute, in the manner of the kernel's `#[vtable]`: sets
//! `HAS_<CALLBACK> = true` for each callback the impl defines (a constant the user wrote is
//! left alone), sets the marker constant that proves the attribute was used, fills default
//! associated types, and reports every missing required callback and every method that is not
//! a callback of the table, each at its span.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl};

use crate::diag::Errors;

/// What one ops table looks like from the impl.
pub struct VtableSpec {
    /// The attribute, for messages (`#[liveupdate_handler]`).
    pub attr: &'static str,
    /// The trait the impl must be of.
    pub trait_name: &'static str,
    /// The C ops table, for messages.
    pub table: &'static str,
    /// Required callbacks and the signature to suggest.
    pub required: &'static [(&'static str, &'static str)],
    /// Optional callbacks.
    pub optional: &'static [&'static str],
    /// Callbacks that have a `HAS_*` constant in the trait.
    pub has_consts: &'static [&'static str],
    /// The marker constant.
    pub use_const: &'static str,
    /// Associated types filled in when absent: (name, type).
    pub type_defaults: &'static [(&'static str, &'static str)],
}

/// Expands the impl attribute.
pub fn expand_impl(spec: &VtableSpec, args: TokenStream, mut item: ItemImpl) -> TokenStream {
    let mut errors = Errors::new();
    if !args.is_empty() {
        errors.spanned(
            &args,
            format!(
                "on the impl, {} takes no arguments; put them on the struct it implements",
                spec.attr
            ),
        );
    }
    let header_span = match &item.trait_ {
        Some((_, path, _)) => {
            let last = path.segments.last().map(|s| s.ident.to_string());
            if last.as_deref() != Some(spec.trait_name) {
                errors.spanned(
                    path,
                    format!(
                        "{} goes on `impl {} for YourType`, not on an impl of `{}`",
                        spec.attr,
                        spec.trait_name,
                        last.unwrap_or_default()
                    ),
                );
                let e = errors.to_compile_errors();
                return quote!(#item #e);
            }
            path.span()
        }
        None => {
            errors.spanned(
                &item.self_ty,
                format!(
                    "{} goes on `impl {} for YourType` (a trait impl), not on an inherent impl",
                    spec.attr, spec.trait_name
                ),
            );
            let e = errors.to_compile_errors();
            return quote!(#item #e);
        }
    };

    let all: Vec<&str> = spec
        .required
        .iter()
        .map(|(n, _)| *n)
        .chain(spec.optional.iter().copied())
        .collect();
    let mut present: Vec<String> = Vec::new();
    let mut user_consts: Vec<String> = Vec::new();
    let mut user_types: Vec<String> = Vec::new();
    let mut kept = Vec::new();
    for it in std::mem::take(&mut item.items) {
        match &it {
            ImplItem::Fn(f) => {
                let name = f.sig.ident.to_string();
                if !all.contains(&name.as_str()) {
                    errors.spanned(
                        &f.sig.ident,
                        format!(
                            "`{name}` is not a callback of `{}`; its callbacks are: {}",
                            spec.table,
                            all.join(", ")
                        ),
                    );
                    continue;
                }
                present.push(name);
            }
            ImplItem::Const(c) => user_consts.push(c.ident.to_string()),
            ImplItem::Type(t) => user_types.push(t.ident.to_string()),
            _ => {}
        }
        kept.push(it);
    }
    item.items = kept;

    for (name, sig) in spec.required {
        if !present.iter().any(|p| p == name) {
            errors.at(
                header_span,
                format!(
                    "missing required callback `{name}` of `{}`; add it to the impl: `{sig}`",
                    spec.table
                ),
            );
        }
    }

    let mut extra: Vec<TokenStream> = Vec::new();
    for name in &present {
        if !spec.has_consts.contains(&name.as_str()) {
            continue;
        }
        let c = format_ident!("HAS_{}", name.to_uppercase());
        if !user_consts.contains(&c.to_string()) {
            extra.push(quote! { const #c: bool = true; });
        }
    }
    if !user_consts.iter().any(|c| c == spec.use_const) {
        let c = format_ident!("{}", spec.use_const);
        extra.push(quote_spanned! { Span::call_site() => const #c: () = (); });
    }
    for (name, ty) in spec.type_defaults {
        if !user_types.iter().any(|t| t == name) {
            let n = format_ident!("{}", name);
            let t: syn::Type = match syn::parse_str(ty) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            extra.push(quote! { type #n = #t; });
        }
    }
    for t in extra {
        match syn::parse2::<ImplItem>(t) {
            Ok(i) => item.items.push(i),
            Err(e) => errors.push(e),
        }
    }
    let errs = errors.to_compile_errors();
    quote! {
        #item
        #errs
    }
}
