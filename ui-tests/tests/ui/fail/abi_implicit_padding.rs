// SPDX-License-Identifier: GPL-2.0-only OR MIT
// 3 bytes of padding after `tag`: uninitialized bytes would cross the kexec.
#![allow(unused_imports)]
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Abi)]
#[repr(C)]
struct Ser {
    tag: u8,
    value: u32,
    big: u64,
}

fn main() {}
