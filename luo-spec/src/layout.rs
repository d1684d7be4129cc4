// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The layout engine: size, alignment and offset of every field, per target.
//!
//! One function computes every number the renderers print (C assertions,
//! Rust assertions, JSON schemas, `luo layout`), so they cannot disagree.
//! The rules are GCC's for the structs the spec language can express:
//!
//! - natural layout: each member at the next multiple of its alignment,
//!   the struct padded to a multiple of its largest alignment;
//! - `__packed`: every member aligned to 1, no padding anywhere;
//! - `u64` is 4-byte aligned on i386 (the reason the uAPI uses
//!   `__aligned_u64`), pointers and `long` follow the pointer width;
//! - bitfields: consecutive members with `bits` and the same base type share
//!   one storage unit, allocated from the least significant bit (little
//!   endian). In a packed struct a unit takes only the bytes its bits need.

use std::collections::HashMap;
use std::fmt;

use crate::expr::{Env, EvalError, Expr};
use crate::model::{ConstValue, Origin, Scope, Struct};
use crate::ty::{Prim, Ty};

/// Architectures we lay out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86-64 (LP64).
    X86_64,
    /// i386 (ILP32, `u64` aligned to 4).
    I386,
    /// arm64 (LP64).
    Arm64,
}

impl Arch {
    /// Name as in `luo layout --arch`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I386 => "i386",
            Arch::Arm64 => "arm64",
        }
    }

    fn pointer_size(self) -> u64 {
        if self == Arch::I386 { 4 } else { 8 }
    }

    fn u64_align(self) -> u64 {
        if self == Arch::I386 { 4 } else { 8 }
    }
}

/// A layout target: architecture and page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Architecture.
    pub arch: Arch,
    /// `PAGE_SIZE`.
    pub page_size: u64,
}

impl Target {
    /// Every target, the primary one (x86_64, 4 KiB) first.
    pub const ALL: [Target; 5] = [
        Target {
            arch: Arch::X86_64,
            page_size: 4096,
        },
        Target {
            arch: Arch::I386,
            page_size: 4096,
        },
        Target {
            arch: Arch::Arm64,
            page_size: 4096,
        },
        Target {
            arch: Arch::Arm64,
            page_size: 16384,
        },
        Target {
            arch: Arch::Arm64,
            page_size: 65536,
        },
    ];

    /// The target generated Rust types and default views use.
    pub const PRIMARY: Target = Target::ALL[0];

    /// Name such as `x86_64` or `arm64-16k`.
    pub fn name(&self) -> String {
        match (self.arch, self.page_size) {
            (Arch::Arm64, p) => format!("arm64-{}k", p / 1024),
            (a, _) => a.name().to_string(),
        }
    }

    /// Parse a target name (`x86_64`, `i386`, `arm64`, `arm64-16k`, `arm64-64k`).
    pub fn from_name(name: &str) -> Option<Target> {
        let name = if name == "arm64" { "arm64-4k" } else { name };
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where one member lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    /// Member name.
    pub name: String,
    /// Byte offset (of the storage unit, for a bitfield).
    pub offset: u64,
    /// Bytes taken (the unit's bytes for a bitfield).
    pub size: u64,
    /// Alignment the member got.
    pub align: u64,
    /// Element size, for arrays.
    pub elem_size: u64,
    /// Number of elements (1 if not an array).
    pub count: u64,
    /// Bitfield position: first bit within the unit and width.
    pub bits: Option<(u32, u32)>,
}

/// A gap the compiler inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// Member the gap follows (`None`: before the first member, impossible in C).
    pub after: Option<String>,
    /// Offset of the gap.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// The layout of a struct on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    /// Size in bytes.
    pub size: u64,
    /// Alignment.
    pub align: u64,
    /// Members, in order.
    pub fields: Vec<FieldLayout>,
    /// Implicit padding, including trailing padding.
    pub holes: Vec<Hole>,
}

