// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Handler and FLB descriptors in `static`s, as a C handler declares them
//! (`static struct liveupdate_file_handler ...`): for Rust code that drives the core's C paths
//! directly, such as the tests of its registration rules. Handlers themselves are written with
//! the macros (`#[liveupdate_handler]`), which build these structs for them.

use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_file_ops, liveupdate_flb, liveupdate_flb_ops,
};

/// A `depends_on` array in a `static`: pointers to NUL-terminated compatibles, then NULL.
#[repr(transparent)]
pub struct DependsOn(pub &'static [*const u8]);

// SAFETY: the pointers are to `'static`, immutable strings.
unsafe impl Sync for DependsOn {}

/// A file handler descriptor in a `static` (the generated struct holds raw pointers).
#[repr(transparent)]
pub struct StaticHandler(pub liveupdate_file_handler);

// SAFETY: immutable after construction; its ops pointer is to a `'static` table.
unsafe impl Sync for StaticHandler {}

impl StaticHandler {
    /// A handler with `ops` and `compatible`.
    pub const fn new(ops: &'static FileOps, compatible: &str) -> StaticHandler {
        StaticHandler(liveupdate_file_handler {
            ops: &ops.0,
            compatible: compat48(compatible),
            depends_on: core::ptr::null(),
        })
    }

    /// A handler whose files may depend on files of the handlers in `depends_on`.
    pub const fn with_deps(
        ops: &'static FileOps,
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

    /// The compatible string.
    pub fn compatible(&self) -> &str {
        let c = &self.0.compatible;
        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
        std::str::from_utf8(&c[..end]).unwrap_or("")
    }
}

/// A file handler's ops table in a `static` (the generated struct holds raw pointers).
#[repr(transparent)]
pub struct FileOps(pub liveupdate_file_ops);

// SAFETY: function pointers and a NULL owner, never written after construction.
unsafe impl Sync for FileOps {}

/// An FLB's ops table in a `static`.
#[repr(transparent)]
pub struct FlbOps(pub liveupdate_flb_ops);

// SAFETY: function pointers and a NULL owner, never written after construction.
unsafe impl Sync for FlbOps {}

/// An FLB descriptor in a `static`.
#[repr(transparent)]
pub struct StaticFlb(pub liveupdate_flb);

// SAFETY: immutable after construction; its ops pointer is to a `'static` table.
unsafe impl Sync for StaticFlb {}

impl StaticFlb {
    /// An FLB with `ops` and `compatible`.
    pub const fn new(ops: &'static FlbOps, compatible: &str) -> StaticFlb {
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
