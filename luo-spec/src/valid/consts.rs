// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Checks of constants: expressions, version constants, strings that must fit their array.

use crate::ast::ConstRole;
use crate::diag::Diagnostics;
use crate::layout::{Layouts, Target};
use crate::model::{ConstValue, Scope, Span};
use crate::ty::{Prim, Ty};

use super::*;

pub(super) fn check_const(
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
pub(super) fn check_version_const(
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
pub(super) fn check_string_fits(
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
