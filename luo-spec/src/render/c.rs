// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! C headers: one per component and kernel, from `templates/header.h`.
//!
//! All decisions (type spelling, ordering, which assertions hold on which
//! target) are made here; the template only lays out the lines.

use askama::Template;

use crate::ast::AbiKind;
use crate::ir::{Ir, LayoutTable};
use crate::layout::{Arch, StructLayout, Target};
use crate::model::{CMacro, ConstValue, Function, Items, Kernel, Scope, Struct};
use crate::render::{Backend, Outputs, group_targets, header_items, kernel_doc, struct_doc};
use crate::ty::{Prim, Ty};

#[derive(Template)]
#[template(path = "header.h")]
struct HeaderView {
    spdx: &'static str,
    spec_path: String,
    kernel: String,
    version: Option<String>,
    doc: Vec<String>,
    guard: String,
    includes: Vec<String>,
    consts: Vec<DefineView>,
    macros: Vec<MacroView>,
    enums: Vec<EnumView>,
    structs: Vec<StructView>,
    ioctls: Vec<DefineView>,
    functions: Vec<FunctionView>,
    asserts: Vec<AssertGroup>,
}

struct DefineView {
    doc: Vec<String>,
    name: String,
    pad: String,
    value: String,
}

struct MacroView {
    doc: Vec<String>,
    /// `#ifdef` around the macro: `__KERNEL__` or a config symbol.
    guard: Option<String>,
    lines: Vec<String>,
}

struct EnumView {
    doc: Vec<String>,
    name: Option<String>,
    members: Vec<(String, String)>,
}

struct StructView {
    doc: Vec<String>,
    name: String,
    packed: bool,
    fields: Vec<String>,
}

struct FunctionView {
    doc: Vec<String>,
    decl: String,
}

struct AssertGroup {
    cond: Option<String>,
    lines: Vec<String>,
}

#[derive(Template)]
#[template(path = "kernel_compat.h")]
struct CompatView;

/// The compatibility header that lets in-kernel headers compile in userspace.
pub fn kernel_compat() -> String {
    CompatView.render().unwrap_or_default()
}

/// Path of the compatibility header below `include/`.
pub const KERNEL_COMPAT_PATH: &str = "luo/kernel_compat.h";

/// The C backend: each kernel's headers, one per component it shows (at the version it
/// writes), and the compatibility header standing in for kernel-only ones.
pub struct CHeaders;

impl Backend for CHeaders {
    fn render(&self, ir: &Ir<'_>, out: &mut Outputs) {
        for k in &ir.kernels {
            out.insert(k.include.join(KERNEL_COMPAT_PATH), kernel_compat());
            for scope in &k.units {
                let comp = scope.component();
                let path = k.include.join(&comp.header);
                out.insert(path, header(*scope, k.kernel, &ir.layouts));
                if let Some((ext, _, _)) = &comp.ext_header {
                    out.insert(
                        k.include.join(ext),
                        ext_header(*scope, k.kernel, &ir.layouts),
                    );
                }
            }
        }
    }
}

/// Render a component's header as a kernel writes it.
pub fn header(scope: Scope<'_>, kernel: &Kernel, layouts: &LayoutTable) -> String {
    render(scope, kernel, layouts, false)
}

/// Render a component's extension header (`ext_header`: its items with `ext = true`, this
/// project's additions to an upstream API), which includes the component's header.
pub fn ext_header(scope: Scope<'_>, kernel: &Kernel, layouts: &LayoutTable) -> String {
    render(scope, kernel, layouts, true)
}

