// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Constant expressions: the integer language of `value` and `len`.
//!
//! The grammar is the subset of C that ABI headers use for sizes and flags:
//! integer literals (decimal, `0x`), names of constants and enumerators,
//! `PAGE_SIZE` and `PAGE_SHIFT` (layout parameters), `+ - * / % << >> | & ~`, parentheses,
//! `BIT(n)`, `ALIGN(x, a)`, `sizeof(struct name)` and `sizeof(NAME)` of a
//! string constant (its length plus the NUL, as C's `sizeof("…")`).
//!
//! Expressions keep their source form, so C headers show them as written,
//! and are evaluated per layout target, since `PAGE_SIZE` and `sizeof`
//! differ between targets.

use std::fmt;

/// A parsed constant expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Integer literal, with the text it was written as (`0xBA`).
    Int(u64, String),
    /// A constant, enumerator or `PAGE_SIZE`.
    Name(String),
    /// `sizeof(struct name)`.
    SizeofStruct(String),
    /// `sizeof(NAME)` of a string constant.
    SizeofString(String),
    /// `BIT(n)`.
    Bit(Box<Expr>),
    /// `ALIGN(x, a)`.
    Align(Box<Expr>, Box<Expr>),
    /// Unary `~` or `-`.
    Unary(char, Box<Expr>),
    /// Binary operation.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// Parenthesized expression (kept for faithful rendering).
    Paren(Box<Expr>),
}

/// Binary operators, in C precedence classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `<<`
    Shl,
    /// `>>`
    Shr,
    /// `&`
    And,
    /// `|`
    Or,
}

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Shl | BinOp::Shr => 3,
            BinOp::And => 2,
            BinOp::Or => 1,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
            BinOp::And => "&",
            BinOp::Or => "|",
        }
    }
}

/// A parse error: byte offset into the expression text and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset of the offending token inside the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// An evaluation error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// A name that is neither a constant, an enumerator nor `PAGE_SIZE`.
    UnknownName(String),
    /// `sizeof` of something that is not a struct or string constant.
    UnknownSizeof(String),
    /// Division by zero, overflow, or a shift out of range.
    Arithmetic(String),
    /// `sizeof(struct NAME)` of a struct whose layout failed; the struct's own error is
    /// reported where it is defined, so expressions using it stay silent.
    StructFailed(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::UnknownName(n) => write!(f, "unknown constant `{n}`"),
            EvalError::UnknownSizeof(n) => {
                write!(f, "`sizeof({n})`: not a struct or string constant")
            }
            EvalError::Arithmetic(m) => f.write_str(m),
            EvalError::StructFailed(n) => {
                write!(f, "`sizeof(struct {n})`: `{n}` has an error of its own")
            }
        }
    }
}

/// What evaluation needs from its surroundings.
pub trait Env {
    /// Value of a named integer constant (including `PAGE_SIZE`).
    fn value(&self, name: &str) -> Result<u64, EvalError>;
    /// `sizeof(struct name)` on the current target.
    fn sizeof_struct(&self, name: &str) -> Result<u64, EvalError>;
    /// `sizeof(NAME)` of a string constant: its length plus the NUL.
    fn sizeof_string(&self, name: &str) -> Result<u64, EvalError>;
}

