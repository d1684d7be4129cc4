// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The raw spec language: what `spec/*.toml` files deserialize into.
//!
//! Every value a diagnostic may point at is `Spanned`, so validation can
//! report `file:line:col`. Unknown keys are rejected by serde
//! (`deny_unknown_fields`), which also carries a span. Nothing here is
//! checked beyond TOML syntax and shape; `model` resolves and validates.
//!
//! The language is documented for spec authors in `spec/README.md`; the JSON
//! Schema editors use (`spec/spec.schema.json`) is derived from these types.

use std::borrow::Cow;
use std::ops::Range;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// A value with the byte range it came from in its spec file.
///
/// A thin wrapper over `toml::Spanned` that also describes itself to
/// schemars as the bare value, so the editor schema stays readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// Byte range in the source file.
    pub span: Range<usize>,
    /// The value.
    pub value: T,
}

impl<T> Spanned<T> {
    /// A value with a span (`0..0` for synthesized values).
    pub fn new(span: Range<usize>, value: T) -> Self {
        Spanned { span, value }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = toml::Spanned::<T>::deserialize(d)?;
        Ok(Spanned {
            span: s.span(),
            value: s.into_inner(),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// A spanned string.
pub type SStr = Spanned<String>;

/// One `spec/<component>.toml` file: a header's worth of ABI.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentFile {
    /// What the component is and where it is rendered.
    pub component: ComponentHeader,
    /// Constants common to every version.
    #[serde(default, rename = "const")]
    pub consts: Vec<Const>,
    /// Function-like C macros (no layout; rendered into C only).
    #[serde(default, rename = "macro")]
    pub macros: Vec<CMacro>,
    /// Anonymous or named C enums common to every version.
    #[serde(default, rename = "enum")]
    pub enums: Vec<Enum>,
    /// Structs common to every version.
    #[serde(default, rename = "struct")]
    pub structs: Vec<Struct>,
    /// ioctl commands (uAPI components only).
    #[serde(default, rename = "ioctl")]
    pub ioctls: Vec<Ioctl>,
    /// Functions a C API exports (rendered as prototypes).
    #[serde(default, rename = "function")]
    pub functions: Vec<Function>,
    /// The compatible versions of this component.
    #[serde(default, rename = "version")]
    pub versions: Vec<Version>,
}

/// `[component]`: identity and rendering of a component.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentHeader {
    /// Component name, also the Rust module name (`memfd`, `luo`, `uapi`).
    pub name: SStr,
    /// Which ABI this is: the checks and header conventions differ.
    pub abi: Spanned<AbiKind>,
    /// Header path below `include/`, e.g. `linux/kho/abi/memfd.h`.
    pub header: SStr,
    /// Include guard macro, as upstream spells it.
    pub guard: SStr,
    /// Other headers this one includes (`linux/types.h` is implied).
    #[serde(default)]
    pub includes: Vec<SStr>,
    /// Components whose common items this one refers to.
    #[serde(default)]
    pub uses: Vec<SStr>,
    /// Opaque C types used only behind pointers (`file`, `module`).
    #[serde(default)]
    pub opaque: Vec<SStr>,
    /// Second header for this project's extensions of an upstream API (items
    /// with `ext = true`), e.g. `linux/luo_ext.h`; it includes `header`.
    #[serde(default)]
    pub ext_header: Option<SStr>,
    /// Include guard of `ext_header`.
    #[serde(default)]
    pub ext_guard: Option<SStr>,
    /// Kernel-doc text of `ext_header`.
    #[serde(default)]
    pub ext_doc: Option<SStr>,
    /// Kernel-doc text: `DOC:` sections rendered at the top of the header.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// What kind of ABI a component describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AbiKind {
    /// Userspace API: must be identical on every architecture (no compat_ioctl).
    Uapi,
    /// Kexec HandOver ABI between two kernels of the same architecture.
    Kho,
    /// In-kernel C API (ops tables, registration functions).
    Kernel,
}

/// `[[const]]`: a `#define`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Const {
    /// Macro name.
    pub name: SStr,
    /// Integer constant expression (`BIT(0)`, `(PAGE_SIZE - 16) / 64`).
    #[serde(default)]
    pub value: Option<SStr>,
    /// String constant (a compatible string, a node name).
    #[serde(default)]
    pub string: Option<SStr>,
    /// For a string constant: the `struct.field` it is copied into; the
    /// string and its NUL must fit that field. For a `version` constant:
    /// the one integer member it is written into.
    #[serde(default)]
    pub into: Vec<SStr>,
    /// Role of the constant in versioning (strings; `version` for an
    /// integer written into the data).
    #[serde(default)]
    pub role: Option<Spanned<ConstRole>>,
    /// Not part of the C header: upstream defines it in a .c file
    /// (`LUO_FLB_MAX` in kernel/liveupdate/luo_flb.c), so a drop-in header
    /// must not (it would be redefined). Still a Rust constant, and usable in
    /// other constants that are themselves internal.
    #[serde(default)]
    pub internal: bool,
    /// Rendered into the component's `ext_header` (this project's extensions
    /// of the API), not into its header; the Rust type is the same.
    #[serde(default)]
    pub ext: bool,
    /// Kernels whose C header does not declare it (upstream's API of that
    /// kernel lacks it); the Rust type exists for every kernel.
    #[serde(default)]
    pub not_in: Vec<SStr>,
    /// Kernel-doc text.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// `[[macro]]`: a function-like C macro such as `DECLARE_KHOSER_PTR`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CMacro {
    /// Macro name.
    pub name: SStr,
    /// Parameter names.
    #[serde(default)]
    pub params: Vec<SStr>,
    /// Replacement text; several lines become backslash-continued lines.
    pub body: SStr,
    /// Only meaningful inside the kernel (uses kernel helpers): rendered
    /// under `#ifdef __KERNEL__`.
    #[serde(default)]
    pub kernel_only: bool,
    /// Rendered under `#ifdef` this config symbol, as upstream guards it
    /// (`CONFIG_LIVEUPDATE_TEST`); not together with `kernel_only`.
    #[serde(default)]
    pub ifdef: Option<SStr>,
    /// Comment.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// What a string constant means to the handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConstRole {
    /// A `compatible` string: the exact-match version of the component.
    Compatible,
    /// A versionless handler name (feature-negotiated ABIs).
    HandlerName,
    /// An FDT node name.
    FdtNode,
    /// An FDT property name.
    FdtProperty,
    /// A KHO subtree name.
    KhoEntry,
    /// The version number a versionless compatible string carries inside
    /// its data: an integer literal written into the one member `into`
    /// names (upstream's `PCI_LUO_FLB_VERSION` in `pci_ser.version`).
    Version,
}

/// `[[enum]]`: a C enum; anonymous when `name` is absent (as upstream's
/// `LIVEUPDATE_CMD_*`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Enum {
    /// Enum tag; none for an anonymous enum.
    #[serde(default)]
    pub name: Option<SStr>,
    /// Comment placed above the enum.
    #[serde(default)]
    pub doc: Option<SStr>,
    /// Kernels whose C header does not declare it (upstream's headers of
    /// that kernel lack it).
    #[serde(default)]
    pub not_in: Vec<SStr>,
    /// Enumerators, in order.
    pub members: Vec<EnumMember>,
}