fn render(scope: Scope<'_>, kernel: &Kernel, layouts: &LayoutTable, ext: bool) -> String {
    let comp = scope.component();
    let abi = comp.abi;
    let items = header_items(scope);
    let here = Here {
        ext,
        kernel: &kernel.name,
    };
    let structs: Vec<&Struct> = ordered_structs(&items)
        .into_iter()
        .filter(|s| here.has(&s.place))
        .collect();
    let view = HeaderView {
        spdx: if abi == AbiKind::Uapi {
            "GPL-2.0 WITH Linux-syscall-note"
        } else {
            "GPL-2.0"
        },
        spec_path: format!("spec/{}.toml", comp.name),
        kernel: kernel.name.clone(),
        version: scope.version().map(|v| v.id.clone()),
        doc: match (&comp.ext_header, ext) {
            (Some((_, _, doc)), true) => kernel_doc(doc.as_deref()),
            _ => kernel_doc(comp.doc.as_deref()),
        },
        guard: match (&comp.ext_header, ext) {
            (Some((_, guard, _)), true) => guard.clone(),
            _ => comp.guard.clone(),
        },
        includes: includes(scope, &items, here),
        consts: defines(scope, &items, here),
        // Macros, enums and ioctls have no placement: the component's own header.
        macros: items
            .iter()
            .filter(|_| !ext)
            .flat_map(|i| &i.macros)
            .map(macro_view)
            .collect(),
        enums: items
            .iter()
            .flat_map(|i| &i.enums)
            .filter(|e| here.has(&e.place))
            .map(|e| EnumView {
                doc: comment(e.doc.as_deref()),
                name: e.name.clone(),
                members: e
                    .members
                    .iter()
                    .map(|m| (m.name.clone(), m.value.to_c()))
                    .collect(),
            })
            .collect(),
        structs: structs.iter().map(|s| struct_view(s, abi)).collect(),
        ioctls: items
            .iter()
            .filter(|_| !ext)
            .flat_map(|i| &i.ioctls)
            .map(|i| DefineView {
                doc: kernel_doc(i.doc.as_deref()),
                pad: pad(&i.name),
                name: i.name.clone(),
                value: format!("{}({}, {})", i.encoding.name, i.ty.name, i.nr.0.to_c()),
            })
            .collect(),
        functions: items
            .iter()
            .flat_map(|i| &i.functions)
            .filter(|f| here.has(&f.place))
            .map(|f| function_view(f, abi))
            .collect(),
        asserts: assertions(scope, &structs, layouts),
    };
    // askama drops the template's final newline; the template ends with an
    // empty line so the file ends with exactly one.
    view.render()
        .unwrap_or_else(|e| format!("/* render error: {e} */\n"))
}

/// Which header is being rendered: the component's own or its extension header, for which
/// kernel.
#[derive(Clone, Copy)]
struct Here<'a> {
    ext: bool,
    kernel: &'a str,
}

impl Here<'_> {
    fn has(self, p: &crate::model::Placement) -> bool {
        p.in_header(self.ext, self.kernel)
    }
}

/// The `#include` lines and forward declarations.
fn includes(scope: Scope<'_>, items: &[&Items], here: Here<'_>) -> Vec<String> {
    let comp = scope.component();
    let abi = comp.abi;
    if here.ext {
        // The extension header builds on the component's own, and declares its own structs.
        let mut out = vec![format!("#include <{}>", comp.header)];
        let forward: Vec<String> = items
            .iter()
            .flat_map(|i| &i.structs)
            .filter(|s| here.has(&s.place))
            .map(|s| format!("struct {};", s.name))
            .collect();
        if !forward.is_empty() {
            out.push(String::new());
            out.extend(forward);
        }
        return out;
    }
    // Headers `luo gen` renders are included as they are; kernel-only ones
    // (`asm/page.h`, `linux/align.h`) only under `__KERNEL__`, with
    // `luo/kernel_compat.h` standing in for them elsewhere.
    let generated: Vec<&str> = scope
        .spec
        .components
        .iter()
        .map(|c| c.header.as_str())
        .collect();
    let (ours, kernel_only): (Vec<&String>, Vec<&String>) = comp
        .includes
        .iter()
        .partition(|i| generated.contains(&i.as_str()));
    let mut includes = Vec::new();
    match abi {
        AbiKind::Uapi => {
            for inc in ["linux/ioctl.h", "linux/types.h"]
                .into_iter()
                .chain(comp.includes.iter().map(String::as_str))
            {
                let line = format!("#include <{inc}>");
                if !includes.contains(&line) {
                    includes.push(line);
                }
            }
        }
        AbiKind::Kho | AbiKind::Kernel => {
            includes.push("#ifdef __KERNEL__".into());
            includes.push("#include <linux/types.h>".into());
            includes.extend(
                kernel_only
                    .iter()
                    .filter(|i| i.as_str() != "linux/types.h")
                    .map(|i| format!("#include <{i}>")),
            );
            includes.push("#else".into());
            includes.push(format!("#include <{KERNEL_COMPAT_PATH}>"));
            includes.push("#endif".into());
            includes.extend(ours.iter().map(|i| format!("#include <{i}>")));
        }
    }
    // Whatever the scope uses from other components comes from their headers.
    for (origin, _) in scope.visible() {
        let other = &scope.spec.components[origin.comp];
        let line = format!("#include <{}>", other.header);
        if origin.comp != scope.origin.comp && !includes.contains(&line) {
            includes.push(line);
        }
    }
    // Forward declarations: opaque kernel objects, and (for the C API, whose
    // callbacks take pointers to structs defined further down) our structs.
    let mut forward: Vec<String> = comp.opaque.iter().map(|o| format!("struct {o};")).collect();
    if abi == AbiKind::Kernel {
        forward.extend(
            items
                .iter()
                .flat_map(|i| &i.structs)
                .filter(|s| here.has(&s.place))
                .map(|s| format!("struct {};", s.name)),
        );
    }
    if !forward.is_empty() {
        includes.push(String::new());
        includes.extend(forward);
    }
    includes
}

