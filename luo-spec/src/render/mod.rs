//! Renderers: the validated model and its layouts → C headers, Rust ABI
//! types, JSON layout schemas. Shared helpers live here; each backend is
//! its own module.

pub mod c;
pub mod rust;
pub mod schema;

use crate::layout::{StructLayout, Target};
use crate::model::{Items, Scope, Struct};

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