/// One enumerator.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnumMember {
    /// Enumerator name.
    pub name: SStr,
    /// Value expression; may name an earlier enumerator.
    pub value: SStr,
    /// Comment.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// `[[struct]]`: a C struct with an exact layout.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Struct {
    /// Struct tag.
    pub name: SStr,
    /// `__packed`: no padding, alignment 1.
    #[serde(default)]
    pub packed: bool,
    /// An ops table: every `fn(...)` member is a callback, `required` or not.
    #[serde(default)]
    pub ops: bool,
    /// Size the struct must have on 64-bit 4 KiB targets; checked.
    #[serde(default)]
    pub size: Option<Spanned<u64>>,
    /// For `size`-prefixed extensible uAPI structs: the field whose end is
    /// the minimum size userspace may pass.
    #[serde(default)]
    pub min_size_field: Option<SStr>,
    /// Kernel-doc text for the struct.
    #[serde(default)]
    pub doc: Option<SStr>,
    /// Rendered into the component's `ext_header` (this project's extensions
    /// of the API), not into its header; the Rust type is the same.
    #[serde(default)]
    pub ext: bool,
    /// Kernels whose C header does not declare it (upstream's API of that
    /// kernel lacks it); the Rust type exists for every kernel.
    #[serde(default)]
    pub not_in: Vec<SStr>,
    /// Members, in order.
    pub fields: Vec<Field>,
}

