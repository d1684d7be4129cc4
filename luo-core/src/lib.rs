// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The Rust LUO core and the KHO model.
//!
//! A [`Kernel`] is one booted kernel of the model: KHO over modelled physical memory, the LUO
//! core running handlers through the generated ops tables, and an fd table standing in for
//! userspace. [`Kernel::kexec`] serializes LUO (`luo-v5`) and hands memory over; the next
//! kernel boots from the [`Handover`], in the same process or, through `execve`, in another.
//!
//! ```
//! use luo_core::{BootOptions, Kernel};
//! use luo_testing as testing;
//!
//! // The core knows no handler: the machine boots it with initcalls that register them
//! // (`luo-sim`'s machine registers the memfd handler); here, the test handler of
//! // `luo-testing`.
//! let opts = BootOptions {
//!     initcalls: vec![|k: &Kernel| testing::register(k, false)],
//!     ..BootOptions::default()
//! };
//! let k = Kernel::boot(&opts, None)?;
//! let dev = k.open_dev()?;
//! let session = k.create_session(dev, "vm-1")?;
//! let file = k.test_file(0x5eed)?;
//! k.preserve_fd(session, file, 42)?;
//!
//! let k = k.kexec_into(&opts)?;
//! assert_eq!(k.liveupdate_num(), 1);
//! let dev = k.open_dev()?;
//! let session = k.retrieve_session(dev, "vm-1")?;
//! let file = k.retrieve_fd(session, 42)?;
//! assert_eq!(k.file(file)?.test_value(), Some(0x5eed));
//! k.finish_session(session)?;
//! assert_eq!(k.stats().kho.incoming_pages, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules:
//! * [`mem`]: physical memory: a metadata arena (heap or memfd+mmap backing) and external
//!   regions (host memfds with synthetic pfns).
//! * [`kho`]: Kexec HandOver over that memory, implementing [`luo_abi::kho::KhoService`].
//! * [`blocks`]: KHO block chains.
//! * [`file`](mod@file): the fd table and the files behind fds (memfds, sessions, synthetic objects).
//! * [`luo`]: the LUO core, split as upstream's `kernel/liveupdate/`: registry, sessions,
//!   files, FLBs, `luo-v5` and `next` serialization, and readers of older formats
//!   ([`fdt_luo`]: the 6.19/7.0 FDT); [`depend`]: file-to-file dependencies; [`global`]:
//!   handler-scoped global state and v4-style subsystems.
//! * [`kernel`]: a booted kernel and its kexec; [`rust_host`]: what Rust handlers see of the
//!   core (each kernel's `LuoHost`) and the registrations a kernel owns
//!   ([`luo_abi::registry::Registry`]); [`uapi`]: the `/dev/liveupdate` ioctls, byte for byte,
//!   and a typed API; [`exec`]: the handover across `execve`.
//! * [`version`]: the kernel a boot plays (6.19, 7.0, 7.2, 7.3, next: the formats
//!   written and read); [`static_desc`]: handler descriptors in `static`s, for code that drives the C
//!   paths directly.
//! * [`capi`]: the `extern "C"` API of `linux/liveupdate.h`, KHO calls for C handlers and a
//!   model driver for C programs (`tests/c/luo_model.h`).
//! * [`image`]: a handover saved to a file (`luo inspect` and `luo boot` read it; the viewer
//!   lives in the machine layer, `luo-sim`).
//!
//! The core registers no handler: a kernel gets its handlers from the initcalls it boots with
//! ([`BootOptions::initcalls`]); the machine layer (`luo-sim`: simulated machines, `luo
//! simulate`, the daemon) chooses them.

pub mod blocks;
pub mod capi;
pub mod error;
pub mod exec;
pub mod fdt;
pub mod file;
pub mod image;
pub mod kernel;
pub use kernel::rust_host;
pub mod kho;
mod lock_order;
pub mod luo;
pub use luo::{depend, fdt_luo, global};
pub mod mem;
pub mod static_desc;
pub mod uapi;
pub mod util;
pub mod version;

/// The README's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use error::ImageError;
pub use kernel::{BootOptions, Handover, Initcall, Kernel, KexecError, Stats};
pub use mem::BackingKind;
pub use version::{KernelVersion, LuoFormat};

pub use static_desc::{
    DependsOn, FileOps as StaticOps, FlbOps as StaticFlbOps, StaticFlb, StaticHandler, compat48,
};
