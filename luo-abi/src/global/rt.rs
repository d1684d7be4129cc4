// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The runtime behind the trampolines of the global-state ops tables. Never unwinds; errors
//! become `-errno`, panics `-EIO` (see [`crate::ffi`]).
//!
//! # Safety (all functions)
//!
//! The raw object pointer comes from the cell (or registration) of the type named, which is
//! alive; out-pointers are valid for writes.

use super::*;

const EIO: i32 = Errno::EIO.to_neg();

unsafe fn flb_cell<'a, S: FlbState>(flb: *mut c_void) -> &'a FlbCell<S> {
    // SAFETY: module contract: `flb` points to the `raw` field, at offset 0 of the
    // `#[repr(C)]` `FlbCell<S>`.
    unsafe { &*flb.cast::<FlbCell<S>>() }
}

/// `liveupdate_flb_ops.preserve`.
pub unsafe fn flb_preserve<S: FlbState>(
    flb: *mut c_void,
    data: *mut u64,
    obj: *mut *mut c_void,
) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let cell = unsafe { flb_cell::<S>(flb) };
        let _scope = CallbackScope::enter(&cell.callback_out, cell.host.current_task());
        let cx = cell.ctx();
        let (ser, out) = match cell.flb.preserve(&cx) {
            Ok(v) => v,
            Err(e) => return e.to_neg(),
        };
        let out = Arc::new(out);
        let handle = if S::IMMEDIATE {
            word_of(&ser)
        } else {
            preserve_ser_with_trailer(cx.kho(), &ser, cx.trailer.get())
        };
        match handle {
            Ok(handle) => {
                // Before publishing: whoever gets the object may rewrite the data.
                if !S::IMMEDIATE {
                    *cell.out_data.lock() = handle;
                }
                // A replaced object (only if the core called preserve twice) is dropped
                // after its guards.
                drop(cell.outgoing.publish(out));
                // SAFETY: module contract.
                unsafe {
                    *data = handle;
                    *obj = flb;
                }
                0
            }
            Err(e) => {
                cell.flb.unpreserve(&cx, ser, out);
                e.to_neg()
            }
        }
    })
}

/// `liveupdate_flb_ops.unpreserve`.
pub unsafe fn flb_unpreserve<S: FlbState>(flb: *mut c_void, data: u64) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let cell = unsafe { flb_cell::<S>(flb) };
        // No rewrite from now on: the struct is about to be freed.
        *cell.out_data.lock() = 0;
        let _scope = CallbackScope::enter(&cell.callback_out, cell.host.current_task());
        let cx = StateCtx::with_data(&*cell.host, data);
        let out = cell.outgoing.withdraw();
        let ser = if S::IMMEDIATE {
            ser_of_word::<S::Ser>(data)
        } else {
            read_ser::<S::Ser>(cx.kho(), data)
        };
        if let (Some(out), Ok(ser)) = (out, ser) {
            cell.flb.unpreserve(&cx, ser, out);
        }
        if data != 0 && !S::IMMEDIATE {
            let _ = cx.kho().unpreserve_free(PhysAddr::new(data));
        }
    })
}

/// `liveupdate_flb_ops.retrieve`.
pub unsafe fn flb_retrieve<S: FlbState>(flb: *mut c_void, data: u64, obj: *mut *mut c_void) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let cell = unsafe { flb_cell::<S>(flb) };
        let _scope = CallbackScope::enter(&cell.callback_in, cell.host.current_task());
        let cx = StateCtx::with_data(&*cell.host, data);
        // A record is claimed before it is read and released once retrieve has run,
        // whatever the outcome, as a file's record (see `Claimed`); the callback may read
        // past the struct (a trailer) while it is claimed.
        let _record = if S::IMMEDIATE {
            None
        } else {
            match Claimed::new(cx.kho(), data, size_of::<S::Ser>()) {
                Ok(c) => {
                    cx.record_len.set(c.bytes());
                    Some(c)
                }
                Err(e) => return e.to_neg(),
            }
        };
        let ser = if S::IMMEDIATE {
            ser_of_word::<S::Ser>(data)
        } else {
            read_ser::<S::Ser>(cx.kho(), data)
        };
        let r = ser
            .and_then(S::decode)
            .and_then(|ser| cell.flb.retrieve(&cx, ser));
        match r {
            Ok(inc) => {
                drop(cell.incoming.publish(Arc::new(inc)));
                // SAFETY: module contract.
                unsafe { *obj = flb };
                0
            }
            Err(e) => e.to_neg(),
        }
    })
}

