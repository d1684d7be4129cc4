// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks of structs: type names, members of handover structs, layouts.

use crate::ast::AbiKind;
use crate::diag::{Diagnostics, FileId};
use crate::layout::{LayoutError, Layouts, Target};
use crate::model::{Field, Scope, Span, Struct};
use crate::ty::{Prim, Ty};

use super::*;

pub(super) fn check_type_names(
    scope: Scope<'_>,
    ty: &Ty,
    span: &Span,
    file: FileId,
    what: &str,
    diags: &mut Diagnostics,
) {
    let abi = scope.component().abi;
    // Unknown names may come from a `uses` that is missing; that one was reported.
    let silent = scope.incomplete();
    match ty {
        Ty::Named(n) => {
            if scope.find_struct(n).is_none() && !silent {
                let hint = suggest(scope, n).unwrap_or_else(|| {
                    "define the struct, or add the component that defines it to `uses`".into()
                });
                // The name is the headline: every use of one missing struct is one finding.
                diags
                    .error(
                        "unknown-type",
                        file,
                        span.clone(),
                        format!("unknown type `{n}`"),
                    )
                    .with_label(format!("{what}: no struct with this name is visible"))
                    .with_hint(hint);
            }
        }
        Ty::Phys(n) => {
            if scope.find_struct(n).is_none() && !scope.is_opaque(n) && !silent {
                diags
                    .error(
                        "unknown-type",
                        file,
                        span.clone(),
                        format!("unknown type `{n}`"),
                    )
                    .with_label(format!("{what}: `phys<{n}>` points to no visible struct"))
                    .with_hint(suggest(scope, n).unwrap_or_else(|| {
                        "define the struct, or add the component that defines it to `uses`".into()
                    }));
            }
        }
        Ty::Ptr { target, .. } => {
            // Pointers in handover structs are reported by `check_handover_member`, with the
            // field's name; a `kho` component's functions are kernel-side declarations.
            if abi == AbiKind::Uapi {
                diags
                    .error(
                        "pointer-in-abi",
                        file,
                        span.clone(),
                        format!("{what}: pointers cannot cross the uAPI"),
                    )
                    .with_label("a pointer")
                    .with_hint("use a u64 handle or an `aligned_u64` user address");
            }
            match target.as_ref() {
                Ty::Named(n)
                    if scope.find_struct(n).is_none() && !scope.is_opaque(n) && !silent =>
                {
                    diags
                        .error(
                            "unknown-type",
                            file,
                            span.clone(),
                            format!("unknown type `{n}`"),
                        )
                        .with_label(format!("{what}: a pointer to no struct or opaque type"))
                        .with_hint(
                            "declare it in `[component] opaque = [...]` if it is a kernel object",
                        );
                }
                Ty::Named(_) => {}
                other => check_type_names(scope, other, span, file, what, diags),
            }
        }
        Ty::Fn(sig) => {
            for (n, t) in &sig.args {
                check_type_names(
                    scope,
                    t,
                    span,
                    file,
                    &format!("{what}, argument `{n}`"),
                    diags,
                );
            }
            check_type_names(scope, &sig.ret, span, file, what, diags);
        }
        Ty::Prim(p) => {
            if abi == AbiKind::Uapi && !p.is_fixed_int() && !matches!(p, Prim::Char | Prim::Void) {
                diags
                    .error(
                        "uapi-type",
                        file,
                        span.clone(),
                        format!("{what}: `{}` has no fixed width in the uAPI", p.name()),
                    )
                    .with_label(if matches!(p, Prim::Ulong | Prim::Long) {
                        "size differs between 32- and 64-bit userspace"
                    } else {
                        "uAPI headers use the fixed-width __u32/__s32 types"
                    })
                    .with_hint("use a fixed-width type such as `s32` or `u64`");
            }
        }
        Ty::Str => {}
    }
}

