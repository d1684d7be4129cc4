// SPDX-License-Identifier: GPL-2.0-only OR MIT
// The C struct is 24 bytes; this one is 16.
#![allow(unused_imports)]
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[abi(size = 24)]
struct Ser {
    a: u64,
    b: u64,
}

fn main() {}
