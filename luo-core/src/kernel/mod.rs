// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A booted kernel of the model: KHO, LUO, the fd table, and the kexec that ends it.
//!
//! Handlers have no context argument (upstream's API is global), so the kernel a handler
//! callback or a C API call talks to is the thread's *current* kernel: every [`Kernel`] entry
//! point makes itself current for its duration, and [`Kernel::make_current`] does so until
//! replaced (for C programs).

pub mod rust_host;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use luo_abi::Errno;
use luo_generated::liveupdate::liveupdate_file_handler;

use crate::error::ImageError;
use crate::file::{CoreFile, FdTable, FileObj, MemfdFile};
use crate::kho::{Kho, KhoStats, MemHandover};
use crate::lock_order::{Level, Ordered, lock};
use crate::luo::{FreezeLog, Luo};
use crate::mem::BackingKind;

thread_local! {
    static CURRENT: RefCell<Option<Weak<KernelInner>>> = const { RefCell::new(None) };
}

/// How a kernel boots.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// Arena backing: heap (fast, in-process only) or memfd (can cross `execve`).
    pub backing: BackingKind,
    /// Arena size in pages (sparse: only touched pages cost memory).
    pub arena_pages: u64,
    /// `liveupdate=on`: with `false`, registration gives `EOPNOTSUPP` and there is no device.
    pub enabled: bool,
    /// What runs once the core is up, in order, as the kernel's initcalls: where the machine
    /// that boots this kernel registers its handlers (upstream: each handler's late_initcall,
    /// such as `memfd_luo_init`). The core itself knows no handler. An initcall's error fails
    /// the boot.
    pub initcalls: Vec<Initcall>,
    /// The kernel played: the handover format written, and the ones read at boot.
    pub version: crate::version::KernelVersion,
    /// `CONFIG_LIVEUPDATE_TEST`: the upstream in-kernel test's three FLBs
    /// (`liveupdate-test-flb-v0/1/2`) are linked to the handlers registered at boot. A
    /// configuration the initcalls read ([`Kernel::test_flbs`]).
    pub test_flbs: bool,
}

/// An initcall of a booting kernel ([`BootOptions::initcalls`]).
pub type Initcall = fn(&Kernel) -> Result<(), Errno>;

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            backing: BackingKind::Heap,
            arena_pages: 1 << 16,
            enabled: true,
            initcalls: Vec::new(),
            version: crate::version::KernelVersion::default(),
            test_flbs: false,
        }
    }
}

pub(crate) struct KernelInner {
    pub(crate) kho: Arc<Kho>,
    pub(crate) luo: Luo,
    pub(crate) fds: Ordered<FdTable>,
    dead: AtomicBool,
    /// `CONFIG_LIVEUPDATE_TEST` ([`BootOptions::test_flbs`]).
    test_flbs: bool,
    /// What the kernel's Rust handlers call.
    pub(crate) host: Arc<crate::kernel::rust_host::KernelHost>,
    /// The Rust handlers and subsystems registered with this kernel. Declared last, so they
    /// are dropped after the LUO core and the files that point into them.
    pub(crate) registrations: Ordered<crate::kernel::rust_host::Owned>,
}

/// A booted kernel. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct Kernel {
    pub(crate) inner: Arc<KernelInner>,
}

/// What crosses a kexec: memory (the arena and the regions with preserved pages) and where
/// the KHO handover blob is. Everything LUO hands over is inside that memory.
pub struct Handover {
    pub(crate) mem: MemHandover,
}

impl Handover {
    /// The arena backing kind.
    pub fn backing(&self) -> BackingKind {
        self.mem.arena_kind()
    }

    /// Number of external regions (memfds) crossing.
    pub fn regions(&self) -> usize {
        self.mem.regions.len()
    }
}

