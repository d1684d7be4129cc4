// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks of ioctls, FDT node descriptions and feature declarations.

use std::collections::BTreeMap;

use crate::ast::AbiKind;
use crate::diag::Diagnostics;
use crate::layout::Layouts;
use crate::model::{ConstValue, Items, Scope};
use crate::ty::{Prim, Ty};

use super::*;

pub(super) fn check_ioctl(
    scope: Scope<'_>,
    layouts: &Layouts,
    i: &crate::model::Ioctl,
    diags: &mut Diagnostics,
) {
    let file = scope.component().file;
    if scope.component().abi != AbiKind::Uapi {
        diags.error(
            "ioctl-outside-uapi",
            file,
            i.span.clone(),
            "ioctls belong to a uAPI component",
        );
    }
    if !["_IO", "_IOR", "_IOW", "_IOWR"].contains(&i.encoding.name.as_str()) {
        diags
            .error(
                "bad-ioctl",
                file,
                i.encoding.span.clone(),
                format!("unknown ioctl encoding `{}`", i.encoding.name),
            )
            .with_hint("use _IO, _IOR, _IOW or _IOWR");
    }
    if !["device", "session"].contains(&i.on.name.as_str()) {
        diags.error(
            "bad-ioctl",
            file,
            i.on.span.clone(),
            format!("`on = \"{}\"`: expected `device` or `session`", i.on.name),
        );
    }
    if scope.find_const(&i.ty.name).is_none() {
        diags.error(
            "unknown-name",
            file,
            i.ty.span.clone(),
            format!("unknown ioctl type constant `{}`", i.ty.name),
        );
    }
    check_expr(scope, layouts, &i.nr.0, &i.nr.1, file, diags);
    match scope.find_struct(&i.arg.name) {
        None => {
            diags.error(
                "unknown-type",
                file,
                i.arg.span.clone(),
                format!("unknown argument struct `{}`", i.arg.name),
            );
        }
        Some((_, s)) => {
            let first = s.fields.first();
            // A first member of an unknown type was reported as such.
            let unknown = first
                .is_some_and(|f| matches!(&f.ty, Ty::Named(n) if scope.find_struct(n).is_none()));
            if !unknown && !first.is_some_and(|f| f.name == "size" && f.ty == Ty::Prim(Prim::U32)) {
                diags
                    .error(
                        "ioctl-size-prefix",
                        file,
                        i.arg.span.clone(),
                        format!("`{}` must start with `u32 size`", s.name),
                    )
                    .with_label("extensible uAPI structs are size-prefixed")
                    .with_hint(
                        "add { name = \"size\", type = \"u32\", dir = \"in\" } as the first member",
                    );
            }
            if s.min_size_field.is_none() {
                diags
                    .error("ioctl-min-size", file, i.arg.span.clone(), format!("`{}` does not declare its minimum size", s.name))
                    .with_hint("add `min_size_field = \"<last member of the first version>\"` to the struct");
            }
        }
    }
}

pub(super) fn check_fdt(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
    let file = scope.component().file;
    for node in &items.fdt_nodes {
        let mut names = vec![&node.compatible];
        names.extend(node.name_const.iter());
        names.extend(node.props.iter().map(|p| &p.name_const));
        for n in names {
            match scope.find_const(&n.name) {
                Some((_, c)) if matches!(c.value, ConstValue::Str(_)) => {}
                Some(_) => {
                    diags.error(
                        "fdt",
                        file,
                        n.span.clone(),
                        format!("`{}` must be a string constant", n.name),
                    );
                }
                None => {
                    diags
                        .error(
                            "unknown-name",
                            file,
                            n.span.clone(),
                            format!("unknown constant `{}`", n.name),
                        )
                        .with_label("declare it as a string constant");
                }
            }
        }
        for p in &node.props {
            if !matches!(p.ty, Ty::Prim(Prim::U64) | Ty::Phys(_)) {
                diags
                    .error(
                        "fdt",
                        file,
                        p.ty_span.clone(),
                        format!("FDT property `{}` has type `{}`", p.name_const.name, p.ty),
                    )
                    .with_label("LUO's FDT properties are native-endian u64")
                    .with_hint("use `u64` or `phys<T>`");
            }
            check_type_names(
                scope,
                &p.ty,
                &p.ty_span,
                file,
                &format!("property `{}`", p.name_const.name),
                diags,
            );
        }
    }
}

pub(super) fn check_features(scope: Scope<'_>, diags: &mut Diagnostics) {
    let file = scope.component().file;
    let Some(fs) = scope.version().and_then(|v| v.features.as_ref()) else {
        return;
    };
    let mut seen_bits = BTreeMap::new();
    for b in &fs.bits {
        if b.bit >= 64 {
            diags.error(
                "feature-bit",
                file,
                b.span.clone(),
                format!("feature `{}` uses bit {} of a 64-bit mask", b.name, b.bit),
            );
        }
        if let Some(other) = seen_bits.insert(b.bit, &b.name) {
            diags
                .error(
                    "feature-bit",
                    file,
                    b.span.clone(),
                    format!("feature `{}` reuses bit {} of `{other}`", b.name, b.bit),
                )
                .with_hint("every feature gets its own bit; bits are never reused");
        }
    }
    for list in [&fs.supported, &fs.required, &fs.active] {
        for n in list {
            if !fs.bits.iter().any(|b| b.name == n.name) {
                diags
                    .error(
                        "unknown-feature",
                        file,
                        n.span.clone(),
                        format!("unknown feature `{}`", n.name),
                    )
                    .with_label("not declared under `[[version.features.bit]]`");
            }
        }
    }
    for n in fs.required.iter().chain(&fs.active) {
        if !fs.supported.iter().any(|s| s.name == n.name) {
            diags
                .error(
                    "feature-unsupported",
                    file,
                    n.span.clone(),
                    format!(
                        "feature `{}` is required or active but not supported",
                        n.name
                    ),
                )
                .with_hint("every required or active feature must also be in `supported`");
        }
    }
    match scope.find_struct(&fs.struct_name.name) {
        None => {
            diags.error(
                "unknown-type",
                file,
                fs.struct_name.span.clone(),
                format!("unknown type `{}`", fs.struct_name.name),
            );
        }
        Some((_, s)) => {
            let first = s.fields.first();
            // A first member of an unknown type was reported as such.
            let unknown = first
                .is_some_and(|f| matches!(&f.ty, Ty::Named(n) if scope.find_struct(n).is_none()));
            if !unknown
                && !first.is_some_and(|f| {
                    f.name == "features" && f.ty == Ty::Named("luo_feature_hdr".into())
                })
            {
                diags
                    .error(
                        "feature-header",
                        file,
                        fs.struct_name.span.clone(),
                        format!(
                            "`{}` must embed `luo_feature_hdr features` as its first member",
                            s.name
                        ),
                    )
                    .with_hint("add { name = \"features\", type = \"luo_feature_hdr\" } first");
            }
        }
    }
}
