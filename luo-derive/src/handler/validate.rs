// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 3: every rule a handler's arguments must follow, each reported at the tokens at
//! fault with the fix. Nothing here changes the model.

use proc_macro2::Span;

use crate::common::{check_compat, path_version};
use crate::diag::Errors;

use super::model::{Model, ReadProblem};
use super::ATTR;

/// `LIVEUPDATE_DEPENDS_MAX` of `linux/liveupdate.h` (this crate cannot depend on the
/// generated one).
const LIVEUPDATE_DEPENDS_MAX: usize = 8;

/// Reports every rule `m` breaks.
pub fn validate(m: &Model, errors: &mut Errors) {
    compatible(m, errors);
    depends_on(m, errors);
    abi(m, errors);
    reads(m, errors);
    features(m, errors);
    for p in &m.duplicate_globals {
        errors.spanned(p, "this global state is linked twice; list it once");
    }
}

/// The compatible string (or the versionless name): given once, and fit for its field.
fn compatible(m: &Model, errors: &mut Errors) {
    if let Some(span) = m.name_beside_compatible {
        errors.at(
            span,
            "give either `compatible = \"name-vN\"` (exact-match versioning) or `name = \"...\"` (a versionless name with `features(...)`), not both",
        );
    } else if !m.compat_given {
        errors.at(
            Span::call_site(),
            format!("{ATTR} needs `compatible = \"name-vN\"`: the string written to luo_file_ser.compatible and matched by the next kernel"),
        );
    }
    if let Some(c) = &m.compat {
        let what = if m.versionless {
            "the handler name"
        } else {
            "the compatible string"
        };
        check_compat(c, what, Some("liveupdate_file_handler.compatible"), errors);
    }
}

/// Each dependency is a compatible string, and there are at most `LIVEUPDATE_DEPENDS_MAX`.
fn depends_on(m: &Model, errors: &mut Errors) {
    for d in &m.depends_on {
        check_compat(
            d,
            "a `depends_on` entry",
            Some("liveupdate_file_handler.depends_on"),
            errors,
        );
    }
    if let Some(extra) = m.depends_on.get(LIVEUPDATE_DEPENDS_MAX) {
        errors.spanned(
            extra,
            format!("a handler may depend on at most {LIVEUPDATE_DEPENDS_MAX} handlers (LIVEUPDATE_DEPENDS_MAX); merge the dependencies or drop this one"),
        );
    }
}

/// The ABI type is given, and is from the version the compatible string names.
fn abi(m: &Model, errors: &mut Errors) {
    if m.abi.is_none() && !m.abi_given {
        errors.at(
            Span::call_site(),
            format!("{ATTR} needs `abi = path::to::Type`: the ABI struct the handler hands over (for example luo_generated::memfd::v2::memfd_luo_ser)"),
        );
    }
    if let (Some((base, n)), Some(abi)) = (&m.written, &m.abi) {
        if let Some((_, pv)) = path_version(abi) {
            if pv != *n {
                errors.spanned(
                    abi,
                    format!(
                        "the ABI type is from version `v{pv}`, but the compatible string `{base}-v{n}` names version `v{n}`; use the `v{n}` type or compatible = \"{base}-v{pv}\""
                    ),
                );
            }
        }
    }
}

/// Each version read is an older version of this handler, listed once.
fn reads(m: &Model, errors: &mut Errors) {
    for r in &m.reads {
        let Err(problem) = &r.abi else { continue };
        let v = r.lit.value();
        let msg = match problem {
            ReadProblem::Duplicate => format!("version `{v}` is listed twice in `reads`"),
            ReadProblem::Unordered => {
                "`reads` needs a compatible string of the form `name-vN` to order versions".into()
            }
            ReadProblem::NotAVersion { base, written } => {
                let hint = match written {
                    Some(n) => format!("`{base}-vN` with N below {n}"),
                    None => format!("`{base}-vN`, the exact-match versions before `{base}`"),
                };
                format!("unknown version `{v}`: versions read are compatible strings of this handler, {hint}")
            }
            ReadProblem::OtherBase { base, written } => {
                let own = match written {
                    Some(n) => format!("the compatible string is `{base}-v{n}`"),
                    None => format!("the handler's name is `{base}`"),
                };
                format!("unknown version `{v}`: it is not a version of `{base}` ({own})")
            }
            ReadProblem::NotOlder { base, written: n } => format!(
                "`{v}` is not older than the version written (`{base}-v{n}`); a handler reads only older versions, list only `{base}-vN` with N < {n}"
            ),
            ReadProblem::NoVersionModule => {
                if let Some(abi) = &m.abi {
                    errors.spanned(
                        abi,
                        "`reads` finds each older ABI type next to this one, so `abi` must name its version module (`...::v2::Type`)",
                    );
                }
                continue;
            }
            // Reported once, as the missing argument.
            ReadProblem::NoCompatible | ReadProblem::NoAbi => continue,
        };
        errors.spanned(&r.lit, msg);
    }
}

/// Features belong to a versionless name, are declared once each with their own bit, and
/// `active` names declared ones.
fn features(m: &Model, errors: &mut Errors) {
    if m.versionless && m.features_span.is_none() {
        errors.at(
            Span::call_site(),
            "a versionless `name = ...` needs `features(...)`: declare the feature bits the handler knows, e.g. features(SEALS(bit = 0, fields = [seals]))",
        );
    }
    if let (Some(span), false) = (m.features_span, m.versionless) {
        errors.at(
            span,
            "`features(...)` belong to a feature-negotiated ABI, whose handler has a versionless `name = \"...\"` instead of `compatible`",
        );
    }
    for a in m.active.iter().flatten() {
        if !m.features.iter().any(|f| f.name == *a) {
            errors.spanned(
                a,
                format!("`{a}` is not a feature declared in `features(...)`"),
            );
        }
    }
    let mut seen: Vec<(String, u32)> = Vec::new();
    for f in &m.features {
        if let Some((n, _)) = seen.iter().find(|(n, _)| f.name == n) {
            errors.spanned(&f.name, format!("feature `{n}` is declared twice"));
        } else if let Some((n, _)) = seen.iter().find(|(_, b)| *b == f.bit) {
            errors.spanned(
                &f.name,
                format!(
                    "feature `{}` uses bit {} like `{n}`; each feature needs its own bit",
                    f.name, f.bit
                ),
            );
        }
        seen.push((f.name.to_string(), f.bit));
    }
}
