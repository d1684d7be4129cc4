// SPDX-License-Identifier: GPL-2.0-only OR MIT
// A field type that is not ABI-safe (here a zerocopy struct without #[derive(Abi)]).
#![allow(unused_imports)]
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Raw {
    v: u64,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct Ser {
    inner: Raw,
}

fn main() {}
