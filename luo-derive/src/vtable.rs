// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The impl side of every attribute, in the manner of the kernel's `#[vtable]`: sets
//! `HAS_<CALLBACK> = true` for each callback the impl defines (a constant the user wrote is
//! left alone), sets the marker constant that proves the attribute was used, fills default
//! associated types, and reports every missing required callback and every method that is not
//! a callback of the table, each at its span.
//!
//! In phases like the struct side: the impl's header is checked (no arguments, an impl of the
//! right trait), its items are sorted into the model ([`ImplItems`]: callbacks, unknown
//! methods, the constants and types the user wrote), validation reports what is missing or
//! unknown, and expansion adds the generated items. On errors the impl is kept without its
//! unknown methods, so each mistake is reported once.

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
    let Some(header_span) = header(spec, &args, &item, &mut errors) else {
        let e = crate::diag::tokens(errors.check());
        return quote!(#item #e);
    };
    let items = ImplItems::sort(spec, &mut item);
    validate(spec, &items, header_span, &mut errors);
    for t in generated_items(spec, &items) {
        match t {
            Ok(i) => item.items.push(i),
            Err(e) => errors.push(e),
        }
    }
    let errs = crate::diag::tokens(errors.check());
    quote! {
        #item
        #errs
    }
}

/// Checks the impl's header: no arguments, an impl of the spec's trait. Returns the span of
/// the trait path (where missing callbacks are reported), or `None` when the impl is not one
/// this attribute can fill.
fn header(
    spec: &VtableSpec,
    args: &TokenStream,
    item: &ItemImpl,
    errors: &mut Errors,
) -> Option<Span> {
    if !args.is_empty() {
        errors.spanned(
            args,
            format!(
                "on the impl, {} takes no arguments; put them on the struct it implements",
                spec.attr
            ),
        );
    }
    match &item.trait_ {
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
                return None;
            }
            Some(path.span())
        }
        None => {
            errors.spanned(
                &item.self_ty,
                format!(
                    "{} goes on `impl {} for YourType` (a trait impl), not on an inherent impl",
                    spec.attr, spec.trait_name
                ),
            );
            None
        }
    }
}

/// The impl's items as the table sees them.
struct ImplItems {
    /// Callbacks of the table the impl defines.
    present: Vec<String>,
    /// Methods that are not callbacks of the table (taken out of the impl).
    unknown: Vec<syn::Ident>,
    /// Constants and associated types the user wrote (left alone).
    user_consts: Vec<String>,
    user_types: Vec<String>,
}

impl ImplItems {
    /// Sorts the items of `item`, taking the unknown methods out (reported once, instead of
    /// again by the compiler as not members of the trait).
    fn sort(spec: &VtableSpec, item: &mut ItemImpl) -> ImplItems {
        let all = spec.callbacks();
        let mut out = ImplItems {
            present: Vec::new(),
            unknown: Vec::new(),
            user_consts: Vec::new(),
            user_types: Vec::new(),
        };
        let mut kept = Vec::new();
        for it in std::mem::take(&mut item.items) {
            match &it {
                ImplItem::Fn(f) => {
                    let name = f.sig.ident.to_string();
                    if !all.contains(&name.as_str()) {
                        out.unknown.push(f.sig.ident.clone());
                        continue;
                    }
                    out.present.push(name);
                }
                ImplItem::Const(c) => out.user_consts.push(c.ident.to_string()),
                ImplItem::Type(t) => out.user_types.push(t.ident.to_string()),
                _ => {}
            }
            kept.push(it);
        }
        item.items = kept;
        out
    }
}

impl VtableSpec {
    /// Every callback of the table, required first.
    fn callbacks(&self) -> Vec<&'static str> {
        self.required
            .iter()
            .map(|(n, _)| *n)
            .chain(self.optional.iter().copied())
            .collect()
    }
}

/// Reports the methods that are not callbacks and the required callbacks that are missing.
fn validate(spec: &VtableSpec, items: &ImplItems, header_span: Span, errors: &mut Errors) {
    let all = spec.callbacks();
    for ident in &items.unknown {
        errors.spanned(
            ident,
            format!(
                "`{ident}` is not a callback of `{}`; its callbacks are: {}",
                spec.table,
                all.join(", ")
            ),
        );
    }
    for (name, sig) in spec.required {
        if !items.present.iter().any(|p| p == name) {
            errors.at(
                header_span,
                format!(
                    "missing required callback `{name}` of `{}`; add it to the impl: `{sig}`",
                    spec.table
                ),
            );
        }
    }
}

/// `HAS_<CALLBACK> = true` for each callback present, the marker constant and the default
/// associated types, each unless the user wrote it.
fn generated_items(spec: &VtableSpec, items: &ImplItems) -> Vec<syn::Result<ImplItem>> {
    let mut extra: Vec<TokenStream> = Vec::new();
    for name in &items.present {
        if !spec.has_consts.contains(&name.as_str()) {
            continue;
        }
        let c = format_ident!("HAS_{}", name.to_uppercase());
        if !items.user_consts.contains(&c.to_string()) {
            extra.push(quote! { const #c: bool = true; });
        }
    }
    if !items.user_consts.iter().any(|c| c == spec.use_const) {
        let c = format_ident!("{}", spec.use_const);
        extra.push(quote_spanned! { Span::call_site() => const #c: () = (); });
    }
    let mut out = Vec::new();
    for (name, ty) in spec.type_defaults {
        if !items.user_types.iter().any(|t| t == name) {
            let n = format_ident!("{}", name);
            match syn::parse_str::<syn::Type>(ty) {
                Ok(t) => extra.push(quote! { type #n = #t; }),
                Err(e) => out.push(Err(e)),
            }
        }
    }
    out.extend(extra.into_iter().map(syn::parse2::<ImplItem>));
    out
}