impl StructLayout {
    /// The member by name.
    pub fn field(&self, name: &str) -> Option<&FieldLayout> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Same offsets and sizes (what matters for compatibility).
    pub fn same_shape(&self, other: &StructLayout) -> bool {
        self.size == other.size
            && self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|(a, b)| a.offset == b.offset && a.size == b.size && a.bits == b.bits)
    }
}

/// Why a layout could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// A struct member type that names nothing known.
    UnknownType {
        /// Struct.
        strukt: String,
        /// Member.
        field: String,
        /// Type name.
        ty: String,
    },
    /// A struct contains itself by value.
    Recursive(String),
    /// An array length or other expression failed.
    Eval {
        /// Struct.
        strukt: String,
        /// Member.
        field: String,
        /// Why.
        error: EvalError,
    },
    /// A member kind that has no layout (`void`, `fn` by value, `str` without `len`).
    Invalid {
        /// Struct.
        strukt: String,
        /// Member.
        field: String,
        /// Why.
        why: String,
    },
    /// Bitfields that do not fit their unit.
    Bitfield {
        /// Struct.
        strukt: String,
        /// Member that overflowed or left the unit partly filled.
        field: String,
        /// Why.
        why: String,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::UnknownType { strukt, field, ty } => {
                write!(f, "`{strukt}.{field}`: unknown type `{ty}`")
            }
            LayoutError::Recursive(s) => write!(f, "struct `{s}` contains itself"),
            LayoutError::Eval {
                strukt,
                field,
                error,
            } => write!(f, "`{strukt}.{field}`: {error}"),
            LayoutError::Invalid { strukt, field, why }
            | LayoutError::Bitfield { strukt, field, why } => {
                write!(f, "`{strukt}.{field}`: {why}")
            }
        }
    }
}

/// A struct as seen from one place, on one target.
type LayoutKey = (Origin, String, Target);

/// Computes layouts with memoization; one per run.
#[derive(Debug, Default)]
pub struct Layouts {
    cache: std::cell::RefCell<HashMap<LayoutKey, Result<StructLayout, LayoutError>>>,
    active: std::cell::RefCell<Vec<(Origin, String)>>,
    /// Constants and enumerators being evaluated, to report cycles.
    active_names: std::cell::RefCell<Vec<(Origin, String)>>,
    depth: std::cell::Cell<u32>,
}

impl Layouts {
    /// A fresh engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Layout of struct `name` as seen from `scope`, on `target`.
    pub fn layout(
        &self,
        scope: Scope<'_>,
        name: &str,
        target: Target,
    ) -> Result<StructLayout, LayoutError> {
        let Some((origin, strukt)) = scope.find_struct(name) else {
            return Err(LayoutError::UnknownType {
                strukt: name.into(),
                field: String::new(),
                ty: name.into(),
            });
        };
        let key = (origin, name.to_string(), target);
        if let Some(hit) = self.cache.borrow().get(&key) {
            return hit.clone();
        }
        if self.active.borrow().contains(&(origin, name.to_string())) {
            return Err(LayoutError::Recursive(name.into()));
        }
        if self.active.borrow().len() >= MAX_STRUCT_NESTING {
            return Err(LayoutError::Invalid {
                strukt: name.into(),
                field: String::new(),
                why: format!("structs are nested by value more than {MAX_STRUCT_NESTING} deep"),
            });
        }
        self.active.borrow_mut().push((origin, name.to_string()));
        let result = self.compute(scope.at(origin), strukt, target);
        self.active.borrow_mut().pop();
        self.cache.borrow_mut().insert(key, result.clone());
        result
    }

    /// Evaluate an expression in a scope on a target.
    pub fn eval(&self, scope: Scope<'_>, expr: &Expr, target: Target) -> Result<u64, EvalError> {
        // Cycles are caught by `eval_named`; this bounds the recursion of
        // long chains of constants and `sizeof`s, each costing one level
        // plus the nesting of its expression.
        let cost = 1 + nesting(expr);
        if self.depth.get() + cost > MAX_EVAL_DEPTH {
            return Err(EvalError::Arithmetic(format!(
                "constants and their expressions nest more than {MAX_EVAL_DEPTH} levels deep"
            )));
        }
        self.depth.set(self.depth.get() + cost);
        let result = expr.eval(&ScopeEnv {
            layouts: self,
            scope,
            target,
        });
        self.depth.set(self.depth.get() - cost);
        result
    }

