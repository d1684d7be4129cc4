// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 1 and 2 of `#[derive(Abi)]`: the struct's representation, its `#[abi(size = N)]`
//! and each field with its `#[abi(reserved)]` / `#[abi(foreign)]` flags. Reports only what
//! does not parse; the rules are for validation.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitInt, Member, Path, Type};

use crate::args::{self, ArgValue};
use crate::diag::Errors;

/// A struct deriving `Abi`.
pub struct AbiStruct {
    pub ident: Ident,
    /// The generic parameters, if any (not supported).
    pub generics: Option<syn::Generics>,
    /// An enum or union at the span of its keyword (not supported).
    pub not_a_struct: Option<(Span, NotAStruct)>,
    pub repr: Repr,
    /// `#[abi(size = N)]`.
    pub declared_size: Option<(u64, Span)>,
    pub fields: Vec<Field>,
}

pub enum NotAStruct {
    Enum,
    Union,
}

/// `#[repr(...)]`.
#[derive(Default)]
pub struct Repr {
    pub c: bool,
    pub packed: bool,
    /// Representation hints with no C counterpart.
    pub unsupported: Vec<Unsupported>,
}

pub enum Unsupported {
    /// `packed(N)` with N > 1.
    PackedN(LitInt),
    Align(Path),
    Transparent(Path),
    Other(Path),
}

pub struct Field {
    pub member: Member,
    pub name: String,
    pub ty: Type,
    /// `#[abi(reserved)]`: checked as zero on read.
    pub reserved: bool,
    /// `#[abi(foreign)]`: a zerocopy type from another crate.
    pub foreign: bool,
    pub span: Span,
}

impl AbiStruct {
    pub fn name(&self) -> String {
        self.ident.to_string()
    }
}

/// Reads the struct, reporting what does not parse.
pub fn parse(input: &DeriveInput, errors: &mut Errors) -> AbiStruct {
    let not_a_struct = match &input.data {
        Data::Enum(e) => Some((e.enum_token.span(), NotAStruct::Enum)),
        Data::Union(u) => Some((u.union_token.span(), NotAStruct::Union)),
        Data::Struct(_) => None,
    };
    let fields = match &input.data {
        Data::Struct(s) => fields(&s.fields, errors),
        _ => Vec::new(),
    };
    AbiStruct {
        ident: input.ident.clone(),
        generics: Some(input.generics.clone()).filter(|g| !g.params.is_empty()),
        not_a_struct,
        repr: repr(input, errors),
        declared_size: declared_size(input, errors),
        fields,
    }
}

fn repr(input: &DeriveInput, errors: &mut Errors) -> Repr {
    let mut r = Repr::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        let res = attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("C") {
                r.c = true;
            } else if p.is_ident("packed") {
                if meta.input.peek(syn::token::Paren) {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let n: LitInt = content.parse()?;
                    if n.base10_parse::<u64>()? != 1 {
                        r.unsupported.push(Unsupported::PackedN(n));
                    }
                }
                r.packed = true;
            } else if p.is_ident("align") {
                let content;
                syn::parenthesized!(content in meta.input);
                let _: proc_macro2::TokenStream = content.parse()?;
                r.unsupported.push(Unsupported::Align(p.clone()));
            } else if p.is_ident("transparent") {
                r.unsupported.push(Unsupported::Transparent(p.clone()));
            } else {
                r.unsupported.push(Unsupported::Other(p.clone()));
            }
            Ok(())
        });
        if let Err(e) = res {
            errors.push(e);
        }
    }
    r
}

/// The struct-level `#[abi(size = N)]`.
fn declared_size(input: &DeriveInput, errors: &mut Errors) -> Option<(u64, Span)> {
    let mut size = None;
    for a in abi_args(
        &input.attrs,
        &["size"],
        "#[abi(...)] on an ABI struct",
        errors,
    ) {
        size = args::int(&a, errors);
    }
    size
}

/// The arguments of every `#[abi(...)]` among `attrs`, with known, first-seen keys.
fn abi_args(
    attrs: &[syn::Attribute],
    keys: &[&str],
    what: &str,
    errors: &mut Errors,
) -> Vec<args::Arg> {
    let mut out = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("abi")) {
        match attr.meta.require_list() {
            Ok(l) => match args::parse_args(l.tokens.clone()) {
                Ok(list) => out.extend(args::check_keys(list, keys, what, errors)),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
    }
    out
}

fn fields(fields: &Fields, errors: &mut Errors) -> Vec<Field> {
    let list: Vec<&syn::Field> = match fields {
        Fields::Named(n) => n.named.iter().collect(),
        Fields::Unnamed(u) => u.unnamed.iter().collect(),
        Fields::Unit => Vec::new(),
    };
    let mut out = Vec::new();
    for (i, f) in list.into_iter().enumerate() {
        let (member, name) = match &f.ident {
            Some(id) => (Member::Named(id.clone()), id.to_string()),
            None => (Member::Unnamed(syn::Index::from(i)), i.to_string()),
        };
        let mut reserved = false;
        let mut foreign = false;
        for a in abi_args(
            &f.attrs,
            &["reserved", "foreign"],
            "#[abi(...)] on a field",
            errors,
        ) {
            if !matches!(a.value, ArgValue::Flag) {
                errors.at(
                    a.key.span(),
                    format!("`{}` is a flag and takes no value", a.key),
                );
            }
            match a.key.to_string().as_str() {
                "reserved" => reserved = true,
                _ => foreign = true,
            }
        }
        out.push(Field {
            member,
            name,
            ty: f.ty.clone(),
            reserved,
            foreign,
            span: f.ty.span(),
        });
    }
    out
}