/// The `#define`s of constants and of the feature negotiation. An `internal` constant is
/// upstream's in a .c file, not in the header.
fn defines(scope: Scope<'_>, items: &[&Items], here: Here<'_>) -> Vec<DefineView> {
    let consts = items
        .iter()
        .flat_map(|i| &i.consts)
        .filter(|c| !c.internal && here.has(&c.place))
        .map(|c| {
            let value = match &c.value {
                ConstValue::Str(s) => format!("\"{s}\""),
                ConstValue::Int(e) if e.is_atom() => e.to_c(),
                ConstValue::Int(e) => format!("({})", e.to_c()),
            };
            DefineView {
                doc: comment(c.doc.as_deref()),
                pad: pad(&c.name),
                name: c.name.clone(),
                value,
            }
        });
    let features = if here.ext {
        Vec::new()
    } else {
        crate::render::feature_defines(scope)
    };
    consts
        .chain(features.into_iter().map(|f| DefineView {
            doc: comment(Some(&f.doc)),
            pad: pad(&f.name),
            name: f.name,
            value: f.c_value,
        }))
        .collect()
}

/// A function-like macro, its body continued over lines.
fn macro_view(mac: &CMacro) -> MacroView {
    let head = format!("#define {}({})", mac.name, mac.params.join(", "));
    let body: Vec<&str> = mac.body.trim_end().lines().collect();
    let lines = match body.as_slice() {
        [one] => vec![format!("{head} {}", one.trim())],
        many => {
            let mut lines = vec![format!("{head} \\")];
            for (i, l) in many.iter().enumerate() {
                let cont = if i + 1 < many.len() { " \\" } else { "" };
                lines.push(format!("\t{}{cont}", l.trim_end()));
            }
            lines
        }
    };
    MacroView {
        doc: comment(mac.doc.as_deref()),
        guard: match (&mac.ifdef, mac.kernel_only) {
            (Some(sym), _) => Some(sym.clone()),
            (None, true) => Some("__KERNEL__".into()),
            (None, false) => None,
        },
        lines,
    }
}

/// A struct's declaration.
fn struct_view(s: &Struct, abi: AbiKind) -> StructView {
    StructView {
        doc: struct_doc(s),
        name: s.name.clone(),
        packed: s.packed,
        fields: s
            .fields
            .iter()
            .map(|f| {
                let base = f.c_type.clone().unwrap_or_else(|| c_type(&f.ty, abi));
                let mut decl = match &f.ty {
                    // Upstream's serializable pointer: same bytes as the u64.
                    Ty::Phys(target) if f.khoser => {
                        format!("DECLARE_KHOSER_PTR({}, struct {target} *)", f.name)
                    }
                    _ => declarator(&base, &f.ty, &f.name, abi),
                };
                match &f.len {
                    // Upstream's bitmap: unsigned long words holding 64 bits per u64 of the
                    // layout (the validator allows `bitmap` on u64 arrays only).
                    Some((len, _)) if f.bitmap => {
                        decl = format!("DECLARE_BITMAP({}, 64 * ({}))", f.name, len.to_c());
                    }
                    Some((len, _)) => decl.push_str(&format!("[{}]", len.to_c())),
                    None => {}
                }
                if let Some((bits, _)) = &f.bits {
                    // Bit-fields wider than int are a GCC extension in ISO C.
                    decl = format!("__extension__ {decl}:{bits}");
                }
                decl
            })
            .collect(),
    }
}

