//! `#[derive(Abi)]`: proves at compile time that a hand-written handover struct has a C
//! layout without implicit padding and only ABI-safe fields, and implements
//! `luo_abi::abi::AbiType` with the reserved-field check run on every read.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Member, Type};

use crate::args::{self, ArgValue};
use crate::diag::Errors;

struct Field {
    member: Member,
    name: String,
    ty: Type,
    reserved: bool,
    foreign: bool,
    span: Span,
}

/// Expands the derive.
pub fn expand(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::new();
    let ident = &input.ident;
    let name = ident.to_string();

    if !input.generics.params.is_empty() {
        errors.spanned(
            &input.generics,
            "#[derive(Abi)] does not support generic types: a handover struct has one fixed layout",
        );
    }

    match &input.data {
        Data::Enum(e) => {
            errors.at(
                e.enum_token.span(),
                "#[derive(Abi)] supports structs only: reading an enum with an unknown value is undefined behaviour; store a fixed-width integer (u32) and define constants",
            );
            return errors.to_compile_errors();
        }
        Data::Union(u) => {
            errors.at(
                u.union_token.span(),
                "#[derive(Abi)] supports structs only; a union's active member is not part of the bytes",
            );
            return errors.to_compile_errors();
        }
        Data::Struct(_) => {}
    }

    // Representation.
    let mut repr_c = false;
    let mut repr_error = false;
    let mut packed = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        let r = attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("C") {
                repr_c = true;
            } else if p.is_ident("packed") {
                if meta.input.peek(syn::token::Paren) {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let n: syn::LitInt = content.parse()?;
                    if n.base10_parse::<u64>()? != 1 {
                        repr_error = true;
                        errors.spanned(
                            &n,
                            "only #[repr(C, packed)] (packed(1)) matches C's __packed; packed(N) with N > 1 has no C counterpart here",
                        );
                    }
                }
                packed = true;
            } else if p.is_ident("align") {
                let content;
                syn::parenthesized!(content in meta.input);
                let _: TokenStream = content.parse()?;
                repr_error = true;
                errors.spanned(
                    p,
                    "#[repr(align(N))] adds tail padding the C struct does not declare; keep natural alignment and add explicit reserved fields",
                );
            } else if p.is_ident("transparent") {
                repr_error = true;
                errors.spanned(
                    p,
                    "an ABI struct must be #[repr(C)] (or #[repr(C, packed)]), not #[repr(transparent)]",
                );
            } else {
                repr_error = true;
                errors.spanned(
                    p,
                    "an ABI struct must be #[repr(C)] or #[repr(C, packed)]",
                );
            }
            Ok(())
        });
        if let Err(e) = r {
            errors.push(e);
        }
    }

    // Struct-level #[abi(size = N)].
    let mut declared_size: Option<(u64, Span)> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("abi")) {
        match attr.meta.require_list() {
            Ok(l) => match args::parse_args(l.tokens.clone()) {
                Ok(list) => {
                    for a in args::check_keys(
                        list,
                        &["size"],
                        "#[abi(...)] on an ABI struct",
                        &mut errors,
                    ) {
                        declared_size = args::int(&a, &mut errors);
                    }
                }
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
    }

    let data = match &input.data {
        Data::Struct(s) => Some(s),
        _ => None,
    };
    if !repr_c && !repr_error {
        errors.at(
            ident.span(),
            format!(
                "ABI struct `{name}` needs #[repr(C)] (or #[repr(C, packed)] for a C __packed struct): Rust's default layout may reorder fields"
            ),
        );
    }

    let mut fields = Vec::new();
    if let Some(s) = data {
        let list: Vec<&syn::Field> = match &s.fields {
            Fields::Named(n) => n.named.iter().collect(),
            Fields::Unnamed(u) => u.unnamed.iter().collect(),
            Fields::Unit => Vec::new(),
        };
        for (i, f) in list.into_iter().enumerate() {
            let (member, fname) = match &f.ident {
                Some(id) => (Member::Named(id.clone()), id.to_string()),
                None => (Member::Unnamed(syn::Index::from(i)), i.to_string()),
            };
            let mut reserved = false;
            let mut foreign = false;
            for attr in f.attrs.iter().filter(|a| a.path().is_ident("abi")) {
                match attr.meta.require_list() {
                    Ok(l) => match args::parse_args(l.tokens.clone()) {
                        Ok(list) => {
                            for a in args::check_keys(
                                list,
                                &["reserved", "foreign"],
                                "#[abi(...)] on a field",
                                &mut errors,
                            ) {
                                if !matches!(a.value, ArgValue::Flag) {
                                    errors.at(
                                        a.key.span(),
                                        format!("`{}` is a flag and takes no value", a.key),
                                    );
                                }
                                match a.key.to_string().as_str() {
                                    "reserved" => reserved = true,
                                    _ => foreign = true,
                                }
                            }
                        }
                        Err(e) => errors.push(e),
                    },
                    Err(e) => errors.push(e),
                }
            }
            check_type(&f.ty, &fname, &mut errors);
            fields.push(Field {
                member,
                name: fname,
                ty: f.ty.clone(),
                reserved,
                foreign,
                span: f.ty.span(),
            });
        }
    }

    if !errors.is_empty() {
        return errors.to_compile_errors();
    }

    // Field types.
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

    // Padding: between consecutive fields, and at the end.
    let mut padding = Vec::new();
    if !packed {
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
    } else {
        padding.push(quote! {
            ::core::assert!(::core::mem::align_of::<#ident>() == 1);
        });
    }

    let size_check = declared_size.map(|(n, span)| {
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
    });

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
        const _: () = {
            #[allow(dead_code)]
            fn __luo_field<T: ?::core::marker::Sized + ::luo_abi::abi::AbiField>() {}
            #[allow(dead_code)]
            fn __luo_foreign<T: ::luo_abi::__private::zerocopy::FromBytes + ::luo_abi::__private::zerocopy::IntoBytes + ::luo_abi::__private::zerocopy::Immutable>() {}
            #(#field_checks)*
            #(#padding)*
        };
        #size_check

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

/// Rejects field types that are never ABI-safe, with a reason and a fix.
fn check_type(ty: &Type, field: &str, errors: &mut Errors) {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else { return };
            let id = last.ident.to_string();
            let msg = match id.as_str() {
                "usize" | "isize" => format!(
                    "field `{field}` has type `{id}`, whose size differs between 32- and 64-bit kernels; use u64 (or u32)"
                ),
                "bool" => format!(
                    "field `{field}` is a `bool`: reading any byte but 0 or 1 as bool is undefined behaviour, and C's _Bool size is not fixed by the ABI; use u8 (0 or 1) or a flag bit"
                ),
                "char" => format!(
                    "field `{field}` is a `char` (4 bytes, only valid code points); use u8 for a C char or u32 for a code point"
                ),
                "f32" | "f64" => format!(
                    "field `{field}` is floating point, which kernel code does not use; store a fixed-point integer"
                ),
                "String" | "Vec" | "Box" | "Option" | "Arc" | "Rc" | "str" => format!(
                    "field `{field}` has type `{id}`, which owns heap memory that does not survive a kexec; use a fixed-size array, or preserve the data in KHO memory and store its Phys<T>"
                ),
                _ => return,
            };
            errors.spanned(ty, msg);
        }
        Type::Reference(_) | Type::Ptr(_) => errors.spanned(
            ty,
            format!(
                "field `{field}` is a pointer: virtual addresses do not survive a kexec; store a physical address (Phys<T> or PhysAddr, a u64)"
            ),
        ),
        Type::BareFn(_) => errors.spanned(
            ty,
            format!("field `{field}` is a function pointer, which means nothing in the next kernel"),
        ),
        Type::Array(a) => check_type(&a.elem, field, errors),
        Type::Tuple(t) if !t.elems.is_empty() => errors.spanned(
            ty,
            format!("field `{field}` is a tuple, whose layout Rust does not fix; use a #[derive(Abi)] struct"),
        ),
        Type::Slice(_) | Type::TraitObject(_) | Type::ImplTrait(_) => errors.spanned(
            ty,
            format!("field `{field}` has no fixed size; use a fixed-size array"),
        ),
        _ => {}
    }
}
