#![allow(unused_imports)]
use luo_derive::Abi;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Clone, Copy, Abi)]
#[repr(C, packed(2))]
struct Ser {
    a: u64,
}

fn main() {}
