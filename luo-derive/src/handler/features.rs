// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `HandlerAbi` items that differ between an exact-match ABI (`compatible = "memfd-v2"`:
//! the record is read as it is) and a feature-negotiated one (`name = "memfd"` with
//! `features(...)`: the header is negotiated on read and published on write, and the fields
//! of inactive features are zeroed both ways).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::common;

use super::model::Model;
use super::parse::Feature;

/// How the record is decoded, encoded and described.
pub struct AbiParts {
    /// `HandlerAbi::Read`.
    pub read_ty: TokenStream,
    /// The bodies of `decode`, `encode` and `active_of`.
    pub decode: TokenStream,
    pub encode: TokenStream,
    pub active_of: TokenStream,
    /// `HandlerAbi::FEATURES`.
    pub features: TokenStream,
    /// Items of the inherent impl: a constant per feature, the zeroing of inactive fields.
    pub inherent: TokenStream,
}

/// The parts of a handler whose arguments are valid.
pub fn parts(m: &Model) -> AbiParts {
    let validate = common::validate(quote!(ser));
    if m.features.is_empty() {
        return AbiParts {
            read_ty: quote!(Self::Ser),
            decode: quote! { #validate ::core::result::Result::Ok(ser) },
            encode: quote! { let _ = (ser, active); },
            active_of: quote! { let _ = ser; 0 },
            features: quote!(::core::option::Option::None),
            inherent: quote!(),
        };
    }
    let ident = &m.ident;
    let decl = declaration(m);
    let zero_inactive = m.features.iter().map(|f| {
        let mk = mask(f);
        let zero = f.fields.iter().map(|fld| {
            quote_spanned! {fld.span()=> ser.#fld = ::luo_abi::__private::zerocopy::FromZeros::new_zeroed(); }
        });
        quote! { if active & #mk == 0 { #(#zero)* } }
    });
    let consts = m.features.iter().map(|f| {
        let n = &f.name;
        let b = f.bit;
        let s = n.to_string();
        quote! {
            #[doc = concat!("Feature bit ", stringify!(#b), " of this handler's ABI.")]
            pub const #n: ::luo_abi::features::Feature = ::luo_abi::features::Feature::new(#b, #s);
        }
    });
    let inherent = quote! {
        #[allow(non_upper_case_globals)]
        impl #ident {
            #(#consts)*

            /// Zeroes the fields of the features not in `active`.
            #[doc(hidden)]
            fn __luo_zero_inactive(ser: &mut <#ident as ::luo_abi::handler::HandlerAbi>::Ser, active: u64) {
                #(#zero_inactive)*
            }
        }
    };
    let decode = quote! {
        #validate
        let mut ser = ser;
        let hdr = ::luo_abi::features::FeatureHeader {
            supp: ser.features.supp,
            req: ser.features.req,
            active: ser.features.active,
        };
        let reserved = ser.features.reserved;
        let active = ::luo_abi::features::negotiate(
            &#decl,
            hdr,
            ::luo_abi::abi::is_zeroed(&reserved),
        )?;
        Self::__luo_zero_inactive(&mut ser, active);
        ::core::result::Result::Ok(::luo_abi::features::Negotiated::new(ser, active))
    };
    let encode = quote! {
        let hdr = ::luo_abi::features::publish(&#decl, active);
        ser.features.supp = hdr.supp;
        ser.features.req = hdr.req;
        ser.features.active = hdr.active;
        ser.features.reserved = ::luo_abi::__private::zerocopy::FromZeros::new_zeroed();
        Self::__luo_zero_inactive(ser, hdr.active);
    };
    AbiParts {
        read_ty: quote!(::luo_abi::features::Negotiated<Self::Ser>),
        decode,
        encode,
        active_of: quote!(ser.features.active),
        features: quote!(::core::option::Option::Some(#decl)),
        inherent,
    }
}

/// The parts of the fallback: the types the handler's own signatures use (`name` means
/// negotiated) and the feature constants its code may name, with bodies that never run.
pub fn fallback_parts(m: &Model) -> AbiParts {
    let read_ty = if m.versionless {
        quote!(::luo_abi::features::Negotiated<Self::Ser>)
    } else {
        quote!(Self::Ser)
    };
    let ident = &m.ident;
    let consts = m.features.iter().map(|f| {
        let n = &f.name;
        let b = f.bit;
        let s = n.to_string();
        quote!(pub const #n: ::luo_abi::features::Feature = ::luo_abi::features::Feature::new(#b, #s);)
    });
    AbiParts {
        read_ty,
        decode: quote! { let _ = ser; ::core::unreachable!() },
        encode: quote! { let _ = (ser, active); },
        active_of: quote! { let _ = ser; 0 },
        features: quote!(::core::option::Option::None),
        inherent: quote! {
            #[allow(non_upper_case_globals)]
            impl #ident {
                #(#consts)*
            }
        },
    }
}

/// The bit of `f` as a mask.
fn mask(f: &Feature) -> TokenStream {
    let b = f.bit;
    quote!((1u64 << #b))
}

/// The handler's `FeatureDecl`: the bits it supports, requires and activates.
fn declaration(m: &Model) -> TokenStream {
    let supported = m.features.iter().map(mask);
    let required = m.features.iter().filter(|f| f.required).map(mask);
    let active: Vec<TokenStream> = match &m.active {
        Some(a) => m
            .features
            .iter()
            .filter(|f| a.contains(&f.name))
            .map(mask)
            .collect(),
        None => m.features.iter().map(mask).collect(),
    };
    quote! {
        ::luo_abi::features::FeatureDecl {
            supported: 0 #(| #supported)*,
            required: 0 #(| #required)*,
            active: 0 #(| #active)*,
        }
    }
}
