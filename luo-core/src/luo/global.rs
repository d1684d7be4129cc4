// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The seed's file-handler global state and v4-style subsystems.
//!
//! Neither exists in upstream's `luo-v5` format, so what they hand over goes into a KHO
//! subtree of their own, [`EXT_SUBTREE`], and the `luo-v5` bytes stay exact. Its layout is
//! the model's (see [`ExtHeader`] and [`ExtEntry`]).
//!
//! * **Global state** (`liveupdate_fh_global_state_*`): created on the first preserve of a file
//!   of the handler (or the first `get`, if that comes before), restored in the new kernel
//!   before its first use, destroyed after the last file is unpreserved or finished — or on
//!   the reboot path when no preserved file counts in it, so it never crosses unclaimed. `get` locks it until `put`; a `get` from the state's own
//!   callbacks, or while the same thread holds it, is `EDEADLK`.
//! * **Subsystems** (`liveupdate_register_subsystem`): `prepare` and `freeze` on the reboot path
//!   after the files (a failure cancels the ones already done, in reverse, and unfreezes the
//!   files); `boot` at registration in the new kernel when data was handed over; `finish` once
//!   the last incoming session is finished.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE};
use luo_generated::liveupdate::{
    liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_subsystem,
    liveupdate_subsystem_ops,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::blocks::{PhysRead, read_obj};
use crate::error::ImageError;
use crate::lock_order::{Level, Ordered, lock};
use crate::luo::{Luo, Ops, Ptr};
use crate::util::{cstr, to_cbuf};

/// Name of the model's KHO subtree for global state and subsystems.
pub const EXT_SUBTREE: &str = "LUO-model-ext";
/// Magic of [`ExtHeader`] (`"LUOEXT01"`).
pub const EXT_MAGIC: u64 = u64::from_le_bytes(*b"LUOEXT01");
/// [`ExtEntry::kind`] of a handler's global state.
pub const EXT_GLOBAL_STATE: u64 = 1;
/// [`ExtEntry::kind`] of a subsystem.
pub const EXT_SUBSYSTEM: u64 = 2;

/// Header of the [`EXT_SUBTREE`] page.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExtHeader {
    /// [`EXT_MAGIC`].
    pub magic: u64,
    /// Entries that follow.
    pub count: u64,
}

/// One handed-over global state or subsystem.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ExtEntry {
    /// [`EXT_GLOBAL_STATE`] or [`EXT_SUBSYSTEM`].
    pub kind: u64,
    /// Handler compatible or subsystem name, NUL-terminated.
    pub name: [u8; 48],
    /// The handed-over handle.
    pub data: u64,
}

const EXT_MAX: usize = (PAGE_SIZE - size_of::<ExtHeader>()) / size_of::<ExtEntry>();

/// What the previous kernel handed over in [`EXT_SUBTREE`].
#[derive(Clone, Debug, Default)]
pub struct ExtIncoming {
    /// Handler compatible → global state handle.
    pub global_state: BTreeMap<String, u64>,
    /// Subsystem name → data.
    pub subsystems: BTreeMap<String, u64>,
}

/// Reads the [`EXT_SUBTREE`] page at `phys`.
pub fn read_ext<M: PhysRead + ?Sized>(mem: &M, phys: u64) -> Result<ExtIncoming, ImageError> {
    let h: ExtHeader = read_obj(mem, phys, "LUO ext header")?;
    if h.magic != EXT_MAGIC {
        return Err(ImageError::BadMagic {
            phys,
            found: h.magic,
        });
    }
    if h.count > EXT_MAX as u64 {
        return Err(ImageError::Truncated {
            what: "LUO ext entries",
            phys,
        });
    }
    let mut inc = ExtIncoming::default();
    for i in 0..h.count {
        let at = phys
            .checked_add((size_of::<ExtHeader>() + i as usize * size_of::<ExtEntry>()) as u64)
            .ok_or(ImageError::Truncated {
                what: "LUO ext entries",
                phys,
            })?;
        let e: ExtEntry = read_obj(mem, at, "LUO ext entry")?;
        let name = cstr(&e.name)
            .ok_or(ImageError::Truncated {
                what: "LUO ext entry name",
                phys: at,
            })?
            .to_owned();
        match e.kind {
            EXT_GLOBAL_STATE => inc.global_state.insert(name, e.data),
            EXT_SUBSYSTEM => inc.subsystems.insert(name, e.data),
            _ => {
                return Err(ImageError::Truncated {
                    what: "LUO ext entry kind",
                    phys: at,
                });
            }
        };
    }
    Ok(inc)
}