    /// Evaluate the value of constant or enumerator `name`, defined at `scope`.
    fn eval_named(
        &self,
        scope: Scope<'_>,
        name: &str,
        expr: &Expr,
        target: Target,
    ) -> Result<u64, EvalError> {
        let key = (scope.origin, name.to_string());
        let cycle_at = self.active_names.borrow().iter().position(|k| *k == key);
        if let Some(at) = cycle_at {
            let path: Vec<String> = self.active_names.borrow()[at..]
                .iter()
                .map(|(_, n)| n.clone())
                .chain([name.to_string()])
                .collect();
            return Err(EvalError::Arithmetic(format!(
                "constants refer to each other in a cycle: {}",
                path.join(" -> ")
            )));
        }
        self.active_names.borrow_mut().push(key);
        let result = self.eval(scope, expr, target);
        self.active_names.borrow_mut().pop();
        result
    }

    /// The full command value of an ioctl on the primary target, as the
    /// generic `_IOC()` encodes it: dir << 30 | size << 16 | type << 8 | nr
    /// (`_IO` has dir 0 and size 0, so LUO's commands are `0xBA00 | nr`).
    pub fn ioctl_value(&self, scope: Scope<'_>, ioctl: &crate::model::Ioctl) -> u64 {
        let target = Target::PRIMARY;
        let nr = self.eval(scope, &ioctl.nr.0, target).unwrap_or(0);
        let ty = scope
            .find_const(&ioctl.ty.name)
            .and_then(|(o, c)| match &c.value {
                ConstValue::Int(e) => self.eval(scope.at(o), e, target).ok(),
                ConstValue::Str(_) => None,
            })
            .unwrap_or(0);
        let dir: u64 = match ioctl.encoding.name.as_str() {
            "_IOW" => 1,
            "_IOR" => 2,
            "_IOWR" => 3,
            _ => 0,
        };
        let size = if dir == 0 {
            0
        } else {
            self.layout(scope, &ioctl.arg.name, target)
                .map_or(0, |l| l.size)
        };
        (dir << 30) | (size << 16) | (ty << 8) | nr
    }

    /// Size and alignment of a type (one element).
    fn type_layout(
        &self,
        scope: Scope<'_>,
        s: &Struct,
        field: &str,
        ty: &Ty,
        target: Target,
    ) -> Result<(u64, u64), LayoutError> {
        let invalid = |why: &str| LayoutError::Invalid {
            strukt: s.name.clone(),
            field: field.into(),
            why: why.into(),
        };
        let ptr = target.arch.pointer_size();
        Ok(match ty {
            Ty::Prim(p) => match p {
                Prim::U8 | Prim::S8 | Prim::Char | Prim::Bool => (1, 1),
                Prim::U16 | Prim::S16 | Prim::Ushort => (2, 2),
                Prim::U32 | Prim::S32 | Prim::Int | Prim::Uint => (4, 4),
                Prim::U64 | Prim::S64 => (8, target.arch.u64_align()),
                Prim::AlignedU64 => (8, 8),
                Prim::Ulong | Prim::Long => (ptr, ptr),
                Prim::Void => return Err(invalid("`void` has no size")),
            },
            Ty::Str => (1, 1),
            Ty::Phys(_) => (8, target.arch.u64_align()),
            Ty::Ptr { .. } | Ty::Fn(_) => (ptr, ptr),
            Ty::Named(n) => match self.layout(scope, n, target) {
                Ok(l) => (l.size, l.align),
                Err(LayoutError::UnknownType { field: f, .. }) if f.is_empty() => {
                    return Err(LayoutError::UnknownType {
                        strukt: s.name.clone(),
                        field: field.into(),
                        ty: n.clone(),
                    });
                }
                Err(e) => return Err(e),
            },
        })
    }

