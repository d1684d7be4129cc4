// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The resolved spec model: what every renderer and check works from.
//!
//! `load` reads `spec/*.toml` and `spec/kernels/*.toml`, deserializes them
//! (`ast`), parses every expression and type, and lowers them into the types
//! below. Name resolution goes through a [`Scope`]: one component version
//! plus what it `uses`. Checks live in `valid`; layout in `layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::ast::{AbiKind, ConstRole, Direction, SStr};
use crate::diag::{FileId, Sources};
use crate::expr::Expr;
use crate::ty::{FnSig, Ty};

mod lower;

pub use lower::*;

/// A byte range in a spec file.
pub type Span = Range<usize>;

/// The whole spec: components, kernels and the sources they came from.
#[derive(Debug, Default)]
pub struct Spec {
    /// Loaded files, for diagnostics.
    pub sources: Sources,
    /// Components, sorted by name.
    pub components: Vec<Component>,
    /// Kernel releases, in file order (sorted by file name).
    pub kernels: Vec<Kernel>,
    /// Component files that could not be read or parsed, by file stem (a component file is
    /// named after its component). The parse error was reported; checks stay silent about
    /// names these would have defined, so one typo gives one error, not one per reference.
    pub unloaded: BTreeSet<String>,
}

/// One header's worth of ABI, with its versions.
#[derive(Debug)]
pub struct Component {
    /// The file it came from.
    pub file: FileId,
    /// Name, also the Rust module name.
    pub name: String,
    /// Span of the name.
    pub name_span: Span,
    /// ABI kind.
    pub abi: AbiKind,
    /// Header path below `include/`.
    pub header: String,
    /// Include guard.
    pub guard: String,
    /// Headers included.
    pub includes: Vec<String>,
    /// Components whose common items are visible.
    pub uses: Vec<Named>,
    /// Opaque C types.
    pub opaque: Vec<String>,
    /// Kernel-doc text.
    pub doc: Option<String>,
    /// Extension header: path, guard, kernel-doc.
    pub ext_header: Option<(String, String, Option<String>)>,
    /// Items common to every version.
    pub common: Items,
    /// Versions.
    pub versions: Vec<Version>,
}

/// A name with the span it was written at.
#[derive(Debug, Clone)]
pub struct Named {
    /// The name.
    pub name: String,
    /// Where.
    pub span: Span,
}

impl From<&SStr> for Named {
    fn from(s: &SStr) -> Self {
        Named {
            name: s.value.clone(),
            span: s.span.clone(),
        }
    }
}

/// Which C header declares an item (kernel-ABI components): the component's
/// header, or its `ext_header`; and the kernels whose header omits it.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// In the extension header.
    pub ext: bool,
    /// Kernels whose header omits it.
    pub not_in: Vec<String>,
}

impl Placement {
    fn of(ext: bool, not_in: &[SStr]) -> Placement {
        Placement {
            ext,
            not_in: not_in.iter().map(|k| k.value.clone()).collect(),
        }
    }

    /// Whether the `ext` header (else the main one) of `kernel` declares it.
    pub fn in_header(&self, ext: bool, kernel: &str) -> bool {
        self.ext == ext && !self.not_in.iter().any(|k| k == kernel)
    }
}

/// A set of declarations (common or per version).
#[derive(Debug, Default)]
pub struct Items {
    /// `#define`s.
    pub consts: Vec<Const>,
    /// Function-like macros.
    pub macros: Vec<CMacro>,
    /// Enums.
    pub enums: Vec<Enum>,
    /// Structs.
    pub structs: Vec<Struct>,
    /// ioctls.
    pub ioctls: Vec<Ioctl>,
    /// Function prototypes.
    pub functions: Vec<Function>,
    /// FDT nodes.
    pub fdt_nodes: Vec<FdtNode>,
}

/// One version of a component.
#[derive(Debug)]
pub struct Version {
    /// Version id (`v1`, `next`).
    pub id: String,
    /// Span of the id.
    pub span: Span,
    /// What changed.
    pub doc: Option<String>,
    /// `component/version` pairs whose items are visible.
    pub uses: Vec<(String, String, Span)>,
    /// The version this one migrates from.
    pub migrates_from: Option<Named>,
    /// Declarations.
    pub items: Items,
    /// Feature negotiation.
    pub features: Option<Features>,
}

