// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Facts: what changed between two snapshots of one component, with no
//! judgement. The policy (`policy.rs`) decides what each fact means.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use luo_spec::render::schema::{ComponentSnapshot, LayoutSnapshot, MemberSnapshot, StructSnapshot};

/// The target every layout fact is stated for; other targets only feed
/// the PAGE_SIZE and architecture facts.
pub const PRIMARY: &str = "x86_64";

/// One observed change. Field names say what they hold: `strukt`/`field`
/// name the place, `old`/`new` the values before and after.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// The identifying strings (compatible, handler name, FDT compatibles) differ.
    IdentityChanged { old: Vec<String>, new: Vec<String> },
    /// A struct exists only in the new snapshot.
    StructAdded { strukt: String },
    /// A struct exists only in the old snapshot.
    StructRemoved { strukt: String },
    /// `sizeof` changed.
    StructSize { strukt: String, old: u64, new: u64 },
    /// Alignment changed.
    StructAlign { strukt: String, old: u64, new: u64 },
    /// `__packed` added or removed.
    Packed {
        strukt: String,
        old: bool,
        new: bool,
    },
    /// A member appeared; `at_end` when it starts at or after the old size.
    FieldAdded {
        strukt: String,
        field: String,
        offset: u64,
        size: u64,
        at_end: bool,
        feature: Option<String>,
    },
    /// A member disappeared.
    FieldRemoved {
        strukt: String,
        field: String,
        offset: u64,
    },
    /// Same place and type, new name.
    FieldRenamed {
        strukt: String,
        old: String,
        new: String,
    },
    /// A member became bitfields of its own type sharing its storage unit (a `u32 flags`
    /// declared as `u32 deleted:1, incoming:1, …`): the same bytes under new names.
    FieldSplitIntoBits {
        strukt: String,
        old: String,
        new: Vec<String>,
    },
    /// A reserved member was given a meaning (same place and size).
    ReservedConsumed {
        strukt: String,
        old: String,
        new: String,
    },
    /// A member moved.
    FieldOffset {
        strukt: String,
        field: String,
        old: u64,
        new: u64,
        feature: Option<String>,
    },
    /// A member's type (width, signedness, target) changed.
    FieldType {
        strukt: String,
        field: String,
        old: String,
        new: String,
    },
    /// A member's size changed (array length, nested struct).
    FieldSize {
        strukt: String,
        field: String,
        old: u64,
        new: u64,
    },
    /// A bitfield's position or width changed.
    Bitfield {
        strukt: String,
        field: String,
        old: Option<(u32, u32)>,
        new: Option<(u32, u32)>,
    },
    /// The gating feature of a member changed.
    FieldFeature {
        strukt: String,
        field: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// Whether the layout depends on PAGE_SIZE changed.
    PageSizeDependence {
        strukt: String,
        old: bool,
        new: bool,
    },
    /// A uAPI struct's layout differs between x86_64 and i386 in the new snapshot.
    ArchDependent {
        strukt: String,
        x86_64: u64,
        i386: u64,
    },
    /// The minimum size of a size-prefixed uAPI struct changed.
    MinSize {
        strukt: String,
        old: Option<u64>,
        new: Option<u64>,
    },
    /// An integer constant's value changed (on the primary target).
    ConstantChanged { name: String, old: u64, new: u64 },
    /// A constant appeared.
    ConstantAdded { name: String },
    /// A constant disappeared.
    ConstantRemoved { name: String },
    /// An FDT node's name or compatible changed, or a node appeared/disappeared.
    FdtNode {
        path: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// An FDT property's name set changed.
    FdtProps {
        path: String,
        removed: Vec<String>,
        added: Vec<String>,
    },
    /// An ioctl appeared.
    IoctlAdded { name: String },
    /// An ioctl disappeared.
    IoctlRemoved { name: String },
    /// An ioctl's number or argument changed.
    IoctlChanged { name: String, old: u64, new: u64 },
    /// A feature bit appeared.
    FeatureAdded {
        name: String,
        bit: u32,
        supported: bool,
        required: bool,
        active: bool,
    },
    /// A feature bit disappeared.
    FeatureRemoved { name: String, bit: u32 },
    /// A feature's bit number changed.
    FeatureRenumbered { name: String, old: u32, new: u32 },
    /// A bit number now names a different feature.
    FeatureBitReused { bit: u32, old: String, new: String },
    /// A feature's supported/required/active state changed.
    FeatureState {
        name: String,
        bit: u32,
        old: FeatureFlags,
        new: FeatureFlags,
    },
    /// The component is feature-negotiated in one snapshot and not in the other.
    NegotiationChanged { old: bool, new: bool },
}

/// Supported / required / active, for one bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeatureFlags {
    /// In `supp`.
    pub supported: bool,
    /// In `req`.
    pub required: bool,
    /// In `active`.
    pub active: bool,
}

