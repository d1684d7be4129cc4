// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks on a loaded spec. Each pushes diagnostics and carries on, so one
//! run reports every problem (serde_derive's `Ctxt` pattern).

use std::collections::{BTreeMap, BTreeSet};

use crate::ast::{AbiKind, ConstRole};
use crate::diag::{Diagnostics, FileId};
use crate::expr::Expr;
use crate::layout::{LayoutError, Layouts, Target};
use crate::model::{ConstValue, Field, Items, Scope, Span, Spec, Struct};
use crate::ty::{Prim, Ty};

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

fn check_const(
    scope: Scope<'_>,
    layouts: &Layouts,
    c: &crate::model::Const,
    diags: &mut Diagnostics,
) {
    let file = scope.component().file;
    match &c.value {
        ConstValue::Int(e) => {
            check_expr(scope, layouts, e, &c.value_span, file, diags);
            if c.role == Some(ConstRole::Version) {
                check_version_const(scope, c, e, diags);
                return;
            }
            if c.role.is_some() {
                diags
                    .error(
                        "const-value",
                        file,
                        c.value_span.clone(),
                        format!("`{}` has a versioning role but is not a string", c.name),
                    )
                    .with_label("an integer");
            }
            if !c.into.is_empty() {
                diags.error(
                    "const-value",
                    file,
                    c.span.clone(),
                    format!(
                        "`into` applies to string constants; `{}` is an integer",
                        c.name
                    ),
                );
            }
        }
        ConstValue::Str(_) if c.role == Some(ConstRole::Version) => {
            diags
                .error(
                    "const-value",
                    file,
                    c.value_span.clone(),
                    format!("version constant `{}` is a string", c.name),
                )
                .with_label("a `version` is an integer literal")
                .with_hint("write `value = \"1\"` and `into = [\"struct.version\"]`");
        }
        ConstValue::Str(s) => {
            if s.bytes()
                .any(|b| b == 0 || b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b))
            {
                diags
                    .error(
                        "bad-string",
                        file,
                        c.value_span.clone(),
                        format!(
                            "`{}` must be printable ASCII without quotes or backslashes",
                            c.name
                        ),
                    )
                    .with_label("rendered into a C string literal");
            }
            if matches!(c.role, Some(ConstRole::Compatible | ConstRole::HandlerName))
                && c.into.is_empty()
            {
                diags
                    .error("compatible-unplaced", file, c.span.clone(), format!("compatible string `{}` does not say which field it is copied into", c.name))
                    .with_label("no `into`")
                    .with_hint("add `into = [\"struct.field\"]` so the generator can check the string fits");
            }
            for (st, field, span) in &c.into {
                check_string_fits(scope, layouts, c, s, st, field, span, diags);
            }
        }
    }
}

/// A `version` constant: an integer literal written into exactly one unsigned
/// integer member of a struct of its own scope, small enough for it. Readers
/// compare the member with the literal, so the literal is the version's
/// identity (see `render::schema::version_identity`).
fn check_version_const(
    scope: Scope<'_>,
    c: &crate::model::Const,
    e: &crate::expr::Expr,
    diags: &mut Diagnostics,
) {
    let file = scope.component().file;
    let crate::expr::Expr::Int(value, _) = e else {
        diags
            .error(
                "const-value",
                file,
                c.value_span.clone(),
                format!("version constant `{}` is not an integer literal", c.name),
            )
            .with_label("an expression")
            .with_hint("a version is compared as written: use a literal such as `2`");
        return;
    };
    let [(st, field, span)] = c.into.as_slice() else {
        diags
            .error(
                "bad-into",
                file,
                c.span.clone(),
                format!(
                    "version constant `{}` must name the one member it is written into",
                    c.name
                ),
            )
            .with_label(format!("{} `into` targets", c.into.len()))
            .with_hint("add `into = [\"struct.version\"]`");
        return;
    };
    let Some((_, strukt)) = scope.find_struct(st) else {
        diags
            .error(
                "unknown-name",
                file,
                span.clone(),
                format!("`into` names unknown struct `{st}`"),
            )
            .with_label("not visible from this version");
        return;
    };
    let Some(f) = strukt.fields.iter().find(|f| f.name == *field) else {
        diags
            .error(
                "unknown-name",
                file,
                span.clone(),
                format!("struct `{st}` has no member `{field}`"),
            )
            .with_label("no such member");
        return;
    };
    let bits = match f.ty {
        Ty::Prim(Prim::U8) => 8,
        Ty::Prim(Prim::U16) => 16,
        Ty::Prim(Prim::U32) => 32,
        Ty::Prim(Prim::U64 | Prim::AlignedU64) => 64,
        _ => {
            diags
                .error(
                    "bad-into",
                    file,
                    span.clone(),
                    format!("`{st}.{field}` is not an unsigned integer member"),
                )
                .with_label(format!("it is `{}`", f.ty));
            return;
        }
    };
    if f.len.is_some() || f.bits.is_some() || (bits < 64 && *value >> bits != 0) {
        diags
            .error(
                "bad-into",
                file,
                span.clone(),
                format!("version {value} does not fit `{st}.{field}`"),
            )
            .with_label(format!(
                "the member holds {bits} bits (and is no array or bitfield)"
            ));
    }
}