    fn compute(
        &self,
        scope: Scope<'_>,
        s: &Struct,
        target: Target,
    ) -> Result<StructLayout, LayoutError> {
        let mut fields: Vec<FieldLayout> = Vec::new();
        let mut holes = Vec::new();
        let mut offset = 0u64;
        let mut max_align = 1u64;
        let too_big = |field: &str| LayoutError::Invalid {
            strukt: s.name.clone(),
            field: field.into(),
            why: "the struct's size overflows".into(),
        };
        let mut i = 0;
        while i < s.fields.len() {
            let f = &s.fields[i];
            let (elem_size, natural_align) = self.type_layout(scope, s, &f.name, &f.ty, target)?;
            let align = if s.packed { 1 } else { natural_align };
            // Bitfield run: consecutive members with `bits` and the same type.
            if f.bits.is_some() {
                let Ty::Prim(unit_ty) = &f.ty else {
                    return Err(LayoutError::Bitfield {
                        strukt: s.name.clone(),
                        field: f.name.clone(),
                        why: "bitfields need an integer type".into(),
                    });
                };
                let unit_bits = u32::try_from(elem_size * 8).unwrap_or(u32::MAX);
                let start = align_up(offset, align).ok_or_else(|| too_big(&f.name))?;
                push_hole(&mut holes, &fields, offset, start);
                let mut used = 0u32;
                let mut j = i;
                while j < s.fields.len()
                    && s.fields[j].bits.is_some()
                    && s.fields[j].ty == Ty::Prim(*unit_ty)
                {
                    let (width, _) = s.fields[j].bits.clone().unwrap_or((0, 0..0));
                    if width == 0 || width > unit_bits - used {
                        return Err(LayoutError::Bitfield {
                            strukt: s.name.clone(),
                            field: s.fields[j].name.clone(),
                            why: if width == 0 {
                                "a bitfield needs a width of at least 1".into()
                            } else {
                                format!(
                                    "{} bits do not fit: {used} of the {unit_bits}-bit `{}` unit are already used",
                                    width,
                                    unit_ty.name()
                                )
                            },
                        });
                    }
                    fields.push(FieldLayout {
                        name: s.fields[j].name.clone(),
                        offset: start,
                        size: 0, // set below, once the unit's size is known
                        align,
                        elem_size: 0,
                        count: 1,
                        bits: Some((used, width)),
                    });
                    used += width;
                    j += 1;
                }
                let unit_size = if s.packed {
                    u64::from(used.div_ceil(8))
                } else if used != unit_bits {
                    return Err(LayoutError::Bitfield {
                        strukt: s.name.clone(),
                        field: s.fields[j - 1].name.clone(),
                        why: format!(
                            "the `{}` bitfield unit has {} unused bits; fill it with an explicit reserved bitfield (`bits = {}`)",
                            unit_ty.name(),
                            unit_bits - used,
                            unit_bits - used
                        ),
                    });
                } else {
                    elem_size
                };
                let run_start = fields.len() - (j - i);
                for fl in &mut fields[run_start..] {
                    fl.size = unit_size;
                    fl.elem_size = unit_size;
                }
                offset = start
                    .checked_add(unit_size)
                    .ok_or_else(|| too_big(&f.name))?;
                max_align = max_align.max(align);
                i = j;
                continue;
            }
            let count = match &f.len {
                Some((expr, _)) => {
                    self.eval(scope, expr, target)
                        .map_err(|error| LayoutError::Eval {
                            strukt: s.name.clone(),
                            field: f.name.clone(),
                            error,
                        })?
                }
                None if f.ty == Ty::Str => {
                    return Err(LayoutError::Invalid {
                        strukt: s.name.clone(),
                        field: f.name.clone(),
                        why: "a `str` needs a `len`".into(),
                    });
                }
                None => 1,
            };
            let start = align_up(offset, align).ok_or_else(|| too_big(&f.name))?;
            push_hole(&mut holes, &fields, offset, start);
            let size = elem_size
                .checked_mul(count)
                .ok_or_else(|| LayoutError::Invalid {
                    strukt: s.name.clone(),
                    field: f.name.clone(),
                    why: "array size overflows".into(),
                })?;
            fields.push(FieldLayout {
                name: f.name.clone(),
                offset: start,
                size,
                align,
                elem_size,
                count,
                bits: None,
            });
            offset = start.checked_add(size).ok_or_else(|| too_big(&f.name))?;
            max_align = max_align.max(align);
            i += 1;
        }
        let size = align_up(offset, max_align)
            .ok_or_else(|| too_big(s.fields.last().map_or("", |f| f.name.as_str())))?;
        push_hole(&mut holes, &fields, offset, size);
        Ok(StructLayout {
            size,
            align: max_align,
            fields,
            holes,
        })
    }
}

