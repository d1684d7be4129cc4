// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks on a loaded spec. Each pushes diagnostics and carries on, so one
//! run reports every problem (serde_derive's `Ctxt` pattern).

use std::collections::{BTreeMap, BTreeSet};

use crate::ast::AbiKind;
use crate::diag::{Diagnostics, FileId};
use crate::expr::Expr;
use crate::layout::{Layouts, Target};
use crate::model::{Items, Scope, Span, Spec};

mod consts;
mod items;
mod kernels;
mod structs;

use consts::*;
use items::*;
use kernels::*;
use structs::*;

/// Run every check.
pub fn check(spec: &Spec, layouts: &Layouts, diags: &mut Diagnostics) {
    check_components(spec, diags);

    for scope in spec.scopes() {
        let file = scope.component().file;
        let items = match scope.version() {
            Some(v) => &v.items,
            None => &scope.component().common,
        };
        check_duplicates(scope, items, diags);
        check_uses(scope, diags);
        for c in &items.consts {
            check_const(scope, layouts, c, diags);
        }
        check_internal_unused(scope, items, diags);
        check_ext_placement(scope, items, diags);
        for e in items.enums.iter().flat_map(|e| &e.members) {
            check_expr(scope, layouts, &e.value, &e.value_span, file, diags);
        }
        for s in &items.structs {
            check_struct(scope, layouts, s, diags);
        }
        for i in &items.ioctls {
            check_ioctl(scope, layouts, i, diags);
        }
        for f in &items.functions {
            for (name, ty) in &f.sig.args {
                check_type_names(
                    scope,
                    ty,
                    &f.sig_span,
                    file,
                    &format!("argument `{name}` of `{}`", f.name),
                    diags,
                );
            }
            check_type_names(
                scope,
                &f.sig.ret,
                &f.sig_span,
                file,
                &format!("return type of `{}`", f.name),
                diags,
            );
        }
        check_fdt(scope, items, diags);
        check_features(scope, diags);
    }
    check_kernels(spec, diags);
}

fn check_components(spec: &Spec, diags: &mut Diagnostics) {
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    let mut headers: BTreeSet<&str> = BTreeSet::new();
    for c in &spec.components {
        if seen.insert(&c.name, c.name_span.clone()).is_some() {
            diags
                .error(
                    "duplicate-name",
                    c.file,
                    c.name_span.clone(),
                    format!("component `{}` is defined twice", c.name),
                )
                .with_label("second definition");
        }
        if !is_ident(&c.name) {
            diags
                .error(
                    "bad-name",
                    c.file,
                    c.name_span.clone(),
                    format!("component name `{}` is not an identifier", c.name),
                )
                .with_label("used as the Rust module name")
                .with_hint("use lowercase letters, digits and `_`");
        }
        if !headers.insert(&c.header) {
            diags.error(
                "duplicate-name",
                c.file,
                c.name_span.clone(),
                format!("header `{}` is rendered by two components", c.header),
            );
        }
        let mut ids = BTreeSet::new();
        for v in &c.versions {
            if !ids.insert(&v.id) {
                diags
                    .error(
                        "duplicate-name",
                        c.file,
                        v.span.clone(),
                        format!("version `{}` of `{}` is defined twice", v.id, c.name),
                    )
                    .with_label("second definition");
            }
            if !is_ident(&v.id) {
                diags
                    .error(
                        "bad-name",
                        c.file,
                        v.span.clone(),
                        format!("version id `{}` is not an identifier", v.id),
                    )
                    .with_label("used as the Rust module name")
                    .with_hint("use lowercase letters, digits and `_`, e.g. `v1_flb`");
            }
        }
        for u in &c.uses {
            // A component whose file did not parse was reported there.
            if spec.component(&u.name).is_none() && !spec.unloaded.contains(&u.name) {
                diags
                    .error(
                        "unknown-name",
                        c.file,
                        u.span.clone(),
                        format!("unknown component `{}`", u.name),
                    )
                    .with_label("not defined in spec/")
                    .with_hint(component_hint(spec, &u.name));
            }
        }
    }
}

