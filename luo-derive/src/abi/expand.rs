// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 4 of `#[derive(Abi)]`: the layout proofs (field types, no implicit padding, the
//! declared size), each a compile-time check whose message names the field and the fix, and
//! the `AbiField` / `AbiType` impls.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::parse::AbiStruct;

/// The proofs and impls of a valid struct.
pub fn generate(s: &AbiStruct) -> TokenStream {
    let fields = &s.fields;
    let field_checks = fields.iter().map(|f| {
        let ty = &f.ty;
        if f.foreign {
            quote_spanned! {f.span=>
                let _ = __luo_foreign::<#ty>;
            }
        } else {
            quote_spanned! {f.span=>
                let _ = __luo_field::<#ty>;
            }
        }
    });
    let padding = padding(s);
    let size_check = size_check(s);
    let impls = impls(s);
    quote! {
        const _: () = {
            #[allow(dead_code)]
            fn __luo_field<T: ?::core::marker::Sized + ::luo_abi::abi::AbiField>() {}
            #[allow(dead_code)]
            fn __luo_foreign<T: ::luo_abi::__private::zerocopy::FromBytes + ::luo_abi::__private::zerocopy::IntoBytes + ::luo_abi::__private::zerocopy::Immutable>() {}
            #(#field_checks)*
            #(#padding)*
        };
        #size_check

        #impls
    }
}

/// On errors: `AbiField` alone, so the structs that embed this one report no follow-on
/// errors (it never runs: the crate does not compile). Not `AbiType`, whose `Copy` bound would
/// add an error of its own to a struct that is not `Copy`; nothing for what cannot carry an
/// impl this way (an enum, a union, a generic struct).
pub fn fallback(s: &AbiStruct) -> TokenStream {
    if s.not_a_struct.is_some() || s.generics.is_some() {
        return quote!();
    }
    let ident = &s.ident;
    quote! {
        // SAFETY: never used: the struct failed its checks, so the crate does not compile.
        unsafe impl ::luo_abi::abi::AbiField for #ident {}
    }
}

/// No implicit padding between consecutive fields and at the end; a packed struct has
/// alignment 1.
fn padding(s: &AbiStruct) -> Vec<TokenStream> {
    let ident = &s.ident;
    let name = s.name();
    let fields = &s.fields;
    if s.repr.packed {
        return vec![quote! {
            ::core::assert!(::core::mem::align_of::<#ident>() == 1);
        }];
    }
    let mut padding = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let m = &f.member;
        let ty = &f.ty;
        let end = quote!(::core::mem::offset_of!(#ident, #m) + ::core::mem::size_of::<#ty>());
        let (next, where_) = match fields.get(i + 1) {
            Some(n) => {
                let nm = &n.member;
                (
                    quote!(::core::mem::offset_of!(#ident, #nm)),
                    format!("after field `{}` (before `{}`)", f.name, n.name),
                )
            }
            None => (
                quote!(::core::mem::size_of::<#ident>()),
                format!("at the end, after the last field `{}`", f.name),
            ),
        };
        let tr = syn::Ident::new(&format!("__LuoPaddingAfter_{}", f.name), f.span);
        let check = syn::Ident::new(&format!("__luo_no_padding_after_{}", f.name), f.span);
        let msg = format!("`{name}` has {{N}} byte(s) of implicit padding {where_}");
        let note = format!(
        "make the padding explicit with a reserved field after `{}`: `#[abi(reserved)] _reserved{}: [u8; {{N}}]` (checked as zero on read), or use #[repr(C, packed)] if the C struct is __packed",
        f.name, i
    );
        let span = f.span;
        padding.push(quote_spanned! {span=>
        #[diagnostic::on_unimplemented(message = #msg, label = "implicit padding here", note = #note)]
        #[allow(non_camel_case_types)]
        trait #tr<const N: usize> {}
        impl #tr<0> for () {}
        #[allow(dead_code, non_snake_case)]
        fn #check() where (): #tr<{ #next - (#end) }> {}
    });
    }
    padding
}

/// `#[abi(size = N)]`: the struct is N bytes.
fn size_check(s: &AbiStruct) -> Option<TokenStream> {
    let ident = &s.ident;
    let name = s.name();
    s.declared_size.map(|(n, span)| {
    let n = n as usize;
    let msg = format!("`{name}` is {{N}} bytes, but #[abi(size = {n})] declares {n}");
    let note = "compare the fields with the C struct (types, order, packing); a missing or extra field is the usual cause";
    let tr = syn::Ident::new("__LuoDeclaredSize", span);
    quote_spanned! {span=>
        const _: () = {
            #[diagnostic::on_unimplemented(message = #msg, label = "declared size", note = #note)]
            trait #tr<const N: usize> {}
            impl #tr<#n> for () {}
            #[allow(dead_code)]
            fn __luo_declared_size() where (): #tr<{ ::core::mem::size_of::<#ident>() }> {}
        };
    }
})
}

/// `AbiField` and `AbiType`, with the check of the `#[abi(reserved)]` fields.
fn impls(s: &AbiStruct) -> TokenStream {
    let ident = &s.ident;
    let name = s.name();
    let packed = s.repr.packed;
    let fields = &s.fields;
    let reserved = fields.iter().filter(|f| f.reserved).map(|f| {
    let m = &f.member;
    let fname = &f.name;
    quote! {
        if !::luo_abi::abi::is_zeroed(&{ self.#m }) {
            return ::core::result::Result::Err(::luo_abi::abi::ReservedNonZero { ty: #name, field: #fname });
        }
    }
});
    quote! {
        // SAFETY: #[repr(C)] or #[repr(C, packed)] with only ABI-safe fields and (checked
        // above) no implicit padding.
        unsafe impl ::luo_abi::abi::AbiField for #ident {}

        // SAFETY: as above.
        unsafe impl ::luo_abi::abi::AbiType for #ident {
            const NAME: &'static str = #name;
            const PACKED: bool = #packed;
            fn check_reserved(&self) -> ::core::result::Result<(), ::luo_abi::abi::ReservedNonZero> {
                #(#reserved)*
                ::core::result::Result::Ok(())
            }
        }
    }
}
