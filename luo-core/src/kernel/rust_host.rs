// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The core as Rust handlers see it: each kernel's [`LuoHost`], and the registrations a
//! kernel owns.
//!
//! A handler written with `#[liveupdate_handler]` is a [`Registration`]: the generated
//! `liveupdate_file_handler` structs (the writer, then one reader per older version) whose ops
//! tables call the `luo-abi` runtime, plus the handler value and its global state. The layer
//! that builds a machine (the simulator, a test) makes the registration with the kernel's
//! [`Registry::host`] and gives it to [`Registry::register_handler`]; from then on the kernel owns
//! it and runs it through the same C tables as a C handler (`luo_file.c`'s
//! `liveupdate_register_file_handler`). The host reaches its kernel through a weak reference,
//! so a registration never keeps a dead kernel alive and several kernels (one per simulated
//! boot, one per test) run side by side in one process.

use std::any::Any;
use std::ffi::c_void;
use std::sync::{Arc, Weak};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{Subsystem, SubsystemCell};
use luo_abi::handler::{FileHandler, Registration};
use luo_abi::host::{LuoHost, RawFileHandler, RawFlb, RawSession};
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_generated::liveupdate::{
    liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_flb, liveupdate_session,
    liveupdate_subsystem,
};

use crate::file::CoreFile;
use crate::kernel::{Kernel, KernelInner};
use crate::kho::Kho;
use crate::lock_order::lock;

/// One kernel's [`LuoHost`]: what the trampolines of its Rust handlers call.
pub(crate) struct KernelHost {
    kho: Arc<Kho>,
    kernel: Weak<KernelInner>,
}

impl KernelHost {
    pub(crate) fn new(kho: Arc<Kho>, kernel: Weak<KernelInner>) -> KernelHost {
        KernelHost { kho, kernel }
    }

    /// The kernel, `-EOPNOTSUPP` once it is gone (after its kexec).
    fn kernel(&self) -> Result<Kernel> {
        self.kernel
            .upgrade()
            .map(|inner| Kernel { inner })
            .ok_or(Errno::EOPNOTSUPP)
    }
}

impl LuoHost for KernelHost {
    fn kho(&self) -> &dyn KhoService {
        &*self.kho
    }

    fn file_into_raw(&self, file: FileRef) -> Result<*mut c_void> {
        let f = CoreFile::from_ref(file).ok_or(Errno::EINVAL)?;
        Ok(CoreFile::into_c(f).cast())
    }

    fn memfd_alloc_file(&self, name: &str, flags: u32) -> Result<FileRef> {
        self.kernel()?.memfd_alloc_file(name, flags)
    }

    fn open_synthetic(
        &self,
        kind: FileKind,
        name: &str,
        payload: Box<dyn Any + Send + Sync>,
    ) -> Result<FileRef> {
        self.kernel()?;
        Ok(CoreFile::new(
            name,
            crate::file::FileObj::Synthetic(kind, payload),
        ))
    }

    fn get_token_outgoing(&self, session: RawSession, file: &dyn File) -> Result<u64> {
        let f = (file as &dyn Any)
            .downcast_ref::<CoreFile>()
            .ok_or(Errno::EINVAL)?;
        self.kernel()?.luo().get_token_outgoing(
            session.cast::<liveupdate_session>(),
            (f as *const CoreFile).cast(),
        )
    }

    fn get_file_incoming(&self, session: RawSession, token: u64) -> Result<FileRef> {
        let k = self.kernel()?;
        Ok(k.luo()
            .get_file_incoming(session.cast::<liveupdate_session>(), token)? as FileRef)
    }

    fn flb_get_incoming(&self, flb: RawFlb) -> Result<*mut c_void> {
        let k = self.kernel()?;
        let _g = k.enter();
        k.luo().flb_get_incoming(flb.cast::<liveupdate_flb>())
    }