/// One struct member.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Member name.
    pub name: SStr,
    /// Type: `u8`…`u64`, `s8`…`s64`, `aligned_u64`, `char`, `int`, `uint`,
    /// `ushort`, `ulong`, `bool`, `phys<T>`, `ptr<T>`, `ptr<const T>`,
    /// `fn(name: T, …) -> T`, `str` (NUL-terminated fixed string), or the name
    /// of a struct.
    #[serde(rename = "type")]
    pub ty: SStr,
    /// Array length (constant expression); `str` needs one.
    #[serde(default)]
    pub len: Option<SStr>,
    /// Bitfield width.
    #[serde(default)]
    pub bits: Option<Spanned<u32>>,
    /// Must be zero on read (and written as zero).
    #[serde(default)]
    pub reserved: bool,
    /// Explicit padding (implies `reserved`).
    #[serde(default)]
    pub padding: bool,
    /// Callback that must be implemented (ops tables).
    #[serde(default)]
    pub required: Option<bool>,
    /// uAPI direction.
    #[serde(default)]
    pub dir: Option<Spanned<Direction>>,
    /// Feature bit (constant name) that gates this field.
    #[serde(default)]
    pub feature: Option<SStr>,
    /// For a `phys<T>` member: render it as upstream's
    /// `DECLARE_KHOSER_PTR(name, struct T *)`, a union of the `u64` physical
    /// address and the kernel pointer (same bytes as `u64`).
    #[serde(default)]
    pub khoser: bool,
    /// For a `u64` array: render it as upstream's `DECLARE_BITMAP(name, 64 * len)`, an array
    /// of `unsigned long` words holding the same bits (the same bytes on the little-endian
    /// targets KHO runs on), so kernel code can pass it to `set_bit()` and friends.
    #[serde(default)]
    pub bitmap: bool,
    /// Value a migration from the previous version gives this member when
    /// the old version does not have it (constant expression).
    #[serde(default)]
    pub default: Option<SStr>,
    /// C spelling of the type where upstream uses a different name
    /// (`phys_addr_t`, `unsigned int`); layout still follows `type`.
    #[serde(default)]
    pub c_type: Option<SStr>,
    /// Kernel-doc member text.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// Direction of a uAPI field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Userspace → kernel.
    In,
    /// Kernel → userspace.
    Out,
    /// Both.
    Inout,
}

/// `[[ioctl]]`: one uAPI command.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ioctl {
    /// Macro name, e.g. `LIVEUPDATE_IOCTL_CREATE_SESSION`.
    pub name: SStr,
    /// Encoding macro: `_IO`, `_IOR`, `_IOW`, `_IOWR`.
    #[serde(default = "default_io")]
    pub encoding: SStr,
    /// The ioctl type constant.
    #[serde(rename = "type")]
    pub ty: SStr,
    /// The command number expression (an enumerator).
    pub nr: SStr,
    /// The argument struct.
    pub arg: SStr,
    /// Which fd the command is issued on (`device`, `session`).
    pub on: SStr,
    /// Kernel-doc text.
    #[serde(default)]
    pub doc: Option<SStr>,
}

fn default_io() -> SStr {
    Spanned::new(0..0, "_IO".to_string())
}

/// `[[function]]`: a C function prototype.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// Function name.
    pub name: SStr,
    /// Signature in the `fn(name: T, …) -> T` syntax of field types.
    pub signature: SStr,
    /// Kernel-doc text.
    #[serde(default)]
    pub doc: Option<SStr>,
    /// Rendered into the component's `ext_header` (this project's extensions
    /// of the API), not into its header; the Rust type is the same.
    #[serde(default)]
    pub ext: bool,
    /// Kernels whose C header does not declare it (upstream's API of that
    /// kernel lacks it); the Rust type exists for every kernel.
    #[serde(default)]
    pub not_in: Vec<SStr>,
}