/// A member of a handover struct (`abi = "kho"`: bytes read by the next kernel) must mean the
/// same thing there: no kernel pointer, no function pointer, no C `bool` and no integer whose
/// width is up to the C ABI. (The kernel C API, `abi = "kernel"`, never crosses the kexec and
/// may hold all of these.)
pub(super) fn check_handover_member(
    scope: Scope<'_>,
    s: &Struct,
    f: &Field,
    diags: &mut Diagnostics,
) {
    let file = scope.component().file;
    let (field, strukt) = (&f.name, &s.name);
    match &f.ty {
        Ty::Ptr { target, .. } => {
            let phys = match target.as_ref() {
                Ty::Named(n) if scope.find_struct(n).is_some() => format!("phys<{n}>"),
                _ => "phys<T>".to_string(),
            };
            diags
                .error(
                    "pointer-in-handover",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "field `{field}` of `{strukt}` is a kernel pointer: pointers do not survive a kexec"
                    ),
                )
                .with_label("a kernel pointer in handover data")
                .with_hint(format!(
                    "store a physical address (`{phys}`) and rebuild the pointer in the new kernel, or drop it; to keep upstream's offsets, declare it {{ name = \"reserved_{field}\", type = \"u64\", reserved = true }} and say so in `doc`"
                ));
        }
        Ty::Fn(_) => {
            diags
                .error(
                    "pointer-in-handover",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "field `{field}` of `{strukt}` is a function pointer: code addresses do not survive a kexec"
                    ),
                )
                .with_label("a function pointer in handover data")
                .with_hint("hand over what selects the callback (a u32 kind, a compatible string) and look it up in the new kernel, or drop it");
        }
        Ty::Prim(Prim::Bool) => {
            diags
                .error(
                    "bool-in-handover",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "field `{field}` of `{strukt}` is a C `bool`: it has no fixed representation across compilers and architectures"
                    ),
                )
                .with_label("size and valid values of `_Bool` are up to the C ABI")
                .with_hint("use `u8` (0 or 1), or a bit of a flags member");
        }
        Ty::Prim(p @ (Prim::Int | Prim::Uint | Prim::Ushort | Prim::Long | Prim::Ulong)) => {
            let (fixed, why) = match p {
                Prim::Int => ("s32", "its width is up to the C ABI"),
                Prim::Uint => ("u32", "its width is up to the C ABI"),
                Prim::Ushort => ("u16", "its width is up to the C ABI"),
                Prim::Long => ("s64", "it is 4 bytes on 32-bit and 8 on 64-bit kernels"),
                _ => ("u64", "it is 4 bytes on 32-bit and 8 on 64-bit kernels"),
            };
            diags
                .error(
                    "handover-type",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "field `{field}` of `{strukt}` is `{}`, which has no fixed width in handover data",
                        p.name()
                    ),
                )
                .with_label(why)
                .with_hint(format!("use the fixed-width `{fixed}`"));
        }
        _ => {}
    }
}

