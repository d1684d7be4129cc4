// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Backends: the IR ([`crate::ir`]) → C headers ([`c`]), Rust ABI types
//! ([`rust`]), JSON layout snapshots and schemas ([`schema`]). Each backend is
//! its own module behind [`Backend`]; the helpers they share live here.

pub mod c;
pub mod rust;
pub mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::ir::Ir;
use crate::layout::{StructLayout, Target};
use crate::model::{Items, Scope, Struct};

/// Files rendered: path relative to the repository root → contents.
pub type Outputs = BTreeMap<PathBuf, String>;

/// A backend: renders its files from the IR.
pub trait Backend {
    /// Adds this backend's files to `out`.
    fn render(&self, ir: &Ir<'_>, out: &mut Outputs);
}

/// The item sets a component's header shows: common items, then the version's.
pub fn header_items<'a>(scope: Scope<'a>) -> Vec<&'a Items> {
    let mut out = vec![&scope.component().common];
    if let Some(v) = scope.version() {
        out.push(&v.items);
    }
    out
}

/// A kernel-doc block (`/** … */`) from free text.
pub fn kernel_doc(doc: Option<&str>) -> Vec<String> {
    let Some(doc) = doc.map(str::trim).filter(|d| !d.is_empty()) else {
        return Vec::new();
    };
    let mut out = vec!["/**".to_string()];
    out.extend(doc.lines().map(|l| {
        if l.trim().is_empty() {
            " *".to_string()
        } else {
            format!(" * {}", l.trim_end())
        }
    }));
    out.push(" */".into());
    out
}

/// The kernel-doc block of a struct: `struct name - summary`, members, body.
pub fn struct_doc(s: &Struct) -> Vec<String> {
    let doc = s.doc.as_deref().map(str::trim).unwrap_or("");
    // Spec authors may write the kernel-doc head themselves.
    let doc = doc
        .strip_prefix(&format!("struct {} - ", s.name))
        .unwrap_or(doc);
    let (summary, body) = doc
        .split_once('\n')
        .map_or((doc, ""), |(a, b)| (a, b.trim()));
    let mut out = vec![
        "/**".to_string(),
        format!(
            " * struct {} - {}",
            s.name,
            if summary.is_empty() {
                "undocumented"
            } else {
                summary
            }
        ),
    ];
    for f in &s.fields {
        let text = f
            .doc
            .as_deref()
            .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let text = match (f.padding, f.reserved, text.is_empty()) {
            (true, _, true) => "Padding; must be zero.".to_string(),
            (false, true, true) => "Reserved; must be zero.".to_string(),
            _ => text,
        };
        out.push(if text.is_empty() {
            format!(" * @{}:", f.name)
        } else {
            format!(" * @{}: {text}", f.name)
        });
    }
    if !body.is_empty() {
        out.push(" *".into());
        out.extend(body.lines().map(|l| {
            if l.trim().is_empty() {
                " *".to_string()
            } else {
                format!(" * {}", l.trim_end())
            }
        }));
    }
    out.push(" */".into());
    out
}

/// Targets grouped by identical layout, in `Target::ALL` order.
pub fn group_targets(per: &[(Target, StructLayout)]) -> Vec<(Vec<Target>, StructLayout)> {
    let mut groups: Vec<(Vec<Target>, StructLayout)> = Vec::new();
    for (t, l) in per {
        match groups.iter_mut().find(|(_, g)| g == l) {
            Some((ts, _)) => ts.push(*t),
            None => groups.push((vec![*t], l.clone())),
        }
    }
    groups
}

/// A `#define` derived from a version's feature negotiation.
pub struct FeatureDefine {
    /// Macro name.
    pub name: String,
    /// C value (`BIT(1)`, `(A | B)`, `0`).
    pub c_value: String,
    /// Its value.
    pub value: u64,
    /// Comment.
    pub doc: String,
}

/// The feature-bit macros of a feature-negotiated version: one per bit,
/// then `<prefix>_FEATURES_SUPP`, `_REQ` and `_ACTIVE`.
pub fn feature_defines(scope: Scope<'_>) -> Vec<FeatureDefine> {
    let Some(fs) = scope.version().and_then(|v| v.features.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<FeatureDefine> = fs
        .bits
        .iter()
        .map(|b| FeatureDefine {
            name: b.name.clone(),
            c_value: format!("BIT({})", b.bit),
            value: 1u64.checked_shl(b.bit).unwrap_or(0),
            doc: b
                .doc
                .clone()
                .unwrap_or_else(|| format!("Feature bit {}.", b.bit)),
        })
        .collect();
    for (suffix, list, what) in [
        (
            "SUPP",
            &fs.supported,
            "Features this kernel supports (`supp`).",
        ),
        (
            "REQ",
            &fs.required,
            "Features a receiver must understand (`req`).",
        ),
        (
            "ACTIVE",
            &fs.active,
            "Features used in the payload (`active`).",
        ),
    ] {
        let names: Vec<&str> = list.iter().map(|n| n.name.as_str()).collect();
        let c_value = match names.as_slice() {
            [] => "0".to_string(),
            [one] => (*one).to_string(),
            many => format!("({})", many.join(" | ")),
        };
        out.push(FeatureDefine {
            name: format!("{}_FEATURES_{suffix}", fs.macro_prefix),
            c_value,
            value: fs.mask(list),
            doc: what.into(),
        });
    }
    out
}
