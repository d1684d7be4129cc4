// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Phase 2: what the arguments mean, derived without reporting anything. The model keeps
//! what validation needs to judge it (the duplicates it dropped, why a version read has no
//! ABI type), so the rules live in one place and expansion reads only settled facts.

use proc_macro2::Span;
use quote::quote;
use syn::{Ident, LitStr, Path};

use crate::common::{path_version, split_version, with_version};

use super::parse::{Feature, HandlerArgs};

/// A handler as its struct attribute describes it.
pub struct Model {
    pub ident: Ident,
    /// The compatible string written, or the versionless name of a feature-negotiated ABI.
    pub compat: Option<LitStr>,
    /// `name = "..."` (feature negotiation) rather than `compatible = "name-vN"`.
    pub versionless: bool,
    /// `memfd-v2` → (`memfd`, 2), for an exact-match compatible string of that form.
    pub written: Option<(String, u32)>,
    pub abi: Option<Path>,
    /// The versions read, in the order given.
    pub reads: Vec<Read>,
    pub state: Option<Path>,
    /// FLBs and subsystems, each once (the first mention).
    pub flbs: Vec<Path>,
    pub subsystems: Vec<Path>,
    /// Later mentions of a global already listed.
    pub duplicate_globals: Vec<Path>,
    pub features: Vec<Feature>,
    /// Where `features(...)` was given, if it was.
    pub features_span: Option<Span>,
    pub active: Option<Vec<Ident>>,
    /// Compatible strings of the handlers whose files this handler's files may depend on.
    pub depends_on: Vec<LitStr>,
    /// The `name` key, when given beside `compatible`.
    pub name_beside_compatible: Option<Span>,
    /// `compatible` or `name` was written (possibly malformed, already reported).
    pub compat_given: bool,
    /// `abi` was written (possibly malformed, already reported).
    pub abi_given: bool,
}

/// One version read (`reads = ["memfd-v1"]`) and the ABI type it is read as.
pub struct Read {
    pub lit: LitStr,
    pub abi: Result<Path, ReadProblem>,
}

/// Why a version read has no ABI type.
pub enum ReadProblem {
    /// Listed before.
    Duplicate,
    /// The handler's compatible string is not `name-vN`, so versions have no order.
    Unordered,
    /// No compatible string or name (reported as missing).
    NoCompatible,
    /// Not `base-vN`.
    NotAVersion { base: String, written: Option<u32> },
    /// A version of another handler.
    OtherBase { base: String, written: Option<u32> },
    /// Not older than the version written.
    NotOlder { base: String, written: u32 },
    /// No ABI type (reported as missing).
    NoAbi,
    /// The ABI type's path has no version module to swap.
    NoVersionModule,
}

impl Model {
    pub fn new(ident: &Ident, args: HandlerArgs) -> Model {
        let compat_given = args.given("compatible") || args.given("name");
        let abi_given = args.given("abi");
        let (compat, versionless, name_beside_compatible) = match (args.compatible, args.name) {
            (Some(c), Some((_, span))) => (Some(c), false, Some(span)),
            (None, Some((name, _))) => (Some(name), true, None),
            (c, None) => (c, false, None),
        };
        let written = compat
            .as_ref()
            .filter(|_| !versionless)
            .and_then(|c| split_version(&c.value()).map(|(b, n)| (b.to_string(), n)));
        let (features_span, features) = match args.features {
            Some((span, f)) => (Some(span), f),
            None => (None, Vec::new()),
        };
        let mut m = Model {
            ident: ident.clone(),
            compat,
            versionless,
            written,
            abi: args.abi,
            reads: Vec::new(),
            state: args.state,
            flbs: Vec::new(),
            subsystems: Vec::new(),
            duplicate_globals: Vec::new(),
            features,
            features_span,
            active: args.active,
            depends_on: args.depends_on,
            name_beside_compatible,
            compat_given,
            abi_given,
        };
        let mut seen: Vec<String> = Vec::new();
        for lit in args.reads {
            let v = lit.value();
            let abi = if seen.contains(&v) {
                Err(ReadProblem::Duplicate)
            } else {
                seen.push(v);
                m.read_abi(&lit)
            };
            m.reads.push(Read { lit, abi });
        }
        let mut seen: Vec<String> = Vec::new();
        for (list, into) in [
            (args.flbs, &mut m.flbs),
            (args.subsystems, &mut m.subsystems),
        ] {
            for p in list {
                let k = quote!(#p).to_string();
                if seen.contains(&k) {
                    m.duplicate_globals.push(p);
                } else {
                    seen.push(k);
                    into.push(p);
                }
            }
        }
        m
    }

    /// The ABI type version `lit` is read as. A feature-negotiated handler (`name = "memfd"`)
    /// came after the exact-match versions of the same name (`memfd-v1`, `memfd-v2`): it may
    /// read any of them, each from the `vN` module beside the one of its own ABI
    /// (`...::next::T` → `...::v2::T`).
    fn read_abi(&self, lit: &LitStr) -> Result<Path, ReadProblem> {
        let (base, written) = match (&self.written, &self.compat) {
            (Some((base, n)), _) => (base.clone(), Some(*n)),
            (None, Some(name)) if self.versionless => (name.value(), None),
            (None, Some(_)) => return Err(ReadProblem::Unordered),
            (None, None) => return Err(ReadProblem::NoCompatible),
        };
        let v = lit.value();
        let Some((rbase, rn)) = split_version(&v) else {
            return Err(ReadProblem::NotAVersion { base, written });
        };
        if rbase != base {
            return Err(ReadProblem::OtherBase { base, written });
        }
        if let Some(n) = written {
            if rn >= n {
                return Err(ReadProblem::NotOlder { base, written: n });
            }
        }
        let Some(abi) = &self.abi else {
            return Err(ReadProblem::NoAbi);
        };
        let idx = match (path_version(abi), self.versionless) {
            (Some((idx, _)), _) => idx,
            // `...::next::T`: the module holding the type stands for the version.
            (None, true) if abi.segments.len() >= 2 => abi.segments.len() - 2,
            _ => return Err(ReadProblem::NoVersionModule),
        };
        Ok(with_version(abi, idx, rn, lit.span()))
    }

    /// The versions read that have an ABI type: each gets an ops table and a reader.
    pub fn read_versions(&self) -> impl Iterator<Item = (&LitStr, &Path)> {
        self.reads
            .iter()
            .filter_map(|r| r.abi.as_ref().ok().map(|p| (&r.lit, p)))
    }

    /// The compatible string written (empty when missing, which is reported).
    pub fn compat_value(&self) -> String {
        self.compat.as_ref().map_or(String::new(), LitStr::value)
    }

    /// Index of the first FLB and subsystem in the `Globals` tuple (the state comes first).
    pub fn globals_base(&self) -> usize {
        usize::from(self.state.is_some())
    }
}
