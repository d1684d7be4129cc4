// SPDX-License-Identifier: GPL-2.0-only OR MIT
// One mistake, one error: `Inner` fails its checks (a `usize` field), and `Outer`, which
// embeds it, does not also report `Inner` as a field type that is not ABI-safe.
#![allow(unused_imports)]
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Abi)]
#[repr(C)]
struct Inner {
    len: usize,
}

#[derive(Clone, Copy, Abi)]
#[repr(C)]
struct Outer {
    inner: Inner,
}

fn main() {}