/// Bound on the recursion of expression evaluation (see `Layouts::eval`).
const MAX_EVAL_DEPTH: u32 = 128;
/// Bound on structs nested by value, which the layout recursion follows.
const MAX_STRUCT_NESTING: usize = 64;

/// Nesting depth of an expression tree.
fn nesting(e: &Expr) -> u32 {
    match e {
        Expr::Int(..) | Expr::Name(_) | Expr::SizeofStruct(_) | Expr::SizeofString(_) => 0,
        Expr::Bit(x) | Expr::Unary(_, x) | Expr::Paren(x) => 1 + nesting(x),
        Expr::Align(a, b) | Expr::Binary(_, a, b) => 1 + nesting(a).max(nesting(b)),
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_next_multiple_of(a)
}

fn push_hole(holes: &mut Vec<Hole>, fields: &[FieldLayout], from: u64, to: u64) {
    if to > from {
        holes.push(Hole {
            after: fields.last().map(|f| f.name.clone()),
            offset: from,
            size: to - from,
        });
    }
}

/// Expression environment: constants, enumerators and `sizeof` from a scope.
struct ScopeEnv<'a, 'b> {
    layouts: &'a Layouts,
    scope: Scope<'b>,
    target: Target,
}

impl Env for ScopeEnv<'_, '_> {
    fn value(&self, name: &str) -> Result<u64, EvalError> {
        if name == "PAGE_SIZE" {
            return Ok(self.target.page_size);
        }
        if name == "PAGE_SHIFT" {
            return Ok(u64::from(self.target.page_size.trailing_zeros()));
        }
        if let Some((origin, c)) = self.scope.find_const(name) {
            return match &c.value {
                ConstValue::Int(e) => {
                    self.layouts
                        .eval_named(self.scope.at(origin), name, e, self.target)
                }
                ConstValue::Str(_) => Err(EvalError::UnknownName(format!(
                    "{name}` is a string constant; use `sizeof({name})"
                ))),
            };
        }
        if let Some((origin, m)) = self.scope.find_enumerator(name) {
            return self
                .layouts
                .eval_named(self.scope.at(origin), name, &m.value, self.target);
        }
        Err(EvalError::UnknownName(name.into()))
    }

    fn sizeof_struct(&self, name: &str) -> Result<u64, EvalError> {
        self.layouts
            .layout(self.scope, name, self.target)
            .map(|l| l.size)
            .map_err(|e| match e {
                LayoutError::UnknownType { field, .. } if field.is_empty() => {
                    EvalError::UnknownSizeof(format!("struct {name}"))
                }
                // The struct's own error, e.g. an array length that failed.
                LayoutError::Eval { error, .. } => error,
                LayoutError::Recursive(n) if n == name => EvalError::Arithmetic(format!(
                    "the size of `{name}` depends on `sizeof(struct {name})` itself"
                )),
                // A member error (unknown type, invalid member, bitfield, recursion further
                // down) is reported at the struct itself.
                _ => EvalError::StructFailed(name.into()),
            })
    }

    fn sizeof_string(&self, name: &str) -> Result<u64, EvalError> {
        match self.scope.find_const(name) {
            Some((_, c)) => match &c.value {
                ConstValue::Str(s) => Ok(s.len() as u64 + 1),
                ConstValue::Int(_) => Err(EvalError::UnknownSizeof(name.into())),
            },
            None => Err(EvalError::UnknownSizeof(name.into())),
        }
    }
}
