// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Layout snapshots: `generated/schema/<kernel>/<component>.json`.
//!
//! A snapshot is the machine-readable ABI of one component as one kernel
//! writes it: compatible strings, features, constants, and every struct's
//! layout on every target. Schema diffing (`luo schema diff`) compares two
//! snapshots; `layout.schema.json` (schemars) describes the format.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ast::{AbiKind, Direction};
use std::path::Path;

use crate::ir::{Ir, KernelIr, LayoutTable};
use crate::layout::{Layouts, Target};
use crate::model::{ConstValue, Items, Kernel, Scope, Struct};
use crate::render::header_items;
use crate::render::{Backend, Outputs};

/// Format version of the snapshot files.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One component as one kernel writes it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ComponentSnapshot {
    /// Snapshot format version.
    pub snapshot_version: u32,
    /// Kernel release.
    pub kernel: String,
    /// Component name.
    pub component: String,
    /// `uapi`, `kho` or `kernel`.
    pub abi: String,
    /// Header path below `include/`.
    pub header: String,
    /// Version id written, if the component is versioned.
    pub version: Option<String>,
    /// Whether the kernel is released (its snapshots are frozen).
    pub released: bool,
    /// The strings that identify the written version to a reader: its
    /// compatible strings or handler name, and its FDT nodes' compatibles.
    pub identity: Vec<String>,
    /// The versions this kernel accepts from the previous one.
    pub reads: Vec<ReaderSnapshot>,
    /// Versions this kernel declares it no longer reads.
    pub drops: Vec<String>,
    /// FNV-1a hash of every struct's x86_64 layout: equal strings with
    /// different fingerprints mean a layout changed without a new version.
    #[serde(default)]
    pub fingerprint: u64,
    /// String constants with a versioning role.
    pub compatibles: Vec<CompatibleSnapshot>,
    /// Feature negotiation, for feature-negotiated versions.
    pub features: Option<FeaturesSnapshot>,
    /// Integer constants: value per target.
    pub constants: Vec<ConstSnapshot>,
    /// Structs.
    pub structs: Vec<StructSnapshot>,
    /// ioctls (uAPI).
    pub ioctls: Vec<IoctlSnapshot>,
    /// FDT nodes (FDT-based handover formats).
    pub fdt: Vec<FdtSnapshot>,
}

/// One version a kernel can read.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Clone)]
pub struct ReaderSnapshot {
    /// Version id.
    pub version: String,
    /// Its identifying strings (see `ComponentSnapshot::identity`).
    pub identity: Vec<String>,
    /// For a feature-negotiated version: every feature bit the reader knows.
    pub known_features: Option<u64>,
    /// Layout fingerprint of the version read (see `ComponentSnapshot::fingerprint`).
    #[serde(default)]
    pub fingerprint: u64,
}

/// A compatible string or name.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CompatibleSnapshot {
    /// Macro name.
    pub name: String,
    /// The string.
    pub value: String,
    /// `compatible`, `handler-name`, `fdt-node`, `fdt-property`, `kho-entry`.
    pub role: String,
    /// `struct.field` it is copied into.
    pub into: Vec<String>,
}

/// Feature bits of a feature-negotiated version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct FeaturesSnapshot {
    /// The struct embedding `luo_feature_hdr features`.
    #[serde(rename = "struct")]
    pub struct_name: String,
    /// Supported mask.
    pub supported: u64,
    /// Required mask.
    pub required: u64,
    /// Active mask.
    pub active: u64,
    /// Named bits and the fields each gates.
    pub bits: Vec<FeatureBitSnapshot>,
}

/// One feature bit.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct FeatureBitSnapshot {
    /// Macro name.
    pub name: String,
    /// Bit number.
    pub bit: u32,
    /// `struct.field`s gated by it.
    pub gates: Vec<String>,
}

/// An integer constant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ConstSnapshot {
    /// Macro or enumerator name.
    pub name: String,
    /// C expression as written.
    pub expr: String,
    /// Whether it depends on `PAGE_SIZE`.
    pub page_size_dependent: bool,
    /// Value per target.
    pub values: BTreeMap<String, u64>,
}

/// A struct and its layout per target.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct StructSnapshot {
    /// Tag.
    pub name: String,
    /// `__packed`.
    pub packed: bool,
    /// Ops table.
    pub ops: bool,
    /// Minimum uAPI size (end of `min_size_field`), primary target.
    pub min_size: Option<u64>,
    /// Members as declared.
    pub members: Vec<MemberSnapshot>,
    /// Layout per target.
    pub layouts: BTreeMap<String, LayoutSnapshot>,
}