impl FeatureFlags {
    fn describe(self) -> String {
        let on: Vec<&str> = [
            (self.supported, "supported"),
            (self.required, "required"),
            (self.active, "active"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join(", ")
        }
    }
}

fn opt(v: &Option<impl std::fmt::Display>) -> String {
    v.as_ref().map_or("(none)".into(), |v| v.to_string())
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

impl Fact {
    /// What changed, in words, for text reports (the subject is printed beside it).
    pub fn describe(&self) -> String {
        use Fact::*;
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        match self {
            IdentityChanged { old, new } => format!("{} → {}", list(old), list(new)),
            StructAdded { .. } => "added".into(),
            StructRemoved { .. } => "removed".into(),
            StructSize { old, new, .. } => format!("size {old} → {new} bytes"),
            StructAlign { old, new, .. } => format!("alignment {old} → {new}"),
            Packed { old, new, .. } => format!("packed {} → {}", yes_no(*old), yes_no(*new)),
            FieldAdded {
                offset,
                size,
                feature,
                ..
            } => match feature {
                Some(f) => format!("added at offset {offset} ({size} bytes), gated by {f}"),
                None => format!("added at offset {offset} ({size} bytes)"),
            },
            FieldRemoved { offset, .. } => format!("removed (was at offset {offset})"),
            FieldRenamed { new, .. } => format!("renamed to `{new}`"),
            ReservedConsumed { new, .. } => format!("reserved member now `{new}`"),
            FieldSplitIntoBits { new, .. } => {
                format!(
                    "declared as the bitfields {} of the same unit",
                    new.join(", ")
                )
            }
            FieldOffset { old, new, .. } => format!("offset {old} → {new}"),
            FieldType { old, new, .. } => format!("type `{old}` → `{new}`"),
            FieldSize { old, new, .. } => format!("size {old} → {new} bytes"),
            Bitfield { old, new, .. } => {
                let bits = |b: &Option<(u32, u32)>| {
                    b.map_or("(none)".into(), |(s, w)| format!("bits {s}..{}", s + w))
                };
                format!("{} → {}", bits(old), bits(new))
            }
            FieldFeature { old, new, .. } => {
                format!("gating feature {} → {}", opt(old), opt(new))
            }
            PageSizeDependence { old, new, .. } => {
                format!("depends on PAGE_SIZE: {} → {}", yes_no(*old), yes_no(*new))
            }
            ArchDependent { x86_64, i386, .. } => {
                format!("{x86_64} bytes on x86_64 but {i386} on i386")
            }
            MinSize { old, new, .. } => format!("minimum size {} → {}", opt(old), opt(new)),
            ConstantChanged { old, new, .. } => format!("value {old} → {new}"),
            ConstantAdded { .. } => "constant added".into(),
            ConstantRemoved { .. } => "constant removed".into(),
            FdtNode { old, new, .. } => format!("{} → {}", opt(old), opt(new)),
            FdtProps { removed, added, .. } => format!(
                "properties removed: {}; added: {}",
                list(removed),
                list(added)
            ),
            IoctlAdded { .. } => "ioctl added".into(),
            IoctlRemoved { .. } => "ioctl removed".into(),
            IoctlChanged { old, new, .. } => format!("number {old:#x} → {new:#x}"),
            FeatureAdded {
                bit,
                supported,
                required,
                active,
                ..
            } => format!(
                "feature bit {bit} added ({})",
                FeatureFlags {
                    supported: *supported,
                    required: *required,
                    active: *active
                }
                .describe()
            ),
            FeatureRemoved { bit, .. } => format!("feature bit {bit} removed"),
            FeatureRenumbered { old, new, .. } => format!("bit {old} → {new}"),
            FeatureBitReused { old, new, .. } => format!("`{old}` → `{new}`"),
            FeatureState { old, new, .. } => {
                format!("{} → {}", old.describe(), new.describe())
            }
            NegotiationChanged { old, new } => {
                format!("feature-negotiated: {} → {}", yes_no(*old), yes_no(*new))
            }
        }
    }

    /// The struct or name the fact is about, for reports.
    pub fn subject(&self) -> String {
        use Fact::*;
        match self {
            IdentityChanged { .. } => "compatible".into(),
            StructAdded { strukt }
            | StructRemoved { strukt }
            | StructSize { strukt, .. }
            | StructAlign { strukt, .. }
            | Packed { strukt, .. } => {
                format!("struct {strukt}")
            }
            PageSizeDependence { strukt, .. }
            | ArchDependent { strukt, .. }
            | MinSize { strukt, .. } => format!("struct {strukt}"),
            FieldAdded { strukt, field, .. }
            | FieldRemoved { strukt, field, .. }
            | FieldOffset { strukt, field, .. }
            | FieldType { strukt, field, .. }
            | FieldSize { strukt, field, .. }
            | Bitfield { strukt, field, .. }
            | FieldFeature { strukt, field, .. } => format!("{strukt}.{field}"),
            FieldRenamed { strukt, old, .. }
            | ReservedConsumed { strukt, old, .. }
            | FieldSplitIntoBits { strukt, old, .. } => {
                format!("{strukt}.{old}")
            }
            ConstantChanged { name, .. } | ConstantAdded { name } | ConstantRemoved { name } => {
                name.clone()
            }
            FdtNode { path, .. } | FdtProps { path, .. } => format!("FDT {path}"),
            IoctlAdded { name } | IoctlRemoved { name } | IoctlChanged { name, .. } => name.clone(),
            FeatureAdded { name, .. }
            | FeatureRemoved { name, .. }
            | FeatureRenumbered { name, .. }
            | FeatureState { name, .. } => name.clone(),
            FeatureBitReused { bit, .. } => format!("feature bit {bit}"),
            NegotiationChanged { .. } => "luo_feature_hdr".into(),
        }
    }
}

/// Every fact between an old and a new snapshot of the same component.
pub fn diff(old: &ComponentSnapshot, new: &ComponentSnapshot) -> Vec<Fact> {
    let mut facts = Vec::new();
    if old.identity != new.identity {
        facts.push(Fact::IdentityChanged {
            old: old.identity.clone(),
            new: new.identity.clone(),
        });
    }
    if old.features.is_some() != new.features.is_some() {
        facts.push(Fact::NegotiationChanged {
            old: old.features.is_some(),
            new: new.features.is_some(),
        });
    }
    let old_structs: BTreeMap<&str, &StructSnapshot> =
        old.structs.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_structs: BTreeMap<&str, &StructSnapshot> =
        new.structs.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, o) in &old_structs {
        match new_structs.get(name) {
            Some(n) => diff_struct(o, n, &mut facts),
            None => facts.push(Fact::StructRemoved {
                strukt: name.to_string(),
            }),
        }
    }
    for name in new_structs.keys().filter(|n| !old_structs.contains_key(*n)) {
        facts.push(Fact::StructAdded {
            strukt: name.to_string(),
        });
    }
    if new.abi == "uapi" {
        for s in &new.structs {
            let (Some(a), Some(b)) = (s.layouts.get(PRIMARY), s.layouts.get("i386")) else {
                continue;
            };
            let moved = a
                .fields
                .iter()
                .zip(&b.fields)
                .any(|(x, y)| x.offset != y.offset);
            if a.size != b.size || moved {
                facts.push(Fact::ArchDependent {
                    strukt: s.name.clone(),
                    x86_64: a.size,
                    i386: b.size,
                });
            }
        }
    }
    diff_constants(old, new, &mut facts);
    diff_fdt(old, new, &mut facts);
    diff_ioctls(old, new, &mut facts);
    diff_features(old, new, &mut facts);
    facts
}

fn page_dependent(s: &StructSnapshot) -> bool {
    let sizes: BTreeSet<u64> = s
        .layouts
        .iter()
        .filter(|(t, _)| t.starts_with("arm64"))
        .map(|(_, l)| l.size)
        .collect();
    sizes.len() > 1
}

fn primary(s: &StructSnapshot) -> Option<&LayoutSnapshot> {
    s.layouts.get(PRIMARY)
}

fn diff_struct(o: &StructSnapshot, n: &StructSnapshot, facts: &mut Vec<Fact>) {
    let strukt = o.name.clone();
    if o.packed != n.packed {
        facts.push(Fact::Packed {
            strukt: strukt.clone(),
            old: o.packed,
            new: n.packed,
        });
    }
    let (Some(ol), Some(nl)) = (primary(o), primary(n)) else {
        return;
    };
    if ol.size != nl.size {
        facts.push(Fact::StructSize {
            strukt: strukt.clone(),
            old: ol.size,
            new: nl.size,
        });
    }
    if ol.align != nl.align {
        facts.push(Fact::StructAlign {
            strukt: strukt.clone(),
            old: ol.align,
            new: nl.align,
        });
    }
    if page_dependent(o) != page_dependent(n) {
        facts.push(Fact::PageSizeDependence {
            strukt: strukt.clone(),
            old: page_dependent(o),
            new: page_dependent(n),
        });
    }
    if o.min_size != n.min_size {
        facts.push(Fact::MinSize {
            strukt: strukt.clone(),
            old: o.min_size,
            new: n.min_size,
        });
    }
    let member = |s: &StructSnapshot, name: &str| -> Option<MemberSnapshot> {
        s.members.iter().find(|m| m.name == name).cloned()
    };
    let place = |l: &LayoutSnapshot, name: &str| {
        l.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| (f.offset, f.size, f.bits))
    };
    let old_names: Vec<&str> = ol.fields.iter().map(|f| f.name.as_str()).collect();
    let new_names: Vec<&str> = nl.fields.iter().map(|f| f.name.as_str()).collect();
    let mut matched_new: BTreeSet<String> = BTreeSet::new();
    for name in &old_names {
        let Some((ooff, osize, obits)) = place(ol, name) else {
            continue;
        };
        let om = member(o, name);
        if let Some((noff, nsize, nbits)) = place(nl, name) {
            matched_new.insert(name.to_string());
            let nm = member(n, name);
            let feature = nm.as_ref().and_then(|m| m.feature.clone());
            if ooff != noff {
                facts.push(Fact::FieldOffset {
                    strukt: strukt.clone(),
                    field: name.to_string(),
                    old: ooff,
                    new: noff,
                    feature,
                });
            }
            if let (Some(om), Some(nm)) = (&om, &nm) {
                if om.ty != nm.ty {
                    facts.push(Fact::FieldType {
                        strukt: strukt.clone(),
                        field: name.to_string(),
                        old: om.ty.clone(),
                        new: nm.ty.clone(),
                    });
                }
                if om.feature != nm.feature {
                    facts.push(Fact::FieldFeature {
                        strukt: strukt.clone(),
                        field: name.to_string(),
                        old: om.feature.clone(),
                        new: nm.feature.clone(),
                    });
                }
            }
            if obits != nbits {
                facts.push(Fact::Bitfield {
                    strukt: strukt.clone(),
                    field: name.to_string(),
                    old: obits,
                    new: nbits,
                });
            } else if osize != nsize {
                facts.push(Fact::FieldSize {
                    strukt: strukt.clone(),
                    field: name.to_string(),
                    old: osize,
                    new: nsize,
                });
            }
            continue;
        }
        // Gone under this name: consumed reserved field, a rename, or removed.
        let same_place = nl.fields.iter().find(|f| {
            !old_names.contains(&f.name.as_str())
                && !matched_new.contains(&f.name)
                && f.offset == ooff
                && f.size == osize
                && f.bits == obits
        });
        // Declared as bitfields of its own type in the same unit: the same bytes.
        let bits_in_unit: Vec<String> = nl
            .fields
            .iter()
            .filter(|f| {
                obits.is_none()
                    && f.bits.is_some()
                    && f.offset == ooff
                    && f.size == osize
                    && !old_names.contains(&f.name.as_str())
                    && !matched_new.contains(&f.name)
                    && om
                        .as_ref()
                        .zip(member(n, &f.name))
                        .is_some_and(|(o, m)| o.ty == m.ty)
            })
            .map(|f| f.name.clone())
            .collect();
        if same_place.is_none() && !bits_in_unit.is_empty() {
            matched_new.extend(bits_in_unit.iter().cloned());
            facts.push(Fact::FieldSplitIntoBits {
                strukt: strukt.clone(),
                old: name.to_string(),
                new: bits_in_unit,
            });
            continue;
        }
        match (same_place, &om) {
            (Some(f), Some(om)) if om.reserved => {
                matched_new.insert(f.name.clone());
                facts.push(Fact::ReservedConsumed {
                    strukt: strukt.clone(),
                    old: name.to_string(),
                    new: f.name.clone(),
                });
            }
            (Some(f), Some(om)) if member(n, &f.name).is_some_and(|m| m.ty == om.ty) => {
                matched_new.insert(f.name.clone());
                facts.push(Fact::FieldRenamed {
                    strukt: strukt.clone(),
                    old: name.to_string(),
                    new: f.name.clone(),
                });
            }
            _ => facts.push(Fact::FieldRemoved {
                strukt: strukt.clone(),
                field: name.to_string(),
                offset: ooff,
            }),
        }
    }
    for name in new_names.iter().filter(|n| !matched_new.contains(**n)) {
        let Some((off, size, _)) = place(nl, name) else {
            continue;
        };
        facts.push(Fact::FieldAdded {
            strukt: strukt.clone(),
            field: name.to_string(),
            offset: off,
            size,
            at_end: off >= ol.size,
            feature: member(n, name).and_then(|m| m.feature),
        });
    }
}

