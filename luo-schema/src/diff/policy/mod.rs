// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Policy: what each fact means for a live update, as findings with stable
//! rule IDs. Facts (`facts.rs`) say what changed; only this module judges.
//!
//! The rules, by ABI kind:
//!
//! - **Handover (KHO) ABIs with compatible strings**: any layout change is
//!   breaking, so it must come with a new compatible string
//!   (`COMPAT_NOT_BUMPED` otherwise); a bump is fine only when the new kernel
//!   keeps a reader of the old version (`READER_KEPT`) or declares its
//!   removal (`READER_REMOVAL_DECLARED`); else `READER_NOT_KEPT`. Consuming a
//!   reserved must-be-zero member is compatible. A versionless compatible
//!   string carries its version in a member of the data (a `version`
//!   constant: upstream's `"pci"` with `pci_ser.version`); the string and
//!   the number together are the version, so bumping the number is the bump
//!   (`STRUCT_VERSION_BUMPED`), and dropping the number from the string is
//!   reported as such (`COMPAT_VERSIONLESS`).
//! - **Feature-negotiated ABIs** (`luo_feature_hdr`): a struct grows only at
//!   the end, behind a new optional feature; a feature turned required breaks
//!   every kernel that does not know it, and must have been published as
//!   supported in an earlier release (the transition-kernel rule); bits are
//!   never reused or renumbered, gated members never move.
//! - **uAPI**: size-prefixed structs may grow at the end; minimum sizes may
//!   not rise; ioctls may be added, not changed; enum sentinels may move; a
//!   layout that differs between i386 and x86_64 is an error.
//! - **In-kernel C API**: not part of a handover; changes are notes.

use serde::Serialize;

use super::facts::{Fact, FeatureFlags};
use luo_spec::render::schema::ComponentSnapshot;

mod rules;

pub use rules::*;

/// How a finding affects a live update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; no effect on compatibility.
    Note,
    /// A change that old and new kernels (or userspace) both handle.
    Compatible,
    /// The live update (or old userspace) breaks.
    Breaking,
    /// A policy violation in the spec itself: fix before release.
    Error,
}

/// One classified change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable rule ID, e.g. `COMPAT_NOT_BUMPED`.
    pub rule: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Component.
    pub component: String,
    /// What it is about (`struct x`, `x.field`, a constant).
    pub subject: String,
    /// What changed, with old → new values.
    pub message: String,
    /// How to fix it, when something needs fixing.
    pub fix: Option<String>,
}

fn is_sentinel(name: &str) -> bool {
    ["_MAX", "_NR", "_COUNT", "_LAST"]
        .iter()
        .any(|s| name.ends_with(s))
        || name.starts_with("__")
}

/// The next compatible string: `memfd-v1` → `memfd-v2`.
pub fn bumped(compatible: &str) -> String {
    let digits = compatible
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let (stem, num) = compatible.split_at(compatible.len() - digits);
    match num.parse::<u64>() {
        Ok(n) => format!("{stem}{}", n + 1),
        Err(_) => format!("{compatible}-v2"),
    }
}

struct Ctx<'a> {
    old: &'a ComponentSnapshot,
    new: &'a ComponentSnapshot,
    out: Vec<Finding>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        rule: &'static str,
        severity: Severity,
        subject: String,
        message: String,
        fix: Option<String>,
    ) {
        self.out.push(Finding {
            rule,
            severity,
            component: self.new.component.clone(),
            subject,
            message,
            fix,
        });
    }
}