/// A constant.
#[derive(Debug)]
pub struct Const {
    /// Macro name.
    pub name: String,
    /// Span of the name.
    pub span: Span,
    /// Value.
    pub value: ConstValue,
    /// Span of the value.
    pub value_span: Span,
    /// `struct.field` targets a string constant must fit.
    pub into: Vec<(String, String, Span)>,
    /// Versioning role.
    pub role: Option<ConstRole>,
    /// Kept out of the C header (upstream defines it in a .c file).
    pub internal: bool,
    /// Where the C header renders it.
    pub place: Placement,
    /// Kernel-doc.
    pub doc: Option<String>,
}

/// An integer or string constant.
#[derive(Debug, Clone)]
pub enum ConstValue {
    /// Integer expression.
    Int(Expr),
    /// String.
    Str(String),
}

/// A function-like C macro.
#[derive(Debug)]
pub struct CMacro {
    /// Name.
    pub name: String,
    /// Span of the name.
    pub span: Span,
    /// Parameters.
    pub params: Vec<String>,
    /// Body lines.
    pub body: String,
    /// Kernel-only.
    pub kernel_only: bool,
    /// `#ifdef` guard (a config symbol).
    pub ifdef: Option<String>,
    /// Comment.
    pub doc: Option<String>,
}

/// An enum.
#[derive(Debug)]
pub struct Enum {
    /// Tag, if named.
    pub name: Option<String>,
    /// Comment.
    pub doc: Option<String>,
    /// Where the C header renders it (enums are never `ext`).
    pub place: Placement,
    /// Members: name, value, comment, span.
    pub members: Vec<EnumMember>,
}

/// An enumerator.
#[derive(Debug)]
pub struct EnumMember {
    /// Name.
    pub name: String,
    /// Value.
    pub value: Expr,
    /// Comment.
    pub doc: Option<String>,
    /// Span of the name.
    pub span: Span,
    /// Span of the value.
    pub value_span: Span,
}

/// A struct.
#[derive(Debug)]
pub struct Struct {
    /// Tag.
    pub name: String,
    /// Span of the tag.
    pub span: Span,
    /// `__packed`.
    pub packed: bool,
    /// An ops table.
    pub ops: bool,
    /// Expected size on 64-bit/4K.
    pub size: Option<(u64, Span)>,
    /// End of this field = minimum uAPI size.
    pub min_size_field: Option<Named>,
    /// Kernel-doc.
    pub doc: Option<String>,
    /// Members.
    pub fields: Vec<Field>,
    /// Where the C header renders it.
    pub place: Placement,
}

/// A struct member.
#[derive(Debug)]
pub struct Field {
    /// Name.
    pub name: String,
    /// Span of the name.
    pub span: Span,
    /// Type.
    pub ty: Ty,
    /// Span of the type string.
    pub ty_span: Span,
    /// Array length.
    pub len: Option<(Expr, Span)>,
    /// Bitfield width.
    pub bits: Option<(u32, Span)>,
    /// Must be zero.
    pub reserved: bool,
    /// Explicit padding.
    pub padding: bool,
    /// Required callback.
    pub required: Option<bool>,
    /// uAPI direction.
    pub dir: Option<(Direction, Span)>,
    /// Gating feature bit.
    pub feature: Option<Named>,
    /// Render as `DECLARE_KHOSER_PTR`.
    pub khoser: bool,
    /// Render as `DECLARE_BITMAP`.
    pub bitmap: bool,
    /// Default for migrations.
    pub default: Option<(Expr, Span)>,
    /// C spelling override.
    pub c_type: Option<String>,
    /// Kernel-doc.
    pub doc: Option<String>,
}

/// An ioctl.
#[derive(Debug)]
pub struct Ioctl {
    /// Macro name.
    pub name: String,
    /// Span of the name.
    pub span: Span,
    /// `_IO` etc.
    pub encoding: Named,
    /// Type constant.
    pub ty: Named,
    /// Command number expression.
    pub nr: (Expr, Span),
    /// Argument struct.
    pub arg: Named,
    /// `device` or `session`.
    pub on: Named,
    /// Kernel-doc.
    pub doc: Option<String>,
}

