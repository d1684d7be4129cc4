// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Field types: the small type grammar of `type = "…"` in specs.
//!
//! ```text
//! type  := prim | "str" | "phys<" NAME ">" | "ptr<" ["const "] target ">"
//!        | "fn(" [arg ("," arg)*] ")" ["->" type] | NAME
//! arg   := IDENT ":" type
//! prim  := u8 u16 u32 u64 s8 s16 s32 s64 aligned_u64
//!        | char int uint ushort ulong long bool
//! ```
//!
//! `phys<T>` is a physical address (a `u64` on the wire) of a `T`; `ptr`
//! and `fn` only appear in the in-kernel C API, whose layout depends on the
//! pointer width.

use std::fmt;

/// A primitive C type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prim {
    /// `u8` / `__u8`
    U8,
    /// `u16`
    U16,
    /// `u32`
    U32,
    /// `u64`: 4-byte aligned on i386.
    U64,
    /// `s8`
    S8,
    /// `s16`
    S16,
    /// `s32`
    S32,
    /// `s64`
    S64,
    /// `__aligned_u64`: 8-byte aligned everywhere.
    AlignedU64,
    /// `char` (strings).
    Char,
    /// `int`
    Int,
    /// `unsigned int`
    Uint,
    /// `unsigned short`
    Ushort,
    /// `unsigned long`: pointer-sized.
    Ulong,
    /// `long`: pointer-sized.
    Long,
    /// `bool`
    Bool,
    /// `void` (return type and pointer target only).
    Void,
}

impl Prim {
    const ALL: [(&'static str, Prim); 17] = [
        ("u8", Prim::U8),
        ("u16", Prim::U16),
        ("u32", Prim::U32),
        ("u64", Prim::U64),
        ("s8", Prim::S8),
        ("s16", Prim::S16),
        ("s32", Prim::S32),
        ("s64", Prim::S64),
        ("aligned_u64", Prim::AlignedU64),
        ("char", Prim::Char),
        ("int", Prim::Int),
        ("uint", Prim::Uint),
        ("ushort", Prim::Ushort),
        ("ulong", Prim::Ulong),
        ("long", Prim::Long),
        ("bool", Prim::Bool),
        ("void", Prim::Void),
    ];

    /// Parse a primitive name.
    pub fn from_name(name: &str) -> Option<Prim> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// The spec spelling.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether the type is a fixed-width integer usable in a bitfield and in
    /// handover structs.
    pub fn is_fixed_int(self) -> bool {
        matches!(
            self,
            Prim::U8
                | Prim::U16
                | Prim::U32
                | Prim::U64
                | Prim::S8
                | Prim::S16
                | Prim::S32
                | Prim::S64
                | Prim::AlignedU64
        )
    }

    /// Whether the type is signed.
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            Prim::S8 | Prim::S16 | Prim::S32 | Prim::S64 | Prim::Int | Prim::Long
        )
    }
}

/// A parsed field type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// A primitive.
    Prim(Prim),
    /// A NUL-terminated fixed-length string (`char name[N]`).
    Str,
    /// A physical address of a `T` (`u64` on the wire).
    Phys(String),
    /// A pointer (in-kernel API only).
    Ptr {
        /// `const` target.
        is_const: bool,
        /// Target: a primitive, a struct or an opaque type.
        target: Box<Ty>,
    },
    /// A function pointer (ops-table callbacks).
    Fn(FnSig),
    /// A struct, by name.
    Named(String),
}

/// A function signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnSig {
    /// Arguments: name and type.
    pub args: Vec<(String, Ty)>,
    /// Return type (`void` when absent).
    pub ret: Box<Ty>,
}

