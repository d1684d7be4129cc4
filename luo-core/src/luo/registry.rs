// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The handler registry (upstream `liveupdate_register_file_handler` and friends in
//! `kernel/liveupdate/luo_file.c`): registered file handlers, called through their generated
//! ops tables, and the handler-scoped global states they own.

use std::sync::Arc;

use luo_abi::Errno;
use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};

use crate::file::CoreFile;
use crate::lock_order::{Level, Ordered, lock};
use crate::util::cstr;

use super::*;

/// A registered file handler.
pub(crate) struct Handler {
    pub(crate) ptr: Ptr<liveupdate_file_handler>,
    pub(crate) ops: Ops<liveupdate_file_ops>,
    pub(crate) compatible: String,
    pub(crate) compat_buf: [u8; 48],
    pub(crate) flbs: Ordered<Vec<Arc<Flb>>>,
    pub(crate) global: Ordered<Option<Arc<crate::luo::global::GlobalState>>>,
    /// Compatibles of the handlers whose files this handler's files may depend on
    /// (`depends_on`, see [`crate::luo::depend`]).
    pub(crate) depends_on: Vec<String>,
}

impl Handler {
    pub(super) fn args(&self, s: &Session) -> liveupdate_file_op_args {
        liveupdate_file_op_args {
            handler: self.ptr.0,
            retrieve_status: 0,
            file: std::ptr::null_mut(),
            serialized_data: 0,
            private_data: std::ptr::null_mut(),
            session: s.as_c(),
        }
    }

    pub(super) fn can_preserve(&self, f: &Arc<CoreFile>) -> bool {
        match self.ops.0.can_preserve {
            // SAFETY: a registered handler's callbacks take its own struct and a live file.
            Some(cb) => unsafe { cb(self.ptr.0, CoreFile::as_c(f)) },
            None => false,
        }
    }

    pub(super) fn get_id(&self, f: &Arc<CoreFile>) -> u64 {
        match self.ops.0.get_id {
            // SAFETY: as `can_preserve`.
            // `c_ulong` is 32 bits on i386: widen portably.
            #[allow(clippy::useless_conversion)]
            Some(cb) => u64::from(unsafe { cb(CoreFile::as_c(f)) }),
            None => Arc::as_ptr(f) as u64,
        }
    }

    pub(super) fn call(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_file_op_args) -> core::ffi::c_int>,
        args: &mut liveupdate_file_op_args,
    ) -> Result<(), Errno> {
        match op {
            // SAFETY: `args` is a valid, exclusive argument block for the duration of the call.
            Some(cb) => ret(unsafe { cb(args) }),
            None => Ok(()),
        }
    }

    pub(super) fn call_void(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_file_op_args)>,
        args: &mut liveupdate_file_op_args,
    ) {
        if let Some(cb) = op {
            // SAFETY: as `call`.
            unsafe { cb(args) }
        }
    }
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) handlers: Vec<Arc<Handler>>,
    pub(super) flbs: Vec<Arc<Flb>>,
}

impl Luo {
    pub(crate) fn handler_by_ptr(&self, fh: *mut liveupdate_file_handler) -> Option<Arc<Handler>> {
        lock(&self.reg)
            .handlers
            .iter()
            .find(|h| std::ptr::eq(h.ptr.0, fh))
            .cloned()
    }

    pub(crate) fn handler_global_states(
        &self,
    ) -> Vec<(String, Arc<crate::luo::global::GlobalState>)> {
        lock(&self.reg)
            .handlers
            .iter()
            .filter_map(|h| Some((h.compatible.clone(), lock(&h.global).clone()?)))
            .collect()
    }

    /// The handlers with a registered global state: their `struct liveupdate_file_handler *`
    /// and the state.
    pub(crate) fn handler_global_state_ptrs(
        &self,
    ) -> Vec<(
        *mut liveupdate_file_handler,
        Arc<crate::luo::global::GlobalState>,
    )> {
        lock(&self.reg)
            .handlers
            .iter()
            .filter_map(|h| Some((h.ptr.0, lock(&h.global).clone()?)))
            .collect()
    }

    /// `liveupdate_register_file_handler`.
    ///
    /// # Safety
    ///
    /// `fh` must point to a handler struct (and ops table) that stays valid and unchanged until
    /// it is unregistered (and while files it preserved exist).
    pub unsafe fn register_file_handler(
        &self,
        fh: *mut liveupdate_file_handler,
    ) -> Result<(), Errno> {
        self.check_enabled()?;
        if fh.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the caller guarantees `fh` is valid.
        let h = unsafe { &*fh };
        if h.ops.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a non-NULL ops pointer of a valid handler points to its ops table.
        let ops = unsafe { *h.ops };
        if ops.can_preserve.is_none()
            || ops.preserve.is_none()
            || ops.unpreserve.is_none()
            || ops.retrieve.is_none()
            || ops.finish.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let compatible = cstr(&h.compatible).ok_or(Errno::EINVAL)?.to_owned();
        if compatible.is_empty() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the caller guarantees the handler's `depends_on` array is valid.
        let depends_on = unsafe { crate::luo::depend::read_depends_on(h.depends_on) }?;
        let mut reg = lock(&self.reg);
        if reg.handlers.iter().any(|x| x.compatible == compatible) {
            return Err(Errno::EEXIST);
        }
        if reg.handlers.iter().any(|x| std::ptr::eq(x.ptr.0, fh)) {
            return Err(Errno::EEXIST);
        }
        reg.handlers.push(Arc::new(Handler {
            ptr: Ptr(fh),
            ops: Ops(ops),
            compatible,
            compat_buf: h.compatible,
            flbs: Ordered::new(Level::HandlerFlbs, Vec::new()),
            global: Ordered::new(Level::HandlerFlbs, None),
            depends_on,
        }));
        Ok(())
    }

    /// `liveupdate_unregister_file_handler`: unlinks its FLBs and the handler.
    pub fn unregister_file_handler(&self, fh: *mut liveupdate_file_handler) {
        let mut reg = lock(&self.reg);
        let Some(i) = reg.handlers.iter().position(|x| std::ptr::eq(x.ptr.0, fh)) else {
            return;
        };
        let h = reg.handlers.remove(i);
        let flbs = std::mem::take(&mut *lock(&h.flbs));
        for flb in flbs {
            Self::drop_flb_user(&mut reg, &flb);
        }
    }

    pub(super) fn drop_flb_user(reg: &mut Registry, flb: &Arc<Flb>) {
        let mut users = lock(&flb.users);
        *users = users.saturating_sub(1);
        if *users == 0 {
            reg.flbs.retain(|f| !Arc::ptr_eq(f, flb));
        }
    }

    /// Compatible strings of the registered handlers, in registration order.
    pub fn handlers(&self) -> Vec<String> {
        lock(&self.reg)
            .handlers
            .iter()
            .map(|h| h.compatible.clone())
            .collect()
    }

    /// The registered `struct liveupdate_file_handler *` with `compatible`, if any (what a C
    /// caller of `liveupdate_register_flb` holds; Rust handlers never see it).
    pub fn handler_ptr(&self, compatible: &str) -> Option<*mut liveupdate_file_handler> {
        lock(&self.reg)
            .handlers
            .iter()
            .find(|h| h.compatible == compatible)
            .map(|h| h.ptr.0)
    }
}