/// The rule a layout fact falls under, if it changes bytes that cross.
fn layout_rule(f: &Fact) -> Option<(&'static str, String)> {
    use Fact::*;
    Some(match f {
        StructRemoved { .. } => ("STRUCT_REMOVED", "removed".into()),
        StructSize { old, new, .. } => ("STRUCT_SIZE_CHANGED", format!("size {old} → {new} bytes")),
        StructAlign { old, new, .. } => ("ALIGN_CHANGED", format!("alignment {old} → {new}")),
        Packed { old, new, .. } => ("PACKED_CHANGED", format!("packed {old} → {new}")),
        FieldAdded { offset, size, .. } => (
            "FIELD_ADDED",
            format!("added at offset {offset} ({size} bytes)"),
        ),
        FieldRemoved { offset, .. } => {
            ("FIELD_REMOVED", format!("removed (was at offset {offset})"))
        }
        FieldOffset { old, new, .. } => ("FIELD_MOVED", format!("offset {old} → {new}")),
        FieldType { old, new, .. } => ("FIELD_TYPE_CHANGED", format!("type `{old}` → `{new}`")),
        FieldSize { old, new, .. } => ("FIELD_SIZE_CHANGED", format!("size {old} → {new} bytes")),
        Bitfield { old, new, .. } => (
            "BITFIELD_CHANGED",
            format!("bits {} → {}", bits(old), bits(new)),
        ),
        FdtNode { old, new, .. } => (
            "FDT_CHANGED",
            format!(
                "{} → {}",
                old.clone().unwrap_or_else(|| "(none)".into()),
                new.clone().unwrap_or_else(|| "(none)".into())
            ),
        ),
        FdtProps { removed, added, .. } => (
            "FDT_CHANGED",
            format!("properties removed {removed:?}, added {added:?}"),
        ),
        _ => return None,
    })
}

fn bits(b: &Option<(u32, u32)>) -> String {
    b.map_or("(none)".into(), |(s, w)| format!("{s}..{}", s + w))
}

/// Classify the facts of one component.
pub fn classify(old: &ComponentSnapshot, new: &ComponentSnapshot, facts: &[Fact]) -> Vec<Finding> {
    let mut cx = Ctx {
        old,
        new,
        out: Vec::new(),
    };
    match new.abi.as_str() {
        "uapi" => uapi(&mut cx, facts),
        "kernel" => {
            for f in facts {
                cx.push(
                    "KERNEL_API_CHANGED",
                    Severity::Note,
                    f.subject(),
                    describe(f),
                    None,
                );
            }
        }
        _ if old.features.is_some() && new.features.is_some() => negotiated(&mut cx, facts),
        _ => handover(&mut cx, facts),
    }
    cx.out
}

fn describe(f: &Fact) -> String {
    layout_rule(f)
        .map(|(_, m)| m)
        .unwrap_or_else(|| f.describe())
}

fn common_facts(cx: &mut Ctx<'_>, f: &Fact) -> bool {
    use Fact::*;
    match f {
        StructAdded { strukt } => cx.push("STRUCT_ADDED", Severity::Compatible, format!("struct {strukt}"), "new struct".into(), None),
        FieldRenamed { old, new, .. } => cx.push(
            "FIELD_RENAMED",
            Severity::Compatible,
            f.subject(),
            format!("renamed `{old}` → `{new}` (same offset, size and type)"),
            None,
        ),
        FieldSplitIntoBits { old, new, .. } => cx.push(
            "FIELD_SPLIT_INTO_BITS",
            Severity::Compatible,
            f.subject(),
            format!("`{old}` is now the bitfields {} of the same unit (same bytes)", new.join(", ")),
            None,
        ),
        ReservedConsumed { old, new, .. } => cx.push(
            "RESERVED_CONSUMED",
            Severity::Compatible,
            f.subject(),
            format!("reserved `{old}` is now `{new}`; old kernels wrote zero there"),
            None,
        ),
        ConstantAdded { name } => cx.push("CONSTANT_ADDED", Severity::Compatible, name.clone(), "new constant".into(), None),
        ConstantRemoved { name } => cx.push("CONSTANT_REMOVED", Severity::Note, name.clone(), "constant removed".into(), None),
        PageSizeDependence { new: true, .. } => cx.push(
            "PAGE_SIZE_DEPENDENT",
            Severity::Note,
            f.subject(),
            "layout now depends on PAGE_SIZE: kernels with different page sizes cannot hand it over".into(),
            None,
        ),
        PageSizeDependence { .. } | MinSize { .. } | ArchDependent { .. } => {}
        _ => return false,
    }
    true
}