/// A function prototype.
#[derive(Debug)]
pub struct Function {
    /// Name.
    pub name: String,
    /// Span of the name.
    pub span: Span,
    /// Signature.
    pub sig: FnSig,
    /// Span of the signature.
    pub sig_span: Span,
    /// Where the C header renders it.
    pub place: Placement,
    /// Kernel-doc.
    pub doc: Option<String>,
}

/// An FDT node.
#[derive(Debug)]
pub struct FdtNode {
    /// Path.
    pub path: String,
    /// Constant naming the node.
    pub name_const: Option<Named>,
    /// Constant holding `compatible`.
    pub compatible: Named,
    /// Properties.
    pub props: Vec<FdtProp>,
}

/// An FDT property (native-endian u64).
#[derive(Debug)]
pub struct FdtProp {
    /// Constant holding the property name.
    pub name_const: Named,
    /// `u64` or `phys<T>`.
    pub ty: Ty,
    /// Span of the type.
    pub ty_span: Span,
    /// Doc.
    pub doc: Option<String>,
}

/// Feature negotiation of one version.
#[derive(Debug)]
pub struct Features {
    /// The struct embedding `features`.
    pub struct_name: Named,
    /// Macro prefix.
    pub macro_prefix: String,
    /// Supported bits.
    pub supported: Vec<Named>,
    /// Required bits.
    pub required: Vec<Named>,
    /// Active bits.
    pub active: Vec<Named>,
    /// Named bits.
    pub bits: Vec<FeatureBit>,
}

/// A named feature bit.
#[derive(Debug)]
pub struct FeatureBit {
    /// Macro name.
    pub name: String,
    /// Span.
    pub span: Span,
    /// Bit number.
    pub bit: u32,
    /// Doc.
    pub doc: Option<String>,
}

impl Features {
    /// Mask of a list of bit names (unknown names are ignored; `valid` reports them).
    pub fn mask(&self, names: &[Named]) -> u64 {
        names
            .iter()
            .filter_map(|n| self.bits.iter().find(|b| b.name == n.name))
            .fold(0, |m, b| m | 1u64.checked_shl(b.bit).unwrap_or(0))
    }
}

/// A kernel release.
#[derive(Debug)]
pub struct Kernel {
    /// File.
    pub file: FileId,
    /// Release name.
    pub name: String,
    /// Doc.
    pub doc: Option<String>,
    /// Rendered into `generated/include/`.
    pub default: bool,
    /// Component → version written.
    pub writes: BTreeMap<String, Named>,
    /// Component → versions read.
    pub reads: BTreeMap<String, Vec<Named>>,
    /// Component → versions deliberately no longer read.
    pub drops: BTreeMap<String, Vec<Named>>,
    /// Released: snapshots frozen.
    pub released: bool,
}

impl Kernel {
    /// Directory-safe name (`7.3` stays `7.3`).
    pub fn dir_name(&self) -> &str {
        &self.name
    }
}

/// Where an item was found by a [`Scope`] lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Component index.
    pub comp: usize,
    /// Version index, `None` for common items.
    pub ver: Option<usize>,
}

/// A component version and what it can see: the unit of name resolution.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The spec.
    pub spec: &'a Spec,
    /// Where lookups start.
    pub origin: Origin,
}

