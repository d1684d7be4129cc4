// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks and snippets shared by the attributes.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Item, LitStr, Path};

use crate::diag::Errors;

/// `LIVEUPDATE_HNDL_COMPAT_LENGTH` and `LIVEUPDATE_FLB_COMPAT_LENGTH` (the generated structs'
/// `compatible` fields); the string must leave room for its NUL. `compat_bytes` re-checks it
/// against the real field length at compile time.
pub const COMPAT_LEN: usize = 48;

/// Checks a compatible string (or name): non-empty, ASCII, no NUL, and (with `max`) short
/// enough for its field.
pub fn check_compat(lit: &LitStr, what: &str, field: Option<&str>, errors: &mut Errors) {
    let s = lit.value();
    if s.is_empty() {
        errors.spanned(
            lit,
            format!("{what} is empty; give the handover format a name such as \"memfd-v2\""),
        );
        return;
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        errors.spanned(
            lit,
            format!(
                "{what} `{s}` contains the non-ASCII character `{c}`; the next kernel compares it byte for byte with strncmp, use ASCII only"
            ),
        );
    }
    if s.contains('\0') {
        errors.spanned(
            lit,
            format!("{what} contains a NUL byte; the C side would cut it there, remove it"),
        );
    }
    if let Some(field) = field {
        if s.len() >= COMPAT_LEN {
            errors.spanned(
                lit,
                format!(
                    "{what} `{s}` is {} bytes, but `{field}` holds at most {} bytes plus the terminating NUL ({COMPAT_LEN} in all); shorten it",
                    s.len(),
                    COMPAT_LEN - 1
                ),
            );
        }
    }
}

/// `memfd-v2` → (`memfd`, 2).
pub fn split_version(s: &str) -> Option<(&str, u32)> {
    let (base, n) = s.rsplit_once("-v")?;
    if base.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, n.parse().ok()?))
}

/// The index and number of the version module (`v2`) in an ABI type path
/// (`luo_generated::memfd::v2::memfd_luo_ser`), if any.
pub fn path_version(p: &Path) -> Option<(usize, u32)> {
    let n = p.segments.len();
    (0..n.saturating_sub(1)).rev().find_map(|i| {
        let s = p.segments[i].ident.to_string();
        let d = s.strip_prefix('v')?;
        if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((i, d.parse().ok()?))
    })
}

/// `path` with its version segment replaced by `vN`, every token spanned at `span`.
pub fn with_version(p: &Path, idx: usize, n: u32, span: Span) -> Path {
    let mut out = p.clone();
    out.segments[idx].ident = syn::Ident::new(&format!("v{n}"), span);
    respan_path(&out, span)
}

/// A copy of `p` whose identifiers carry `span` (so errors about it point there).
pub fn respan_path(p: &Path, span: Span) -> Path {
    let mut out = p.clone();
    for s in &mut out.segments {
        s.ident = syn::Ident::new(&s.ident.to_string(), span);
    }
    if let Some(c) = &mut out.leading_colon {
        c.spans = [span, span];
    }
    out
}

/// The struct an attribute is on; anything else is an error.
pub fn expect_struct(item: &Item, attr: &str, errors: &mut Errors) -> Option<syn::ItemStruct> {
    match item {
        Item::Struct(s) => {
            if !s.generics.params.is_empty() {
                errors.spanned(
                    &s.generics,
                    format!("{attr} does not support generic types; the C side needs one concrete ops table, so remove the type parameters"),
                );
                return None;
            }
            Some(s.clone())
        }
        other => {
            errors.at(
                item_span(other),
                format!("{attr} goes on a struct (the value the ops table calls into) and, without arguments, on its trait impl"),
            );
            None
        }
    }
}

fn item_span(i: &Item) -> Span {
    match i {
        Item::Enum(e) => e.enum_token.span(),
        Item::Fn(f) => f.sig.fn_token.span(),
        Item::Union(u) => u.union_token.span(),
        Item::Trait(t) => t.trait_token.span(),
        other => other.span(),
    }
}

/// A compile-time check that `ty` implements `bound` (whose `on_unimplemented` message
/// explains the fix), reported at the span of `ty`.
pub fn assert_impl(ty: &Path, bound: TokenStream) -> TokenStream {
    let span = ty.span();
    let t = respan_path(ty, span);
    quote_spanned! {span=>
        const _: () = {
            fn __luo_assert<T: ?::core::marker::Sized + #bound>() {}
            let _ = __luo_assert::<#t>;
        };
    }
}

/// `(&Validate(&x)).luo_check()?`: the reserved-field check of an `#[derive(Abi)]` type, a
/// no-op for others.
pub fn validate(x: TokenStream) -> TokenStream {
    quote! {
        {
            #[allow(unused_imports)]
            use ::luo_abi::__private::{ViaAbiType as _, ViaNothing as _};
            (&::luo_abi::__private::Validate(&#x)).luo_check()?;
        }
    }
}

/// The path of the lock backend: the one given, or the std backend of the userspace model.
pub fn lock_path(lock: &Option<Path>) -> TokenStream {
    match lock {
        Some(p) => quote!(#p),
        None => quote!(::luo_abi::sync::StdBackend),
    }
}