/// Restores the previous current kernel when dropped.
#[must_use = "the kernel is current only while the guard lives"]
pub struct CurrentGuard {
    prev: Option<Weak<KernelInner>>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Preserved-memory accounting of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// The KHO view.
    pub kho: KhoStats,
    /// Pages LUO always keeps preserved (its root and FLB area).
    pub luo_root_pages: u64,
    /// Outgoing sessions.
    pub outgoing_sessions: usize,
    /// Incoming sessions (deserialized and not yet finished and closed).
    pub incoming_sessions: usize,
    /// Open fds.
    pub fds: usize,
}

impl Stats {
    /// Preserved pages beyond LUO's own root: handler state, blocks, memfd pages.
    pub fn preserved_beyond_root(&self) -> u64 {
        self.kho.preserved_pages.saturating_sub(self.luo_root_pages)
    }
}

impl Kernel {
    /// Boots a kernel, fresh or from a handover. A corrupt handover is an [`ImageError`].
    pub fn boot(opts: &BootOptions, handover: Option<Handover>) -> Result<Kernel, ImageError> {
        let kho = match handover {
            Some(h) => Kho::boot(h.mem)?,
            None => Kho::new(opts.backing, opts.arena_pages).map_err(ImageError::Host)?,
        };
        let kho = Arc::new(kho);
        let luo = Luo::boot(Arc::clone(&kho), opts.enabled, opts.version)?;
        let k = Kernel {
            inner: Arc::new_cyclic(|me| KernelInner {
                host: Arc::new(crate::kernel::rust_host::KernelHost::new(
                    Arc::clone(&kho),
                    me.clone(),
                )),
                kho,
                luo,
                fds: Ordered::new(Level::FdTable, FdTable::default()),
                dead: AtomicBool::new(false),
                test_flbs: opts.test_flbs,
                registrations: Ordered::new(Level::Registrations, Vec::new()),
            }),
        };
        if opts.enabled {
            let _g = k.enter();
            for initcall in &opts.initcalls {
                initcall(&k).map_err(ImageError::Host)?;
            }
        }
        Ok(k)
    }

