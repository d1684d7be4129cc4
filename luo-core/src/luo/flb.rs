// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! File-lifecycle-bound global data (upstream `kernel/liveupdate/luo_flb.c`): FLBs linked to
//! handlers, preserved with the first file that needs them and finished after the last.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Arc;

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PhysAddr};
use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_flb, liveupdate_flb_op_args, liveupdate_flb_ops,
};
use luo_generated::luo::v5::{LUO_FLB_MAX, luo_flb_header_ser, luo_flb_ser};
use zerocopy::{FromZeros, IntoBytes};

use crate::lock_order::{Level, Ordered, lock};
use crate::util::cstr;
use crate::version::LuoFormat;

use super::*;

#[derive(Default)]
pub(super) struct FlbOut {
    pub(super) count: u64,
    pub(super) data: u64,
    pub(super) obj: usize,
}

#[derive(Default)]
pub(super) struct FlbIn {
    /// `None` until the incoming entry was looked up.
    pub(super) entry: Option<Option<(u64, u64)>>,
    pub(super) count: u64,
    pub(super) obj: usize,
    pub(super) retrieved: bool,
    pub(super) finished: bool,
}

/// A registered FLB (its private state lives here, not in the C struct).
pub(crate) struct Flb {
    pub(crate) ptr: Ptr<liveupdate_flb>,
    pub(super) ops: Ops<liveupdate_flb_ops>,
    pub(crate) compatible: String,
    pub(super) users: Ordered<usize>,
    pub(super) out: Ordered<FlbOut>,
    pub(super) inc: Ordered<FlbIn>,
}

thread_local! {
    /// The FLBs whose callback runs on this thread, innermost last. Re-entry is a matter of
    /// this thread alone: an outgoing and an incoming callback of one FLB may run at once on
    /// two threads (each direction has its own lock), and a get from inside a callback must
    /// be refused before it takes any lock (the callback holds the FLB's, which comes after
    /// the registry the lookup takes).
    static IN_FLB_CALLBACK: std::cell::RefCell<Vec<usize>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `EDEADLK` when this thread is running one of `flb`'s callbacks.
pub(super) fn flb_reentry(flb: *mut liveupdate_flb) -> Result<(), Errno> {
    if IN_FLB_CALLBACK.with_borrow(|v| v.contains(&(flb as usize))) {
        return Err(Errno::EDEADLK);
    }
    Ok(())
}

impl Flb {
    /// Runs one of the FLB's callbacks, marking this thread as inside it.
    pub(super) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        IN_FLB_CALLBACK.with_borrow_mut(|v| v.push(self.ptr.0 as usize));
        let r = f();
        IN_FLB_CALLBACK.with_borrow_mut(|v| v.pop());
        r
    }

    pub(super) fn args(&self, data: u64, obj: usize) -> liveupdate_flb_op_args {
        liveupdate_flb_op_args {
            flb: self.ptr.0,
            data,
            obj: obj as *mut c_void,
        }
    }

    pub(super) fn call(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_flb_op_args) -> core::ffi::c_int>,
        args: &mut liveupdate_flb_op_args,
    ) -> Result<(), Errno> {
        match op {
            // SAFETY: a registered FLB's callbacks take a valid, exclusive argument block.
            Some(cb) => self.run(|| ret(unsafe { cb(args) })),
            None => Err(Errno::EINVAL),
        }
    }

    pub(super) fn call_void(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_flb_op_args)>,
        args: &mut liveupdate_flb_op_args,
    ) {
        if let Some(cb) = op {
            // SAFETY: as `call`.
            self.run(|| unsafe { cb(args) })
        }
    }
}

impl Luo {
    /// The registered `struct liveupdate_flb *` with `compatible`, if any FLB of that name is
    /// linked to a handler.
    pub fn flb_ptr(&self, compatible: &str) -> Option<*mut liveupdate_flb> {
        lock(&self.reg)
            .flbs
            .iter()
            .find(|f| f.compatible == compatible)
            .map(|f| f.ptr.0)
    }