#[allow(clippy::too_many_arguments)]
fn check_string_fits(
    scope: Scope<'_>,
    layouts: &Layouts,
    c: &crate::model::Const,
    s: &str,
    st: &str,
    field: &str,
    span: &Span,
    diags: &mut Diagnostics,
) {
    let file = scope.component().file;
    // The field a string is copied into may live in a header this one does
    // not include (memfd's compatible goes into luo's `luo_file_ser`).
    let found = scope.find_struct(st).or_else(|| {
        scope.spec.scopes().into_iter().find_map(|sc| {
            let own = sc.version().map_or(&sc.component().common, |v| &v.items);
            own.structs
                .iter()
                .find(|s| s.name == st)
                .map(|s| (sc.origin, s))
        })
    });
    let Some((origin, strukt)) = found else {
        // Any component that did not parse may define it; its parse error was reported.
        if !scope.spec.unloaded.is_empty() {
            return;
        }
        diags
            .error(
                "unknown-name",
                file,
                span.clone(),
                format!("`into` names unknown struct `{st}`"),
            )
            .with_label("no component defines it");
        return;
    };
    let Some(f) = strukt.fields.iter().find(|f| f.name == field) else {
        diags
            .error(
                "unknown-name",
                file,
                span.clone(),
                format!("struct `{st}` has no member `{field}`"),
            )
            .with_label("no such member");
        return;
    };
    // A member of an unknown type was reported as such.
    if matches!(&f.ty, Ty::Named(n) if scope.at(origin).find_struct(n).is_none()) {
        return;
    }
    if !matches!(f.ty, Ty::Str | Ty::Prim(Prim::Char | Prim::U8)) {
        diags
            .error(
                "bad-into",
                file,
                span.clone(),
                format!("`{st}.{field}` is not a string field"),
            )
            .with_label(format!("it is `{}`", f.ty));
        return;
    }
    let Some((len, _)) = &f.len else { return };
    let Ok(cap) = layouts.eval(scope.at(origin), len, Target::PRIMARY) else {
        return;
    };
    let need = s.len() as u64 + 1;
    if need > cap {
        diags
            .error(
                "string-too-long",
                file,
                c.value_span.clone(),
                format!("`{}` does not fit `{st}.{field}`", c.name),
            )
            .with_label(format!(
                "\"{s}\" takes {need} bytes with its NUL; `{st}.{field}` holds {cap}"
            ))
            .with_hint(format!(
                "shorten the string to at most {} characters",
                cap.saturating_sub(1)
            ));
    }
}

fn check_type_names(
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
fn check_handover_member(scope: Scope<'_>, s: &Struct, f: &Field, diags: &mut Diagnostics) {
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

fn check_struct(scope: Scope<'_>, layouts: &Layouts, s: &Struct, diags: &mut Diagnostics) {
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

fn report_layout_error(scope: Scope<'_>, s: &Struct, e: &LayoutError, diags: &mut Diagnostics) {
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

fn check_ioctl(
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

fn check_fdt(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
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

fn check_features(scope: Scope<'_>, diags: &mut Diagnostics) {
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

fn check_kernels(spec: &Spec, diags: &mut Diagnostics) {
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
fn check_internal_unused(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
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
fn check_ext_placement(scope: Scope<'_>, items: &Items, diags: &mut Diagnostics) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_works() {
        assert_eq!(super::edit_distance("kho_vmalloc", "kho_vmaloc"), 1);
        assert_eq!(super::edit_distance("abc", "abc"), 0);
    }
}
