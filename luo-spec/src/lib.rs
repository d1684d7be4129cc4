// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The luo spec language and generator.
//!
//! Data flow: `spec/*.toml` → [`ast`] (serde, spans) → [`model`] (resolved
//! names, parsed [`expr`]essions and [`ty`]pes) → [`valid`] (every check,
//! collected into [`diag`]nostics) → [`layout`] (offsets per target) →
//! [`ir`] (what is rendered, every struct laid out once) → [`render`] (the C,
//! Rust and schema backends) → [`generate`] (the files of `generated/`). It
//! depends on nothing generated, so a spec edit that breaks `luo-generated`
//! never breaks the generator. The tools built on it (the schema diff, the
//! compatibility matrix and the spec-side `luo` commands) are the `luo-schema`
//! crate.

pub mod abi_table;
pub mod ast;
pub mod diag;
pub mod elf;
pub mod expr;
pub mod generate;
pub mod ir;
pub mod layout;
pub mod model;
pub mod render;
pub mod root;
pub mod ty;
pub mod valid;