/// A C API function's prototype.
fn function_view(f: &Function, abi: AbiKind) -> FunctionView {
    FunctionView {
        doc: kernel_doc(f.doc.as_deref()),
        decl: {
            let args: Vec<String> = f
                .sig
                .args
                .iter()
                .map(|(n, t)| declarator(&c_type(t, abi), t, n, abi))
                .collect();
            let args = if args.is_empty() {
                "void".to_string()
            } else {
                args.join(", ")
            };
            declarator(
                &c_type(&f.sig.ret, abi),
                &f.sig.ret,
                &format!("{}({args})", f.name),
                abi,
            )
        },
    }
}

/// Structs in an order C accepts: a struct embedded by value comes first.
fn ordered_structs<'a>(items: &[&'a Items]) -> Vec<&'a Struct> {
    let all: Vec<&Struct> = items.iter().flat_map(|i| &i.structs).collect();
    let mut out: Vec<&Struct> = Vec::new();
    fn visit<'a>(s: &'a Struct, all: &[&'a Struct], out: &mut Vec<&'a Struct>, depth: usize) {
        if depth > all.len() || out.iter().any(|o| o.name == s.name) {
            return;
        }
        for f in &s.fields {
            if let Some(dep) =
                f.ty.by_value_struct()
                    .and_then(|n| all.iter().find(|x| x.name == n))
            {
                visit(dep, all, out, depth + 1);
            }
        }
        if !out.iter().any(|o| o.name == s.name) {
            out.push(s);
        }
    }
    for s in &all {
        visit(s, &all, &mut out, 0);
    }
    out
}

/// Tabs between a `#define`'s name and value, lining values up at column
/// 40 (tab stops of 8) where the name allows, as upstream headers do.
fn pad(name: &str) -> String {
    let column = "#define ".len() + name.len();
    let tabs = if column >= 40 {
        1
    } else {
        (40 - column / 8 * 8) / 8
    };
    "\t".repeat(tabs)
}

fn comment(doc: Option<&str>) -> Vec<String> {
    match doc {
        None => Vec::new(),
        Some(d) if !d.trim().contains('\n') => vec![format!("/* {} */", d.trim())],
        Some(d) => {
            let mut v = vec!["/*".to_string()];
            v.extend(d.trim().lines().map(|l| {
                if l.is_empty() {
                    " *".to_string()
                } else {
                    format!(" * {l}")
                }
            }));
            v.push(" */".into());
            v
        }
    }
}

/// C spelling of a type's base (what precedes the declarator).
pub fn c_type(ty: &Ty, abi: AbiKind) -> String {
    let uapi = abi == AbiKind::Uapi;
    match ty {
        Ty::Prim(p) => prim_c(*p, uapi).to_string(),
        Ty::Str => if uapi { "__u8" } else { "char" }.to_string(),
        Ty::Phys(_) => if uapi { "__u64" } else { "u64" }.to_string(),
        Ty::Named(n) => format!("struct {n}"),
        Ty::Ptr { is_const, target } => {
            let inner = c_type(target, abi);
            if *is_const {
                format!("const {inner}")
            } else {
                inner
            }
        }
        Ty::Fn(sig) => c_type(&sig.ret, abi),
    }
}

