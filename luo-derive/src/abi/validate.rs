// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 3 of `#[derive(Abi)]`: the rules of a handover struct that can be decided from its
//! tokens (a struct, C representation, no field type that is never ABI-safe). Padding, field
//! traits and the declared size need the compiler: the expansion proves those.

use syn::Type;

use crate::diag::Errors;

use super::parse::{AbiStruct, NotAStruct, Unsupported};

/// Reports every rule `s` breaks.
pub fn validate(s: &AbiStruct, errors: &mut Errors) {
    if let Some(g) = &s.generics {
        errors.spanned(
            g,
            "#[derive(Abi)] does not support generic types: a handover struct has one fixed layout",
        );
    }
    match &s.not_a_struct {
        Some((span, NotAStruct::Enum)) => {
            errors.at(
                *span,
                "#[derive(Abi)] supports structs only: reading an enum with an unknown value is undefined behaviour; store a fixed-width integer (u32) and define constants",
            );
            return;
        }
        Some((span, NotAStruct::Union)) => {
            errors.at(
                *span,
                "#[derive(Abi)] supports structs only; a union's active member is not part of the bytes",
            );
            return;
        }
        None => {}
    }
    for u in &s.repr.unsupported {
        match u {
            Unsupported::PackedN(n) => errors.spanned(
                n,
                "only #[repr(C, packed)] (packed(1)) matches C's __packed; packed(N) with N > 1 has no C counterpart here",
            ),
            Unsupported::Align(p) => errors.spanned(
                p,
                "#[repr(align(N))] adds tail padding the C struct does not declare; keep natural alignment and add explicit reserved fields",
            ),
            Unsupported::Transparent(p) => errors.spanned(
                p,
                "an ABI struct must be #[repr(C)] (or #[repr(C, packed)]), not #[repr(transparent)]",
            ),
            Unsupported::Other(p) => {
                errors.spanned(p, "an ABI struct must be #[repr(C)] or #[repr(C, packed)]")
            }
        }
    }
    if !s.repr.c && s.repr.unsupported.is_empty() {
        errors.at(
            s.ident.span(),
            format!(
                "ABI struct `{}` needs #[repr(C)] (or #[repr(C, packed)] for a C __packed struct): Rust's default layout may reorder fields",
                s.name()
            ),
        );
    }
    for f in &s.fields {
        check_type(&f.ty, &f.name, errors);
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