fn diff_constants(old: &ComponentSnapshot, new: &ComponentSnapshot, facts: &mut Vec<Fact>) {
    let value = |c: &luo_spec::render::schema::ConstSnapshot| c.values.get(PRIMARY).copied();
    for o in &old.constants {
        match new.constants.iter().find(|n| n.name == o.name) {
            Some(n) => {
                if let (Some(a), Some(b)) = (value(o), value(n))
                    && a != b
                {
                    facts.push(Fact::ConstantChanged {
                        name: o.name.clone(),
                        old: a,
                        new: b,
                    });
                }
            }
            None => facts.push(Fact::ConstantRemoved {
                name: o.name.clone(),
            }),
        }
    }
    for n in new
        .constants
        .iter()
        .filter(|n| !old.constants.iter().any(|o| o.name == n.name))
    {
        facts.push(Fact::ConstantAdded {
            name: n.name.clone(),
        });
    }
}

fn diff_fdt(old: &ComponentSnapshot, new: &ComponentSnapshot, facts: &mut Vec<Fact>) {
    let describe = |n: &luo_spec::render::schema::FdtSnapshot| {
        format!(
            "{} ({})",
            n.name.clone().unwrap_or_else(|| n.path.clone()),
            n.compatible
        )
    };
    for o in &old.fdt {
        match new.fdt.iter().find(|n| n.path == o.path) {
            Some(n) => {
                if o.name != n.name || o.compatible != n.compatible {
                    facts.push(Fact::FdtNode {
                        path: o.path.clone(),
                        old: Some(describe(o)),
                        new: Some(describe(n)),
                    });
                }
                let removed: Vec<String> = o
                    .props
                    .keys()
                    .filter(|k| !n.props.contains_key(*k))
                    .cloned()
                    .collect();
                let added: Vec<String> = n
                    .props
                    .keys()
                    .filter(|k| !o.props.contains_key(*k))
                    .cloned()
                    .collect();
                if !removed.is_empty() || !added.is_empty() {
                    facts.push(Fact::FdtProps {
                        path: o.path.clone(),
                        removed,
                        added,
                    });
                }
            }
            None => facts.push(Fact::FdtNode {
                path: o.path.clone(),
                old: Some(describe(o)),
                new: None,
            }),
        }
    }
    for n in new
        .fdt
        .iter()
        .filter(|n| !old.fdt.iter().any(|o| o.path == n.path))
    {
        facts.push(Fact::FdtNode {
            path: n.path.clone(),
            old: None,
            new: Some(describe(n)),
        });
    }
}

