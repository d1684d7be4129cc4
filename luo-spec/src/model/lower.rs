// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Loading: the TOML files read and parsed (`ast`), then lowered into the model, every
//! expression and type parsed, every problem a diagnostic.

use std::path::Path;

use crate::ast::{self, SStr};
use crate::diag::{Diagnostics, FileId};
use crate::expr::Expr;
use crate::ty::{FnSig, Ty};

use super::*;

/// Span inside a TOML string value: the value's span includes the opening quote.
pub(super) fn inner(span: &Span, offset: usize) -> Span {
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
pub(super) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn list_toml(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect()
}

pub(super) fn read(
    spec: &mut Spec,
    diags: &mut Diagnostics,
    path: &Path,
) -> Option<(FileId, String)> {
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

pub(super) fn toml_error(diags: &mut Diagnostics, file: FileId, e: &toml::de::Error) {
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

pub(super) fn text(s: &Option<SStr>) -> Option<String> {
    s.as_ref().map(|s| s.value.clone())
}

/// Longest expression or type text accepted, and most operators and
/// brackets in one: the parsers, evaluation and rendering recurse, so
/// unbounded input could overflow the stack.
pub(super) const MAX_TEXT_LEN: usize = 1024;
pub(super) const MAX_OPERATORS: usize = 64;

/// Reject text the recursive parsers cannot take safely: too long, too
/// complex (more than `MAX_OPERATORS` of `counted`), or (for types)
/// non-ASCII.
pub(super) fn unparseable(
    text: &str,
    counted: &[char],
    ascii_only: bool,
) -> Option<(usize, String)> {
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

pub(super) fn parse_expr(diags: &mut Diagnostics, file: FileId, s: &SStr) -> Expr {
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

pub(super) fn parse_ty(diags: &mut Diagnostics, file: FileId, s: &SStr) -> Ty {
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

pub(super) fn lower_items(
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

pub(super) fn lower_const(file: FileId, c: ast::Const, diags: &mut Diagnostics) -> Const {
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

pub(super) fn lower_struct(file: FileId, s: ast::Struct, diags: &mut Diagnostics) -> Struct {
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

pub(super) fn lower_macros(raw: &[ast::CMacro]) -> Vec<CMacro> {
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

pub(super) fn lower_component(
    file: FileId,
    raw: ast::ComponentFile,
    diags: &mut Diagnostics,
) -> Component {
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

pub(super) fn lower_kernel(file: FileId, raw: ast::KernelFile) -> Kernel {
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