/// `liveupdate_flb_ops.finish`.
pub unsafe fn flb_finish<S: FlbState>(flb: *mut c_void) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let cell = unsafe { flb_cell::<S>(flb) };
        let _scope = CallbackScope::enter(&cell.callback_in, cell.host.current_task());
        let inc = cell.incoming.withdraw();
        if let Some(inc) = inc {
            cell.flb.finish(&cell.ctx(), inc);
        }
    })
}

/// `liveupdate_fh_global_state_ops.global_state_create` of handler `H`'s state.
pub unsafe fn state_create<H: StateOwner>(
    fh: *mut c_void,
    obj: *mut *mut c_void,
    data: *mut u64,
) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let Some((cell, host)) = (unsafe { H::state_cell(fh) }) else {
            return Errno::EINVAL.to_neg();
        };
        let _scope = CallbackScope::enter(&cell.callback, host.current_task());
        let cx = StateCtx::new(host);
        let (ser, out) = match cell.state.create(&cx) {
            Ok(v) => v,
            Err(e) => return e.to_neg(),
        };
        match preserve_ser(cx.kho(), &ser) {
            Ok(handle) => {
                let mut slot = cell.slot.lock();
                slot.outgoing = Some(out);
                slot.phys = handle;
                // SAFETY: module contract.
                unsafe {
                    *data = handle;
                    *obj = cell as *const HandlerStateCell<H::State> as *mut c_void;
                }
                0
            }
            Err(e) => {
                cell.state.destroy(&cx, StateObj::Outgoing(out));
                e.to_neg()
            }
        }
    })
}

/// `liveupdate_fh_global_state_ops.global_state_restore` of handler `H`'s state.
pub unsafe fn state_restore<H: StateOwner>(
    fh: *mut c_void,
    data: u64,
    obj: *mut *mut c_void,
) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let Some((cell, host)) = (unsafe { H::state_cell(fh) }) else {
            return Errno::EINVAL.to_neg();
        };
        let _scope = CallbackScope::enter(&cell.callback, host.current_task());
        let cx = StateCtx::new(host);
        let r = read_ser::<<H::State as HandlerStateAbi>::Ser>(cx.kho(), data)
            .and_then(<H::State as HandlerStateAbi>::decode)
            .and_then(|ser| cell.state.restore(&cx, ser));
        match r {
            Ok(inc) => {
                cell.slot.lock().incoming = Some(inc);
                let _ = cx.kho().restore_free(PhysAddr::new(data));
                // SAFETY: module contract.
                unsafe { *obj = cell as *const HandlerStateCell<H::State> as *mut c_void };
                0
            }
            Err(e) => e.to_neg(),
        }
    })
}

/// `liveupdate_fh_global_state_ops.global_state_destroy` of handler `H`'s state.
pub unsafe fn state_destroy<H: StateOwner>(fh: *mut c_void, obj: *mut c_void) {
    let _ = obj;
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let Some((cell, host)) = (unsafe { H::state_cell(fh) }) else {
            return;
        };
        let _scope = CallbackScope::enter(&cell.callback, host.current_task());
        let cx = StateCtx::new(host);
        let (out, inc, phys) = {
            let mut slot = cell.slot.lock();
            let phys = core::mem::take(&mut slot.phys);
            (slot.outgoing.take(), slot.incoming.take(), phys)
        };
        if let Some(o) = out {
            cell.state.destroy(&cx, StateObj::Outgoing(o));
            if phys != 0 {
                let _ = cx.kho().unpreserve_free(PhysAddr::new(phys));
            }
        }
        if let Some(i) = inc {
            cell.state.destroy(&cx, StateObj::Incoming(i));
        }
    })
}

