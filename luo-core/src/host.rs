//! The core as `luo-handlers` sees it ([`luo_handlers::host::Host`]): the current kernel's
//! KHO, its files and its LUO registry.

use std::sync::Arc;

use luo_abi::Errno;
use std::any::Any;

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::kho::KhoService;
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_flb, liveupdate_session,
    liveupdate_subsystem,
};
use luo_handlers::host::Host;

use crate::file::{CoreFile, FileObj};
use crate::kernel::Kernel;

struct CoreHost;

fn current() -> Result<Kernel, Errno> {
    Kernel::current().ok_or(Errno::EOPNOTSUPP)
}

impl Host for CoreHost {
    fn kho(&self) -> Result<Arc<dyn KhoService + Send + Sync>, Errno> {
        Ok(Arc::clone(current()?.kho()) as Arc<dyn KhoService + Send + Sync>)
    }

    unsafe fn file<'a>(&self, f: *mut CFile) -> Option<&'a dyn File> {
        // SAFETY: the caller keeps the file alive while the reference is used.
        unsafe { CoreFile::from_c(f) }.map(|f| f as &dyn File)
    }

    fn memfd_alloc_file(&self, name: &str, flags: u32) -> Result<FileRef, Errno> {
        current()?.memfd_alloc_file(name, flags)
    }

    fn file_to_c(&self, f: FileRef) -> Result<*mut CFile, Errno> {
        CoreFile::from_ref(f)
            .map(CoreFile::into_c)
            .ok_or(Errno::EINVAL)
    }

    unsafe fn register_file_handler(&self, fh: *mut liveupdate_file_handler) -> Result<(), Errno> {
        let k = current()?;
        // SAFETY: the caller guarantees a `'static`, immutable handler.
        unsafe { k.luo().register_file_handler(fh) }
    }

    unsafe fn register_flb(
        &self,
        fh: *mut liveupdate_file_handler,
        flb: *mut liveupdate_flb,
    ) -> Result<(), Errno> {
        let k = current()?;
        // SAFETY: the caller guarantees `'static`, immutable descriptors.
        unsafe { k.luo().register_flb(fh, flb) }
    }

    fn flb_get_incoming(&self, flb: *mut liveupdate_flb) -> Result<*mut core::ffi::c_void, Errno> {
        current()?.luo().flb_get_incoming(flb)
    }

    fn flb_put_incoming(&self, flb: *mut liveupdate_flb) {
        if let Ok(k) = current() {
            k.luo().flb_put_incoming(flb);
        }
    }

    unsafe fn register_subsystem(&self, h: *mut liveupdate_subsystem) -> Result<(), Errno> {
        let k = current()?;
        // SAFETY: the caller guarantees a `'static` subsystem with a NUL-terminated name.
        unsafe { k.luo().register_subsystem(h) }
    }

    fn get_token_outgoing(
        &self,
        session: *mut liveupdate_session,
        file: &dyn File,
    ) -> Result<u64, Errno> {
        let f = (file as &dyn Any)
            .downcast_ref::<CoreFile>()
            .ok_or(Errno::EINVAL)?;
        current()?
            .luo()
            .get_token_outgoing(session, (f as *const CoreFile).cast())
    }

    fn get_file_incoming(
        &self,
        session: *mut liveupdate_session,
        token: u64,
    ) -> Result<FileRef, Errno> {
        Ok(current()?.luo().get_file_incoming(session, token)? as FileRef)
    }

    fn payload<'a>(&self, f: &'a dyn File) -> Option<&'a (dyn Any + Send + Sync)> {
        match (f as &dyn Any).downcast_ref::<CoreFile>()?.obj() {
            FileObj::Synthetic(_, p) => Some(&**p),
            _ => None,
        }
    }

    unsafe fn synthetic<'a>(&self, f: *mut CFile) -> Option<&'a (dyn Any + Send + Sync)> {
        // SAFETY: the caller keeps the file alive while the reference is used.
        match unsafe { CoreFile::from_c(f) }?.obj() {
            FileObj::Synthetic(_, p) => Some(&**p),
            _ => None,
        }
    }

    fn open_synthetic(
        &self,
        kind: FileKind,
        name: &str,
        payload: Box<dyn Any + Send + Sync>,
    ) -> Result<FileRef, Errno> {
        current()?;
        Ok(CoreFile::new(name, FileObj::Synthetic(kind, payload)))
    }
}

static HOST: CoreHost = CoreHost;

/// Installs the core as the handlers' host (idempotent).
pub fn install() {
    luo_handlers::host::set_host(&HOST);
}