fn prim_c(p: Prim, uapi: bool) -> &'static str {
    match (p, uapi) {
        (Prim::U8, true) => "__u8",
        (Prim::U16, true) => "__u16",
        (Prim::U32, true) => "__u32",
        (Prim::U64, true) => "__u64",
        (Prim::S8, true) => "__s8",
        (Prim::S16, true) => "__s16",
        (Prim::S32, true) => "__s32",
        (Prim::S64, true) => "__s64",
        (Prim::U8, false) => "u8",
        (Prim::U16, false) => "u16",
        (Prim::U32, false) => "u32",
        (Prim::U64, false) => "u64",
        (Prim::S8, false) => "s8",
        (Prim::S16, false) => "s16",
        (Prim::S32, false) => "s32",
        (Prim::S64, false) => "s64",
        (Prim::AlignedU64, _) => "__aligned_u64",
        (Prim::Char, _) => "char",
        (Prim::Int, _) => "int",
        (Prim::Uint, _) => "unsigned int",
        (Prim::Ushort, _) => "unsigned short",
        (Prim::Ulong, _) => "unsigned long",
        (Prim::Long, _) => "long",
        (Prim::Bool, _) => "bool",
        (Prim::Void, _) => "void",
    }
}

/// `base name` with pointer stars and function-pointer syntax.
fn declarator(base: &str, ty: &Ty, name: &str, abi: AbiKind) -> String {
    match ty {
        Ty::Ptr { target, .. } => {
            let stars = 1 + ptr_depth(target);
            let base = match innermost(target) {
                t @ Ty::Ptr { is_const: true, .. } => c_type(t, abi),
                _ => base.to_string(),
            };
            format!("{base} {}{name}", "*".repeat(stars))
        }
        Ty::Fn(sig) => {
            let args: Vec<String> = sig
                .args
                .iter()
                .map(|(n, t)| declarator(&c_type(t, abi), t, n, abi))
                .collect();
            let args = if args.is_empty() {
                "void".to_string()
            } else {
                args.join(", ")
            };
            declarator(
                &c_type(&sig.ret, abi),
                &sig.ret,
                &format!("(*{name})({args})"),
                abi,
            )
        }
        _ => format!("{base} {name}"),
    }
}

fn ptr_depth(ty: &Ty) -> usize {
    match ty {
        Ty::Ptr { target, .. } => 1 + ptr_depth(target),
        _ => 0,
    }
}

fn innermost(ty: &Ty) -> &Ty {
    match ty {
        Ty::Ptr { target, .. } if matches!(**target, Ty::Ptr { .. }) => innermost(target),
        t => t,
    }
}

/// The preprocessor condition selecting a set of targets.
fn target_cond(targets: &[Target]) -> Option<String> {
    if targets.len() == Target::ALL.len() {
        return None;
    }
    let arches = [Arch::X86_64, Arch::I386, Arch::Arm64];
    let mut parts = Vec::new();
    for arch in arches {
        let all_pages: Vec<&Target> = Target::ALL.iter().filter(|t| t.arch == arch).collect();
        let mine: Vec<&Target> = targets.iter().filter(|t| t.arch == arch).collect();
        let macro_name = match arch {
            Arch::X86_64 => "__x86_64__",
            Arch::I386 => "__i386__",
            Arch::Arm64 => "__aarch64__",
        };
        if mine.is_empty() {
            continue;
        }
        if mine.len() == all_pages.len() {
            parts.push(format!("defined({macro_name})"));
        } else {
            for t in mine {
                parts.push(format!(
                    "(defined({macro_name}) && PAGE_SIZE == {})",
                    t.page_size
                ));
            }
        }
    }
    Some(parts.join(" || "))
}

fn assertions(scope: Scope<'_>, structs: &[&Struct], layouts: &LayoutTable) -> Vec<AssertGroup> {
    let mut groups: Vec<AssertGroup> = Vec::new();
    for s in structs {
        let per: Vec<(Target, StructLayout)> = Target::ALL
            .iter()
            .filter_map(|t| layouts.get(scope, &s.name, *t).ok().map(|l| (*t, l)))
            .collect();
        if per.len() != Target::ALL.len() {
            continue;
        }
        for (targets, l) in group_targets(&per) {
            let cond = target_cond(&targets);
            let mut lines = vec![format!("sizeof(struct {}) == {}", s.name, l.size)];
            for f in l.fields.iter().filter(|f| f.bits.is_none()) {
                lines.push(format!(
                    "offsetof(struct {}, {}) == {}",
                    s.name, f.name, f.offset
                ));
            }
            match groups.iter_mut().find(|g| g.cond == cond) {
                Some(g) => g.lines.extend(lines),
                None => groups.push(AssertGroup { cond, lines }),
            }
        }
    }
    groups.sort_by_key(|g| g.cond.is_some());
    groups
}
