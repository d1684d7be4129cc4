//! The Rust LUO core and the KHO model.
//!
//! * [`mem`]: physical memory: a metadata arena (heap or memfd+mmap backing) and external
//!   regions (host memfds with synthetic pfns).
//! * [`kho`]: Kexec HandOver over that memory, implementing [`luo_abi::kho::KhoService`].
//! * [`blocks`]: KHO block chains.
//! * [`file`]: the fd table and the files behind fds (memfds, sessions, synthetic objects).
//! * [`luo`]: the LUO core: registry, sessions, files, FLBs, `luo-v5` serialization.
//! * [`kernel`]: a booted kernel and its kexec; [`uapi`]: the `/dev/liveupdate` ioctls.
//! * [`memfd`]: a minimal `memfd-v2` handler written against the generated ops table;
//!   [`testing`]: a test handler and FLB with failure injection.

pub mod blocks;
pub mod capi;
pub mod error;
pub mod exec;
pub mod file;
pub mod global;
pub mod image;
pub mod inspect;
pub mod kernel;
pub mod kho;
pub mod luo;
pub mod mem;
pub mod memfd;
pub mod simulate;
pub mod testing;
pub mod uapi;
pub mod util;

pub use error::ImageError;
pub use kernel::{BootOptions, Handover, Kernel, KexecError, Stats};
pub use mem::BackingKind;

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
        })
    }

    /// The `struct liveupdate_file_handler *` the core keys on (never written through).
    pub fn as_ptr(&'static self) -> *mut liveupdate_file_handler {
        (&self.0 as *const liveupdate_file_handler).cast_mut()
    }
}

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
