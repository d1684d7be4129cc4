// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The resolved spec model: what every renderer and check works from.
//!
//! `load` reads `spec/*.toml` and `spec/kernels/*.toml`, deserializes them
//! (`ast`), parses every expression and type, and lowers them into the types
//! below. Name resolution goes through a [`Scope`]: one component version
//! plus what it `uses`. Checks live in `valid`; layout in `layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use crate::ast::{self, AbiKind, ConstRole, Direction, SStr};
use crate::diag::{Diagnostics, FileId, Sources};
use crate::expr::Expr;
use crate::ty::{FnSig, Ty};

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

/// Span inside a TOML string value: the value's span includes the opening quote.
fn inner(span: &Span, offset: usize) -> Span {
    let at = span.start + 1 + offset;
    at..(at + 1).min(span.end.max(at + 1))
}

/// Load every spec under `dir` (`*.toml` and `kernels/*.toml`).
///
/// Never panics on bad input: problems go into the returned diagnostics and
/// the model holds what could be understood.
pub fn load(dir: &Path) -> (Spec, Diagnostics) {
    let mut spec = Spec::default();
    let mut diags = Diagnostics::default();
    let mut component_files = list_toml(dir);
    component_files.sort();
    let mut kernel_files = list_toml(&dir.join("kernels"));
    kernel_files.sort();
    for path in component_files {
        let Some((file, text)) = read(&mut spec, &mut diags, &path) else {
            spec.unloaded.insert(file_stem(&path));
            continue;
        };
        match toml::from_str::<ast::ComponentFile>(&text) {
            Ok(raw) => spec.components.push(lower_component(file, raw, &mut diags)),
            Err(e) => {
                toml_error(&mut diags, file, &e);
                spec.unloaded.insert(file_stem(&path));
            }
        }
    }
    for path in kernel_files {
        let Some((file, text)) = read(&mut spec, &mut diags, &path) else {
            continue;
        };
        match toml::from_str::<ast::KernelFile>(&text) {
            Ok(raw) => spec.kernels.push(lower_kernel(file, raw)),
            Err(e) => toml_error(&mut diags, file, &e),
        }
    }
    spec.components.sort_by(|a, b| a.name.cmp(&b.name));
    (spec, diags)
}

/// Load a spec from in-memory files (tests, fuzzing): `(path, text)` pairs;
/// paths under `kernels/` are kernel files.
pub fn load_texts(files: &[(&str, &str)]) -> (Spec, Diagnostics) {
    let mut spec = Spec::default();
    let mut diags = Diagnostics::default();
    for (path, text) in files {
        let file = spec.sources.add(path.into(), (*text).to_string());
        if path.starts_with("kernels/") {
            match toml::from_str::<ast::KernelFile>(text) {
                Ok(raw) => spec.kernels.push(lower_kernel(file, raw)),
                Err(e) => toml_error(&mut diags, file, &e),
            }
        } else {
            match toml::from_str::<ast::ComponentFile>(text) {
                Ok(raw) => spec.components.push(lower_component(file, raw, &mut diags)),
                Err(e) => {
                    toml_error(&mut diags, file, &e);
                    spec.unloaded.insert(file_stem(Path::new(path)));
                }
            }
        }
    }
    spec.components.sort_by(|a, b| a.name.cmp(&b.name));
    (spec, diags)
}

/// `spec/memfd.toml` → `memfd`.
fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list_toml(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect()
}

