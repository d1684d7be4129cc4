//! The Rust LUO core and the KHO model.
//!
//! A [`Kernel`] is one booted kernel of the model: KHO over modelled physical memory, the LUO
//! core running handlers through the generated ops tables, and an fd table standing in for
//! userspace. [`Kernel::kexec`] serializes LUO (`luo-v5`) and hands memory over; the next
//! kernel boots from the [`Handover`], in the same process or, through `execve`, in another.
//!
//! ```
//! use luo_core::{BootOptions, Kernel};
//!
//! let k = Kernel::boot(&BootOptions::default(), None)?;
//! let dev = k.open_dev()?;
//! let session = k.create_session(dev, "vm-1")?;
//! let ram = k.memfd_create("guest-ram")?;
//! k.pwrite(ram, 0, b"guest memory")?;
//! k.preserve_fd(session, ram, 42)?;
//!
//! let k = k.kexec_into(&BootOptions::default())?;
//! assert_eq!(k.liveupdate_num(), 1);
//! let dev = k.open_dev()?;
//! let session = k.retrieve_session(dev, "vm-1")?;
//! let ram = k.retrieve_fd(session, 42)?;
//! let mut buf = [0u8; 12];
//! k.pread(ram, 0, &mut buf)?;
//! assert_eq!(&buf, b"guest memory");
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
//! * [`luo`]: the LUO core: registry, sessions, files, FLBs, `luo-v5` and `next`
//!   serialization, and readers of older formats ([`fdt_luo`]: the 6.19/7.0 FDT);
//!   [`global`]: the seed's handler global state and v4-style subsystems.
//! * [`kernel`]: a booted kernel and its kexec; [`uapi`]: the `/dev/liveupdate` ioctls, byte
//!   for byte, and a typed API; [`exec`]: the handover across `execve`.
//! * the memfd handler (every version) and the upstream test FLBs live in `luo-handlers`;
//!   [`host`] is what they see of the core; [`version`]: the kernel a boot plays (6.19, 7.0,
//!   7.3, next: the formats written and read); [`testing`]: a test handler and FLB with
//!   failure injection.
//! * [`capi`]: the `extern "C"` API of `linux/liveupdate.h`, KHO calls for C handlers and a
//!   model driver for C programs (`tests/c/luo_model.h`).
//! * [`simulate`]: `luo simulate` (two processes); [`image`] and [`inspect`]: `luo inspect`.

pub mod blocks;
pub mod capi;
pub mod depend;
pub mod error;
pub mod exec;
pub mod fdt;
pub mod fdt_luo;
pub mod file;
pub mod global;
pub mod host;
pub mod image;
pub mod inspect;
pub mod kernel;
pub mod kho;
mod lock_order;
pub mod luo;
pub mod mem;
pub mod simulate;
pub mod testing;
pub mod uapi;
pub mod util;
pub mod version;

pub use error::ImageError;
pub use kernel::{BootOptions, Handover, Kernel, KexecError, Stats};
pub use mem::BackingKind;
pub use version::{KernelVersion, LuoFormat};

use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_file_ops, liveupdate_flb, liveupdate_flb_ops,
};

/// An ops table in a `static` (the generated struct holds raw pointers, so is not `Sync`).
#[repr(transparent)]
pub struct StaticOps(pub liveupdate_file_ops);

// SAFETY: the table is immutable; its function pointers may be called from any thread and its
// `owner` pointer is never dereferenced by the core.
unsafe impl Sync for StaticOps {}

/// A file handler descriptor in a `static`.
#[repr(transparent)]
pub struct StaticHandler(pub liveupdate_file_handler);

// SAFETY: immutable after construction; the core only reads it.
unsafe impl Sync for StaticHandler {}

/// Copies `s` into a NUL-padded 48-byte buffer at compile time (truncating to 47 bytes).
pub const fn compat48(s: &str) -> [u8; 48] {
    let b = s.as_bytes();
    let mut out = [0u8; 48];
    let mut i = 0;
    while i < b.len() && i < 47 {
        out[i] = b[i];
        i += 1;
    }
    out
}

impl StaticHandler {
    /// A handler with `ops` and `compatible`.
    pub const fn new(ops: &'static StaticOps, compatible: &str) -> StaticHandler {
        StaticHandler(liveupdate_file_handler {
            ops: &ops.0,
            compatible: compat48(compatible),
            depends_on: std::ptr::null(),
        })
    }

    /// A handler whose files may depend on files of the handlers in `depends_on`.
    pub const fn with_deps(
        ops: &'static StaticOps,
        compatible: &str,
        depends_on: &'static DependsOn,
    ) -> StaticHandler {
        StaticHandler(liveupdate_file_handler {
            ops: &ops.0,
            compatible: compat48(compatible),
            depends_on: depends_on.0.as_ptr(),
        })
    }

    /// The `struct liveupdate_file_handler *` the core keys on (never written through).
    pub fn as_ptr(&'static self) -> *mut liveupdate_file_handler {
        (&self.0 as *const liveupdate_file_handler).cast_mut()
    }
}

/// A `depends_on` array in a `static`: NUL-terminated compatibles, then NULL.
#[repr(transparent)]
pub struct DependsOn(pub &'static [*const u8]);

// SAFETY: the pointers are to `'static`, immutable strings.
unsafe impl Sync for DependsOn {}

/// An FLB ops table in a `static`.
#[repr(transparent)]
pub struct StaticFlbOps(pub liveupdate_flb_ops);

// SAFETY: as `StaticOps`.
unsafe impl Sync for StaticFlbOps {}

/// An FLB descriptor in a `static`.
#[repr(transparent)]
pub struct StaticFlb(pub liveupdate_flb);

// SAFETY: immutable after construction; the core only reads it.
unsafe impl Sync for StaticFlb {}

impl StaticFlb {
    /// An FLB with `ops` and `compatible`.
    pub const fn new(ops: &'static StaticFlbOps, compatible: &str) -> StaticFlb {
        StaticFlb(liveupdate_flb {
            ops: &ops.0,
            compatible: compat48(compatible),
        })
    }

    /// The `struct liveupdate_flb *` the core keys on (never written through).
    pub fn as_ptr(&'static self) -> *mut liveupdate_flb {
        (&self.0 as *const liveupdate_flb).cast_mut()
    }
}