/// A type parse error: offset in the type text and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TyError {
    /// Byte offset inside the type string.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl Ty {
    /// Parse a type string.
    pub fn parse(text: &str) -> Result<Ty, TyError> {
        let mut p = TyParser { s: text, pos: 0 };
        let ty = p.ty()?;
        p.skip_ws();
        if p.pos != text.len() {
            return Err(p.err(format!("unexpected `{}` after the type", &text[p.pos..])));
        }
        Ok(ty)
    }

    /// Every struct name the type mentions by value (not behind `ptr`/`phys`).
    pub fn by_value_struct(&self) -> Option<&str> {
        match self {
            Ty::Named(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Prim(p) => f.write_str(p.name()),
            Ty::Str => f.write_str("str"),
            Ty::Phys(t) => write!(f, "phys<{t}>"),
            Ty::Ptr { is_const, target } => {
                write!(f, "ptr<{}{target}>", if *is_const { "const " } else { "" })
            }
            Ty::Named(n) => f.write_str(n),
            Ty::Fn(sig) => {
                f.write_str("fn(")?;
                for (i, (n, t)) in sig.args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}: {t}")?;
                }
                write!(f, ") -> {}", sig.ret)
            }
        }
    }
}

struct TyParser<'a> {
    s: &'a str,
    pos: usize,
}

impl TyParser<'_> {
    fn err(&self, message: impl Into<String>) -> TyError {
        TyError {
            offset: self.pos,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.s[self.pos..]
            .chars()
            .next()
            .filter(|c| c.is_whitespace())
        {
            self.pos += c.len_utf8();
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), TyError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{tok}`")))
        }
    }

    fn ident(&mut self) -> Result<String, TyError> {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.err("expected a type name"));
        }
        self.pos += len;
        Ok(rest[..len].to_string())
    }

    fn ty(&mut self) -> Result<Ty, TyError> {
        let start = self.pos;
        let word = self.ident()?;
        match word.as_str() {
            "str" => Ok(Ty::Str),
            "phys" => {
                self.expect("<")?;
                let target = self.ident()?;
                self.expect(">")?;
                Ok(Ty::Phys(target))
            }
            "ptr" => {
                self.expect("<")?;
                let is_const = self.eat("const ");
                let target = self.ty()?;
                if matches!(target, Ty::Fn(_) | Ty::Str) {
                    return Err(TyError {
                        offset: start,
                        message: "a pointer must point to a struct, opaque or primitive type"
                            .into(),
                    });
                }
                self.expect(">")?;
                Ok(Ty::Ptr {
                    is_const,
                    target: Box::new(target),
                })
            }
            "fn" => {
                self.expect("(")?;
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        let name = self.ident()?;
                        self.expect(":")?;
                        args.push((name, self.ty()?));
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                let ret = if self.eat("->") {
                    self.ty()?
                } else {
                    Ty::Prim(Prim::Void)
                };
                Ok(Ty::Fn(FnSig {
                    args,
                    ret: Box::new(ret),
                }))
            }
            _ => Ok(Prim::from_name(&word).map_or(Ty::Named(word), Ty::Prim)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar() {
        assert_eq!(Ty::parse("u64").unwrap(), Ty::Prim(Prim::U64));
        assert_eq!(
            Ty::parse("phys<kho_vmalloc_chunk>").unwrap(),
            Ty::Phys("kho_vmalloc_chunk".into())
        );
        let t =
            Ty::parse("fn(handler: ptr<const liveupdate_file_handler>, file: ptr<file>) -> bool")
                .unwrap();
        assert_eq!(
            t.to_string(),
            "fn(handler: ptr<const liveupdate_file_handler>, file: ptr<file>) -> bool"
        );
        assert_eq!(Ty::parse("fn()").unwrap().to_string(), "fn() -> void");
        assert_eq!(
            Ty::parse("kho_vmalloc").unwrap(),
            Ty::Named("kho_vmalloc".into())
        );
    }

    #[test]
    fn reports_offsets() {
        assert_eq!(Ty::parse("phys<>").unwrap_err().offset, 5);
        assert_eq!(Ty::parse("u64 x").unwrap_err().offset, 4);
        assert!(Ty::parse("fn(a u64)").unwrap_err().message.contains("`:`"));
    }
}
