// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! What the core offers Rust handlers and global state at run time.
//!
//! A Rust handler, FLB or subsystem is registered together with a [`LuoHost`]: the core that
//! will call it. The trampolines reach the host through the registration (never through a
//! global), so several cores (one per simulated kernel, one per test) can run side by side in
//! one process.
//!
//! The global-state calls mirror the C API of the core (`generated/include/linux/liveupdate.h`);
//! they take the raw C objects as opaque pointers, since this crate cannot name the generated
//! structs. The core implements them with the same code that serves C callers, which is what
//! makes Rust and C global state one runtime.

use alloc::boxed::Box;
use core::any::Any;
use core::ffi::c_void;

use crate::errno::{Errno, Result};
use crate::file::{File, FileKind, FileRef};
use crate::kho::KhoService;

/// An opaque `struct liveupdate_flb *`.
pub type RawFlb = *mut c_void;

/// An opaque `struct liveupdate_file_handler *`.
pub type RawFileHandler = *mut c_void;

/// An opaque `struct liveupdate_session *`: the session a file callback runs for
/// (`liveupdate_file_op_args.session`), valid for the duration of the callback.
pub type RawSession = *mut c_void;

/// The core, as Rust handlers and global state see it.
pub trait LuoHost: Send + Sync {
    /// The KHO service handlers preserve memory through.
    fn kho(&self) -> &dyn KhoService;

    /// A non-zero identity of the running task (`current` in the kernel); used to turn a
    /// re-entrant `get` of global state into `-EDEADLK`. The default is
    /// [`crate::ffi::current_task`].
    fn current_task(&self) -> usize {
        crate::ffi::current_task()
    }

    /// Gives one reference to `file` to the core as a `struct file *` (a `retrieve` result).
    /// `-EINVAL` if `file` is not one of this core's files: the core owns every `struct file`.
    fn file_into_raw(&self, file: FileRef) -> Result<*mut c_void>;

    /// `memfd_alloc_file(name, flags)`: a new, unlinked shmem file (memfd retrieve); `flags`
    /// is a mask of `MFD_*` values such as [`crate::file::MFD_ALLOW_SEALING`].
    fn memfd_alloc_file(&self, name: &str, flags: u32) -> Result<FileRef> {
        let _ = (name, flags);
        Err(Errno::EOPNOTSUPP)
    }

    /// A new file of a synthetic `kind` around `payload` (`anon_inode_getfile` upstream): what
    /// the retrieve of an iommufd, a VM or a guest_memfd returns. Its handler reaches the
    /// payload again through [`File::payload`].
    fn open_synthetic(
        &self,
        kind: FileKind,
        name: &str,
        payload: Box<dyn Any + Send + Sync>,
    ) -> Result<FileRef> {
        let _ = (kind, name, payload);
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_get_token_outgoing(session, file)`: from a preserve or freeze callback, the
    /// token of `file` in that outgoing session, recorded as a dependency of the calling file.
    /// `-ENOENT` if `file` is not preserved there; `-EINVAL` if its handler is not in the
    /// caller's `depends_on`, or outside such a callback.
    fn get_token_outgoing(&self, session: RawSession, file: &dyn File) -> Result<u64> {
        let _ = (session, file);
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_get_file_incoming(session, token)`: from a retrieve callback, the file
    /// preserved under `token` in that incoming session, retrieved first if needed, with a
    /// reference the caller may keep. `-ENOENT` for an unknown token, `-EINVAL` for a file of
    /// a handler not in the caller's `depends_on`, `-EDEADLK` for a cycle.
    fn get_file_incoming(&self, session: RawSession, token: u64) -> Result<FileRef> {
        let _ = (session, token);
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_flb_get_incoming`: retrieves the FLB's incoming object on first use (through
    /// its `retrieve` callback) and takes a reference, dropped by
    /// [`LuoHost::flb_put_incoming`]. `-ENODATA` without incoming data or once finished,
    /// `-ENOENT` when the previous kernel did not hand this FLB over.
    fn flb_get_incoming(&self, flb: RawFlb) -> Result<*mut c_void> {
        let _ = flb;
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_flb_put_incoming`: drops a reference taken by
    /// [`LuoHost::flb_get_incoming`].
    fn flb_put_incoming(&self, flb: RawFlb) {
        let _ = flb;
    }

    /// `liveupdate_flb_get_outgoing`: the live object `preserve` created; `-ENODATA` while no
    /// dependent file is preserved.
    fn flb_get_outgoing(&self, flb: RawFlb) -> Result<*mut c_void> {
        let _ = flb;
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_fh_global_state_get`: takes the handler-scoped lock and returns the
    /// handler's global state object, restoring it first in the new kernel. The lock is held
    /// until [`LuoHost::fh_global_state_put`].
    fn fh_global_state_get(&self, fh: RawFileHandler) -> Result<*mut c_void> {
        let _ = fh;
        Err(Errno::EOPNOTSUPP)
    }

    /// `liveupdate_fh_global_state_put`: releases the lock taken by
    /// [`LuoHost::fh_global_state_get`].
    fn fh_global_state_put(&self, fh: RawFileHandler) {
        let _ = fh;
    }
}
