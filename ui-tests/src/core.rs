//! A miniature LUO core for the tests: it knows handlers, FLBs, handler-scoped state and
//! subsystems **only through the generated C structs and ops tables**, calls every callback
//! through its function pointer exactly as C code would, and implements the host calls
//! ([`LuoHost`]) the Rust runtime makes. Upstream's rules it follows: required ops checked at
//! registration (`-EINVAL`), duplicate compatible (`-EEXIST`), FLB preserve on the first
//! dependent file and unpreserve on the last, lazy FLB retrieve on first `get_incoming`,
//! FLB finish when the last dependent file finishes, handler-scoped state created on the first
//! preserve and destroyed after the last unpreserve or finish, restored before first access.
//!
//! It is not the real core (luo-core): no sessions, no uAPI, one flat token space.
//!
//! Like the C API it models, the registration functions take raw pointers, which must come
//! from live registrations or cells that outlive the core.

// Raw pointers in, as in the C API; the contract is in the module docs.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use luo_abi::abi::compat_str;
use luo_abi::file::FileCell;
use luo_abi::file::FileRef;
use luo_abi::host::{LuoHost, RawFileHandler, RawFlb};
use luo_abi::kho::KhoService;
use luo_abi::lock::LockBackend;
use luo_abi::sync::{StdBackend, StdState};
use luo_abi::{Errno, Result};
use luo_generated::liveupdate::{
    file, liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_file_op_args,
    liveupdate_flb, liveupdate_flb_op_args, liveupdate_subsystem,
};

use crate::kho::VecKho;

/// What crosses the simulated kexec besides KHO memory: the entries the core would serialize.
#[derive(Clone, Debug, Default)]
pub struct Handover {
    /// (token, compatible, data) per preserved file.
    pub files: Vec<(u64, String, u64)>,
    /// (compatible, data, number of dependent files) per FLB.
    pub flbs: Vec<(String, u64, usize)>,
    /// (handler compatible, data) per handler-scoped state.
    pub states: Vec<(String, u64)>,
    /// (name, data) per subsystem.
    pub subsystems: Vec<(String, u64)>,
}

struct HState {
    ops: *const liveupdate_fh_global_state_ops,
    lock: Box<StdState>,
    obj: *mut c_void,
    data: u64,
    files: usize,
    incoming: Option<u64>,
}

struct Handler {
    raw: *mut liveupdate_file_handler,
    compat: String,
    flbs: Vec<usize>,
    state: Option<HState>,
}

struct Flb {
    raw: *mut liveupdate_flb,
    compat: String,
    out_count: usize,
    out_data: u64,
    out_obj: *mut c_void,
    in_data: Option<u64>,
    in_files: usize,
    in_obj: *mut c_void,
    retrieved: bool,
    finished: bool,
}

struct OutFile {
    handler: usize,
    file: FileRef,
    cell: *mut c_void,
    data: u64,
    private: *mut c_void,
}

struct InFile {
    compat: String,
    data: u64,
    handler: Option<usize>,
    cell: *mut c_void,
    status: i32,
}

struct Sub {
    raw: *mut liveupdate_subsystem,
    name: String,
    data: u64,
    prepared: bool,
}

#[derive(Default)]
struct St {
    handlers: Vec<Handler>,
    flbs: Vec<Flb>,
    subs: Vec<Sub>,
    out: BTreeMap<u64, OutFile>,
    inc: BTreeMap<u64, InFile>,
    prev: Handover,
}

/// The miniature core.
pub struct MiniCore {
    kho: Arc<VecKho>,
    st: Mutex<St>,
}

// SAFETY: the raw pointers in `St` point to registrations and cells that outlive the core in
// every test, and are only used under `st`'s mutex or through C ops that synchronise
// themselves.
unsafe impl Send for MiniCore {}
// SAFETY: as above.
unsafe impl Sync for MiniCore {}

impl MiniCore {
    /// A first boot over `kho`.
    pub fn new(kho: Arc<VecKho>) -> Arc<MiniCore> {
        MiniCore::boot(kho, Handover::default())
    }