fn constant_change(cx: &mut Ctx<'_>, f: &Fact, breaking: Severity) {
    if let Fact::ConstantChanged { name, old, new } = f {
        if is_sentinel(name) {
            cx.push(
                "ENUM_SENTINEL_MOVED",
                Severity::Compatible,
                name.clone(),
                format!("{old:#x} → {new:#x}"),
                None,
            );
        } else {
            cx.push(
                "CONSTANT_CHANGED",
                breaking,
                name.clone(),
                format!("value {old:#x} → {new:#x}"),
                None,
            );
        }
    }
}

fn handover(cx: &mut Ctx<'_>, facts: &[Fact]) {
    let mut layout_changes = 0;
    let bumped_identity = facts.iter().any(|f| {
        matches!(
            f,
            Fact::IdentityChanged { .. } | Fact::NegotiationChanged { .. }
        )
    });
    // Once the version is bumped, layout facts describe the new version;
    // whether the update works is the reader rule's verdict.
    let sev = if bumped_identity {
        Severity::Note
    } else {
        Severity::Breaking
    };
    for f in facts {
        if common_facts(cx, f) {
            continue;
        }
        if let Some((rule, msg)) = layout_rule(f) {
            layout_changes += 1;
            cx.push(rule, sev, f.subject(), msg, None);
        } else if matches!(f, Fact::ConstantChanged { .. }) {
            if !matches!(f, Fact::ConstantChanged { name, .. } if is_sentinel(name)) {
                layout_changes += 1;
            }
            constant_change(cx, f, sev);
        } else if let Fact::NegotiationChanged { old, new } = f {
            let msg = if *new {
                "now feature-negotiated (luo_feature_hdr)"
            } else {
                "no longer feature-negotiated"
            };
            cx.push(
                "NEGOTIATION_CHANGED",
                Severity::Note,
                f.subject(),
                msg.into(),
                None,
            );
            let _ = old;
        } else if let Fact::FieldFeature { .. } | Fact::IdentityChanged { .. } = f {
            // Reported through the bump/reader rules below.
        } else {
            cx.push("FIELD_TYPE_CHANGED", sev, f.subject(), describe(f), None);
        }
    }
    let old_id = cx.old.identity.first().cloned().unwrap_or_default();
    if !bumped_identity {
        if layout_changes > 0 {
            let fix = match version_members(&cx.old.identity).first() {
                Some((at, v)) => format!(
                    "bump `{at}` from {v} to {}: add a new version to spec/{}.toml with the new `version` constant and keep a reader of version {v}",
                    v + 1,
                    cx.new.component
                ),
                None => format!(
                    "bump `{old_id}` to `{}`: add a new version to spec/{}.toml and keep a reader of `{old_id}`",
                    bumped(&old_id),
                    cx.new.component
                ),
            };
            cx.push(
                "COMPAT_NOT_BUMPED",
                Severity::Error,
                "compatible".into(),
                format!(
                    "{layout_changes} layout change(s) but the compatible string is still `{}`",
                    cx.old.identity.join(", ")
                ),
                Some(fix),
            );
        }
        return;
    }
    bump_rule(cx);
    reader_rule(cx);
}

/// The `member=value` entries of an identity: where a versionless compatible
/// string keeps its version (`render::schema::version_identity`).
fn version_members(identity: &[String]) -> Vec<(String, u64)> {
    identity
        .iter()
        .filter_map(|i| i.split_once('='))
        .filter_map(|(at, v)| Some((at.to_string(), v.parse().ok()?)))
        .collect()
}

/// The strings of an identity, without its version members.
fn identity_strings(identity: &[String]) -> Vec<&str> {
    identity
        .iter()
        .filter(|i| !i.contains('='))
        .map(String::as_str)
        .collect()
}

