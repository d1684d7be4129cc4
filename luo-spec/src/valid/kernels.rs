// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks of kernel profiles and of where items are placed (internal constants, the
//! extension header).

use std::collections::BTreeSet;

use crate::diag::Diagnostics;
use crate::expr::Expr;
use crate::model::{ConstValue, Items, Scope, Span, Spec};

use super::*;

pub(super) fn check_kernels(spec: &Spec, diags: &mut Diagnostics) {
    let defaults: Vec<_> = spec.kernels.iter().filter(|k| k.default).collect();
    if spec.kernels.len() > 1
        && defaults.len() != 1
        && let Some(k) = spec.kernels.first()
    {
        diags
            .error(
                "kernel-default",
                k.file,
                0..0,
                format!(
                    "{} kernels are marked `default = true`; exactly one must be",
                    defaults.len()
                ),
            )
            .with_hint("the default kernel's headers go to generated/include/");
    }
    let mut names = BTreeSet::new();
    for k in &spec.kernels {
        if !names.insert(&k.name) {
            diags.error(
                "duplicate-name",
                k.file,
                0..0,
                format!("kernel `{}` is defined twice", k.name),
            );
        }
        for (comp, ver) in k
            .writes
            .iter()
            .map(|(c, v)| (c, std::slice::from_ref(v)))
            .chain(k.reads.iter().map(|(c, v)| (c, v.as_slice())))
            .chain(k.drops.iter().map(|(c, v)| (c, v.as_slice())))
        {
            let Some((_, c)) = spec.component(comp) else {
                // A component file that did not parse was reported there.
                if spec.unloaded.contains(comp) {
                    continue;
                }
                let span = ver.first().map_or(0..0, |v| v.span.clone());
                let hint = component_hint(spec, comp);
                // Worded like the same mistake in a `uses`, so all references to one
                // missing component are one finding.
                diags
                    .error(
                        "unknown-name",
                        k.file,
                        span,
                        format!("unknown component `{comp}`"),
                    )
                    .with_label(format!("kernel `{}` names the version of `{comp}`", k.name))
                    .with_hint(hint);
                continue;
            };
            for v in ver {
                if !c.versions.iter().any(|x| x.id == v.name) {
                    let known: Vec<_> = c.versions.iter().map(|x| x.id.as_str()).collect();
                    diags
                        .error(
                            "unknown-name",
                            k.file,
                            v.span.clone(),
                            format!("component `{comp}` has no version `{}`", v.name),
                        )
                        .with_label(format!("kernel `{}` names it", k.name))
                        .with_hint(if known.is_empty() {
                            format!("`{comp}` defines no `[[version]]`")
                        } else {
                            format!("versions of `{comp}`: {}", known.join(", "))
                        });
                }
            }
        }
    }
}

/// An `internal` constant is not in the C header, so nothing the header renders may name it:
/// not another constant that is rendered, not an array length.
pub(super) fn check_internal_unused(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
    let file = scope.component().file;
    let internal: BTreeSet<&str> = items
        .consts
        .iter()
        .filter(|c| c.internal)
        .map(|c| c.name.as_str())
        .collect();
    if internal.is_empty() {
        return;
    }
    let mut uses: Vec<(&Expr, &Span)> = items
        .consts
        .iter()
        .filter(|c| !c.internal)
        .filter_map(|c| match &c.value {
            ConstValue::Int(e) => Some((e, &c.value_span)),
            ConstValue::Str(_) => None,
        })
        .collect();
    uses.extend(
        items
            .structs
            .iter()
            .flat_map(|s| &s.fields)
            .filter_map(|f| f.len.as_ref().map(|(e, sp)| (e, sp))),
    );
    for (e, span) in uses {
        let mut names = Vec::new();
        e.names(&mut names);
        if let Some(n) = names.iter().find(|n| internal.contains(n.as_str())) {
            diags
                .error(
                    "internal-used",
                    file,
                    span.clone(),
                    format!("`{n}` is internal (not in the C header) but the header uses it here"),
                )
                .with_label("rendered into the header")
                .with_hint(format!(
                    "mark this constant `internal` too, or drop `internal` from `{n}`"
                ));
        }
    }
}

/// Items with `ext = true` go to the component's `ext_header`; without one they would be in
/// no header at all.
pub(super) fn check_ext_placement(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
    let comp = scope.component();
    if comp.ext_header.is_some() {
        return;
    }
    let ext = items
        .consts
        .iter()
        .filter(|c| c.place.ext)
        .map(|c| (&c.name, &c.span))
        .chain(
            items
                .structs
                .iter()
                .filter(|s| s.place.ext)
                .map(|s| (&s.name, &s.span)),
        )
        .chain(
            items
                .functions
                .iter()
                .filter(|f| f.place.ext)
                .map(|f| (&f.name, &f.span)),
        );
    for (name, span) in ext {
        diags
            .error(
                "ext-without-header",
                comp.file,
                span.clone(),
                format!(
                    "`{name}` is `ext` but component `{}` has no `ext_header`",
                    comp.name
                ),
            )
            .with_label("would be in no header")
            .with_hint("add `ext_header = \"linux/<name>_ext.h\"` to [component], or drop `ext`");
    }
}
