// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The runtime behind the trampolines `#[liveupdate_handler]` generates. Each function takes
//! the raw C arguments (as opaque pointers: this crate cannot name the generated structs),
//! never unwinds, and returns what the C op returns.
//!
//! # Safety (all functions)
//!
//! `handler` is a `struct liveupdate_file_handler *` from [`Registration::raw_handlers`] of a
//! live registration of `H`; `file` is NULL or a live file (a [`FileHead`]); `session` is the
//! callback's session (or NULL); out-pointers are valid for
//! writes.

use super::*;

pub(crate) unsafe fn shared<'a, H: HandlerAbi>(handler: *mut c_void) -> &'a Shared<H> {
    // SAFETY: per the module contract `handler` points to the `raw` field, at offset 0,
    // of a `HandlerEntry<H::Raw>` whose `shared` points to a live `Shared<H>`.
    unsafe {
        let entry = &*handler.cast::<HandlerEntry<H::Raw>>();
        &*entry.shared.cast::<Shared<H>>()
    }
}

fn status(r: Result) -> i32 {
    crate::errno::to_neg(r)
}

const EIO: i32 = Errno::EIO.to_neg();

/// `can_preserve`.
pub unsafe fn can_preserve<H: FileHandler>(handler: *mut c_void, file: *mut c_void) -> bool {
    crate::ffi::catch(false, || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract.
        match unsafe { FileHead::borrow(file) } {
            Some(f) => s.handler.can_preserve(f),
            None => false,
        }
    })
}

/// `preserve`: on success sets `*data` to the handle of the written struct and
/// `*private` to the boxed private data.
pub unsafe fn preserve<H: FileHandler>(
    handler: *mut c_void,
    session: RawSession,
    file: *mut c_void,
    data: *mut u64,
    private: *mut *mut c_void,
) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract.
        let Some(f) = (unsafe { FileHead::borrow(file) }) else {
            return Errno::EBADF.to_neg();
        };
        let default = H::FEATURES.map_or(0, |d| d.active);
        let cx = Ctx::new(s, handler, session, 0, default);
        let (mut ser, p) = match s.handler.preserve(&cx, f) {
            Ok(v) => v,
            Err(e) => return e.to_neg(),
        };
        H::encode(&mut ser, cx.features());
        match write_record(cx.kho(), &ser, &cx.trailer.take()) {
            Ok(at) => {
                // SAFETY: module contract (valid out-pointers).
                unsafe {
                    *data = at;
                    *private = Box::into_raw(Box::new(p)).cast();
                }
                0
            }
            Err(e) => {
                // The core will not call unpreserve for a failed preserve: undo it here.
                s.handler.unpreserve(&cx, f, ser, p);
                e.to_neg()
            }
        }
    })
}

/// `unpreserve`: frees the preserved struct and the private data, even if the handler
/// panics.
pub unsafe fn unpreserve<H: FileHandler>(
    handler: *mut c_void,
    session: RawSession,
    file: *mut c_void,
    data: u64,
    private: *mut *mut c_void,
) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract; the private box was made by `preserve`.
        let p = unsafe { take_private::<H>(private) };
        // SAFETY: module contract.
        let f = unsafe { FileHead::borrow(file) };
        let cx = Ctx::new(s, handler, session, data, 0);
        // One `dyn` call for the KHO service, used for the read and the free.
        let kho = cx.kho();
        if let (Some(f), Some(p), Ok(ser)) = (f, p, read_ser::<H::Ser>(kho, data)) {
            crate::ffi::catch((), || s.handler.unpreserve(&cx, f, ser, p));
        }
        if data != 0 {
            // `void` op: a KHO error here can only be dropped.
            let _ = kho.unpreserve_free(PhysAddr::new(data));
        }
    })
}

unsafe fn take_private<H: FileHandler>(private: *mut *mut c_void) -> Option<H::Private> {
    // SAFETY: caller contract.
    let p = unsafe { core::mem::replace(&mut *private, core::ptr::null_mut()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-NULL `private_data` of this handler is a `Box<H::Private>` leaked by
    // `preserve`, taken exactly once here.
    Some(*unsafe { Box::from_raw(p.cast::<H::Private>()) })
}

unsafe fn private_mut<'a, H: FileHandler>(private: *mut c_void) -> Option<&'a mut H::Private> {
    // SAFETY: caller contract: NULL or the live box leaked by `preserve`.
    unsafe { private.cast::<H::Private>().as_mut() }
}

/// `freeze`: changes the handler makes to the struct are written back in place.
pub unsafe fn freeze<H: FileHandler>(
    handler: *mut c_void,
    session: RawSession,
    file: *mut c_void,
    data: *mut u64,
    private: *mut c_void,
) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract.
        let (Some(f), Some(p)) = (unsafe { FileHead::borrow(file) }, unsafe {
            private_mut::<H>(private)
        }) else {
            return Errno::EINVAL.to_neg();
        };
        // SAFETY: module contract.
        let handle = unsafe { *data };
        let r = (|| {
            let mut ser = read_ser::<H::Ser>(s.host.kho(), handle)?;
            let cx = Ctx::new(s, handler, session, handle, H::active_of(&ser));
            s.handler.freeze(&cx, f, &mut ser, p)?;
            H::encode(&mut ser, cx.features());
            cx.kho()
                .write_obj(Phys::<H::Ser>::new(PhysAddr::new(handle)), &ser)
        })();
        status(r)
    })
}