impl<'a> Scope<'a> {
    /// The component.
    pub fn component(&self) -> &'a Component {
        &self.spec.components[self.origin.comp]
    }

    /// The version, if any.
    pub fn version(&self) -> Option<&'a Version> {
        self.origin.ver.map(|v| &self.component().versions[v])
    }

    /// The item sets visible from here, nearest first.
    pub fn visible(&self) -> Vec<(Origin, &'a Items)> {
        let spec = self.spec;
        let comp = self.component();
        let mut out = Vec::new();
        if let Some(v) = self.version() {
            out.push((self.origin, &v.items));
        }
        out.push((
            Origin {
                comp: self.origin.comp,
                ver: None,
            },
            &comp.common,
        ));
        if let Some(v) = self.version() {
            for (c, ver, _) in &v.uses {
                if let Some(ci) = spec.components.iter().position(|x| &x.name == c) {
                    let other = &spec.components[ci];
                    if let Some(vi) = other.versions.iter().position(|x| &x.id == ver) {
                        out.push((
                            Origin {
                                comp: ci,
                                ver: Some(vi),
                            },
                            &other.versions[vi].items,
                        ));
                    }
                    out.push((
                        Origin {
                            comp: ci,
                            ver: None,
                        },
                        &other.common,
                    ));
                }
            }
        }
        for u in &comp.uses {
            if let Some(ci) = spec.components.iter().position(|x| x.name == u.name) {
                out.push((
                    Origin {
                        comp: ci,
                        ver: None,
                    },
                    &spec.components[ci].common,
                ));
            }
        }
        out
    }

    /// Whether a `uses` of this scope names a component or version that is not loaded
    /// (misspelled, or its file did not parse). Such a `uses` was reported; a name this
    /// scope cannot resolve may be one the missing component defines, so checks do not
    /// report it again.
    pub fn incomplete(&self) -> bool {
        let spec = self.spec;
        let comp_missing = |name: &str| spec.component(name).is_none();
        self.component().uses.iter().any(|u| comp_missing(&u.name))
            || self.version().is_some_and(|v| {
                v.uses.iter().any(|(c, ver, _)| {
                    spec.component(c)
                        .is_none_or(|(_, comp)| !comp.versions.iter().any(|x| &x.id == ver))
                })
            })
    }

    /// Find a struct by tag.
    pub fn find_struct(&self, name: &str) -> Option<(Origin, &'a Struct)> {
        self.visible().into_iter().find_map(|(o, items)| {
            items
                .structs
                .iter()
                .find(|s| s.name == name)
                .map(|s| (o, s))
        })
    }

    /// Find a constant by name.
    pub fn find_const(&self, name: &str) -> Option<(Origin, &'a Const)> {
        self.visible()
            .into_iter()
            .find_map(|(o, items)| items.consts.iter().find(|c| c.name == name).map(|c| (o, c)))
    }

    /// Find an enumerator by name.
    pub fn find_enumerator(&self, name: &str) -> Option<(Origin, &'a EnumMember)> {
        self.visible().into_iter().find_map(|(o, items)| {
            items
                .enums
                .iter()
                .flat_map(|e| &e.members)
                .find(|m| m.name == name)
                .map(|m| (o, m))
        })
    }

    /// Whether a name is an opaque type of a visible component.
    pub fn is_opaque(&self, name: &str) -> bool {
        let spec = self.spec;
        self.visible()
            .iter()
            .any(|(o, _)| spec.components[o.comp].opaque.iter().any(|x| x == name))
    }

    /// A scope at another origin.
    pub fn at(&self, origin: Origin) -> Scope<'a> {
        Scope {
            spec: self.spec,
            origin,
        }
    }
}

impl Spec {
    /// Every scope: each component's common items, and each version.
    pub fn scopes(&self) -> Vec<Scope<'_>> {
        let mut out = Vec::new();
        for (ci, c) in self.components.iter().enumerate() {
            out.push(Scope {
                spec: self,
                origin: Origin {
                    comp: ci,
                    ver: None,
                },
            });
            for vi in 0..c.versions.len() {
                out.push(Scope {
                    spec: self,
                    origin: Origin {
                        comp: ci,
                        ver: Some(vi),
                    },
                });
            }
        }
        out
    }

    /// Find a component by name.
    pub fn component(&self, name: &str) -> Option<(usize, &Component)> {
        self.components
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// Whether a kernel has a component, and in which version: `Some(None)`
    /// for a component without versions (every kernel has it),
    /// `Some(Some(v))` for the version the kernel writes, `None` when the
    /// kernel does not have the component (6.19 has no `block.h`).
    pub fn rendered_version(&self, kernel: &Kernel, comp: &Component) -> Option<Option<usize>> {
        if comp.versions.is_empty() {
            return Some(None);
        }
        let id = kernel.writes.get(&comp.name)?;
        comp.versions.iter().position(|v| v.id == id.name).map(Some)
    }

    /// The default (newest mainline) kernel.
    pub fn default_kernel(&self) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.default)
    }
}
