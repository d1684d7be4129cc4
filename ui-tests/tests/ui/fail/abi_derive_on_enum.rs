#![allow(unused_imports)]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Abi)]
#[repr(u32)]
enum Kind {
    A = 1,
    B = 2,
}

fn main() {}
