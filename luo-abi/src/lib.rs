// SPDX-License-Identifier: GPL-2.0-only OR MIT
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

//!
//! The runtime the proc-macros of `luo-derive` expand against also lives here:
//! [`handler`] (file handlers: trait, typed context, registration, trampoline runtime),
//! [`global`] (the three forms of global state: cells, typed guards, trampoline runtime),
//! [`abi`] (`#[derive(Abi)]` support), [`features`] (feature negotiation), [`host`] (what the
//! core offers at run time) and [`ffi`] (the C-ABI conventions and panic policy). With the
//! `std` feature, `sync` adds a std lock backend and callback panics become `-EIO`.

#![no_std]

extern crate alloc;

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod abi;
pub mod errno;
pub mod features;
pub mod ffi;
pub mod file;
pub mod global;
pub mod handler;
pub mod host;
pub mod kho;
pub mod lock;
pub mod phys;
pub mod record;
pub mod registry;
#[cfg(feature = "std")]
pub mod sync;

/// Re-exports for the code the macros generate; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use alloc::sync::Arc;
    pub use alloc::vec;
    pub use alloc::vec::Vec;
    pub use zerocopy;

    /// Autoref specialization: `(&Validate(&x)).luo_check()` runs `AbiType::check_reserved`
    /// when the type derives `Abi`, and accepts it otherwise (generated types do not, yet).
    pub struct Validate<'a, T>(pub &'a T);

    /// Chosen when `T: AbiType`.
    pub trait ViaAbiType {
        /// The reserved-field check.
        fn luo_check(&self) -> crate::Result;
    }

    impl<T: crate::abi::AbiType> ViaAbiType for Validate<'_, T> {
        fn luo_check(&self) -> crate::Result {
            self.0.check_reserved().map_err(Into::into)
        }
    }

    /// Chosen otherwise.
    pub trait ViaNothing {
        /// No check.
        fn luo_check(&self) -> crate::Result {
            Ok(())
        }
    }

    impl<T> ViaNothing for &Validate<'_, T> {}
}

pub use errno::{Errno, Result};
pub use phys::{AlignedU64, Phys, PhysAddr, PAGE_SIZE};