/// `[[version]]`: one compatible version (or one feature-negotiated ABI).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Version id inside the component; the Rust module name (`v1`, `v5`, `next`).
    pub id: SStr,
    /// What changed, for readers.
    #[serde(default)]
    pub doc: Option<SStr>,
    /// The version this one migrates from: `luo gen` emits `From<old>` for
    /// every struct both define, copying members by name and giving new ones
    /// their `default`.
    #[serde(default)]
    pub migrates_from: Option<SStr>,
    /// Versions of other components whose items this one refers to
    /// (`luo/next` for `luo_feature_hdr`).
    #[serde(default)]
    pub uses: Vec<SStr>,
    /// Version-specific constants (compatible strings live here).
    #[serde(default, rename = "const")]
    pub consts: Vec<Const>,
    /// Version-specific enums.
    #[serde(default, rename = "enum")]
    pub enums: Vec<Enum>,
    /// Version-specific structs.
    #[serde(default, rename = "struct")]
    pub structs: Vec<Struct>,
    /// Version-specific ioctls.
    #[serde(default, rename = "ioctl")]
    pub ioctls: Vec<Ioctl>,
    /// Version-specific function-like C macros.
    #[serde(default, rename = "macro")]
    pub macros: Vec<CMacro>,
    /// FDT nodes this version writes.
    #[serde(default, rename = "fdt_node")]
    pub fdt_nodes: Vec<FdtNode>,
    /// Feature negotiation, for feature-negotiated versions.
    #[serde(default)]
    pub features: Option<Features>,
}

/// `[[version.fdt_node]]`: an FDT node and its properties.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FdtNode {
    /// Node path (`/` for the root of the subtree, else a node name).
    pub path: SStr,
    /// Constant holding the node name, if upstream names it.
    #[serde(default)]
    pub name_const: Option<SStr>,
    /// Constant holding the node's `compatible`.
    pub compatible: SStr,
    /// Properties.
    #[serde(default)]
    pub props: Vec<FdtProp>,
}

/// One FDT property: LUO's are native-endian u64, unlike FDT cells.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FdtProp {
    /// Constant holding the property name.
    pub name_const: SStr,
    /// `u64` or `phys<T>`.
    #[serde(rename = "type")]
    pub ty: SStr,
    /// What it holds.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// `[version.features]`: the feature-negotiation scheme (`luo_feature_hdr`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// The struct that embeds the header as its first member, `features`.
    #[serde(rename = "struct")]
    pub struct_name: SStr,
    /// Prefix of the generated `<prefix>_FEATURES_SUPP/_REQ/_ACTIVE` macros.
    pub macro_prefix: SStr,
    /// Feature bits this producer supports.
    pub supported: Vec<SStr>,
    /// Feature bits a receiver must understand.
    pub required: Vec<SStr>,
    /// Feature bits in use in the payload.
    pub active: Vec<SStr>,
    /// Named feature bits.
    #[serde(rename = "bit")]
    pub bits: Vec<FeatureBit>,
}

/// One named feature bit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureBit {
    /// Macro name, e.g. `MEMFD_LUO_FEATURE_SEALS`.
    pub name: SStr,
    /// Bit number.
    pub bit: Spanned<u32>,
    /// Kernel-doc text.
    #[serde(default)]
    pub doc: Option<SStr>,
}

/// `spec/kernels/<release>.toml`: what one kernel release writes and reads.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelFile {
    /// Release name (`6.19`, `7.3`, `next`).
    pub name: SStr,
    /// What this release is.
    #[serde(default)]
    pub doc: Option<SStr>,
    /// The newest mainline release: rendered into `generated/include/`.
    #[serde(default)]
    pub default: bool,
    /// Component → version id this release writes (and exposes).
    pub writes: std::collections::BTreeMap<String, SStr>,
    /// Component → version ids this release accepts from the previous kernel.
    #[serde(default)]
    pub reads: std::collections::BTreeMap<String, Vec<SStr>>,
    /// Component → versions this release deliberately stops reading: a
    /// declared removal, which `luo schema diff` accepts instead of a kept
    /// reader when a compatible string is bumped.
    #[serde(default)]
    pub drops: std::collections::BTreeMap<String, Vec<SStr>>,
    /// A released kernel: its snapshots are frozen under `schema/released/`
    /// and `luo schema check` fails on any unversioned break against them.
    #[serde(default)]
    pub released: bool,
}
