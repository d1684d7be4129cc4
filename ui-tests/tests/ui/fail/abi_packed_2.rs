#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Abi)]
#[repr(C, packed(2))]
struct Ser {
    a: u64,
}

fn main() {}