    /// A boot from a handover (after [`VecKho::kexec`]).
    pub fn boot(kho: Arc<VecKho>, prev: Handover) -> Arc<MiniCore> {
        let inc = prev
            .files
            .iter()
            .map(|(t, c, d)| {
                (
                    *t,
                    InFile {
                        compat: c.clone(),
                        data: *d,
                        handler: None,
                        cell: ptr::null_mut(),
                        status: 0,
                    },
                )
            })
            .collect();
        Arc::new(MiniCore {
            kho,
            st: Mutex::new(St {
                inc,
                prev,
                ..St::default()
            }),
        })
    }

    fn st(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The KHO memory.
    pub fn kho_mem(&self) -> &Arc<VecKho> {
        &self.kho
    }

    /// `liveupdate_register_file_handler`.
    pub fn register_handler(&self, raw: *mut liveupdate_file_handler) -> Result {
        // SAFETY: `raw` is a live registration's handler.
        let h = unsafe { &*raw };
        // SAFETY: `ops` points to the handler's `'static` table.
        let ops = unsafe { &*h.ops };
        if ops.can_preserve.is_none()
            || ops.preserve.is_none()
            || ops.unpreserve.is_none()
            || ops.retrieve.is_none()
            || ops.finish.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let compat = compat_str(&h.compatible).ok_or(Errno::EINVAL)?.to_string();
        let mut st = self.st();
        if st.handlers.iter().any(|x| x.compat == compat) {
            return Err(Errno::EEXIST);
        }
        st.handlers.push(Handler {
            raw,
            compat,
            flbs: Vec::new(),
            state: None,
        });
        Ok(())
    }

    fn handler_idx(st: &St, fh: *mut liveupdate_file_handler) -> Result<usize> {
        st.handlers
            .iter()
            .position(|h| h.raw == fh)
            .ok_or(Errno::EINVAL)
    }

    /// `liveupdate_register_flb`.
    pub fn register_flb(&self, fh: *mut liveupdate_file_handler, flb: RawFlb) -> Result {
        let flb = flb.cast::<liveupdate_flb>();
        // SAFETY: a live FLB cell's raw struct and its `'static` table.
        let (ops, compat) = unsafe { (&*(*flb).ops, compat_str(&(*flb).compatible)) };
        if ops.preserve.is_none()
            || ops.unpreserve.is_none()
            || ops.retrieve.is_none()
            || ops.finish.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let compat = compat.ok_or(Errno::EINVAL)?.to_string();
        let mut st = self.st();
        let hi = MiniCore::handler_idx(&st, fh)?;
        let fi = match st.flbs.iter().position(|f| f.raw == flb) {
            Some(i) => i,
            None => {
                if st.flbs.iter().any(|f| f.compat == compat) {
                    return Err(Errno::EEXIST);
                }
                let prev = st.prev.flbs.iter().find(|(c, _, _)| *c == compat).cloned();
                st.flbs.push(Flb {
                    raw: flb,
                    compat,
                    out_count: 0,
                    out_data: 0,
                    out_obj: ptr::null_mut(),
                    in_data: prev.as_ref().map(|p| p.1),
                    in_files: prev.map_or(0, |p| p.2),
                    in_obj: ptr::null_mut(),
                    retrieved: false,
                    finished: false,
                });
                st.flbs.len() - 1
            }
        };
        if st.handlers[hi].flbs.contains(&fi) {
            return Err(Errno::EEXIST);
        }
        st.handlers[hi].flbs.push(fi);
        Ok(())
    }

    /// `liveupdate_fh_global_state_register`.
    pub fn register_state(&self, fh: *mut liveupdate_file_handler, ops: *const c_void) -> Result {
        let ops = ops.cast::<liveupdate_fh_global_state_ops>();
        // SAFETY: the registration's `'static` table.
        let o = unsafe { &*ops };
        if o.global_state_create.is_none()
            || o.global_state_restore.is_none()
            || o.global_state_destroy.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let mut st = self.st();
        let hi = MiniCore::handler_idx(&st, fh)?;
        let compat = st.handlers[hi].compat.clone();
        let incoming = st
            .prev
            .states
            .iter()
            .find(|(c, _)| *c == compat)
            .map(|s| s.1);
        st.handlers[hi].state = Some(HState {
            ops,
            lock: Box::new(StdBackend::new_state()),
            obj: ptr::null_mut(),
            data: 0,
            files: 0,
            incoming,
        });
        Ok(())
    }

    /// Registers a Rust registration: every raw handler, its FLBs, its handler-scoped state.
    pub fn register<H: luo_abi::handler::HandlerAbi<Raw = liveupdate_file_handler>>(
        &self,
        reg: &luo_abi::handler::Registration<H>,
    ) -> Result {
        for raw in reg.raw_handlers() {
            self.register_handler(raw)?;
            for flb in reg.flbs() {
                self.register_flb(raw, flb)?;
            }
        }
        if let Some(ops) = reg.state_ops() {
            for raw in reg.raw_handlers() {
                self.register_state(raw, ops)?;
            }
        }
        Ok(())
    }

    /// `liveupdate_register_subsystem`; in the new kernel, calls `boot` with the handed-over
    /// data at once (subsystems are restored eagerly).
    pub fn register_subsystem(&self, raw: *mut c_void) -> Result {
        let raw = raw.cast::<liveupdate_subsystem>();
        // SAFETY: a live subsystem cell's raw struct; `name` is NUL-terminated.
        let (ops, name) = unsafe {
            let s = &*raw;
            let name = std::ffi::CStr::from_ptr(s.name.cast())
                .to_string_lossy()
                .into_owned();
            (&*s.ops, name)
        };
        let data = {
            let mut st = self.st();
            if st.subs.iter().any(|s| s.name == name) {
                return Err(Errno::EEXIST);
            }
            let data = st
                .prev
                .subsystems
                .iter()
                .find(|(n, _)| *n == name)
                .map(|s| s.1);
            st.subs.push(Sub {
                raw,
                name,
                data: 0,
                prepared: false,
            });
            data
        };
        if let (Some(d), Some(boot)) = (data, ops.boot) {
            // SAFETY: calling the subsystem's op as C would.
            unsafe { boot(raw, d) };
        }
        Ok(())
    }

    /// Runs `prepare` on every subsystem.
    pub fn prepare_subsystems(&self) -> Result {
        let subs: Vec<(usize, *mut liveupdate_subsystem)> = self
            .st()
            .subs
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.raw))
            .collect();
        for (i, raw) in subs {
            // SAFETY: a live subsystem's `'static` table.
            let ops = unsafe { &*(*raw).ops };
            if let Some(prepare) = ops.prepare {
                let mut data = 0u64;
                // SAFETY: calling the op as C would.
                let r = unsafe { prepare(raw, &mut data) };
                luo_abi::errno::to_result(r)?;
                let mut st = self.st();
                st.subs[i].data = data;
                st.subs[i].prepared = true;
            }
        }
        Ok(())
    }

    /// Runs `cancel` on every prepared subsystem.
    pub fn cancel_subsystems(&self) {
        let subs: Vec<(usize, *mut liveupdate_subsystem, u64)> = self
            .st()
            .subs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.prepared)
            .map(|(i, s)| (i, s.raw, s.data))
            .collect();
        for (i, raw, data) in subs {
            // SAFETY: a live subsystem's `'static` table.
            if let Some(cancel) = unsafe { (*(*raw).ops).cancel } {
                // SAFETY: calling the op as C would.
                unsafe { cancel(raw, data) };
            }
            self.st().subs[i].prepared = false;
        }
    }

    /// Runs `finish` on every subsystem restored from the handover.
    pub fn finish_subsystems(&self) {
        let subs: Vec<(*mut liveupdate_subsystem, u64)> = {
            let st = self.st();
            st.subs
                .iter()
                .filter_map(|s| {
                    st.prev
                        .subsystems
                        .iter()
                        .find(|(n, _)| *n == s.name)
                        .map(|p| (s.raw, p.1))
                })
                .collect()
        };
        for (raw, data) in subs {
            // SAFETY: a live subsystem's `'static` table.
            if let Some(finish) = unsafe { (*(*raw).ops).finish } {
                // SAFETY: calling the op as C would.
                unsafe { finish(raw, data) };
            }
        }
    }

    fn args(h: *mut liveupdate_file_handler) -> liveupdate_file_op_args {
        liveupdate_file_op_args {
            handler: h,
            retrieve_status: 0,
            file: ptr::null_mut(),
            serialized_data: 0,
            private_data: ptr::null_mut(),
            session: ptr::null_mut(),
        }
    }

    fn flb_args(flb: *mut liveupdate_flb, data: u64, obj: *mut c_void) -> liveupdate_flb_op_args {
        liveupdate_flb_op_args { flb, data, obj }
    }

    /// PRESERVE_FD: the first handler whose `can_preserve` agrees preserves `file`.
    pub fn preserve(&self, token: u64, file: FileRef) -> Result {
        let handlers: Vec<(usize, *mut liveupdate_file_handler)> = {
            let st = self.st();
            if st.out.contains_key(&token) {
                return Err(Errno::EEXIST);
            }
            st.handlers
                .iter()
                .enumerate()
                .map(|(i, h)| (i, h.raw))
                .collect()
        };
        let cell = FileCell::into_raw(file.clone());
        let mut chosen = None;
        for (i, raw) in handlers {
            // SAFETY: registered handler and its `'static` table.
            let ops = unsafe { &*(*raw).ops };
            if let Some(can) = ops.can_preserve {
                // SAFETY: calling the op as C would, with a live file.
                if unsafe { can(raw, cell.cast::<file>()) } {
                    chosen = Some((i, raw));
                    break;
                }
            }
        }
        let Some((hi, raw)) = chosen else {
            // SAFETY: made above, not shared.
            unsafe { FileCell::drop_raw(cell) };
            return Err(Errno::ENOENT);
        };
        // FLBs first, rolled back on failure.
        let flbs = self.st().handlers[hi].flbs.clone();
        let mut done = Vec::new();
        for fi in flbs {
            if let Err(e) = self.flb_inc(fi) {
                for d in done.into_iter().rev() {
                    self.flb_dec(d);
                }
                // SAFETY: made above, not shared.
                unsafe { FileCell::drop_raw(cell) };
                return Err(e);
            }
            done.push(fi);
        }
        if let Err(e) = self.state_inc(hi) {
            for d in done.into_iter().rev() {
                self.flb_dec(d);
            }
            // SAFETY: made above, not shared.
            unsafe { FileCell::drop_raw(cell) };
            return Err(e);
        }
        let mut a = MiniCore::args(raw);
        a.file = cell.cast();
        // SAFETY: registered handler; `preserve` is required, checked at registration.
        let r = unsafe { ((*(*raw).ops).preserve.ok_or(Errno::EINVAL)?)(&mut a) };
        if let Err(e) = luo_abi::errno::to_result(r) {
            self.state_dec(hi);
            for d in done.into_iter().rev() {
                self.flb_dec(d);
            }
            // SAFETY: made above, not shared.
            unsafe { FileCell::drop_raw(cell) };
            return Err(e);
        }
        self.st().out.insert(
            token,
            OutFile {
                handler: hi,
                file,
                cell,
                data: a.serialized_data,
                private: a.private_data,
            },
        );
        Ok(())
    }

    /// Closing the outgoing session: unpreserve one file.
    pub fn unpreserve(&self, token: u64) -> Result {
        let f = self.st().out.remove(&token).ok_or(Errno::ENOENT)?;
        let (raw, flbs) = {
            let st = self.st();
            (
                st.handlers[f.handler].raw,
                st.handlers[f.handler].flbs.clone(),
            )
        };
        let mut a = MiniCore::args(raw);
        a.file = f.cell.cast();
        a.serialized_data = f.data;
        a.private_data = f.private;
        // SAFETY: registered handler; `unpreserve` is required.
        unsafe { ((*(*raw).ops).unpreserve.ok_or(Errno::EINVAL)?)(&mut a) };
        for fi in flbs.into_iter().rev() {
            self.flb_dec(fi);
        }
        self.state_dec(f.handler);
        // SAFETY: the file's cell, no longer used.
        unsafe { FileCell::drop_raw(f.cell) };
        drop(f.file);
        Ok(())
    }

    fn flb_inc(&self, fi: usize) -> Result {
        let (raw, first) = {
            let st = self.st();
            (st.flbs[fi].raw, st.flbs[fi].out_count == 0)
        };
        if first {
            let mut a = MiniCore::flb_args(raw, 0, ptr::null_mut());
            // SAFETY: registered FLB, all four ops checked at registration.
            let r = unsafe { ((*(*raw).ops).preserve.ok_or(Errno::EINVAL)?)(&mut a) };
            luo_abi::errno::to_result(r)?;
            let mut st = self.st();
            st.flbs[fi].out_data = a.data;
            st.flbs[fi].out_obj = a.obj;
        }
        self.st().flbs[fi].out_count += 1;
        Ok(())
    }

    fn flb_dec(&self, fi: usize) {
        let (raw, last, data, obj) = {
            let mut st = self.st();
            let f = &mut st.flbs[fi];
            f.out_count -= 1;
            (f.raw, f.out_count == 0, f.out_data, f.out_obj)
        };
        if last {
            let mut a = MiniCore::flb_args(raw, data, obj);
            // SAFETY: registered FLB.
            if let Some(op) = unsafe { (*(*raw).ops).unpreserve } {
                // SAFETY: calling the op as C would.
                unsafe { op(&mut a) };
            }
            let mut st = self.st();
            st.flbs[fi].out_obj = ptr::null_mut();
            st.flbs[fi].out_data = 0;
        }
    }

    fn with_state_lock<R>(&self, hi: usize, f: impl FnOnce() -> R) -> Option<R> {
        let lock: *const StdState = {
            let st = self.st();
            &*st.handlers[hi].state.as_ref()?.lock
        };
        // SAFETY: the state lives as long as the core's handler entry.
        let lock = unsafe { &*lock };
        StdBackend::lock(lock);
        let r = f();
        // SAFETY: locked just above.
        unsafe { StdBackend::unlock(lock, &()) };
        Some(r)
    }

    fn state_inc(&self, hi: usize) -> Result {
        let raw = self.st().handlers[hi].raw;
        let r = self.with_state_lock(hi, || {
            let (ops, files) = {
                let st = self.st();
                let s = st.handlers[hi].state.as_ref().expect("checked");
                (s.ops, s.files)
            };
            if files == 0 {
                let mut obj = ptr::null_mut();
                let mut data = 0;
                // SAFETY: the registered `'static` table; the op is required.
                let r = unsafe {
                    ((*ops).global_state_create.ok_or(Errno::EINVAL)?)(raw, &mut obj, &mut data)
                };
                luo_abi::errno::to_result(r)?;
                let mut st = self.st();
                let s = st.handlers[hi].state.as_mut().expect("checked");
                s.obj = obj;
                s.data = data;
            }
            self.st().handlers[hi]
                .state
                .as_mut()
                .expect("checked")
                .files += 1;
            Ok(())
        });
        r.unwrap_or(Ok(()))
    }

    fn state_dec(&self, hi: usize) {
        let raw = self.st().handlers[hi].raw;
        self.with_state_lock(hi, || {
            let (ops, obj, last) = {
                let mut st = self.st();
                let s = st.handlers[hi].state.as_mut().expect("checked");
                s.files = s.files.saturating_sub(1);
                (s.ops, s.obj, s.files == 0)
            };
            if last && !obj.is_null() {
                // SAFETY: the registered `'static` table.
                if let Some(d) = unsafe { (*ops).global_state_destroy } {
                    // SAFETY: calling the op as C would.
                    unsafe { d(raw, obj) };
                }
                let mut st = self.st();
                let s = st.handlers[hi].state.as_mut().expect("checked");
                s.obj = ptr::null_mut();
                s.data = 0;
            }
        });
    }

    /// The reboot path: freeze every file (unfreezing the earlier ones if one fails), then
    /// build the handover and hand KHO memory over.
    pub fn kexec(&self) -> Result<Handover> {
        let files: Vec<(u64, usize, *mut c_void, u64, *mut c_void)> = self
            .st()
            .out
            .iter()
            .map(|(t, f)| (*t, f.handler, f.cell, f.data, f.private))
            .collect();
        let mut frozen = Vec::new();
        for (t, hi, cell, data, private) in &files {
            let raw = self.st().handlers[*hi].raw;
            // SAFETY: registered handler.
            let Some(freeze) = (unsafe { (*(*raw).ops).freeze }) else {
                continue;
            };
            let mut a = MiniCore::args(raw);
            a.file = cell.cast();
            a.serialized_data = *data;
            a.private_data = *private;
            // SAFETY: calling the op as C would.
            let r = unsafe { freeze(&mut a) };
            if let Err(e) = luo_abi::errno::to_result(r) {
                for (raw, cell, data, private) in frozen.into_iter().rev() {
                    let mut a = MiniCore::args(raw);
                    a.file = cell;
                    a.serialized_data = data;
                    a.private_data = private;
                    // SAFETY: registered handler.
                    if let Some(unfreeze) = unsafe { (*(*raw).ops).unfreeze } {
                        // SAFETY: calling the op as C would.
                        unsafe { unfreeze(&mut a) };
                    }
                }
                return Err(e);
            }
            if let Some(f) = self.st().out.get_mut(t) {
                f.data = a.serialized_data;
            }
            frozen.push((raw, cell.cast::<file>(), a.serialized_data, *private));
        }
        let mut h = Handover::default();
        {
            let st = self.st();
            for (t, f) in &st.out {
                h.files
                    .push((*t, st.handlers[f.handler].compat.clone(), f.data));
            }
            for f in &st.flbs {
                if f.out_count > 0 {
                    h.flbs.push((f.compat.clone(), f.out_data, f.out_count));
                }
            }
            for hd in &st.handlers {
                if let Some(s) = hd.state.as_ref().filter(|s| s.files > 0) {
                    h.states.push((hd.compat.clone(), s.data));
                }
            }
            for s in &st.subs {
                if s.prepared {
                    h.subsystems.push((s.name.clone(), s.data));
                }
            }
        }
        self.kho.kexec();
        Ok(h)
    }

    /// RETRIEVE_FD: the first call runs the matching handler's `retrieve` (found by the
    /// incoming compatible string); its error is cached.
    pub fn retrieve(&self, token: u64) -> Result<FileRef> {
        let (compat, data, status, cell) = {
            let st = self.st();
            let f = st.inc.get(&token).ok_or(Errno::ENOENT)?;
            (f.compat.clone(), f.data, f.status, f.cell)
        };
        if status > 0 {
            // SAFETY: the cell made by the handler's retrieve, owned by this core.
            let c = unsafe { &*cell.cast::<FileCell>() };
            return Ok(c.file().clone());
        }
        if status < 0 {
            return Err(Errno::from_neg(status).unwrap_or(Errno::EIO));
        }
        let (hi, raw) = {
            let st = self.st();
            let hi = st
                .handlers
                .iter()
                .position(|h| h.compat == compat)
                .ok_or(Errno::ENOENT)?;
            (hi, st.handlers[hi].raw)
        };
        let mut a = MiniCore::args(raw);
        a.serialized_data = data;
        // SAFETY: registered handler; `retrieve` is required.
        let r = unsafe { ((*(*raw).ops).retrieve.ok_or(Errno::EINVAL)?)(&mut a) };
        let mut st = self.st();
        let f = st.inc.get_mut(&token).ok_or(Errno::ENOENT)?;
        f.handler = Some(hi);
        if r == 0 {
            f.status = 1;
            f.cell = a.file.cast();
            // SAFETY: the handler handed us this cell.
            let c = unsafe { &*f.cell.cast::<FileCell>() };
            Ok(c.file().clone())
        } else {
            f.status = r;
            Err(Errno::from_neg(r).unwrap_or(Errno::EIO))
        }
    }

    /// FINISH: `can_finish` for every file (`-EBUSY` if one refuses), then `finish` for each,
    /// last to first, then the FLB and handler-state puts.
    pub fn finish(&self) -> Result {
        let files: Vec<(u64, String, u64, *mut c_void, i32)> = self
            .st()
            .inc
            .iter()
            .map(|(t, f)| (*t, f.compat.clone(), f.data, f.cell, f.status))
            .collect();
        let mut resolved = Vec::new();
        for (t, compat, data, cell, status) in files {
            let st = self.st();
            let hi = st
                .handlers
                .iter()
                .position(|h| h.compat == compat)
                .ok_or(Errno::ENOENT)?;
            resolved.push((t, hi, st.handlers[hi].raw, data, cell, status));
        }
        for &(_, _, raw, data, cell, status) in &resolved {
            // SAFETY: registered handler.
            if let Some(can) = unsafe { (*(*raw).ops).can_finish } {
                let mut a = MiniCore::args(raw);
                a.file = cell.cast();
                a.serialized_data = data;
                a.retrieve_status = status;
                // SAFETY: calling the op as C would.
                if !unsafe { can(&mut a) } {
                    return Err(Errno::EBUSY);
                }
            }
        }
        for &(t, hi, raw, data, cell, status) in resolved.iter().rev() {
            let mut a = MiniCore::args(raw);
            a.file = cell.cast();
            a.serialized_data = data;
            a.retrieve_status = status;
            // SAFETY: registered handler; `finish` is required.
            unsafe { ((*(*raw).ops).finish.ok_or(Errno::EINVAL)?)(&mut a) };
            if !cell.is_null() {
                // SAFETY: the cell made by retrieve, owned by this core.
                unsafe { FileCell::drop_raw(cell) };
            }
            self.st().inc.remove(&t);
            let flbs = self.st().handlers[hi].flbs.clone();
            for fi in flbs {
                self.flb_put_file(fi);
            }
            self.state_finish_file(hi);
        }
        Ok(())
    }

    fn flb_retrieve(&self, fi: usize) -> Result<*mut c_void> {
        let (raw, data, retrieved, obj, finished) = {
            let st = self.st();
            let f = &st.flbs[fi];
            (f.raw, f.in_data, f.retrieved, f.in_obj, f.finished)
        };
        if finished {
            return Err(Errno::ENODATA);
        }
        let data = data.ok_or(Errno::ENOENT)?;
        if retrieved {
            return Ok(obj);
        }
        let mut a = MiniCore::flb_args(raw, data, ptr::null_mut());
        // SAFETY: registered FLB.
        let r = unsafe { ((*(*raw).ops).retrieve.ok_or(Errno::EINVAL)?)(&mut a) };
        luo_abi::errno::to_result(r)?;
        let mut st = self.st();
        st.flbs[fi].retrieved = true;
        st.flbs[fi].in_obj = a.obj;
        Ok(a.obj)
    }

    fn flb_put_file(&self, fi: usize) {
        let last = {
            let mut st = self.st();
            let f = &mut st.flbs[fi];
            if f.in_files == 0 {
                return;
            }
            f.in_files -= 1;
            f.in_files == 0
        };
        if last && self.flb_retrieve(fi).is_ok() {
            let (raw, obj) = {
                let st = self.st();
                (st.flbs[fi].raw, st.flbs[fi].in_obj)
            };
            let mut a = MiniCore::flb_args(raw, 0, obj);
            // SAFETY: registered FLB.
            if let Some(op) = unsafe { (*(*raw).ops).finish } {
                // SAFETY: calling the op as C would.
                unsafe { op(&mut a) };
            }
            self.st().flbs[fi].finished = true;
        }
    }

    fn state_finish_file(&self, hi: usize) {
        let raw = self.st().handlers[hi].raw;
        self.with_state_lock(hi, || {
            let (ops, obj, incoming) = {
                let st = self.st();
                let s = st.handlers[hi].state.as_ref().expect("checked");
                (s.ops, s.obj, s.incoming)
            };
            let remaining = {
                let st = self.st();
                let compat = &st.handlers[hi].compat;
                st.inc.values().filter(|f| f.compat == *compat).count()
            };
            if remaining > 0 || incoming.is_none() {
                return;
            }
            let obj = if obj.is_null() {
                match self.state_restore_locked(hi) {
                    Ok(o) => o,
                    Err(_) => return,
                }
            } else {
                obj
            };
            // SAFETY: the registered `'static` table.
            if let Some(d) = unsafe { (*ops).global_state_destroy } {
                // SAFETY: calling the op as C would.
                unsafe { d(raw, obj) };
            }
            let mut st = self.st();
            let s = st.handlers[hi].state.as_mut().expect("checked");
            s.obj = ptr::null_mut();
            s.incoming = None;
        });
    }

    /// With the handler-scoped lock held: restore the incoming state if not yet done.
    fn state_restore_locked(&self, hi: usize) -> Result<*mut c_void> {
        let raw = self.st().handlers[hi].raw;
        let (ops, obj, incoming) = {
            let st = self.st();
            let s = st.handlers[hi].state.as_ref().ok_or(Errno::EINVAL)?;
            (s.ops, s.obj, s.incoming)
        };
        if !obj.is_null() {
            return Ok(obj);
        }
        let data = incoming.ok_or(Errno::ENODATA)?;
        let mut obj = ptr::null_mut();
        // SAFETY: the registered `'static` table; required op.
        let r = unsafe { ((*ops).global_state_restore.ok_or(Errno::EINVAL)?)(raw, data, &mut obj) };
        luo_abi::errno::to_result(r)?;
        self.st().handlers[hi]
            .state
            .as_mut()
            .ok_or(Errno::EINVAL)?
            .obj = obj;
        Ok(obj)
    }

    /// Preserved files of this kernel.
    pub fn outgoing_files(&self) -> usize {
        self.st().out.len()
    }
}