    /// Makes this the thread's current kernel until the guard drops.
    pub fn enter(&self) -> CurrentGuard {
        let me = Some(Arc::downgrade(&self.inner));
        let prev = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), me));
        CurrentGuard { prev }
    }

    /// Makes this the thread's current kernel until another one is.
    pub fn make_current(&self) {
        let me = Some(Arc::downgrade(&self.inner));
        CURRENT.with(|c| *c.borrow_mut() = me);
    }

    /// The thread's current kernel, if any is alive.
    pub fn current() -> Option<Kernel> {
        CURRENT
            .with(|c| c.borrow().as_ref().and_then(Weak::upgrade))
            .map(|inner| Kernel { inner })
    }

    /// The KHO model.
    pub fn kho(&self) -> &Arc<Kho> {
        &self.inner.kho
    }

    /// The kernel this boot plays.
    pub fn version(&self) -> crate::version::KernelVersion {
        self.inner.luo.version()
    }

    /// `CONFIG_LIVEUPDATE_TEST` of this boot: whether handlers registered at boot link
    /// upstream's test FLBs. 6.19 has no FLBs, so it is always off there.
    pub fn test_flbs(&self) -> bool {
        self.inner.test_flbs && self.version().luo_writes() != crate::version::LuoFormat::V1
    }

    /// The LUO core.
    pub fn luo(&self) -> &Luo {
        &self.inner.luo
    }

    /// `liveupdate_num` of this boot (0 on a fresh machine, +1 per live update).
    pub fn liveupdate_num(&self) -> u64 {
        self.inner.luo.liveupdate_num()
    }

    /// Preserved-memory accounting.
    pub fn stats(&self) -> Stats {
        Stats {
            kho: self.inner.kho.stats(),
            luo_root_pages: self.inner.luo.root_pages(),
            outgoing_sessions: self.inner.luo.outgoing().len(),
            incoming_sessions: self.inner.luo.incoming().len(),
            fds: lock(&self.inner.fds).len(),
        }
    }

    fn alive(&self) -> Result<(), Errno> {
        if self.inner.dead.load(Ordering::Acquire) {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// `liveupdate_register_file_handler` for a handler with a static descriptor.
    pub fn register_file_handler(&self, fh: &'static crate::StaticHandler) -> Result<(), Errno> {
        let _g = self.enter();
        // SAFETY: a `StaticHandler` is a `'static`, immutable handler descriptor.
        unsafe { self.inner.luo.register_file_handler(fh.as_ptr()) }
    }

    /// `liveupdate_unregister_file_handler`.
    pub fn unregister_file_handler(&self, fh: &'static crate::StaticHandler) {
        self.inner.luo.unregister_file_handler(fh.as_ptr());
    }

    /// Registers a handler descriptor given as a raw pointer (C handlers).
    ///
    /// # Safety
    ///
    /// `fh` must stay valid and unchanged while registered and while its files exist.
    pub unsafe fn register_raw_handler(
        &self,
        fh: *mut liveupdate_file_handler,
    ) -> Result<(), Errno> {
        let _g = self.enter();
        // SAFETY: forwarded caller guarantee.
        unsafe { self.inner.luo.register_file_handler(fh) }
    }

    // ---- files ("userspace") -------------------------------------------------------------

    pub(crate) fn install(&self, f: Arc<CoreFile>) -> Result<i32, Errno> {
        lock(&self.inner.fds).install(f)
    }

    /// The file behind `fd` (`EBADF` if none).
    pub fn file(&self, fd: i32) -> Result<Arc<CoreFile>, Errno> {
        lock(&self.inner.fds).get(fd)
    }

    /// `memfd_create(name, MFD_ALLOW_SEALING)`: a real host memfd.
    pub fn memfd_create(&self, name: &str) -> Result<i32, Errno> {
        self.alive()?;
        let m = MemfdFile::create(&self.inner.kho, name)?;
        self.install(CoreFile::new(format!("memfd:{name}"), FileObj::Memfd(m)))
    }

    /// Installs a host memfd made outside the core (luo-sim passes the
    /// programs' own) as a core memfd over the very same pages: preserving
    /// it copies nothing, and after the kexec the retrieved file is it.
    pub fn memfd_adopt(&self, fd: std::os::fd::OwnedFd, name: &str) -> Result<i32, Errno> {
        self.alive()?;
        let m = MemfdFile::adopt(&self.inner.kho, fd)?;
        self.install(CoreFile::new(format!("memfd:{name}"), FileObj::Memfd(m)))
    }

    /// A synthetic file carrying `value`, for test handlers.
    pub fn test_file(&self, value: u64) -> Result<i32, Errno> {
        self.alive()?;
        self.install(CoreFile::new(
            "test",
            FileObj::Test(std::sync::atomic::AtomicU64::new(value)),
        ))
    }

    /// Installs a synthetic file of `kind` (iommufd, vfio-pci, ...) carrying `payload`.
    pub fn open_synthetic(
        &self,
        kind: luo_abi::file::FileKind,
        name: &str,
        payload: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<i32, Errno> {
        self.alive()?;
        self.install(CoreFile::new(name, FileObj::Synthetic(kind, payload)))
    }

    /// Opens `/dev/null`, which no handler accepts.
    pub fn open_null(&self) -> Result<i32, Errno> {
        self.install(CoreFile::new("/dev/null", FileObj::Null))
    }

    fn memfd(&self, fd: i32) -> Result<Arc<CoreFile>, Errno> {
        let f = self.file(fd)?;
        if f.memfd().is_none() {
            return Err(Errno::EINVAL);
        }
        Ok(f)
    }

    /// `pwrite(2)` on a memfd.
    pub fn pwrite(&self, fd: i32, off: u64, data: &[u8]) -> Result<(), Errno> {
        let f = self.memfd(fd)?;
        f.memfd().ok_or(Errno::EINVAL)?.pwrite(off, data)
    }

    /// `pread(2)` on a memfd; returns bytes read.
    pub fn pread(&self, fd: i32, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let f = self.memfd(fd)?;
        f.memfd().ok_or(Errno::EINVAL)?.pread(off, buf)
    }

    /// `ftruncate(2)` on a memfd.
    pub fn ftruncate(&self, fd: i32, size: u64) -> Result<(), Errno> {
        let f = self.memfd(fd)?;
        f.memfd().ok_or(Errno::EINVAL)?.truncate(size)
    }

    /// `dup(2)`.
    pub fn dup(&self, fd: i32) -> Result<i32, Errno> {
        let f = self.file(fd)?;
        self.install(f)
    }

    /// `close(2)`: the last close of a session fd runs its release (unpreserve, or finish);
    /// the last close of `/dev/liveupdate` frees the device for the next opener.
    pub fn close(&self, fd: i32) -> Result<(), Errno> {
        let _g = self.enter();
        let f = {
            let mut t = lock(&self.inner.fds);
            let f = t.remove(fd)?;
            if t.refers_to(&f) {
                return Ok(());
            }
            f
        };
        match f.obj() {
            FileObj::Dev => self.inner.luo.close_dev(),
            FileObj::Session(p) => {
                if let Some(s) = crate::luo::Session::of_private(p) {
                    self.inner.luo.release_session(&s);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens `/dev/liveupdate`: one opener at a time (`EBUSY`); the first open deserializes
    /// the incoming sessions, and a failure there gives `EIO` now and on every later open.
    pub fn open_dev(&self) -> Result<i32, Errno> {
        self.alive()?;
        let _g = self.enter();
        self.inner.luo.open_dev()?;
        match self.install(CoreFile::new("/dev/liveupdate", FileObj::Dev)) {
            Ok(fd) => Ok(fd),
            Err(e) => {
                self.inner.luo.close_dev();
                Err(e)
            }
        }
    }

    // ---- kexec ----------------------------------------------------------------------------

    /// `reboot(LINUX_REBOOT_CMD_KEXEC)`: serializes LUO (freezing every preserved file; a
    /// freeze error is rolled back and returned, and this kernel carries on), then hands over
    /// memory. On success this kernel is dead: every fd is dropped without release.
    pub fn kexec(&self) -> Result<Handover, Errno> {
        self.kexec_logged(&mut FreezeLog::new())
    }

    /// [`Kernel::kexec`], recording each freeze/unfreeze call in `log`.
    pub fn kexec_logged(&self, log: &mut FreezeLog) -> Result<Handover, Errno> {
        self.alive()?;
        let _g = self.enter();
        self.inner.luo.serialize(log)?;
        let mem = self.inner.kho.kexec()?;
        self.inner.dead.store(true, Ordering::Release);
        let files = lock(&self.inner.fds).drain();
        drop(files);
        Ok(Handover { mem })
    }

    /// Kexec in-process: serializes this kernel and boots the next one from the handover.
    pub fn kexec_into(&self, opts: &BootOptions) -> Result<Kernel, KexecError> {
        let h = self.kexec().map_err(KexecError::Reboot)?;
        Kernel::boot(opts, Some(h)).map_err(KexecError::Boot)
    }
}

impl Kernel {
    /// `memfd_alloc_file(name, flags)`: an empty, unlinked memfd whose host memfd is made (or
    /// adopted from an incoming region) when its first folio arrives (memfd retrieve).
    pub fn memfd_alloc_file(
        &self,
        name: &str,
        flags: u32,
    ) -> luo_abi::Result<luo_abi::file::FileRef> {
        let _ = flags;
        let m = MemfdFile::lazy(&self.inner.kho);
        Ok(CoreFile::new(format!("memfd:{name}"), FileObj::Memfd(m)))
    }
}

/// Why an in-process kexec failed.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    /// `reboot()` failed (a freeze error, rolled back); the old kernel carries on.
    #[error("reboot failed: {0}")]
    Reboot(Errno),
    /// The new kernel refused the handover.
    #[error("boot failed: {0}")]
    Boot(ImageError),
}