impl Expr {
    /// Parse an expression.
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.len(),
        };
        let e = p.expr(0)?;
        match p.peek() {
            None => Ok(e),
            Some((off, t)) => Err(ParseError {
                offset: off,
                message: format!("unexpected `{}`", t.text()),
            }),
        }
    }

    /// Evaluate on one target.
    pub fn eval(&self, env: &dyn Env) -> Result<u64, EvalError> {
        let arith = |m: &str| EvalError::Arithmetic(m.to_string());
        Ok(match self {
            Expr::Int(v, _) => *v,
            Expr::Name(n) => env.value(n)?,
            Expr::SizeofStruct(n) => env.sizeof_struct(n)?,
            Expr::SizeofString(n) => env.sizeof_string(n)?,
            Expr::Bit(n) => {
                let n = n.eval(env)?;
                1u64.checked_shl(u32::try_from(n).map_err(|_| arith("BIT() out of range"))?)
                    .filter(|_| n < 64)
                    .ok_or_else(|| arith("BIT() out of range"))?
            }
            Expr::Align(x, a) => {
                let (x, a) = (x.eval(env)?, a.eval(env)?);
                if a == 0 || !a.is_power_of_two() {
                    return Err(arith("ALIGN() needs a power-of-two alignment"));
                }
                x.checked_add(a - 1)
                    .ok_or_else(|| arith("ALIGN() overflows"))?
                    & !(a - 1)
            }
            Expr::Unary('~', e) => !e.eval(env)?,
            Expr::Unary(_, e) => e.eval(env)?.wrapping_neg(),
            Expr::Paren(e) => e.eval(env)?,
            Expr::Binary(op, l, r) => {
                let (l, r) = (l.eval(env)?, r.eval(env)?);
                let v = match op {
                    BinOp::Mul => l.checked_mul(r),
                    BinOp::Div => l.checked_div(r),
                    BinOp::Rem => l.checked_rem(r),
                    BinOp::Add => l.checked_add(r),
                    BinOp::Sub => l.checked_sub(r),
                    BinOp::Shl => u32::try_from(r).ok().and_then(|r| l.checked_shl(r)),
                    BinOp::Shr => u32::try_from(r).ok().and_then(|r| l.checked_shr(r)),
                    BinOp::And => Some(l & r),
                    BinOp::Or => Some(l | r),
                };
                v.ok_or_else(|| {
                    arith(&format!(
                        "`{l} {} {r}` overflows or divides by zero",
                        op.symbol()
                    ))
                })?
            }
        })
    }

    /// Every name the expression refers to (constants and `PAGE_SIZE`).
    pub fn names(&self, out: &mut Vec<String>) {
        match self {
            Expr::Int(..) => {}
            Expr::Name(n) | Expr::SizeofString(n) => out.push(n.clone()),
            Expr::SizeofStruct(_) => {}
            Expr::Bit(e) | Expr::Unary(_, e) | Expr::Paren(e) => e.names(out),
            Expr::Align(a, b) | Expr::Binary(_, a, b) => {
                a.names(out);
                b.names(out);
            }
        }
    }

    /// Whether the expression depends on `PAGE_SIZE` or `PAGE_SHIFT` (directly).
    pub fn uses_page_size(&self) -> bool {
        let mut names = Vec::new();
        self.names(&mut names);
        names.iter().any(|n| n == "PAGE_SIZE" || n == "PAGE_SHIFT")
    }

    /// Whether the expression uses kernel-only macros (`BIT`, `ALIGN`,
    /// `PAGE_SIZE`), which a uAPI header cannot.
    pub fn kernel_only(&self) -> Option<&'static str> {
        match self {
            Expr::Bit(_) => Some("BIT()"),
            Expr::Align(..) => Some("ALIGN()"),
            Expr::Name(n) if n == "PAGE_SIZE" => Some("PAGE_SIZE"),
            Expr::Name(n) if n == "PAGE_SHIFT" => Some("PAGE_SHIFT"),
            Expr::Int(..) | Expr::Name(_) | Expr::SizeofStruct(_) | Expr::SizeofString(_) => None,
            Expr::Unary(_, e) | Expr::Paren(e) => e.kernel_only(),
            Expr::Binary(_, a, b) => a.kernel_only().or_else(|| b.kernel_only()),
        }
    }

    /// The expression as C source.
    pub fn to_c(&self) -> String {
        self.to_string()
    }

    /// Whether rendering needs parentheses to be safe inside a `#define`.
    pub fn is_atom(&self) -> bool {
        !matches!(self, Expr::Binary(..) | Expr::Unary(..))
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Int(_, text) => f.write_str(text),
            Expr::Name(n) => f.write_str(n),
            Expr::SizeofStruct(n) => write!(f, "sizeof(struct {n})"),
            Expr::SizeofString(n) => write!(f, "sizeof({n})"),
            Expr::Bit(e) => write!(f, "BIT({e})"),
            Expr::Align(x, a) => write!(f, "ALIGN({x}, {a})"),
            Expr::Unary(op, e) => write!(f, "{op}{e}"),
            Expr::Paren(e) => write!(f, "({e})"),
            Expr::Binary(op, l, r) => write!(f, "{l} {} {r}", op.symbol()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Int(u64, String),
    Ident(String),
    Op(&'static str),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Int(_, t) | Tok::Ident(t) => t.clone(),
            Tok::Op(o) => (*o).to_string(),
        }
    }
}

