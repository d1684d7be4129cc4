//! What a handler needs from the core that runs it: KHO, the files behind `struct file *`,
//! and new memfds. The core installs its [`Host`] once with [`set_host`].

use std::any::Any;
use std::sync::{Arc, OnceLock};

use luo_abi::Errno;
use luo_abi::file::FileKind;
use luo_abi::file::{File, FileRef};
use luo_abi::kho::KhoService;
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_ops, liveupdate_flb,
    liveupdate_flb_ops, liveupdate_session, liveupdate_subsystem,
};

/// The core as the handlers see it. Calls reach the *current* kernel (the one whose callback
/// is running, upstream's global state).
pub trait Host: Send + Sync {
    /// The current kernel's KHO (`EOPNOTSUPP` without a current kernel).
    fn kho(&self) -> Result<Arc<dyn KhoService + Send + Sync>, Errno>;

    /// The file behind a `struct file *` LUO passed to a callback.
    ///
    /// # Safety
    ///
    /// `f` is NULL or a file the caller (a handler callback) holds a reference to for as long
    /// as the returned reference is used.
    unsafe fn file<'a>(&self, f: *mut CFile) -> Option<&'a dyn File>;

    /// `memfd_alloc_file(name, flags)` in the current kernel.
    fn memfd_alloc_file(&self, name: &str, flags: u32) -> Result<FileRef, Errno>;

    /// Gives one reference to `f` away as a `struct file *` (a retrieve's output).
    fn file_to_c(&self, f: FileRef) -> Result<*mut CFile, Errno>;

    /// `liveupdate_register_file_handler` in the current kernel.
    ///
    /// # Safety
    ///
    /// `fh` points to a `'static`, immutable handler.
    unsafe fn register_file_handler(&self, fh: *mut liveupdate_file_handler) -> Result<(), Errno>;

    /// `liveupdate_register_flb(fh, flb)` in the current kernel.
    ///
    /// # Safety
    ///
    /// Both point to `'static`, immutable descriptors; `fh` is registered.
    unsafe fn register_flb(
        &self,
        fh: *mut liveupdate_file_handler,
        flb: *mut liveupdate_flb,
    ) -> Result<(), Errno>;

    /// `liveupdate_flb_get_incoming(flb)` in the current kernel.
    fn flb_get_incoming(&self, flb: *mut liveupdate_flb) -> Result<*mut core::ffi::c_void, Errno>;

    /// `liveupdate_flb_put_incoming(flb)` in the current kernel.
    fn flb_put_incoming(&self, flb: *mut liveupdate_flb);

    /// `liveupdate_register_subsystem(h)` in the current kernel (the model's v4-style
    /// subsystems; `boot` runs now if the previous kernel handed data over for it).
    ///
    /// # Safety
    ///
    /// `h` points to a `'static`, immutable subsystem with a NUL-terminated name.
    unsafe fn register_subsystem(&self, h: *mut liveupdate_subsystem) -> Result<(), Errno> {
        let _ = h;
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_get_token_outgoing(session, file)`: from a preserve or freeze callback
    /// (`session` is its `args.session`), the token of `file` in that outgoing session,
    /// recorded by the core as a dependency of the calling file. `ENOENT` if `file` is not
    /// preserved there, `EINVAL` if its handler is not in the caller's `depends_on` or outside
    /// such a callback.
    fn get_token_outgoing(
        &self,
        session: *mut liveupdate_session,
        file: &dyn File,
    ) -> Result<u64, Errno> {
        let _ = (session, file);
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_get_file_incoming(session, token)`: from a retrieve callback, the file
    /// preserved under `token` in that incoming session, retrieved first if needed, with a
    /// reference the caller may keep. `ENOENT` for an unknown token, `EINVAL` for a file of a
    /// handler not in the caller's `depends_on`, `EDEADLK` for a cycle.
    fn get_file_incoming(
        &self,
        session: *mut liveupdate_session,
        token: u64,
    ) -> Result<FileRef, Errno> {
        let _ = (session, token);
        Err(Errno::EOPNOTSUPP)
    }

    /// The payload of a synthetic file (iommufd, vfio-pci, KVM, guest_memfd, HugeTLB memfd).
    ///
    /// # Safety
    ///
    /// As [`Host::file`].
    unsafe fn synthetic<'a>(&self, f: *mut CFile) -> Option<&'a (dyn Any + Send + Sync)> {
        let _ = f;
        None
    }

    /// The payload of a synthetic file given as a [`File`] (one a handler keeps, such as a
    /// guest_memfd's VM).
    fn payload<'a>(&self, f: &'a dyn File) -> Option<&'a (dyn Any + Send + Sync)> {
        let _ = f;
        None
    }

    /// A new synthetic file of `kind` in the current kernel (a retrieve's output).
    fn open_synthetic(
        &self,
        kind: FileKind,
        name: &str,
        payload: Box<dyn Any + Send + Sync>,
    ) -> Result<FileRef, Errno> {
        let _ = (kind, name, payload);
        Err(Errno::EOPNOTSUPP)
    }
}

static HOST: OnceLock<&'static dyn Host> = OnceLock::new();

/// Installs the core (once per process; later calls are ignored).
pub fn set_host(h: &'static dyn Host) {
    let _ = HOST.set(h);
}

/// The installed core (`EOPNOTSUPP` if none).
pub fn host() -> Result<&'static dyn Host, Errno> {
    HOST.get().copied().ok_or(Errno::EOPNOTSUPP)
}

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

/// `0` or `-errno`, what a C callback returns.
pub fn rc(r: Result<(), Errno>) -> core::ffi::c_int {
    r.map_or_else(Errno::to_neg, |()| 0)
}

/// The kind of the file LUO passed to a callback.
pub(crate) fn kind_of(f: *mut CFile) -> Option<FileKind> {
    // SAFETY: LUO holds the file for the whole callback.
    unsafe { host().ok()?.file(f) }.map(|f| f.kind())
}

/// The synthetic object of type `T` behind the file LUO passed to a callback.
pub(crate) fn synthetic_of<'a, T: Any>(f: *mut CFile) -> Option<&'a T> {
    // SAFETY: LUO holds the file for the whole callback.
    let p: &(dyn Any + Send + Sync) = unsafe { host().ok()?.synthetic(f) }?;
    p.downcast_ref::<T>()
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