#[derive(Default)]
struct GsData {
    obj: usize,
    data: u64,
    live: bool,
    files: u64,
    incoming: Option<u64>,
}

/// A handler's global state (LUO v4's proposal).
pub(crate) struct GlobalState {
    ops: Ops<liveupdate_fh_global_state_ops>,
    data: Ordered<GsData>,
    /// Outside the lock order: held only for the condvar handshake, nothing is taken under it.
    holder: Mutex<Option<ThreadId>>,
    freed: Condvar,
    in_cb: Ordered<Option<ThreadId>>,
}

impl GlobalState {
    fn me() -> ThreadId {
        std::thread::current().id()
    }

    fn acquire(&self) -> Result<(), Errno> {
        let me = Self::me();
        if *lock(&self.in_cb) == Some(me) {
            return Err(Errno::EDEADLK);
        }
        let mut h = lock(&self.holder);
        loop {
            match *h {
                None => break,
                Some(t) if t == me => return Err(Errno::EDEADLK),
                Some(_) => {
                    h = self
                        .freed
                        .wait(h)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
        *h = Some(me);
        Ok(())
    }

    fn release(&self) {
        let mut h = lock(&self.holder);
        if *h == Some(Self::me()) {
            *h = None;
            self.freed.notify_one();
        }
    }

    pub(crate) fn add_files(&self, n: u64) {
        lock(&self.data).files += n;
    }

    fn callback<R>(&self, fh: *mut liveupdate_file_handler, f: impl FnOnce() -> R) -> R {
        *lock(&self.in_cb) = Some(Self::me());
        IN_CALLBACK.with_borrow_mut(|v| v.push(fh as usize));
        let r = f();
        IN_CALLBACK.with_borrow_mut(|v| v.pop());
        *lock(&self.in_cb) = None;
        r
    }

    /// Makes the state live: restore from the incoming handle, or create.
    fn ensure_live(&self, fh: *mut liveupdate_file_handler, d: &mut GsData) -> Result<(), Errno> {
        if d.live {
            return Ok(());
        }
        let mut obj: *mut c_void = std::ptr::null_mut();
        let r = match d.incoming {
            Some(handle) => match self.ops.0.global_state_restore {
                // SAFETY: registered callbacks, valid out-pointer for the call.
                Some(cb) => self.callback(fh, || unsafe { cb(fh, handle, &mut obj) }),
                None => Errno::EINVAL.to_neg(),
            },
            None => match self.ops.0.global_state_create {
                // SAFETY: registered callbacks, valid out-pointers for the call.
                Some(cb) => self.callback(fh, || unsafe { cb(fh, &mut obj, &mut d.data) }),
                None => Errno::EINVAL.to_neg(),
            },
        };
        if r != 0 {
            return Err(Errno::from_neg(r).unwrap_or(Errno::EINVAL));
        }
        if let Some(handle) = d.incoming.take() {
            d.data = handle;
        }
        d.obj = obj as usize;
        d.live = true;
        Ok(())
    }

    fn destroy(&self, fh: *mut liveupdate_file_handler, d: &mut GsData) {
        if d.live {
            if let Some(cb) = self.ops.0.global_state_destroy {
                let obj = d.obj as *mut c_void;
                // SAFETY: registered callback with the object it created or restored.
                self.callback(fh, || unsafe { cb(fh, obj) });
            }
            *d = GsData {
                incoming: d.incoming,
                ..GsData::default()
            };
        }
    }
}

/// A registered subsystem.
pub(crate) struct Subsystem {
    ptr: Ptr<liveupdate_subsystem>,
    ops: Ops<liveupdate_subsystem_ops>,
    name: String,
    data: Ordered<u64>,
    incoming: Ordered<Option<u64>>,
}

/// Global-state and subsystem bookkeeping of a [`Luo`].
pub(crate) struct Ext {
    pub(crate) subsystems: Ordered<Vec<Arc<Subsystem>>>,
    pub(crate) incoming: Ordered<ExtIncoming>,
}

impl Default for Ext {
    fn default() -> Self {
        Ext {
            subsystems: Ordered::new(Level::Subsystems, Vec::new()),
            incoming: Ordered::new(Level::ExtIncoming, ExtIncoming::default()),
        }
    }
}

thread_local! {
    /// Handlers whose global-state callback (create, restore, destroy) runs on this thread.
    /// The callback runs under the state's lock, which comes after the registry in the lock
    /// order, so a get/put from inside it is answered before any lookup takes a lock.
    static IN_CALLBACK: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn in_own_callback(fh: *mut liveupdate_file_handler) -> bool {
    IN_CALLBACK.with_borrow(|v| v.contains(&(fh as usize)))
}

impl Luo {
    fn handler_gs(&self, fh: *mut liveupdate_file_handler) -> Result<Arc<GlobalState>, Errno> {
        let h = self.handler_by_ptr(fh).ok_or(Errno::EINVAL)?;
        let g = lock(&h.global).clone();
        g.ok_or(Errno::EINVAL)
    }

    /// `liveupdate_fh_global_state_register`.
    ///
    /// # Safety
    ///
    /// `ops` must stay valid and unchanged while the handler is registered.
    pub unsafe fn global_state_register(
        &self,
        fh: *mut liveupdate_file_handler,
        ops: *const liveupdate_fh_global_state_ops,
    ) -> Result<(), Errno> {
        if !self.enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        if ops.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: non-NULL and valid (caller contract).
        let o = unsafe { *ops };
        if o.global_state_create.is_none()
            || o.global_state_restore.is_none()
            || o.global_state_destroy.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let h = self.handler_by_ptr(fh).ok_or(Errno::EINVAL)?;
        // Counted before taking `h.global`: reboot takes the session lists, then each
        // handler's global state; taking them the other way round could deadlock (found by
        // the lock-order check, `crate::lock_order`).
        let files = self.incoming_files_of(&h.compatible);
        let mut g = lock(&h.global);
        if g.is_some() {
            return Err(Errno::EEXIST);
        }
        let incoming = lock(&self.ext().incoming)
            .global_state
            .get(&h.compatible)
            .copied();
        *g = Some(Arc::new(GlobalState {
            ops: Ops(o),
            data: Ordered::new(
                Level::GlobalState,
                GsData {
                    files,
                    incoming,
                    ..GsData::default()
                },
            ),
            holder: Mutex::new(None),
            freed: Condvar::new(),
            in_cb: Ordered::new(Level::GlobalCb, None),
        }));
        Ok(())
    }

    /// `liveupdate_fh_global_state_get`: locks the state (until put), creating or restoring it
    /// first if needed.
    pub fn global_state_get(&self, fh: *mut liveupdate_file_handler) -> Result<*mut c_void, Errno> {
        if !self.enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        if in_own_callback(fh) {
            return Err(Errno::EDEADLK);
        }
        let g = self.handler_gs(fh)?;
        g.acquire()?;
        let mut d = lock(&g.data);
        if let Err(e) = g.ensure_live(fh, &mut d) {
            drop(d);
            g.release();
            return Err(e);
        }
        Ok(d.obj as *mut c_void)
    }

    /// `liveupdate_fh_global_state_put`.
    pub fn global_state_put(&self, fh: *mut liveupdate_file_handler) {
        // The state's own callback holds no reference of its own to give back.
        if in_own_callback(fh) {
            return;
        }
        if let Ok(g) = self.handler_gs(fh) {
            g.release();
        }
    }

    /// A file of handler `fh` is being preserved: the first one creates (or restores) the
    /// state.
    pub(crate) fn global_state_file_get(
        &self,
        fh: *mut liveupdate_file_handler,
    ) -> Result<(), Errno> {
        let Ok(g) = self.handler_gs(fh) else {
            return Ok(());
        };
        g.acquire()?;
        let r = {
            let mut d = lock(&g.data);
            let r = g.ensure_live(fh, &mut d);
            if r.is_ok() {
                d.files += 1;
            }
            r
        };
        g.release();
        r
    }

    /// Reboot path, before anything is frozen: a handler state that no preserved file counts
    /// in (made by a `liveupdate_fh_global_state_get` before any preserve) has nothing to
    /// hand over, and would otherwise cross as preserved memory nobody claims; destroy it, as
    /// the unpreserve of its last file would have. A state this task holds is left alone.
    pub(crate) fn release_idle_global_states(&self) {
        for (fh, g) in self.handler_global_state_ptrs() {
            if g.acquire().is_err() {
                continue;
            }
            {
                let mut d = lock(&g.data);
                if d.live && d.files == 0 {
                    g.destroy(fh, &mut d);
                }
            }
            g.release();
        }
    }

    /// A file of handler `fh` was unpreserved or finished: the last one destroys the state.
    pub(crate) fn global_state_file_put(&self, fh: *mut liveupdate_file_handler) {
        let Ok(g) = self.handler_gs(fh) else {
            return;
        };
        if g.acquire().is_err() {
            return;
        }
        {
            let mut d = lock(&g.data);
            d.files = d.files.saturating_sub(1);
            if d.files == 0 {
                g.destroy(fh, &mut d);
            }
        }
        g.release();
    }

    /// `liveupdate_register_subsystem`: calls `boot` when data was handed over for it.
    ///
    /// # Safety
    ///
    /// `h` must point to a subsystem (name NUL-terminated) valid while registered.
    pub unsafe fn register_subsystem(&self, h: *mut liveupdate_subsystem) -> Result<(), Errno> {
        if !self.enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        if h.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: valid (caller contract).
        let s = unsafe { *h };
        if s.ops.is_null() || s.name.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: valid ops table (caller contract).
        let ops = unsafe { *s.ops };
        // SAFETY: a NUL-terminated name (caller contract); at most 48 bytes are read.
        let name = unsafe { read_c_name(s.name) }.ok_or(Errno::EINVAL)?;
        let mut list = lock(&self.ext().subsystems);
        if list
            .iter()
            .any(|x| x.name == name || std::ptr::eq(x.ptr.0, h))
        {
            return Err(Errno::EEXIST);
        }
        let incoming = lock(&self.ext().incoming).subsystems.get(&name).copied();
        let sub = Arc::new(Subsystem {
            ptr: Ptr(h),
            ops: Ops(ops),
            name,
            data: Ordered::new(Level::SubsystemData, 0),
            incoming: Ordered::new(Level::SubsystemData, incoming),
        });
        list.push(Arc::clone(&sub));
        drop(list);
        if let (Some(data), Some(cb)) = (incoming, ops.boot) {
            // SAFETY: registered callback with its own subsystem.
            unsafe { cb(h, data) };
        }
        self.maybe_finish_subsystems();
        Ok(())
    }

    /// `liveupdate_unregister_subsystem`.
    pub fn unregister_subsystem(&self, h: *mut liveupdate_subsystem) -> Result<(), Errno> {
        if !self.enabled() {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut list = lock(&self.ext().subsystems);
        let i = list
            .iter()
            .position(|x| std::ptr::eq(x.ptr.0, h))
            .ok_or(Errno::ENOENT)?;
        list.remove(i);
        Ok(())
    }

    /// Once no incoming session has unfinished files, subsystems with handed-over data get
    /// `finish` (once).
    pub(crate) fn maybe_finish_subsystems(&self) {
        if !self.incoming_all_finished() {
            return;
        }
        let subs = lock(&self.ext().subsystems).clone();
        for s in subs {
            let data = lock(&s.incoming).take();
            if let (Some(d), Some(cb)) = (data, s.ops.0.finish) {
                // SAFETY: registered callback with its own subsystem.
                unsafe { cb(s.ptr.0, d) };
            }
        }
    }

    /// Reboot path after the files: `prepare` and `freeze` every subsystem; on failure cancel
    /// the ones done (including the failing one), in reverse.
    pub(crate) fn freeze_subsystems(&self) -> Result<(), Errno> {
        let subs = lock(&self.ext().subsystems).clone();
        for (i, s) in subs.iter().enumerate() {
            let mut data = *lock(&s.data);
            let mut r = 0;
            if let Some(cb) = s.ops.0.prepare {
                // SAFETY: registered callback; `data` is a valid out-pointer.
                r = unsafe { cb(s.ptr.0, &mut data) };
            }
            if r == 0
                && let Some(cb) = s.ops.0.freeze
            {
                // SAFETY: as above.
                r = unsafe { cb(s.ptr.0, &mut data) };
            }
            *lock(&s.data) = data;
            if r != 0 {
                Self::cancel_subsystems(&subs[..=i]);
                return Err(Errno::from_neg(r).unwrap_or(Errno::EINVAL));
            }
        }
        Ok(())
    }

    /// Cancels the subsystems `subs`, in reverse.
    fn cancel_subsystems(subs: &[Arc<Subsystem>]) {
        for t in subs.iter().rev() {
            if let Some(cb) = t.ops.0.cancel {
                // SAFETY: registered callback with its own subsystem.
                unsafe { cb(t.ptr.0, *lock(&t.data)) };
            }
        }
    }

    /// Rollback of a reboot that failed after [`Luo::freeze_subsystems`] succeeded: cancels
    /// every subsystem, in reverse.
    pub(crate) fn cancel_frozen_subsystems(&self) {
        let subs = lock(&self.ext().subsystems).clone();
        Self::cancel_subsystems(&subs);
    }

    /// Writes [`EXT_SUBTREE`] if there is anything to hand over.
    pub(crate) fn write_ext(&self) -> Result<(), Errno> {
        let mut entries = Vec::new();
        for (compat, g) in self.handler_global_states() {
            let d = lock(&g.data);
            if d.live && d.files > 0 {
                entries.push(ExtEntry {
                    kind: EXT_GLOBAL_STATE,
                    name: to_cbuf(&compat).ok_or(Errno::EINVAL)?,
                    data: d.data,
                });
            }
        }
        for s in lock(&self.ext().subsystems).iter() {
            entries.push(ExtEntry {
                kind: EXT_SUBSYSTEM,
                name: to_cbuf(&s.name).ok_or(Errno::ENAMETOOLONG)?,
                data: *lock(&s.data),
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > EXT_MAX {
            return Err(Errno::ENOSPC);
        }
        let kho = self.kho();
        let page = kho.alloc_preserve(PAGE_SIZE)?;
        let h = ExtHeader {
            magic: EXT_MAGIC,
            count: entries.len() as u64,
        };
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(entries.as_bytes());
        let r = kho
            .write(page, &bytes)
            .and_then(|()| kho.add_subtree(EXT_SUBTREE, page, bytes.len()));
        if r.is_err() {
            // Nothing hands the page over: release it (KHO fault sweep).
            let _ = kho.unpreserve_free(page);
        }
        r
    }

    /// Boot: reads and frees the incoming [`EXT_SUBTREE`].
    pub(crate) fn read_incoming_ext(&self) -> Result<(), ImageError> {
        let kho = self.kho();
        let Ok((phys, _)) = kho.retrieve_subtree(EXT_SUBTREE) else {
            return Ok(());
        };
        let inc = read_ext(&**kho, phys.as_u64())?;
        kho.restore_free(phys)
            .map_err(|_| ImageError::NotPreserved {
                what: "LUO ext page",
                phys: phys.as_u64(),
            })?;
        *lock(&self.ext().incoming) = inc;
        Ok(())
    }
}

/// Reads a NUL-terminated name of at most 47 bytes.
///
/// # Safety
///
/// `p` must point to a NUL-terminated string, or to at least 48 readable bytes.
unsafe fn read_c_name(p: *const u8) -> Option<String> {
    let mut v = Vec::new();
    for i in 0..48 {
        // SAFETY: within the string or the 48 readable bytes (caller contract).
        let b = unsafe { *p.add(i) };
        if b == 0 {
            return (!v.is_empty()).then(|| String::from_utf8(v).ok()).flatten();
        }
        v.push(b);
    }
    None
}