    /// `liveupdate_register_flb`.
    ///
    /// # Safety
    ///
    /// `flb` must point to an FLB struct (and ops table) that stays valid and unchanged while
    /// linked; `fh` is only compared, never dereferenced.
    pub unsafe fn register_flb(
        &self,
        fh: *mut liveupdate_file_handler,
        flb: *mut liveupdate_flb,
    ) -> Result<(), Errno> {
        self.check_enabled()?;
        if self.version.luo_writes() == LuoFormat::V1 {
            // 6.19 has no FLBs: their data could not be handed over (it stayed an unclaimed
            // incoming page; found by `fault_sweep::kho_allocation_failure_at_every_site`).
            return Err(Errno::EOPNOTSUPP);
        }
        if flb.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the caller guarantees `flb` is valid.
        let f = unsafe { &*flb };
        if f.ops.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a non-NULL ops pointer of a valid FLB points to its ops table.
        let ops = unsafe { *f.ops };
        if ops.preserve.is_none()
            || ops.unpreserve.is_none()
            || ops.retrieve.is_none()
            || ops.finish.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let compatible = cstr(&f.compatible).ok_or(Errno::EINVAL)?.to_owned();
        let mut reg = lock(&self.reg);
        let h = reg
            .handlers
            .iter()
            .find(|x| std::ptr::eq(x.ptr.0, fh))
            .cloned()
            .ok_or(Errno::EINVAL)?;
        let mut links = lock(&h.flbs);
        if links.iter().any(|x| std::ptr::eq(x.ptr.0, flb)) {
            return Err(Errno::EEXIST);
        }
        let entry = match reg.flbs.iter().find(|x| std::ptr::eq(x.ptr.0, flb)) {
            Some(e) => Arc::clone(e),
            None => {
                if reg.flbs.iter().any(|x| x.compatible == compatible) {
                    return Err(Errno::EEXIST);
                }
                if reg.flbs.len() as u64 >= LUO_FLB_MAX {
                    return Err(Errno::ENOSPC);
                }
                let e = Arc::new(Flb {
                    ptr: Ptr(flb),
                    ops: Ops(ops),
                    compatible,
                    users: Ordered::new(Level::Flb, 0),
                    out: Ordered::new(Level::Flb, FlbOut::default()),
                    inc: Ordered::new(Level::Flb, FlbIn::default()),
                });
                reg.flbs.push(Arc::clone(&e));
                e
            }
        };
        *lock(&entry.users) += 1;
        links.push(entry);
        Ok(())
    }

    /// `liveupdate_unregister_flb`.
    pub fn unregister_flb(&self, fh: *mut liveupdate_file_handler, flb: *mut liveupdate_flb) {
        let mut reg = lock(&self.reg);
        let Some(h) = reg
            .handlers
            .iter()
            .find(|x| std::ptr::eq(x.ptr.0, fh))
            .cloned()
        else {
            return;
        };
        let removed = {
            let mut links = lock(&h.flbs);
            links
                .iter()
                .position(|x| std::ptr::eq(x.ptr.0, flb))
                .map(|i| links.remove(i))
        };
        if let Some(e) = removed {
            Self::drop_flb_user(&mut reg, &e);
        }
    }

