// SPDX-License-Identifier: GPL-2.0-only OR MIT
// Hand-written ABI structs: packed, naturally aligned with explicit reserved padding, a
// nested ABI struct, arrays, physical pointers and a generated type allowed as foreign.
use luo_abi::abi::AbiType;
use luo_abi::{Phys, PhysAddr};
use luo_derive::Abi;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C, packed)]
#[abi(size = 17)]
pub struct Packed {
    pub tag: u8,
    pub next: Phys<Packed>,
    pub base: PhysAddr,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[abi(size = 48)]
pub struct Natural {
    pub tag: u8,
    #[abi(reserved)]
    pub _reserved0: [u8; 7],
    pub inner: Inner,
    #[abi(foreign)]
    pub folios: luo_generated::kho::kho_vmalloc,
    pub counts: [u32; 2],
}

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
pub struct Inner {
    pub a: u64,
    pub b: i64,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
pub struct Tuple(pub u32, pub u32);

const _: () = assert!(<Packed as AbiType>::PACKED && !<Natural as AbiType>::PACKED);

fn main() {
    let mut n = Natural::new_zeroed();
    assert!(n.check_reserved().is_ok());
    n._reserved0[3] = 1;
    assert_eq!(n.check_reserved().unwrap_err().field, "_reserved0");
}
