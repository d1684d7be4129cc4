//! ABI primitives and runtime contracts of the `luo` framework.
//!
//! `luo` models the Linux Live Update Orchestrator (LUO): a running kernel serializes the
//! state of chosen files into memory that Kexec HandOver (KHO) preserves, and the next kernel
//! rebuilds the files from it. This crate holds the small, stable vocabulary that every other
//! part of that pipeline builds on:
//!
//! ```text
//! spec/*.toml ──luo-gen──► luo-generated (Rust ABI types; uses luo-abi's primitives)
//!                                │
//!                 handlers + #[liveupdate_handler] (luo-derive) ──► luo-core
//!                                ▲                                     │
//!                                └──────────── luo-abi ◄───────────────┘
//! ```
//!
//! * Generated `#[repr(C, packed)]` ABI structs embed [`phys::Phys`], [`phys::PhysAddr`] and
//!   (uAPI structs) [`phys::AlignedU64`].
//! * Handlers and the code the proc-macros emit talk to the core only through the traits here:
//!   [`file::File`] (the files the core owns), [`kho::KhoService`] (preserved memory) and
//!   [`lock::Lock`] (handler-scoped locking over a pluggable backend).
//! * Every boundary where upstream returns `-errno` uses [`errno::Errno`].
//!
//! The crate is `#![no_std]` + `alloc` and depends only on `zerocopy`, both of which newer kernel
//! trees vendor, so the same code can be built for the kernel and for the userspace model.

#![no_std]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod errno;
pub mod file;
pub mod global;
pub mod kho;
pub mod lock;
pub mod phys;

pub use errno::{Errno, Result};
pub use phys::{AlignedU64, Phys, PhysAddr, PAGE_SIZE};