/// `unfreeze`.
pub unsafe fn unfreeze<H: FileHandler>(
    handler: *mut c_void,
    session: RawSession,
    file: *mut c_void,
    data: u64,
    private: *mut c_void,
) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract.
        let (Some(f), Some(p)) = (unsafe { FileHead::borrow(file) }, unsafe {
            private_mut::<H>(private)
        }) else {
            return;
        };
        if let Ok(ser) = read_ser::<H::Ser>(s.host.kho(), data) {
            let cx = Ctx::new(s, handler, session, data, H::active_of(&ser));
            s.handler.unfreeze(&cx, f, &ser, p);
        }
    })
}

/// `retrieve` for the version `V` this entry reads; sets `*file_out`. The record is
/// claimed before it is read and released afterwards, whatever the outcome.
pub unsafe fn retrieve<H: FileHandler, V: ReadAs<H>>(
    handler: *mut c_void,
    session: RawSession,
    data: u64,
    file_out: *mut *mut c_void,
) -> i32 {
    crate::ffi::catch(EIO, || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        let r = (|| {
            let record = Claimed::new(s.host.kho(), data, V::SIZE)?;
            let read = V::read(&s.handler, s.host.kho(), data)?;
            let cx = Ctx::new(s, handler, session, data, 0);
            cx.set_record(data, record.bytes(), V::SIZE);
            s.handler.retrieve(&cx, read)
        })();
        match r.and_then(|file| s.host.file_into_raw(file)) {
            Ok(raw) => {
                // SAFETY: module contract (valid out-pointer).
                unsafe { *file_out = raw };
                0
            }
            Err(e) => e.to_neg(),
        }
    })
}

/// `can_finish`.
pub unsafe fn can_finish<H: FileHandler, V: ReadAs<H>>(
    handler: *mut c_void,
    session: RawSession,
    file: *mut c_void,
    data: u64,
    status: i32,
) -> bool {
    crate::ffi::catch(false, || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract.
        let f = unsafe { FileHead::borrow(file) };
        let cx = Ctx::new(s, handler, session, data, 0);
        let status = RetrieveStatus::from_raw(status);
        // A record not retrieved is still the previous kernel's, unclaimed: its first
        // page may be read. A retrieved one was released at retrieve.
        // Only a page KHO says was handed over and is still unclaimed: a corrupt
        // `serialized_data` leaves the record unreadable rather than read stray memory.
        if status == RetrieveStatus::NotRetrieved
            && data != 0
            && PhysAddr::new(data).is_page_aligned()
            && s.host.kho().is_incoming(PhysAddr::new(data))
        {
            cx.set_record(data, crate::PAGE_SIZE, V::SIZE);
        }
        s.handler.can_finish(&cx, f, status)
    })
}

/// `finish`: for a file never retrieved, claims the record, passes it to the handler and
/// releases it afterwards, even if it did not validate or the handler panicked.
pub unsafe fn finish<H: FileHandler, V: ReadAs<H>>(
    handler: *mut c_void,
    session: RawSession,
    file: *mut c_void,
    data: u64,
    status: i32,
) {
    crate::ffi::catch((), || {
        // SAFETY: module contract.
        let s = unsafe { shared::<H>(handler) };
        // SAFETY: module contract.
        let f = unsafe { FileHead::borrow(file) };
        let cx = Ctx::new(s, handler, session, data, 0);
        match RetrieveStatus::from_raw(status) {
            RetrieveStatus::Retrieved => {
                if let Some(f) = f {
                    s.handler.finish(&cx, Finish::Retrieved(f));
                }
            }
            RetrieveStatus::Failed(e) => s.handler.finish(&cx, Finish::Failed(e)),
            RetrieveStatus::NotRetrieved => {
                let Ok(record) = Claimed::new(s.host.kho(), data, V::SIZE) else {
                    return;
                };
                cx.set_record(data, record.bytes(), V::SIZE);
                if let Ok(read) = V::read(&s.handler, s.host.kho(), data) {
                    crate::ffi::catch((), || s.handler.finish(&cx, Finish::NotRetrieved(read)));
                }
            }
        }
    })
}

/// Writes `ser`, then `trailer` right after it, to newly preserved memory; returns its
/// address (the record's handle).
fn write_record<T: IntoBytes + Immutable>(
    kho: &dyn KhoService,
    ser: &T,
    trailer: &[u8],
) -> Result<u64> {
    if trailer.is_empty() {
        return Ok(kho.alloc_preserve_obj(ser)?.addr().as_u64());
    }
    let size = size_of::<T>()
        .checked_add(trailer.len())
        .ok_or(Errno::ENOMEM)?;
    let at = kho.alloc_preserve(size)?;
    let w = kho.write_obj(Phys::<T>::new(at), ser).and_then(|()| {
        let tail = at.checked_add(size_of::<T>() as u64).ok_or(Errno::ENOMEM)?;
        kho.write(tail, trailer)
    });
    if let Err(e) = w {
        let _ = kho.unpreserve_free(at);
        return Err(e);
    }
    Ok(at.as_u64())
}

/// `get_id`; `0` for a NULL file or a panic.
pub unsafe fn get_id<H: FileHandler>(file: *mut c_void) -> u64 {
    crate::ffi::catch(0, || {
        // SAFETY: module contract.
        match unsafe { FileHead::borrow(file) } {
            Some(f) => H::get_id(f).0,
            None => 0,
        }
    })
}

/// `can_preserve` of an entry that only reads an older version: never.
pub fn reader_can_preserve() -> bool {
    false
}

/// `preserve` of an entry that only reads an older version: `-EOPNOTSUPP`.
pub fn reader_preserve() -> i32 {
    Errno::EOPNOTSUPP.to_neg()
}

/// `unpreserve` of an entry that only reads an older version: nothing was preserved.
pub fn reader_unpreserve() {}
