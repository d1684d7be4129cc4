// SPDX-License-Identifier: GPL-2.0-only OR MIT
// Rust may reorder fields of a struct without #[repr(C)].
#![allow(unused_imports)]
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Abi)]
struct Ser {
    a: u64,
}

fn main() {}