const OPS: [&str; 14] = [
    "<<", ">>", "(", ")", ",", "+", "-", "*", "/", "%", "&", "|", "~", "\"",
];

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            let digits = word.trim_end_matches(['u', 'U', 'l', 'L']);
            let parsed = match digits
                .strip_prefix("0x")
                .or_else(|| digits.strip_prefix("0X"))
            {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => digits.parse::<u64>(),
            };
            let v = parsed.map_err(|_| ParseError {
                offset: start,
                message: format!("bad integer `{word}`"),
            })?;
            out.push((start, Tok::Int(v, word.to_string())));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Ident(text[start..i].to_string())));
        } else if let Some(op) = OPS.iter().find(|op| text[i..].starts_with(**op)) {
            if *op == "\"" {
                return Err(ParseError {
                    offset: i,
                    message: "string literals are not expressions; declare a string constant and use `sizeof(NAME)`"
                        .into(),
                });
            }
            out.push((i, Tok::Op(op)));
            i += op.len();
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(ParseError {
                offset: i,
                message: format!("unexpected character `{ch}`"),
            });
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<(usize, &Tok)> {
        self.tokens.get(self.pos).map(|(o, t)| (*o, t))
    }

    fn offset(&self) -> usize {
        self.peek().map_or(self.end, |(o, _)| o)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some((_, Tok::Op(o))) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), ParseError> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(ParseError {
                offset: self.offset(),
                message: format!("expected `{op}`"),
            })
        }
    }

    fn binop(&self) -> Option<BinOp> {
        let Some((_, Tok::Op(o))) = self.peek() else {
            return None;
        };
        Some(match *o {
            "*" => BinOp::Mul,
            "/" => BinOp::Div,
            "%" => BinOp::Rem,
            "+" => BinOp::Add,
            "-" => BinOp::Sub,
            "<<" => BinOp::Shl,
            ">>" => BinOp::Shr,
            "&" => BinOp::And,
            "|" => BinOp::Or,
            _ => return None,
        })
    }

    /// Precedence climbing; all C binary operators here are left-associative.
    fn expr(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        while let Some(op) = self.binop() {
            if op.precedence() < min.max(1) {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(op.precedence() + 1)?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        for op in ['~', '-'] {
            if self.eat_op(&op.to_string()) {
                return Ok(Expr::Unary(op, Box::new(self.unary()?)));
            }
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let offset = self.offset();
        let Some((_, tok)) = self.peek() else {
            return Err(ParseError {
                offset,
                message: "expected an expression".into(),
            });
        };
        let tok = tok.clone();
        self.pos += 1;
        match tok {
            Tok::Int(v, text) => Ok(Expr::Int(v, text)),
            Tok::Op("(") => {
                let e = self.expr(0)?;
                self.expect_op(")")?;
                Ok(Expr::Paren(Box::new(e)))
            }
            Tok::Ident(name) => match name.as_str() {
                "BIT" => {
                    self.expect_op("(")?;
                    let e = self.expr(0)?;
                    self.expect_op(")")?;
                    Ok(Expr::Bit(Box::new(e)))
                }
                "ALIGN" => {
                    self.expect_op("(")?;
                    let x = self.expr(0)?;
                    self.expect_op(",")?;
                    let a = self.expr(0)?;
                    self.expect_op(")")?;
                    Ok(Expr::Align(Box::new(x), Box::new(a)))
                }
                "sizeof" => {
                    self.expect_op("(")?;
                    let at = self.offset();
                    let e = match self.peek() {
                        Some((_, Tok::Ident(kw))) if kw == "struct" => {
                            self.pos += 1;
                            match self.peek() {
                                Some((_, Tok::Ident(n))) => {
                                    let n = n.clone();
                                    self.pos += 1;
                                    Expr::SizeofStruct(n)
                                }
                                _ => {
                                    return Err(ParseError {
                                        offset: self.offset(),
                                        message: "expected a struct name".into(),
                                    });
                                }
                            }
                        }
                        Some((_, Tok::Ident(n))) => {
                            let n = n.clone();
                            self.pos += 1;
                            Expr::SizeofString(n)
                        }
                        _ => {
                            return Err(ParseError {
                                offset: at,
                                message: "`sizeof` takes `struct NAME` or a string constant".into(),
                            });
                        }
                    };
                    self.expect_op(")")?;
                    Ok(e)
                }
                _ => Ok(Expr::Name(name)),
            },
            Tok::Op(o) => Err(ParseError {
                offset,
                message: format!("unexpected `{o}`"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Page(u64);
    impl Env for Page {
        fn value(&self, name: &str) -> Result<u64, EvalError> {
            match name {
                "PAGE_SIZE" => Ok(self.0),
                "BASE" => Ok(0x40),
                _ => Err(EvalError::UnknownName(name.into())),
            }
        }
        fn sizeof_struct(&self, name: &str) -> Result<u64, EvalError> {
            (name == "hdr")
                .then_some(16)
                .ok_or_else(|| EvalError::UnknownSizeof(name.into()))
        }
        fn sizeof_string(&self, name: &str) -> Result<u64, EvalError> {
            (name == "LUO_ABI_COMPATIBLE")
                .then_some(7)
                .ok_or_else(|| EvalError::UnknownSizeof(name.into()))
        }
    }

    fn eval(text: &str, page: u64) -> u64 {
        Expr::parse(text).unwrap().eval(&Page(page)).unwrap()
    }

    #[test]
    fn upstream_expressions() {
        assert_eq!(eval("(PAGE_SIZE - 16) / 64", 4096), 63);
        assert_eq!(eval("(PAGE_SIZE - sizeof(struct hdr)) / 64", 16384), 255);
        assert_eq!(eval("ALIGN(sizeof(LUO_ABI_COMPATIBLE), 8)", 4096), 8);
        assert_eq!(eval("BIT(0) | BIT(1) | 0x3c", 4096), 0x3f);
        assert_eq!(eval("BASE + 2", 4096), 0x42);
        assert_eq!(eval("1 + 2 * 3 << 1", 4096), 14);
        assert_eq!(eval("PAGE_SIZE / 8 - 1", 65536), 8191);
    }

    #[test]
    fn renders_as_written() {
        for text in [
            "(PAGE_SIZE - 16) / 64",
            "ALIGN(sizeof(LUO_ABI_COMPATIBLE), 8)",
            "BIT(3)",
            "0xBA",
            "sizeof(struct hdr)",
        ] {
            assert_eq!(Expr::parse(text).unwrap().to_c(), text);
        }
    }

    #[test]
    fn errors_point_at_the_token() {
        let e = Expr::parse("1 + * 2").unwrap_err();
        assert_eq!(e.offset, 4);
        let e = Expr::parse("ALIGN(8 8)").unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (8, "expected `,`"));
        assert!(
            Expr::parse("sizeof(\"luo\")")
                .unwrap_err()
                .message
                .contains("string constant")
        );
        let e = Expr::parse("1 / 0").unwrap().eval(&Page(4096)).unwrap_err();
        assert!(matches!(e, EvalError::Arithmetic(_)));
        assert!(Expr::parse("BIT(64)").unwrap().eval(&Page(4096)).is_err());
    }
}