pub(super) fn check_struct(
    scope: Scope<'_>,
    layouts: &Layouts,
    s: &Struct,
    diags: &mut Diagnostics,
) {
    let comp = scope.component();
    let file = comp.file;
    for f in &s.fields {
        if comp.abi == AbiKind::Kho {
            check_handover_member(scope, s, f, diags);
        }
        check_type_names(
            scope,
            &f.ty,
            &f.ty_span,
            file,
            &format!("`{}.{}`", s.name, f.name),
            diags,
        );
        if let Some((len, span)) = &f.len {
            check_expr(scope, layouts, len, span, file, diags);
        }
        if f.khoser && !matches!(f.ty, Ty::Phys(_)) {
            diags
                .error(
                    "khoser",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "`khoser` applies to `phys<T>` members; `{}.{}` is `{}`",
                        s.name, f.name, f.ty
                    ),
                )
                .with_label("not a physical address");
        }
        if f.bitmap && !(f.ty == Ty::Prim(Prim::U64) && f.len.is_some() && f.bits.is_none()) {
            diags
                .error(
                    "bitmap",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "`bitmap` applies to `u64` arrays (`len` words of 64 bits); `{}.{}` is \
                         `{}`{}",
                        s.name,
                        f.name,
                        f.ty,
                        if f.len.is_none() {
                            " without `len`"
                        } else {
                            ""
                        }
                    ),
                )
                .with_label("not an array of u64 words");
        }
        if let Some((default, span)) = &f.default {
            check_expr(scope, layouts, default, span, file, diags);
        }
        if matches!(f.ty, Ty::Fn(_)) && !s.ops {
            diags
                .error(
                    "callback-outside-ops",
                    file,
                    f.ty_span.clone(),
                    format!(
                        "`{}.{}` is a callback but `{}` is not an ops table",
                        s.name, f.name, s.name
                    ),
                )
                .with_hint("add `ops = true` to the struct");
        }
        if s.ops && matches!(f.ty, Ty::Fn(_)) && f.required.is_none() {
            diags
                .error("callback-required", file, f.span.clone(), format!("callback `{}.{}` does not say whether it is required", s.name, f.name))
                .with_label("needs `required = true` or `required = false`")
                .with_hint("the macros reject handlers missing a required callback and fill NULL for optional ones");
        }
        if f.required.is_some() && !matches!(f.ty, Ty::Fn(_)) {
            diags.error(
                "callback-required",
                file,
                f.span.clone(),
                format!(
                    "`required` applies to callbacks; `{}.{}` is `{}`",
                    s.name, f.name, f.ty
                ),
            );
        }
        if let Some((_, span)) = &f.dir
            && comp.abi != AbiKind::Uapi
        {
            diags
                .error(
                    "dir-outside-uapi",
                    file,
                    span.clone(),
                    "`dir` only applies to uAPI structs",
                )
                .with_label("not a uAPI component");
        }
        if let Some((_, span)) = &f.bits {
            if f.len.is_some() {
                diags.error(
                    "bitfield",
                    file,
                    span.clone(),
                    format!(
                        "`{}.{}` cannot be both an array and a bitfield",
                        s.name, f.name
                    ),
                );
            }
            // An unknown type name was reported as such; a bitfield error would repeat it.
            let unknown = matches!(&f.ty, Ty::Named(n) if scope.find_struct(n).is_none());
            if !unknown && !matches!(f.ty, Ty::Prim(p) if p.is_fixed_int() && p != Prim::AlignedU64)
            {
                diags
                    .error(
                        "bitfield",
                        file,
                        f.ty_span.clone(),
                        format!("bitfield `{}.{}` has type `{}`", s.name, f.name, f.ty),
                    )
                    .with_label("bitfields need u8…u64 or s8…s64");
            }
        }
        if let Some(feat) = &f.feature {
            let known = scope
                .version()
                .and_then(|v| v.features.as_ref())
                .is_some_and(|fs| fs.bits.iter().any(|b| b.name == feat.name));
            if !known {
                diags
                    .error(
                        "unknown-feature",
                        file,
                        feat.span.clone(),
                        format!(
                            "`{}.{}` is gated by unknown feature `{}`",
                            s.name, f.name, feat.name
                        ),
                    )
                    .with_label("not a feature bit of this version")
                    .with_hint("declare it under `[[version.features.bit]]`");
            }
        }
    }
    if let Some(m) = &s.min_size_field
        && !s.fields.iter().any(|f| f.name == m.name)
    {
        diags
            .error(
                "unknown-name",
                file,
                m.span.clone(),
                format!("`min_size_field`: `{}` has no member `{}`", s.name, m.name),
            )
            .with_label("no such member");
    }
    // Layout on every target.
    let mut per_target = Vec::new();
    for target in Target::ALL {
        match layouts.layout(scope, &s.name, target) {
            Ok(l) => per_target.push((target, l)),
            Err(e) => {
                if target == Target::PRIMARY {
                    report_layout_error(scope, s, &e, diags);
                }
                return;
            }
        }
    }
    let primary = &per_target[0].1;
    if let Some((expected, span)) = &s.size
        && *expected != primary.size
    {
        diags
            .error(
                "size-mismatch",
                file,
                span.clone(),
                format!(
                    "struct `{}` is {} bytes, but the spec says {}",
                    s.name, primary.size, expected
                ),
            )
            .with_label(format!("layout gives {} on x86_64", primary.size))
            .with_hint("check member types, `packed` and array lengths against upstream");
    }
    // Implicit padding: an error where bytes cross a kexec or the uAPI.
    for (target, l) in &per_target {
        // The first hole only: fixing it moves the ones after it.
        if let Some(hole) = l.holes.first() {
            let after = hole.after.as_deref().unwrap_or("(start)");
            let span = s
                .fields
                .iter()
                .find(|f| Some(&f.name) == hole.after.as_ref())
                .map_or(s.span.clone(), |f| f.span.clone());
            let message = format!(
                "struct `{}` has {} bytes of implicit padding after member `{after}` on {target}",
                s.name, hole.size
            );
            let hint = format!(
                "add an explicit member after `{after}`: {{ name = \"padding\", type = \"u8\", len = \"{}\", padding = true }}, or mark the struct `packed = true` if upstream packs it",
                hole.size
            );
            if comp.abi == AbiKind::Kernel {
                if *target == Target::PRIMARY {
                    diags
                        .note("implicit-padding", file, span, message)
                        .with_label(format!("{} byte hole at offset {}", hole.size, hole.offset));
                }
            } else {
                diags
                    .error("implicit-padding", file, span, message)
                    .with_label(format!("{} byte hole at offset {}", hole.size, hole.offset))
                    .with_hint(hint);
            }
        }
        if comp.abi != AbiKind::Kernel && !l.holes.is_empty() {
            break;
        }
    }
    // Architecture dependence (same page size: x86_64, i386, arm64-4k).
    let differs: Vec<String> = per_target[1..3]
        .iter()
        .filter(|(_, l)| !l.same_shape(primary))
        .map(|(t, l)| format!("{t}: {} bytes", l.size))
        .collect();
    if !differs.is_empty() {
        let msg = format!(
            "struct `{}` has a different layout across architectures (x86_64: {} bytes; {})",
            s.name,
            primary.size,
            differs.join(", ")
        );
        match comp.abi {
            AbiKind::Uapi => {
                diags
                    .error("arch-dependent-uapi", file, s.span.clone(), msg)
                    .with_label("32-bit userspace would need compat_ioctl")
                    .with_hint("use `aligned_u64` for 64-bit members and explicit padding");
            }
            AbiKind::Kho => {
                diags
                    .note("arch-dependent", file, s.span.clone(), msg)
                    .with_label("each architecture hands over to itself, so this is allowed");
            }
            AbiKind::Kernel => {}
        }
    }
    // PAGE_SIZE dependence (arm64 4K/16K/64K).
    let arm = &per_target[2].1;
    if per_target[3..].iter().any(|(_, l)| !l.same_shape(arm)) {
        let sizes: Vec<String> = per_target[2..]
            .iter()
            .map(|(t, l)| format!("{t}: {}", l.size))
            .collect();
        diags
            .note(
                "page-size-dependent",
                file,
                s.span.clone(),
                format!(
                    "struct `{}` depends on PAGE_SIZE ({})",
                    s.name,
                    sizes.join(", ")
                ),
            )
            .with_label("kernels with different page sizes cannot hand this over to each other");
    }
}