impl LuoHost for MiniCore {
    fn kho(&self) -> &dyn KhoService {
        &*self.kho
    }

    fn file_into_raw(&self, file: FileRef) -> Result<*mut c_void> {
        Ok(FileCell::into_raw(file))
    }

    fn flb_get_incoming(&self, flb: RawFlb) -> Result<*mut c_void> {
        let fi = {
            let st = self.st();
            st.flbs
                .iter()
                .position(|f| f.raw == flb.cast())
                .ok_or(Errno::ENOENT)?
        };
        self.flb_retrieve(fi)
    }

    fn flb_put_incoming(&self, _flb: RawFlb) {}

    fn flb_get_outgoing(&self, flb: RawFlb) -> Result<*mut c_void> {
        let st = self.st();
        let f = st
            .flbs
            .iter()
            .find(|f| f.raw == flb.cast())
            .ok_or(Errno::ENOENT)?;
        if f.out_count == 0 {
            return Err(Errno::ENODATA);
        }
        Ok(f.out_obj)
    }

    fn fh_global_state_get(&self, fh: RawFileHandler) -> Result<*mut c_void> {
        let hi = MiniCore::handler_idx(&self.st(), fh.cast())?;
        let lock: *const StdState = {
            let st = self.st();
            &*st.handlers[hi].state.as_ref().ok_or(Errno::EINVAL)?.lock
        };
        // SAFETY: the state lives as long as the core's handler entry.
        let lock = unsafe { &*lock };
        StdBackend::lock(lock);
        let r = self.state_restore_locked(hi).or_else(|e| {
            let obj = self.st().handlers[hi].state.as_ref().map(|s| s.obj);
            match obj {
                Some(o) if !o.is_null() => Ok(o),
                _ => Err(e),
            }
        });
        if r.is_err() {
            // SAFETY: locked just above.
            unsafe { StdBackend::unlock(lock, &()) };
        }
        r
    }

    fn fh_global_state_put(&self, fh: RawFileHandler) {
        let Ok(hi) = MiniCore::handler_idx(&self.st(), fh.cast()) else {
            return;
        };
        let lock: *const StdState = {
            let st = self.st();
            match st.handlers[hi].state.as_ref() {
                Some(s) => &*s.lock,
                None => return,
            }
        };
        // SAFETY: held since the matching get, per the host contract.
        unsafe { StdBackend::unlock(&*lock, &()) };
    }
}