    fn flb_put_incoming(&self, flb: RawFlb) {
        if let Ok(k) = self.kernel() {
            k.luo().flb_put_incoming(flb.cast::<liveupdate_flb>());
        }
    }

    fn flb_get_outgoing(&self, flb: RawFlb) -> Result<*mut c_void> {
        self.kernel()?
            .luo()
            .flb_get_outgoing(flb.cast::<liveupdate_flb>())
    }

    fn fh_global_state_get(&self, fh: RawFileHandler) -> Result<*mut c_void> {
        let k = self.kernel()?;
        let _g = k.enter();
        k.luo()
            .global_state_get(fh.cast::<liveupdate_file_handler>())
    }

    fn fh_global_state_put(&self, fh: RawFileHandler) {
        if let Ok(k) = self.kernel() {
            k.luo()
                .global_state_put(fh.cast::<liveupdate_file_handler>());
        }
    }
}

impl Registry for Kernel {
    fn host(&self) -> Arc<dyn LuoHost> {
        Arc::clone(&self.inner.host) as Arc<dyn LuoHost>
    }

    fn register_handler_reading<H: FileHandler>(
        &self,
        reg: Registration<H>,
        reads: &[&str],
    ) -> Result<()> {
        if !self.luo().enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        let raws = reg.raw_handlers_reading(reads)?;
        let state_ops = reg.state_ops();
        let flbs = reg.flbs();
        let _g = self.enter();
        let mut done: Vec<*mut liveupdate_file_handler> = Vec::new();
        let r = (|| {
            for raw in &raws {
                let fh = raw.cast::<liveupdate_file_handler>();
                // SAFETY: the registration's handler structs live until the kernel drops it,
                // after its LUO (see `KernelInner`), and are never written.
                unsafe { self.luo().register_file_handler(fh) }?;
                done.push(fh);
                if let Some(ops) = state_ops {
                    // SAFETY: `ops` is the generated `'static` ops table of the handler's state.
                    unsafe {
                        self.luo()
                            .global_state_register(fh, ops.cast::<liveupdate_fh_global_state_ops>())
                    }?;
                }
                for &flb in &flbs {
                    // SAFETY: the FLB cell is kept alive by the registration's globals.
                    unsafe { self.luo().register_flb(fh, flb.cast::<liveupdate_flb>()) }?;
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            for fh in done.into_iter().rev() {
                self.luo().unregister_file_handler(fh);
            }
            return Err(e);
        }
        lock(&self.inner.registrations).push(Box::new(reg));
        Ok(())
    }

    fn writes(&self, component: &str) -> Option<&'static str> {
        (component == "memfd").then(|| self.version().memfd_writes())
    }

    fn reads(&self, component: &str) -> &'static [&'static str] {
        match component {
            "memfd" => self.version().memfd_reads(),
            _ => &[],
        }
    }

    fn test_config(&self) -> bool {
        self.test_flbs()
    }

    fn register_subsystem<S: Subsystem>(&self, cell: &Arc<SubsystemCell<S>>) -> Result<()> {
        let _g = self.enter();
        // SAFETY: the cell's `liveupdate_subsystem` is immutable and lives as long as the
        // cell, which the kernel keeps until it drops its LUO.
        unsafe {
            self.luo()
                .register_subsystem(cell.raw().cast::<liveupdate_subsystem>())
        }?;
        lock(&self.inner.registrations).push(Box::new(Arc::clone(cell)));
        Ok(())
    }
}

impl Kernel {
    /// Keeps `obj` alive as long as the kernel: what a registration made through the C API
    /// (`liveupdate_register_flb` of an FLB cell) points at.
    pub fn keep(&self, obj: Box<dyn Any + Send + Sync>) {
        lock(&self.inner.registrations).push(obj);
    }
}

/// What a kernel keeps alive for its Rust handlers: registrations and subsystem cells.
pub(crate) type Owned = Vec<Box<dyn Any + Send + Sync>>;