pub(super) fn report_layout_error(
    scope: Scope<'_>,
    s: &Struct,
    e: &LayoutError,
    diags: &mut Diagnostics,
) {
    let file = scope.component().file;
    match e {
        LayoutError::UnknownType { .. } | LayoutError::Eval { .. } => {} // reported by the name/expression checks
        LayoutError::Recursive(name) => {
            let message = if *name == s.name {
                format!("struct `{name}` contains itself by value")
            } else {
                format!(
                    "struct `{}` contains struct `{name}`, which contains itself by value",
                    s.name
                )
            };
            diags
                .error("recursive-struct", file, s.span.clone(), message)
                .with_hint("use `phys<T>` to refer to another instance");
        }
        LayoutError::Invalid { field, why, .. } | LayoutError::Bitfield { field, why, .. } => {
            let span = s
                .fields
                .iter()
                .find(|f| &f.name == field)
                .map_or(s.span.clone(), |f| {
                    f.bits.as_ref().map_or(f.span.clone(), |b| b.1.clone())
                });
            let code = if matches!(e, LayoutError::Bitfield { .. }) {
                "bitfield"
            } else {
                "invalid-member"
            };
            let message = if field.is_empty() {
                format!("`{}`: {why}", s.name)
            } else {
                format!("`{}.{field}`: {why}", s.name)
            };
            diags.error(code, file, span, message).with_label("here");
        }
    }
}