unsafe fn sub_cell<'a, S: Subsystem>(h: *mut c_void) -> &'a SubsystemCell<S> {
    // SAFETY: module contract: `h` points to the `raw` field at offset 0 of the
    // `#[repr(C)]` `SubsystemCell<S>`.
    unsafe { &*h.cast::<SubsystemCell<S>>() }
}

/// `liveupdate_subsystem_ops.prepare`.
pub unsafe fn sub_prepare<S: Subsystem>(h: *mut c_void, data: *mut u64) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let cell = unsafe { sub_cell::<S>(h) };
        let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
        let cx = cell.ctx();
        let (ser, out) = match cell.sub.prepare(&cx) {
            Ok(v) => v,
            Err(e) => return e.to_neg(),
        };
        match preserve_ser(cx.kho(), &ser) {
            Ok(handle) => {
                cell.slot.lock().outgoing = Some(out);
                // SAFETY: module contract.
                unsafe { *data = handle };
                0
            }
            Err(e) => {
                cell.sub.cancel(&cx, out);
                e.to_neg()
            }
        }
    })
}

/// `liveupdate_subsystem_ops.freeze`.
pub unsafe fn sub_freeze<S: Subsystem>(h: *mut c_void, data: *mut u64) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let cell = unsafe { sub_cell::<S>(h) };
        let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
        let cx = cell.ctx();
        // SAFETY: module contract.
        let handle = unsafe { *data };
        let r = (|| {
            let mut ser = read_ser::<S::Ser>(cx.kho(), handle)?;
            let mut slot = cell.slot.lock();
            let out = slot.outgoing.as_mut().ok_or(Errno::ENODATA)?;
            cell.sub.freeze(&cx, &mut ser, out)?;
            drop(slot);
            cx.kho()
                .write_obj(Phys::<S::Ser>::new(PhysAddr::new(handle)), &ser)
        })();
        crate::errno::to_neg(r)
    })
}

/// `liveupdate_subsystem_ops.cancel`.
pub unsafe fn sub_cancel<S: Subsystem>(h: *mut c_void, data: u64) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let cell = unsafe { sub_cell::<S>(h) };
        let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
        let cx = cell.ctx();
        let out = cell.slot.lock().outgoing.take();
        if let Some(out) = out {
            cell.sub.cancel(&cx, out);
        }
        if data != 0 {
            let _ = cx.kho().unpreserve_free(PhysAddr::new(data));
        }
    })
}

/// `liveupdate_subsystem_ops.boot`: a failure is kept and returned by `get_incoming`.
pub unsafe fn sub_boot<S: Subsystem>(h: *mut c_void, data: u64) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let cell = unsafe { sub_cell::<S>(h) };
        let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
        let cx = cell.ctx();
        let r = read_ser::<S::Ser>(cx.kho(), data)
            .and_then(S::decode)
            .and_then(|ser| cell.sub.boot(&cx, ser));
        if r.is_ok() {
            let _ = cx.kho().restore_free(PhysAddr::new(data));
        }
        cell.slot.lock().incoming = Some(r);
    })
}

/// `liveupdate_subsystem_ops.finish`.
pub unsafe fn sub_finish<S: Subsystem>(h: *mut c_void, data: u64) {
    let _ = data;
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let cell = unsafe { sub_cell::<S>(h) };
        let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
        let inc = cell.slot.lock().incoming.take();
        if let Some(Ok(inc)) = inc {
            cell.sub.finish(&cell.ctx(), inc);
        }
    })
}