/// A member's declaration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct MemberSnapshot {
    /// Name.
    pub name: String,
    /// Type in spec syntax.
    #[serde(rename = "type")]
    pub ty: String,
    /// Array length expression.
    pub len: Option<String>,
    /// Bitfield width.
    pub bits: Option<u32>,
    /// Must be zero.
    pub reserved: bool,
    /// Required callback (ops tables).
    pub required: Option<bool>,
    /// uAPI direction.
    pub dir: Option<Direction>,
    /// Gating feature.
    pub feature: Option<String>,
}

/// A struct's layout on one target.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct LayoutSnapshot {
    /// Size.
    pub size: u64,
    /// Alignment.
    pub align: u64,
    /// Members: offset, size, count, bit position.
    pub fields: Vec<FieldSnapshot>,
}

/// One member's place.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct FieldSnapshot {
    /// Name.
    pub name: String,
    /// Offset (of the unit, for bitfields).
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// Elements.
    pub count: u64,
    /// First bit and width, for bitfields.
    pub bits: Option<(u32, u32)>,
}

/// An ioctl.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct IoctlSnapshot {
    /// Macro name.
    pub name: String,
    /// Command number.
    pub nr: u64,
    /// Full command value.
    pub value: u64,
    /// Argument struct.
    pub arg: String,
    /// `device` or `session`.
    pub on: String,
}

/// An FDT node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct FdtSnapshot {
    /// Path.
    pub path: String,
    /// Node name.
    pub name: Option<String>,
    /// `compatible` value.
    pub compatible: String,
    /// Properties: name → type; all native-endian u64.
    pub props: BTreeMap<String, String>,
    /// Always `native`: LUO writes raw u64s, not big-endian cells.
    pub endian: String,
}