/// The hint for an unknown component name: the closest known one, and all of them.
fn component_hint(spec: &Spec, name: &str) -> String {
    let known: Vec<_> = spec.components.iter().map(|c| c.name.as_str()).collect();
    let closest = known
        .iter()
        .copied()
        .filter(|c| edit_distance(c, name) <= 2)
        .min_by_key(|c| edit_distance(c, name));
    match closest {
        Some(c) => format!("did you mean `{c}`? components: {}", known.join(", ")),
        None => format!("components: {}", known.join(", ")),
    }
}

fn is_ident(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Names must be unique in what a scope sees: its own items plus everything visible.
fn check_duplicates(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
    let file = scope.component().file;
    let mut own: BTreeMap<&str, ()> = BTreeMap::new();
    let mut macros: Vec<(&str, &Span)> = items
        .consts
        .iter()
        .map(|c| (c.name.as_str(), &c.span))
        .collect();
    macros.extend(
        items
            .enums
            .iter()
            .flat_map(|e| &e.members)
            .map(|m| (m.name.as_str(), &m.span)),
    );
    macros.extend(items.ioctls.iter().map(|i| (i.name.as_str(), &i.span)));
    macros.extend(items.macros.iter().map(|m| (m.name.as_str(), &m.span)));
    for (name, span) in macros {
        if own.insert(name, ()).is_some() {
            diags
                .error(
                    "duplicate-name",
                    file,
                    span.clone(),
                    format!("`{name}` is defined twice"),
                )
                .with_label("second definition");
        } else if scope.origin.ver.is_some()
            && scope
                .at(crate::model::Origin {
                    ver: None,
                    ..scope.origin
                })
                .find_const(name)
                .is_some()
        {
            diags
                .error("duplicate-name", file, span.clone(), format!("`{name}` is already defined for every version of `{}`", scope.component().name))
                .with_label("redefined in a version")
                .with_hint("a version may add items, not redefine common ones; move the common definition into each version");
        }
    }
    let mut structs = BTreeSet::new();
    for s in &items.structs {
        if !structs.insert(&s.name) {
            diags
                .error(
                    "duplicate-name",
                    file,
                    s.span.clone(),
                    format!("struct `{}` is defined twice", s.name),
                )
                .with_label("second definition");
        } else if scope.origin.ver.is_some()
            && scope
                .at(crate::model::Origin {
                    ver: None,
                    ..scope.origin
                })
                .find_struct(&s.name)
                .is_some()
        {
            diags
                .error(
                    "duplicate-name",
                    file,
                    s.span.clone(),
                    format!(
                        "struct `{}` is already defined for every version of `{}`",
                        s.name,
                        scope.component().name
                    ),
                )
                .with_label("redefined in a version");
        }
        let mut fields = BTreeSet::new();
        for f in &s.fields {
            if !fields.insert(&f.name) {
                diags
                    .error(
                        "duplicate-name",
                        file,
                        f.span.clone(),
                        format!("`{}.{}` is defined twice", s.name, f.name),
                    )
                    .with_label("second member with this name");
            }
        }
    }
}

fn check_uses(scope: Scope<'_>, diags: &mut Diagnostics) {
    let Some(v) = scope.version() else { return };
    if let Some(from) = &v.migrates_from {
        let comp = scope.component();
        if from.name == v.id || !comp.versions.iter().any(|x| x.id == from.name) {
            let known: Vec<&str> = comp
                .versions
                .iter()
                .filter(|x| x.id != v.id)
                .map(|x| x.id.as_str())
                .collect();
            diags
                .error(
                    "unknown-name",
                    comp.file,
                    from.span.clone(),
                    format!(
                        "`migrates_from`: `{}` has no other version `{}`",
                        comp.name, from.name
                    ),
                )
                .with_label("not a version to migrate from")
                .with_hint(format!("versions of `{}`: {}", comp.name, known.join(", ")));
        }
    }
    for (c, ver, span) in &v.uses {
        let ok = scope
            .spec
            .component(c)
            .is_some_and(|(_, comp)| comp.versions.iter().any(|x| &x.id == ver));
        if !ok && !scope.spec.unloaded.contains(c) {
            // Worded like the same mistake in a kernel file, so that every reference to one
            // missing component or version is one finding.
            let message = if scope.spec.component(c).is_none() {
                format!("unknown component `{c}`")
            } else {
                format!("component `{c}` has no version `{ver}`")
            };
            let d = diags
                .error(
                    "unknown-name",
                    scope.component().file,
                    span.clone(),
                    message,
                )
                .with_label(format!("`uses` names `{c}/{ver}`"));
            if scope.spec.component(c).is_none() {
                d.with_hint(component_hint(scope.spec, c));
            }
        }
    }
}

fn check_expr(
    scope: Scope<'_>,
    layouts: &Layouts,
    expr: &Expr,
    span: &Span,
    file: FileId,
    diags: &mut Diagnostics,
) {
    if scope.component().abi == AbiKind::Uapi
        && let Some(what) = expr.kernel_only()
    {
        diags
            .error(
                "uapi-kernel-macro",
                file,
                span.clone(),
                format!("`{what}` is not available to userspace"),
            )
            .with_label("used in a uAPI header")
            .with_hint("write the value with plain C operators");
    }
    if let Err(e) = layouts.eval(scope, expr, Target::PRIMARY) {
        // A name a missing `uses` would have defined: that `uses` was reported.
        if matches!(e, crate::expr::EvalError::UnknownName(_)) && scope.incomplete() {
            return;
        }
        // The struct's own error was reported where it is defined.
        if matches!(e, crate::expr::EvalError::StructFailed(_)) {
            return;
        }
        let mut names = Vec::new();
        expr.names(&mut names);
        let hint = match &e {
            crate::expr::EvalError::UnknownName(n) => suggest(scope, n),
            _ => None,
        };
        // A missing name is the headline, so every expression missing it is one finding
        // (shown once, with its other places); arithmetic errors are about the expression.
        let (code, message, label) = match &e {
            crate::expr::EvalError::UnknownSizeof(n) if n.starts_with("struct ") => (
                "unknown-type",
                format!("unknown type `{}`", &n["struct ".len()..]),
                format!("in `{expr}`: no struct with this name is visible"),
            ),
            crate::expr::EvalError::UnknownName(_) | crate::expr::EvalError::UnknownSizeof(_) => {
                ("bad-expression", e.to_string(), format!("in `{expr}`"))
            }
            _ => (
                "bad-expression",
                format!("cannot evaluate `{expr}`"),
                e.to_string(),
            ),
        };
        let d = diags
            .error(code, file, span.clone(), message)
            .with_label(label);
        if let Some(h) = hint {
            d.with_hint(h);
        }
    }
}

/// "did you mean" among visible constants and structs.
fn suggest(scope: Scope<'_>, name: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for (_, items) in scope.visible() {
        let names = items
            .consts
            .iter()
            .map(|c| c.name.clone())
            .chain(
                items
                    .enums
                    .iter()
                    .flat_map(|e| &e.members)
                    .map(|m| m.name.clone()),
            )
            .chain(items.structs.iter().map(|s| s.name.clone()));
        for n in names {
            let d = edit_distance(&n.to_lowercase(), &name.to_lowercase());
            if d <= 3.max(name.len() / 4) && best.as_ref().is_none_or(|(bd, _)| d < *bd) {
                best = Some((d, n));
            }
        }
    }
    best.map(|(_, n)| format!("did you mean `{n}`?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_works() {
        assert_eq!(super::edit_distance("kho_vmalloc", "kho_vmaloc"), 1);
        assert_eq!(super::edit_distance("abc", "abc"), 0);
    }
}