fn read(spec: &mut Spec, diags: &mut Diagnostics, path: &Path) -> Option<(FileId, String)> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some((spec.sources.add(path.to_path_buf(), text.clone()), text)),
        Err(e) => {
            let file = spec.sources.add(path.to_path_buf(), String::new());
            diags.error(
                "io",
                file,
                0..0,
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

fn toml_error(diags: &mut Diagnostics, file: FileId, e: &toml::de::Error) {
    let message = e.message().trim().to_string();
    let hint = if message.starts_with("unknown field") {
        Some(
            "check the spelling; `spec/README.md` lists every key, and `spec/spec.schema.json` lets an editor check them",
        )
    } else if message.starts_with("missing field") {
        Some("add the key; `spec/README.md` documents it")
    } else {
        None
    };
    let code = if message.starts_with("unknown field") {
        "unknown-key"
    } else {
        "syntax"
    };
    let d = diags
        .error(code, file, e.span().unwrap_or(0..0), message)
        .with_label("here");
    if let Some(h) = hint {
        d.with_hint(h);
    }
}

fn text(s: &Option<SStr>) -> Option<String> {
    s.as_ref().map(|s| s.value.clone())
}

/// Longest expression or type text accepted, and most operators and
/// brackets in one: the parsers, evaluation and rendering recurse, so
/// unbounded input could overflow the stack.
const MAX_TEXT_LEN: usize = 1024;
const MAX_OPERATORS: usize = 64;

/// Reject text the recursive parsers cannot take safely: too long, too
/// complex (more than `MAX_OPERATORS` of `counted`), or (for types)
/// non-ASCII.
fn unparseable(text: &str, counted: &[char], ascii_only: bool) -> Option<(usize, String)> {
    if text.len() > MAX_TEXT_LEN {
        return Some((0, format!("longer than {MAX_TEXT_LEN} bytes")));
    }
    let mut n = 0usize;
    for (i, c) in text.char_indices() {
        if ascii_only && !c.is_ascii() {
            return Some((
                i,
                format!("unexpected character `{c}` (U+{:04X})", u32::from(c)),
            ));
        }
        if counted.contains(&c) {
            n += 1;
            if n > MAX_OPERATORS {
                return Some((
                    i,
                    format!("more than {MAX_OPERATORS} operators and brackets"),
                ));
            }
        }
    }
    None
}

fn parse_expr(diags: &mut Diagnostics, file: FileId, s: &SStr) -> Expr {
    let parsed = match unparseable(
        &s.value,
        &['(', '~', '-', '+', '*', '/', '%', '<', '>', '&', '|'],
        false,
    ) {
        Some((offset, message)) => Err(crate::expr::ParseError { offset, message }),
        None => Expr::parse(&s.value),
    };
    match parsed {
        Ok(e) => e,
        Err(e) => {
            diags
                .error("bad-expression", file, inner(&s.span, e.offset), format!("cannot parse expression `{}`", s.value))
                .with_label(e.message)
                .with_hint("expressions use integers, constants, PAGE_SIZE, + - * / % << >> & | ~, BIT(n), ALIGN(x, a) and sizeof(struct NAME)");
            Expr::Int(0, "0".into())
        }
    }
}

fn parse_ty(diags: &mut Diagnostics, file: FileId, s: &SStr) -> Ty {
    let parsed = match unparseable(&s.value, &['(', '<', '>'], true) {
        Some((offset, message)) => Err(crate::ty::TyError { offset, message }),
        None => Ty::parse(&s.value),
    };
    match parsed {
        Ok(t) => t,
        Err(e) => {
            diags
                .error("bad-type", file, inner(&s.span, e.offset), format!("cannot parse type `{}`", s.value))
                .with_label(e.message)
                .with_hint("types are u8…u64, s8…s64, aligned_u64, char, int, uint, ushort, ulong, long, bool, str, phys<T>, ptr<T>, fn(a: T) -> T, or a struct name");
            Ty::Prim(crate::ty::Prim::U8)
        }
    }
}

fn lower_items(
    file: FileId,
    consts: Vec<ast::Const>,
    enums: Vec<ast::Enum>,
    structs: Vec<ast::Struct>,
    ioctls: Vec<ast::Ioctl>,
    functions: Vec<ast::Function>,
    diags: &mut Diagnostics,
) -> Items {
    let consts = consts
        .into_iter()
        .map(|c| lower_const(file, c, diags))
        .collect();
    let enums = enums
        .into_iter()
        .map(|e| Enum {
            name: text(&e.name),
            doc: text(&e.doc),
            place: Placement::of(false, &e.not_in),
            members: e
                .members
                .iter()
                .map(|m| EnumMember {
                    name: m.name.value.clone(),
                    value: parse_expr(diags, file, &m.value),
                    doc: text(&m.doc),
                    span: m.name.span.clone(),
                    value_span: m.value.span.clone(),
                })
                .collect(),
        })
        .collect();
    let structs = structs
        .into_iter()
        .map(|s| lower_struct(file, s, diags))
        .collect();
    let ioctls = ioctls
        .into_iter()
        .map(|i| Ioctl {
            name: i.name.value.clone(),
            span: i.name.span.clone(),
            encoding: (&i.encoding).into(),
            ty: (&i.ty).into(),
            nr: (parse_expr(diags, file, &i.nr), i.nr.span.clone()),
            arg: (&i.arg).into(),
            on: (&i.on).into(),
            doc: text(&i.doc),
        })
        .collect();
    let functions = functions
        .into_iter()
        .map(|f| {
            let sig = match parse_ty(diags, file, &f.signature) {
                Ty::Fn(sig) => sig,
                _ => {
                    diags
                        .error(
                            "bad-type",
                            file,
                            f.signature.span.clone(),
                            "a function signature must be `fn(name: T, …) -> T`",
                        )
                        .with_label("not a function type");
                    FnSig {
                        args: Vec::new(),
                        ret: Box::new(Ty::Prim(crate::ty::Prim::Void)),
                    }
                }
            };
            Function {
                name: f.name.value.clone(),
                span: f.name.span.clone(),
                sig,
                sig_span: f.signature.span.clone(),
                place: Placement::of(f.ext, &f.not_in),
                doc: text(&f.doc),
            }
        })
        .collect();
    Items {
        consts,
        macros: Vec::new(),
        enums,
        structs,
        ioctls,
        functions,
        fdt_nodes: Vec::new(),
    }
}

fn lower_const(file: FileId, c: ast::Const, diags: &mut Diagnostics) -> Const {
    let (value, value_span) = match (&c.value, &c.string) {
        (Some(v), None) => (ConstValue::Int(parse_expr(diags, file, v)), v.span.clone()),
        (None, Some(s)) => (ConstValue::Str(s.value.clone()), s.span.clone()),
        (Some(v), Some(_)) => {
            diags
                .error(
                    "const-value",
                    file,
                    v.span.clone(),
                    format!("constant `{}` has both `value` and `string`", c.name.value),
                )
                .with_label("only one of `value` and `string`");
            (ConstValue::Int(parse_expr(diags, file, v)), v.span.clone())
        }
        (None, None) => {
            diags
                .error(
                    "const-value",
                    file,
                    c.name.span.clone(),
                    format!("constant `{}` has no value", c.name.value),
                )
                .with_label("needs `value = \"<expr>\"` or `string = \"…\"`");
            (
                ConstValue::Int(Expr::Int(0, "0".into())),
                c.name.span.clone(),
            )
        }
    };
    let into = c
        .into
        .iter()
        .filter_map(|t| match t.value.split_once('.') {
            Some((s, f)) => Some((s.to_string(), f.to_string(), t.span.clone())),
            None => {
                diags
                    .error(
                        "bad-into",
                        file,
                        t.span.clone(),
                        format!("`into` names `struct.field`, not `{}`", t.value),
                    )
                    .with_label("expected `struct.field`");
                None
            }
        })
        .collect();
    Const {
        name: c.name.value.clone(),
        span: c.name.span.clone(),
        value,
        value_span,
        into,
        role: c.role.map(|r| r.value),
        internal: c.internal,
        place: Placement::of(c.ext, &c.not_in),
        doc: text(&c.doc),
    }
}

fn lower_struct(file: FileId, s: ast::Struct, diags: &mut Diagnostics) -> Struct {
    let fields = s
        .fields
        .iter()
        .map(|f| Field {
            name: f.name.value.clone(),
            span: f.name.span.clone(),
            ty: parse_ty(diags, file, &f.ty),
            ty_span: f.ty.span.clone(),
            len: f
                .len
                .as_ref()
                .map(|l| (parse_expr(diags, file, l), l.span.clone())),
            bits: f.bits.as_ref().map(|b| (b.value, b.span.clone())),
            reserved: f.reserved || f.padding,
            padding: f.padding,
            required: f.required,
            dir: f.dir.as_ref().map(|d| (d.value, d.span.clone())),
            feature: f.feature.as_ref().map(Named::from),
            khoser: f.khoser,
            bitmap: f.bitmap,
            default: f
                .default
                .as_ref()
                .map(|d| (parse_expr(diags, file, d), d.span.clone())),
            c_type: text(&f.c_type),
            doc: text(&f.doc),
        })
        .collect();
    Struct {
        name: s.name.value.clone(),
        span: s.name.span.clone(),
        packed: s.packed,
        ops: s.ops,
        size: s.size.map(|v| (v.value, v.span)),
        min_size_field: s.min_size_field.as_ref().map(Named::from),
        doc: text(&s.doc),
        place: Placement::of(s.ext, &s.not_in),
        fields,
    }
}

fn lower_macros(raw: &[ast::CMacro]) -> Vec<CMacro> {
    raw.iter()
        .map(|m| CMacro {
            name: m.name.value.clone(),
            span: m.name.span.clone(),
            params: m.params.iter().map(|p| p.value.clone()).collect(),
            body: m.body.value.clone(),
            kernel_only: m.kernel_only,
            ifdef: m.ifdef.as_ref().map(|s| s.value.clone()),
            doc: text(&m.doc),
        })
        .collect()
}

fn lower_component(file: FileId, raw: ast::ComponentFile, diags: &mut Diagnostics) -> Component {
    let h = &raw.component;
    let macros = lower_macros(&raw.macros);
    let mut common = lower_items(
        file,
        raw.consts,
        raw.enums,
        raw.structs,
        raw.ioctls,
        raw.functions,
        diags,
    );
    common.macros = macros;
    let versions = raw
        .versions
        .into_iter()
        .map(|v| {
            let uses = v
                .uses
                .iter()
                .filter_map(|u| match u.value.split_once('/') {
                    Some((c, ver)) => Some((c.to_string(), ver.to_string(), u.span.clone())),
                    None => {
                        diags
                            .error(
                                "bad-uses",
                                file,
                                u.span.clone(),
                                format!(
                                    "version `uses` names `component/version`, not `{}`",
                                    u.value
                                ),
                            )
                            .with_label("expected `component/version`");
                        None
                    }
                })
                .collect();
            let mut items = lower_items(
                file,
                v.consts,
                v.enums,
                v.structs,
                v.ioctls,
                Vec::new(),
                diags,
            );
            items.macros = lower_macros(&v.macros);
            items.fdt_nodes = v
                .fdt_nodes
                .iter()
                .map(|n| FdtNode {
                    path: n.path.value.clone(),
                    name_const: n.name_const.as_ref().map(Named::from),
                    compatible: (&n.compatible).into(),
                    props: n
                        .props
                        .iter()
                        .map(|p| FdtProp {
                            name_const: (&p.name_const).into(),
                            ty: parse_ty(diags, file, &p.ty),
                            ty_span: p.ty.span.clone(),
                            doc: text(&p.doc),
                        })
                        .collect(),
                })
                .collect();
            let features = v.features.map(|f| Features {
                struct_name: (&f.struct_name).into(),
                macro_prefix: f.macro_prefix.value.clone(),
                supported: f.supported.iter().map(Named::from).collect(),
                required: f.required.iter().map(Named::from).collect(),
                active: f.active.iter().map(Named::from).collect(),
                bits: f
                    .bits
                    .iter()
                    .map(|b| FeatureBit {
                        name: b.name.value.clone(),
                        span: b.name.span.clone(),
                        bit: b.bit.value,
                        doc: text(&b.doc),
                    })
                    .collect(),
            });
            Version {
                id: v.id.value.clone(),
                span: v.id.span.clone(),
                doc: text(&v.doc),
                uses,
                migrates_from: v.migrates_from.as_ref().map(Named::from),
                items,
                features,
            }
        })
        .collect();
    Component {
        file,
        name: h.name.value.clone(),
        name_span: h.name.span.clone(),
        abi: h.abi.value,
        header: h.header.value.clone(),
        guard: h.guard.value.clone(),
        includes: h.includes.iter().map(|s| s.value.clone()).collect(),
        uses: h.uses.iter().map(Named::from).collect(),
        opaque: h.opaque.iter().map(|s| s.value.clone()).collect(),
        ext_header: h.ext_header.as_ref().map(|p| {
            (
                p.value.clone(),
                h.ext_guard
                    .as_ref()
                    .map_or_else(|| p.value.clone(), |g| g.value.clone()),
                text(&h.ext_doc),
            )
        }),
        doc: text(&h.doc),
        common,
        versions,
    }
}

fn lower_kernel(file: FileId, raw: ast::KernelFile) -> Kernel {
    Kernel {
        file,
        name: raw.name.value,
        doc: raw.doc.map(|d| d.value),
        default: raw.default,
        writes: raw
            .writes
            .iter()
            .map(|(k, v)| (k.clone(), Named::from(v)))
            .collect(),
        reads: raw
            .reads
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(Named::from).collect()))
            .collect(),
        drops: raw
            .drops
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(Named::from).collect()))
            .collect(),
        released: raw.released,
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