fn string_const(scope: Scope<'_>, name: &str) -> String {
    match scope.find_const(name).map(|(_, c)| &c.value) {
        Some(ConstValue::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The strings identifying a component version: compatible strings and
/// handler names, then FDT node compatibles, in declaration order.
pub fn version_identity(scope: Scope<'_>) -> Vec<String> {
    use crate::ast::ConstRole;
    let items = header_items(scope);
    let mut out: Vec<String> = items
        .iter()
        .flat_map(|i| &i.consts)
        .filter(|c| matches!(c.role, Some(ConstRole::Compatible | ConstRole::HandlerName)))
        .filter_map(|c| match &c.value {
            ConstValue::Str(s) => Some(s.clone()),
            ConstValue::Int(_) => None,
        })
        .collect();
    // A versionless compatible string with the version inside the data
    // (upstream's `"pci"` with `pci_ser.version`): the reader checks both,
    // so both identify the version.
    if !out.is_empty() {
        out.extend(version_fields(scope).map(|(at, v)| format!("{at}={v}")));
    }
    for node in items.iter().flat_map(|i| &i.fdt_nodes) {
        let c = string_const(scope, &node.compatible.name);
        if !c.is_empty() && !out.contains(&c) {
            out.push(c);
        }
    }
    // A feature-negotiated format with no name of its own (luo's `next`) is
    // identified by its KHO entry, the versionless name the reader looks up;
    // so is a format whose version is a member of its data (kexec-metadata),
    // with that member's value.
    let versions: Vec<(String, u64)> = version_fields(scope).collect();
    if out.is_empty()
        && (scope.version().is_some_and(|v| v.features.is_some()) || !versions.is_empty())
    {
        out.extend(
            items
                .iter()
                .flat_map(|i| &i.consts)
                .filter(|c| c.role == Some(ConstRole::KhoEntry))
                .filter_map(|c| match &c.value {
                    ConstValue::Str(s) => Some(s.clone()),
                    ConstValue::Int(_) => None,
                }),
        );
        if !out.is_empty() {
            out.extend(versions.iter().map(|(at, v)| format!("{at}={v}")));
        }
    }
    // A version with no string of its own (block.h before `block-v1`) is
    // known by its spec id.
    if out.is_empty()
        && scope.component().abi == crate::ast::AbiKind::Kho
        && let Some(v) = scope.version()
    {
        out.push(format!("{}/{}", scope.component().name, v.id));
    }
    out
}

/// The `version` constants a version shows: the member each is written into
/// (`pci_ser.version`) and its value.
pub fn version_fields(scope: Scope<'_>) -> impl Iterator<Item = (String, u64)> {
    use crate::ast::ConstRole;
    header_items(scope)
        .into_iter()
        .flat_map(|i| &i.consts)
        .filter(|c| c.role == Some(ConstRole::Version))
        .filter_map(|c| match (&c.value, c.into.first()) {
            (ConstValue::Int(crate::expr::Expr::Int(v, _)), Some((st, f, _))) => {
                Some((format!("{st}.{f}"), *v))
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// FNV-1a over the primary-target layout of every struct a version shows.
pub fn layout_fingerprint(scope: Scope<'_>, layouts: &LayoutTable) -> u64 {
    let mut names: Vec<&str> = header_items(scope)
        .iter()
        .flat_map(|i| &i.structs)
        .map(|s| s.name.as_str())
        .collect();
    names.sort_unstable();
    let mut text = String::new();
    for name in names {
        if let Ok(l) = layouts.get(scope, name, Target::PRIMARY) {
            text.push_str(&format!("{name} {} {};", l.size, l.align));
            for f in &l.fields {
                text.push_str(&format!("{} {} {} {:?};", f.name, f.offset, f.size, f.bits));
            }
        }
    }
    fnv1a(text.as_bytes())
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The snapshot of a component as `kernel` writes it.
pub fn snapshot(scope: Scope<'_>, kernel: &Kernel, ir: &Ir<'_>) -> ComponentSnapshot {
    let comp = scope.component();
    let items = header_items(scope);
    let (compatibles, constants) = constants(scope, ir.engine, &items);
    ComponentSnapshot {
        snapshot_version: SNAPSHOT_VERSION,
        kernel: kernel.name.clone(),
        component: comp.name.clone(),
        abi: match comp.abi {
            AbiKind::Uapi => "uapi",
            AbiKind::Kho => "kho",
            AbiKind::Kernel => "kernel",
        }
        .into(),
        header: comp.header.clone(),
        version: scope.version().map(|v| v.id.clone()),
        released: kernel.released,
        identity: version_identity(scope),
        reads: readers(scope, kernel, &ir.layouts),
        drops: kernel
            .drops
            .get(&comp.name)
            .into_iter()
            .flatten()
            .map(|d| d.name.clone())
            .collect(),
        fingerprint: layout_fingerprint(scope, &ir.layouts),
        compatibles,
        features: features(scope, &items),
        constants,
        structs: items
            .iter()
            .flat_map(|i| &i.structs)
            .map(|s| struct_snapshot(scope, &ir.layouts, s))
            .collect(),
        ioctls: ioctls(scope, ir.engine, &items),
        fdt: fdt_nodes(scope, &items),
    }
}

/// The compatible strings (constants with a role) and the integer constants and
/// enumerators, each with its value on every target.
fn constants(
    scope: Scope<'_>,
    engine: &Layouts,
    items: &[&Items],
) -> (Vec<CompatibleSnapshot>, Vec<ConstSnapshot>) {
    let mut compatibles = Vec::new();
    let mut constants = Vec::new();
    for c in items.iter().flat_map(|i| &i.consts) {
        match &c.value {
            ConstValue::Str(s) => {
                if let Some(role) = c.role {
                    let role = serde_json::to_value(role)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    compatibles.push(CompatibleSnapshot {
                        name: c.name.clone(),
                        value: s.clone(),
                        role,
                        into: c.into.iter().map(|(s, f, _)| format!("{s}.{f}")).collect(),
                    });
                }
            }
            ConstValue::Int(e) => constants.push(ConstSnapshot {
                name: c.name.clone(),
                expr: e.to_c(),
                page_size_dependent: Target::ALL
                    .iter()
                    .map(|t| engine.eval(scope, e, *t).ok())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    > 1,
                values: Target::ALL
                    .iter()
                    .filter_map(|t| engine.eval(scope, e, *t).ok().map(|v| (t.name(), v)))
                    .collect(),
            }),
        }
    }
    for m in items.iter().flat_map(|i| &i.enums).flat_map(|e| &e.members) {
        constants.push(ConstSnapshot {
            name: m.name.clone(),
            expr: m.value.to_c(),
            page_size_dependent: false,
            values: Target::ALL
                .iter()
                .filter_map(|t| engine.eval(scope, &m.value, *t).ok().map(|v| (t.name(), v)))
                .collect(),
        });
    }
    (compatibles, constants)
}

/// A struct's members as the spec writes them and its layout on every target.
fn struct_snapshot(scope: Scope<'_>, layouts: &LayoutTable, s: &Struct) -> StructSnapshot {
    let layouts_by_target: BTreeMap<String, LayoutSnapshot> = Target::ALL
        .iter()
        .filter_map(|t| {
            layouts.get(scope, &s.name, *t).ok().map(|l| {
                (
                    t.name(),
                    LayoutSnapshot {
                        size: l.size,
                        align: l.align,
                        fields: l
                            .fields
                            .iter()
                            .map(|f| FieldSnapshot {
                                name: f.name.clone(),
                                offset: f.offset,
                                size: f.size,
                                count: f.count,
                                bits: f.bits,
                            })
                            .collect(),
                    },
                )
            })
        })
        .collect();
    let min_size = s.min_size_field.as_ref().and_then(|m| {
        let l = layouts.get(scope, &s.name, Target::PRIMARY).ok()?;
        let f = l.field(&m.name)?;
        Some(f.offset + f.size)
    });
    StructSnapshot {
        name: s.name.clone(),
        packed: s.packed,
        ops: s.ops,
        min_size,
        members: s
            .fields
            .iter()
            .map(|f| MemberSnapshot {
                name: f.name.clone(),
                ty: f.ty.to_string(),
                len: f.len.as_ref().map(|(e, _)| e.to_c()),
                bits: f.bits.as_ref().map(|b| b.0),
                reserved: f.reserved,
                required: f.required,
                dir: f.dir.as_ref().map(|d| d.0),
                feature: f.feature.as_ref().map(|n| n.name.clone()),
            })
            .collect(),
        layouts: layouts_by_target,
    }
}

/// The ioctls with their numbers and full command values.
fn ioctls(scope: Scope<'_>, engine: &Layouts, items: &[&Items]) -> Vec<IoctlSnapshot> {
    items
        .iter()
        .flat_map(|i| &i.ioctls)
        .map(|i| {
            let nr = engine.eval(scope, &i.nr.0, Target::PRIMARY).unwrap_or(0);
            IoctlSnapshot {
                name: i.name.clone(),
                nr,
                value: engine.ioctl_value(scope, i),
                arg: i.arg.name.clone(),
                on: i.on.name.clone(),
            }
        })
        .collect()
}

/// The FDT nodes with their properties.
fn fdt_nodes(scope: Scope<'_>, items: &[&Items]) -> Vec<FdtSnapshot> {
    items
        .iter()
        .flat_map(|i| &i.fdt_nodes)
        .map(|n| FdtSnapshot {
            path: n.path.clone(),
            name: n.name_const.as_ref().map(|c| string_const(scope, &c.name)),
            compatible: string_const(scope, &n.compatible.name),
            props: n
                .props
                .iter()
                .map(|p| (string_const(scope, &p.name_const.name), p.ty.to_string()))
                .collect(),
            endian: "native".into(),
        })
        .collect()
}

/// The feature negotiation of a feature-negotiated version: the masks and, for each bit,
/// the members it gates.
fn features(scope: Scope<'_>, items: &[&Items]) -> Option<FeaturesSnapshot> {
    scope
        .version()
        .and_then(|v| v.features.as_ref())
        .map(|fs| FeaturesSnapshot {
            struct_name: fs.struct_name.name.clone(),
            supported: fs.mask(&fs.supported),
            required: fs.mask(&fs.required),
            active: fs.mask(&fs.active),
            bits: fs
                .bits
                .iter()
                .map(|b| FeatureBitSnapshot {
                    name: b.name.clone(),
                    bit: b.bit,
                    gates: items
                        .iter()
                        .flat_map(|i| &i.structs)
                        .flat_map(|s| {
                            s.fields
                                .iter()
                                .filter(|f| f.feature.as_ref().is_some_and(|n| n.name == b.name))
                                .map(move |f| format!("{}.{}", s.name, f.name))
                        })
                        .collect(),
                })
                .collect(),
        })
}

/// The older versions `kernel` reads of the component, each with its identity, known
/// features and layout fingerprint.
fn readers(scope: Scope<'_>, kernel: &Kernel, layouts: &LayoutTable) -> Vec<ReaderSnapshot> {
    let comp = scope.component();
    kernel
        .reads
        .get(&comp.name)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let vi = comp.versions.iter().position(|v| v.id == r.name)?;
            let reader = scope.at(crate::model::Origin {
                comp: scope.origin.comp,
                ver: Some(vi),
            });
            Some(ReaderSnapshot {
                version: r.name.clone(),
                identity: version_identity(reader),
                known_features: reader
                    .version()
                    .and_then(|v| v.features.as_ref())
                    .map(|fs| {
                        fs.bits
                            .iter()
                            .fold(0u64, |m, b| m | 1u64.checked_shl(b.bit).unwrap_or(0))
                    }),
                fingerprint: layout_fingerprint(reader, layouts),
            })
        })
        .collect()
}

/// JSON Schema of the snapshot format.
pub fn snapshot_json_schema() -> String {
    let schema = schemars::schema_for!(ComponentSnapshot);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// JSON Schema of the spec language, for editors.
pub fn spec_json_schema() -> String {
    let schema = schemars::schema_for!(crate::ast::ComponentFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Whose answer a kernel set gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// This tree's build of the kernel: what its spec says it writes and reads.
    #[default]
    Luo,
    /// Upstream's released kernel: its frozen snapshot under `schema/released/`.
    Upstream,
    /// Snapshots given as files or a git revision: no kernel view.
    Files,
}

impl View {
    /// The prefix that names the view (`luo`, `upstream`), if any.
    pub fn prefix(self) -> Option<&'static str> {
        match self {
            View::Luo => Some("luo"),
            View::Upstream => Some("upstream"),
            View::Files => None,
        }
    }
}

/// One kernel's snapshots, by component (what `generated/` holds for a kernel and what
/// `schema/` froze for a released one).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSet {
    /// Kernel name (`7.3`, `current`, or a file name).
    pub kernel: String,
    /// Whose answer this set gives.
    pub view: View,
    /// Snapshots by component name.
    pub components: BTreeMap<String, ComponentSnapshot>,
}

impl KernelSet {
    /// The kernel with its view, as every output names it: `luo:7.3`, `upstream:7.3`.
    pub fn label(&self) -> String {
        match self.view.prefix() {
            Some(p) => format!("{p}:{}", self.kernel),
            None => self.kernel.clone(),
        }
    }
}

/// The snapshots of every component `k` shows.
pub fn kernel_set(ir: &Ir<'_>, k: &KernelIr<'_>) -> KernelSet {
    KernelSet {
        kernel: k.kernel.name.clone(),
        view: View::Luo,
        components: k
            .units
            .iter()
            .map(|scope| {
                let name = scope.component().name.clone();
                (name, snapshot(*scope, k.kernel, ir))
            })
            .collect(),
    }
}

/// The snapshots of every kernel of the IR, in spec order.
pub fn kernel_sets(ir: &Ir<'_>) -> Vec<KernelSet> {
    ir.kernels.iter().map(|k| kernel_set(ir, k)).collect()
}

/// The schema backend: each kernel's layout snapshots (`generated/schema/<kernel>/`), the
/// JSON schemas of the snapshot and spec formats, and the snapshots' binary form, each
/// kernel's ABI table (`generated/src/abi_table.rs`).
pub struct Schemas {
    /// Encodes a kernel's snapshots as its ABI table (`abi_table::build`).
    pub table: fn(&KernelSet) -> Vec<u8>,
    /// Joins every kernel's table into one section (`abi_table::encode_kernels`).
    pub all_tables: fn(&NamedTables) -> Vec<u8>,
}

/// Each kernel's name and ABI table.
pub type NamedTables = [(String, Vec<u8>)];

impl Backend for Schemas {
    fn render(&self, ir: &Ir<'_>, out: &mut Outputs) {
        let mut tables = Vec::new();
        for k in &ir.kernels {
            let set = kernel_set(ir, k);
            for (name, snap) in &set.components {
                let json = serde_json::to_string_pretty(snap).unwrap_or_default() + "\n";
                let path = Path::new("generated/schema")
                    .join(k.kernel.dir_name())
                    .join(format!("{name}.json"));
                out.insert(path, json);
            }
            tables.push((k.kernel.name.clone(), k.kernel.default, (self.table)(&set)));
        }
        let all = (self.all_tables)(
            &tables
                .iter()
                .map(|(k, _, b)| (k.clone(), b.clone()))
                .collect::<Vec<_>>(),
        );
        out.insert(
            "generated/src/abi_table.rs".into(),
            super::rust::abi_table(&tables, &all),
        );
        out.insert(
            "generated/schema/layout.schema.json".into(),
            snapshot_json_schema(),
        );
        out.insert("spec/spec.schema.json".into(), spec_json_schema());
    }
}