    pub(super) fn find_flb(&self, flb: *mut liveupdate_flb) -> Result<Arc<Flb>, Errno> {
        lock(&self.reg)
            .flbs
            .iter()
            .find(|x| std::ptr::eq(x.ptr.0, flb))
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// `liveupdate_flb_get_outgoing`: the live object (NULL if not preserved).
    pub fn flb_get_outgoing(&self, flb: *mut liveupdate_flb) -> Result<*mut c_void, Errno> {
        self.check_enabled()?;
        flb_reentry(flb)?;
        let f = self.find_flb(flb)?;
        Ok(lock(&f.out).obj as *mut c_void)
    }

    /// `liveupdate_flb_get_incoming`: retrieves lazily and takes a reference.
    pub fn flb_get_incoming(&self, flb: *mut liveupdate_flb) -> Result<*mut c_void, Errno> {
        self.check_enabled()?;
        flb_reentry(flb)?;
        let f = self.find_flb(flb)?;
        let map = self.flb_in.as_ref().ok_or(Errno::ENODATA)?;
        let mut inc = lock(&f.inc);
        if inc.finished {
            return Err(Errno::ENODATA);
        }
        let (data, _) = Self::flb_entry(map, &f, &mut inc).ok_or(Errno::ENOENT)?;
        if !inc.retrieved {
            let mut a = f.args(data, 0);
            f.call(f.ops.0.retrieve, &mut a)?;
            inc.obj = a.obj as usize;
            inc.retrieved = true;
        }
        inc.count += 1;
        Ok(inc.obj as *mut c_void)
    }

    pub(super) fn flb_entry(
        map: &BTreeMap<String, (u64, u64)>,
        f: &Flb,
        inc: &mut FlbIn,
    ) -> Option<(u64, u64)> {
        if inc.entry.is_none() {
            let e = map.get(&f.compatible).copied();
            inc.entry = Some(e);
            if let Some((_, c)) = e {
                inc.count = c;
            }
        }
        inc.entry.flatten()
    }

    /// `liveupdate_flb_put_incoming`: drops a reference; the last one finishes the FLB.
    pub fn flb_put_incoming(&self, flb: *mut liveupdate_flb) {
        if flb_reentry(flb).is_ok()
            && let Ok(f) = self.find_flb(flb)
        {
            self.flb_put(&f);
        }
    }

    pub(super) fn flb_put(&self, f: &Flb) {
        let Some(map) = self.flb_in.as_ref() else {
            return;
        };
        let mut inc = lock(&f.inc);
        let Some((data, _)) = Self::flb_entry(map, f, &mut inc) else {
            return;
        };
        if inc.finished {
            return;
        }
        inc.count = inc.count.saturating_sub(1);
        if inc.count > 0 {
            return;
        }
        if !inc.retrieved {
            let mut a = f.args(data, 0);
            if f.call(f.ops.0.retrieve, &mut a).is_ok() {
                inc.obj = a.obj as usize;
                inc.retrieved = true;
            }
        }
        let mut a = f.args(data, inc.obj);
        f.call_void(f.ops.0.finish, &mut a);
        inc.finished = true;
    }

    /// FLB preserve for one file of `h`: the first dependent file preserves the object. On
    /// failure the FLBs already done for this file are rolled back in reverse.
    pub(super) fn flb_file_preserve(&self, h: &Handler) -> Result<(), Errno> {
        let flbs = lock(&h.flbs).clone();
        for (i, f) in flbs.iter().enumerate() {
            let mut out = lock(&f.out);
            if out.count == 0 {
                let mut a = f.args(0, 0);
                if let Err(e) = f.call(f.ops.0.preserve, &mut a) {
                    drop(out);
                    for g in flbs[..i].iter().rev() {
                        self.flb_unpreserve_one(g);
                    }
                    return Err(e);
                }
                out.data = a.data;
                out.obj = a.obj as usize;
            }
            out.count += 1;
        }
        Ok(())
    }

    pub(super) fn flb_unpreserve_one(&self, f: &Flb) {
        let mut out = lock(&f.out);
        out.count = out.count.saturating_sub(1);
        if out.count == 0 {
            let mut a = f.args(out.data, out.obj);
            f.call_void(f.ops.0.unpreserve, &mut a);
            *out = FlbOut::default();
        }
    }

    pub(super) fn flb_file_unpreserve(&self, h: &Handler) {
        let flbs = lock(&h.flbs).clone();
        for f in flbs.iter().rev() {
            self.flb_unpreserve_one(f);
        }
    }

    pub(super) fn flb_file_finish(&self, h: &Handler) {
        let flbs = lock(&h.flbs).clone();
        for f in flbs.iter().rev() {
            self.flb_put(f);
        }
    }

    pub(super) fn flb_serialize(&self) -> Result<(), Errno> {
        let flbs = lock(&self.reg).flbs.clone();
        let mut n = 0u64;
        for f in flbs {
            let out = lock(&f.out);
            if out.count == 0 {
                continue;
            }
            let mut e = luo_flb_ser::new_zeroed();
            e.name = crate::util::to_cbuf(&f.compatible).ok_or(Errno::EINVAL)?;
            e.data = out.data;
            e.count = out.count;
            let at = self.flb_area
                + size_of::<luo_flb_header_ser>() as u64
                + n * size_of::<luo_flb_ser>() as u64;
            self.kho.write(PhysAddr::new(at), e.as_bytes())?;
            n += 1;
        }
        self.write_flb_header(n)
    }

    // ---- /dev/liveupdate ----------------------------------------------------------------
}
