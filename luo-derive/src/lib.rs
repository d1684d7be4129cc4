// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Procedural macros of `luo`: `#[liveupdate_handler]`, the global-state attributes and
//! `#[derive(Abi)]`.
//!
//! Built on syn 2, quote and proc-macro2 only (what a kernel tree vendors). The macros never
//! panic: every problem is a `compile_error!` at the span of the tokens at fault, and all the
//! problems of one item are reported together.
//!
//! Each macro runs in the phases of serde_derive and thiserror: parse the arguments into
//! values, derive the model they describe, validate it (every rule in one module per macro),
//! then expand, or on any error expand a fallback that keeps the item's trait impls so the
//! rest of the crate reports no follow-on errors. Errors go to a context (`diag::Errors`)
//! that must be consumed before it is dropped, so no path can lose them. Each attribute goes on the type (with
//! arguments) and on its trait impl (without), like the kernel's `#[vtable]`:
//!
//! | attribute | on the struct | on the impl |
//! |---|---|---|
//! | `#[liveupdate_handler]` | `compatible`, `abi`, `reads`, `state`, `flbs`, `subsystems` (or `name` + `features` for feature negotiation) | `impl FileHandler` |
//! | `#[liveupdate_flb]` | `compatible`, `abi`, `lock` | `impl FlbState` |
//! | `#[liveupdate_global_state]` | `abi`, `lock` | `impl HandlerState` |
//! | `#[liveupdate_subsystem]` | `name`, `abi`, `lock` | `impl Subsystem` |
//!
//! The expansion names `::luo_abi` (runtime) and `::luo_generated::liveupdate` (the generated
//! ops-table structs, so Rust and C layouts agree by construction); the crate using the macros
//! depends on both. The crate-private `expand_*` functions are the macros' bodies on
//! `proc_macro2` tokens, which the expansion snapshots (unit tests) call.

mod abi;
mod args;
mod common;
mod diag;
mod global;
mod handler;
mod vtable;

#[cfg(test)]
mod expand_tests;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::Item;

use crate::vtable::VtableSpec;

fn attribute(
    args: TokenStream2,
    item: TokenStream2,
    on_struct: fn(TokenStream2, Item) -> TokenStream2,
    on_impl: &VtableSpec,
) -> TokenStream2 {
    match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(i)) => vtable::expand_impl(on_impl, args, i),
        Ok(other) => on_struct(args, other),
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#item #e)
        }
    }
}

/// `#[liveupdate_handler]` on a handler struct (with arguments) or its `impl FileHandler`.
pub(crate) fn expand_handler(args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    attribute(args, item, handler::expand_struct, &handler::IMPL)
}

/// `#[liveupdate_flb]` on an FLB struct or its `impl FlbState`.
pub(crate) fn expand_flb(args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    attribute(args, item, global::expand_flb, &global::FLB_IMPL)
}

/// `#[liveupdate_global_state]` on handler-scoped state or its `impl HandlerState`.
pub(crate) fn expand_global_state(args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    attribute(args, item, global::expand_state, &global::STATE_IMPL)
}

/// `#[liveupdate_subsystem]` on a subsystem struct or its `impl Subsystem`.
pub(crate) fn expand_subsystem(args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    attribute(
        args,
        item,
        global::expand_subsystem,
        &global::SUBSYSTEM_IMPL,
    )
}

/// `#[derive(Abi)]`.
pub(crate) fn expand_abi(input: TokenStream2) -> TokenStream2 {
    match syn::parse2::<syn::DeriveInput>(input) {
        Ok(d) => abi::expand(d),
        Err(e) => e.to_compile_error(),
    }
}

/// A file handler: on the struct, its ABI (`compatible = "memfd-v2"`,
/// `abi = luo_generated::memfd::v2::memfd_luo_ser`, optional `reads = ["memfd-v1"]`,
/// `state = S`, `flbs = [F]`, `subsystems = [S]`; or `name = "memfd"` with
/// `features(SEALS(bit = 0, fields = [seals], required), ...)` and optional `active = [...]`);
/// on `impl FileHandler for ...`, the callbacks.
#[proc_macro_attribute]
pub fn liveupdate_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_handler(args.into(), item.into()).into()
}

/// An FLB: on the struct, `compatible = "..."`, `abi = ...`, optional `lock = Backend`; on
/// `impl FlbState for ...`, the callbacks.
#[proc_macro_attribute]
pub fn liveupdate_flb(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_flb(args.into(), item.into()).into()
}

/// Handler-scoped global state (one object per handler, created on its first preserve): on
/// the struct, `abi = ...`, optional `lock = Backend`; on `impl HandlerState for ...`, the
/// callbacks.
#[proc_macro_attribute]
pub fn liveupdate_global_state(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_global_state(args.into(), item.into()).into()
}

/// A subsystem: on the struct, `name = "..."`, `abi = ...`, optional `lock = Backend`; on
/// `impl Subsystem for ...`, the callbacks.
#[proc_macro_attribute]
pub fn liveupdate_subsystem(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_subsystem(args.into(), item.into()).into()
}

/// Proves a hand-written ABI struct's layout (`#[repr(C)]` / `#[repr(C, packed)]`, no
/// implicit padding, ABI-safe fields, optional `#[abi(size = N)]`) and implements
/// `luo_abi::abi::AbiType`, checking `#[abi(reserved)]` fields as zero on read. Fields of
/// zerocopy types from other crates are allowed with `#[abi(foreign)]`.
#[proc_macro_derive(Abi, attributes(abi))]
pub fn derive_abi(input: TokenStream) -> TokenStream {
    expand_abi(input.into()).into()
}