fn diff_ioctls(old: &ComponentSnapshot, new: &ComponentSnapshot, facts: &mut Vec<Fact>) {
    for o in &old.ioctls {
        match new.ioctls.iter().find(|n| n.name == o.name) {
            Some(n) if n.value != o.value || n.arg != o.arg => facts.push(Fact::IoctlChanged {
                name: o.name.clone(),
                old: o.value,
                new: n.value,
            }),
            Some(_) => {}
            None => facts.push(Fact::IoctlRemoved {
                name: o.name.clone(),
            }),
        }
    }
    for n in new
        .ioctls
        .iter()
        .filter(|n| !old.ioctls.iter().any(|o| o.name == n.name))
    {
        facts.push(Fact::IoctlAdded {
            name: n.name.clone(),
        });
    }
}

fn diff_features(old: &ComponentSnapshot, new: &ComponentSnapshot, facts: &mut Vec<Fact>) {
    let (Some(of), Some(nf)) = (&old.features, &new.features) else {
        return;
    };
    let flags = |f: &luo_spec::render::schema::FeaturesSnapshot, bit: u32| {
        let m = 1u64.checked_shl(bit).unwrap_or(0);
        FeatureFlags {
            supported: f.supported & m != 0,
            required: f.required & m != 0,
            active: f.active & m != 0,
        }
    };
    for ob in &of.bits {
        match nf.bits.iter().find(|b| b.name == ob.name) {
            Some(nb) if nb.bit != ob.bit => facts.push(Fact::FeatureRenumbered {
                name: ob.name.clone(),
                old: ob.bit,
                new: nb.bit,
            }),
            Some(nb) => {
                let (a, b) = (flags(of, ob.bit), flags(nf, nb.bit));
                if a != b {
                    facts.push(Fact::FeatureState {
                        name: ob.name.clone(),
                        bit: ob.bit,
                        old: a,
                        new: b,
                    });
                }
            }
            None => facts.push(Fact::FeatureRemoved {
                name: ob.name.clone(),
                bit: ob.bit,
            }),
        }
    }
    for nb in nf
        .bits
        .iter()
        .filter(|b| !of.bits.iter().any(|o| o.name == b.name))
    {
        if let Some(ob) = of.bits.iter().find(|o| o.bit == nb.bit) {
            facts.push(Fact::FeatureBitReused {
                bit: nb.bit,
                old: ob.name.clone(),
                new: nb.name.clone(),
            });
        } else {
            let f = flags(nf, nb.bit);
            facts.push(Fact::FeatureAdded {
                name: nb.name.clone(),
                bit: nb.bit,
                supported: f.supported,
                required: f.required,
                active: f.active,
            });
        }
    }
}