/// How the version changed: a new compatible string, the string turned
/// versionless (the number moved into the data), or the number in the data.
fn bump_rule(cx: &mut Ctx<'_>) {
    let (old, new) = (&cx.old.identity, &cx.new.identity);
    let (old_v, new_v) = (version_members(old), version_members(new));
    let show = |v: &[(String, u64)]| {
        v.iter()
            .map(|(at, n)| format!("{at} = {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (rule, message) = if old_v.is_empty() && !new_v.is_empty() {
        (
            "COMPAT_VERSIONLESS",
            format!(
                "`{}` → versionless `{}`; the version is now {} in the data, checked by the reader",
                identity_strings(old).join(", "),
                identity_strings(new).join(", "),
                show(&new_v)
            ),
        )
    } else if !old_v.is_empty() && identity_strings(old) == identity_strings(new) {
        (
            "STRUCT_VERSION_BUMPED",
            format!(
                "`{}` keeps its name; version {} → {}",
                identity_strings(new).join(", "),
                show(&old_v),
                show(&new_v)
            ),
        )
    } else {
        (
            "COMPAT_BUMPED",
            format!("{} → {}", old.join(", "), new.join(", ")),
        )
    };
    cx.push(rule, Severity::Note, "compatible".into(), message, None);
}

/// After a bump: can the new kernel read what the old one writes?
fn reader_rule(cx: &mut Ctx<'_>) {
    let old_version = cx.old.version.clone().unwrap_or_default();
    let old_qualified = format!("{}/{old_version}", cx.old.component);
    let old_id = cx.old.identity.join(", ");
    if cx.new.reads.iter().any(|r| r.identity == cx.old.identity) {
        cx.push(
            "READER_KEPT",
            Severity::Compatible,
            "reads".into(),
            format!("the new kernel still reads `{old_id}`"),
            None,
        );
    } else if cx.new.drops.contains(&old_version) {
        cx.push(
            "READER_REMOVAL_DECLARED",
            Severity::Compatible,
            "reads".into(),
            format!("the new kernel declares it no longer reads `{old_id}` (`drops`)"),
            None,
        );
    } else {
        cx.push(
            "READER_NOT_KEPT",
            Severity::Breaking,
            "reads".into(),
            format!(
                "the old kernel writes `{old_id}`; the new kernel reads only {}",
                cx.new.reads.iter().map(|r| format!("`{}`", r.identity.join(", "))).collect::<Vec<_>>().join(", ")
            ),
            Some(format!(
                "keep a reader of `{old_qualified}` in the new kernel's `reads` (with a migration), or declare `drops = {{ {} = [\"{old_version}\"] }}`",
                cx.new.component
            )),
        );
    }
}

fn uapi(cx: &mut Ctx<'_>, facts: &[Fact]) {
    use Fact::*;
    let growable = |name: &str| {
        cx.new
            .structs
            .iter()
            .any(|s| s.name == name && s.min_size.is_some())
    };
    for f in facts {
        if let ArchDependent { x86_64, i386, .. } = f {
            cx.push(
                "UAPI_ARCH_DEPENDENT",
                Severity::Error,
                f.subject(),
                format!("{x86_64} bytes on x86_64, {i386} on i386: 32-bit userspace would need compat_ioctl"),
                Some("use __aligned_u64 for 64-bit members and explicit padding".into()),
            );
            continue;
        }
        if let MinSize {
            strukt,
            old: Some(o),
            new: Some(n),
        } = f
        {
            if n > o {
                cx.push(
                    "UAPI_MIN_SIZE_RAISED",
                    Severity::Breaking,
                    format!("struct {strukt}"),
                    format!("minimum size {o} → {n}: old userspace passing {o} bytes gets EINVAL"),
                    Some("keep the minimum at the end of the first version's members".into()),
                );
            }
            continue;
        }
        if common_facts(cx, f) {
            continue;
        }
        match f {
            FieldAdded { strukt, at_end: true, offset, size, .. } if growable(strukt) => cx.push(
                "UAPI_GROW_AT_END",
                Severity::Compatible,
                f.subject(),
                format!("appended at offset {offset} ({size} bytes); older userspace passes a smaller size"),
                None,
            ),
            StructSize { strukt, old, new } if growable(strukt) && new > old && only_appended(facts, strukt) => {
                cx.push("UAPI_GROW_AT_END", Severity::Compatible, f.subject(), format!("size {old} → {new} bytes, all at the end"), None)
            }
            // uAPI versions are not handed over; their ids mean nothing to userspace.
            IdentityChanged { .. } | NegotiationChanged { .. } => {}
            IoctlAdded { name } => cx.push("IOCTL_ADDED", Severity::Compatible, name.clone(), "new ioctl".into(), None),
            IoctlRemoved { name } => cx.push(
                "IOCTL_REMOVED",
                Severity::Breaking,
                name.clone(),
                "ioctl removed: old userspace gets ENOTTY".into(),
                Some("keep the command; mark it deprecated".into()),
            ),
            IoctlChanged { name, old, new } => cx.push(
                "IOCTL_CHANGED",
                Severity::Breaking,
                name.clone(),
                format!("command {old:#x} → {new:#x}"),
                Some("add a new command number instead of changing one".into()),
            ),
            ConstantChanged { .. } => constant_change(cx, f, Severity::Breaking),
            _ => {
                let msg = layout_rule(f).map(|(r, m)| format!("{r}: {m}")).unwrap_or_else(|| describe(f));
                cx.push(
                    "UAPI_BREAK",
                    Severity::Breaking,
                    f.subject(),
                    msg,
                    Some("append new members at the end of a size-prefixed struct, or consume a reserved member".into()),
                );
            }
        }
    }
}

fn only_appended(facts: &[Fact], strukt: &str) -> bool {
    facts.iter().all(|f| match f {
        Fact::FieldAdded {
            strukt: s, at_end, ..
        } => s != strukt || *at_end,
        Fact::FieldOffset { strukt: s, .. }
        | Fact::FieldType { strukt: s, .. }
        | Fact::FieldSize { strukt: s, .. }
        | Fact::FieldRemoved { strukt: s, .. }
        | Fact::Bitfield { strukt: s, .. }
        | Fact::Packed { strukt: s, .. } => s != strukt,
        _ => true,
    })
}

fn negotiated(cx: &mut Ctx<'_>, facts: &[Fact]) {
    use Fact::*;
    let old_fs = cx.old.features.clone();
    let new_fs = cx.new.features.clone();
    let (Some(of), Some(nf)) = (old_fs, new_fs) else {
        return;
    };
    let new_optional = |name: &str| {
        facts.iter().any(|f| matches!(f, FeatureAdded { name: n, required: false, supported: true, .. } if n == name))
    };
    for f in facts {
        if common_facts(cx, f) {
            continue;
        }
        match f {
            IdentityChanged { old, new } => cx.push(
                "HANDLER_NAME_CHANGED",
                Severity::Breaking,
                "name".into(),
                format!("{} → {}", old.join(", "), new.join(", ")),
                Some("feature-negotiated handlers keep their versionless name; add a feature instead".into()),
            ),
            FieldAdded { strukt, at_end: true, feature: Some(feat), .. } if *strukt == nf.struct_name && new_optional(feat) => cx.push(
                "FEATURE_OPTIONAL_ADDED",
                Severity::Compatible,
                f.subject(),
                format!("appended behind the new optional feature `{feat}`; older readers ignore it"),
                None,
            ),
            FieldAdded { feature: None, at_end: true, .. } => cx.push(
                "FEATURE_FIELD_UNGATED",
                Severity::Breaking,
                f.subject(),
                "appended without a feature: readers cannot tell whether it is there".into(),
                Some("gate the member with a new optional feature bit".into()),
            ),
            FieldOffset { feature: Some(feat), old, new, .. } => cx.push(
                "FEATURE_GATED_FIELD_MOVED",
                Severity::Error,
                f.subject(),
                format!("gated by `{feat}`, moved {old} → {new}"),
                Some("gated members never move; append new ones at the end".into()),
            ),
            StructSize { strukt, old, new } if *strukt == nf.struct_name && new > old && only_appended(facts, strukt) => {
                cx.push("FEATURE_OPTIONAL_ADDED", Severity::Note, f.subject(), format!("size {old} → {new} bytes, all at the end"), None)
            }
            FeatureBitReused { bit, old, new } => cx.push(
                "FEATURE_BIT_REUSED",
                Severity::Error,
                format!("feature bit {bit}"),
                format!("bit {bit} was `{old}`, is now `{new}`"),
                Some("never reuse a bit; give the new feature an unused one".into()),
            ),
            FeatureRenumbered { name, old, new } => cx.push(
                "FEATURE_BIT_RENUMBERED",
                Severity::Error,
                name.clone(),
                format!("bit {old} → {new}"),
                Some("feature bits are ABI; keep the old number".into()),
            ),
            FeatureRemoved { name, bit } => {
                let was_required = of.required & (1u64 << bit) != 0;
                cx.push(
                    "FEATURE_REMOVED",
                    if was_required { Severity::Breaking } else { Severity::Note },
                    name.clone(),
                    format!("bit {bit} removed{}", if was_required { " while the old kernel required it" } else { "" }),
                    None,
                );
            }
            FeatureAdded { name, bit, supported, required, active } => {
                if *required {
                    not_transitioned(cx, name, *bit);
                } else if *supported && *active {
                    cx.push("FEATURE_OPTIONAL_ADDED", Severity::Compatible, name.clone(), format!("bit {bit}, optional"), None);
                } else {
                    cx.push("FEATURE_SUPPORTED_ADDED", Severity::Compatible, name.clone(), format!("bit {bit}, supported only"), None);
                }
            }
            FeatureState { name, bit, old, new } => feature_state(cx, name, *bit, *old, *new),
            ConstantChanged { .. } => constant_change(cx, f, Severity::Breaking),
            _ => {
                let msg = layout_rule(f).map(|(r, m)| format!("{r}: {m}")).unwrap_or_else(|| describe(f));
                cx.push(
                    "FEATURE_LAYOUT_CHANGED",
                    Severity::Breaking,
                    f.subject(),
                    msg,
                    Some("feature-negotiated structs only grow at the end, behind a new feature".into()),
                );
            }
        }
    }
}

fn not_transitioned(cx: &mut Ctx<'_>, name: &str, bit: u32) {
    cx.push(
        "FEATURE_NOW_REQUIRED",
        Severity::Breaking,
        name.into(),
        format!("bit {bit} is required: every kernel that does not know it refuses the handover"),
        None,
    );
    cx.push(
        "FEATURE_NOT_TRANSITIONED",
        Severity::Error,
        name.into(),
        format!(
            "bit {bit} is required but `{}` never published it as supported",
            cx.old.kernel
        ),
        Some(
            "publish the feature as supported (not required) in one release first, then require it"
                .into(),
        ),
    );
}

fn feature_state(cx: &mut Ctx<'_>, name: &str, bit: u32, old: FeatureFlags, new: FeatureFlags) {
    if new.required && !old.required {
        if old.supported {
            cx.push(
                "FEATURE_NOW_REQUIRED",
                Severity::Breaking,
                name.into(),
                format!(
                    "bit {bit} turned required: kernels that do not know it refuse the handover"
                ),
                None,
            );
        } else {
            not_transitioned(cx, name, bit);
        }
    } else {
        cx.push(
            "FEATURE_STATE_CHANGED",
            Severity::Note,
            name.into(),
            format!(
                "supported {} → {}, required {} → {}, active {} → {}",
                old.supported, new.supported, old.required, new.required, old.active, new.active
            ),
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bumps_compatible_strings() {
        assert_eq!(super::bumped("memfd-v1"), "memfd-v2");
        assert_eq!(super::bumped("luo-v9"), "luo-v10");
        assert_eq!(super::bumped("memfd"), "memfd-v2");
    }
}
