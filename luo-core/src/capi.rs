// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The C API: what `generated/include/linux/liveupdate.h` declares, plus the KHO calls and a
//! small model driver that C handlers and C test programs need (declared in
//! `tests/c/luo_model.h`; the spec's C API has no KHO functions).
//!
//! Every function acts on the calling thread's current kernel ([`Kernel::current`]); without
//! one, LUO is "disabled" and the calls fail with `-EOPNOTSUPP`.

use std::ffi::{c_int, c_uint, c_ulong, c_void};

use luo_abi::file::FileKind;
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PhysAddr};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_flb,
    liveupdate_session, liveupdate_subsystem,
};

use crate::file::{CoreFile, FileObj};
use crate::kernel::{BootOptions, Kernel};
use crate::lock_order::{Level, Ordered, lock};

fn neg(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_neg(),
    }
}

fn current() -> Result<Kernel, Errno> {
    Kernel::current().ok_or(Errno::EOPNOTSUPP)
}

/// `liveupdate_enabled()`.
#[unsafe(no_mangle)]
pub extern "C" fn liveupdate_enabled() -> bool {
    Kernel::current().is_some_and(|k| k.luo().enabled())
}

/// `liveupdate_register_file_handler()`.
///
/// # Safety
///
/// `fh` must point to a handler that stays valid and unchanged while registered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_register_file_handler(
    fh: *mut liveupdate_file_handler,
) -> c_int {
    // SAFETY: forwarded caller guarantee.
    neg(current().and_then(|k| unsafe { k.register_raw_handler(fh) }))
}

/// `liveupdate_unregister_file_handler()`.
#[unsafe(no_mangle)]
pub extern "C" fn liveupdate_unregister_file_handler(fh: *mut liveupdate_file_handler) {
    if let Ok(k) = current() {
        k.luo().unregister_file_handler(fh);
    }
}

/// `liveupdate_get_token_outgoing()`: see [`crate::luo::depend`].
///
/// # Safety
///
/// `tokenp` must be valid for a write; `s` and `file` are only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_get_token_outgoing(
    s: *mut liveupdate_session,
    file: *mut CFile,
    tokenp: *mut u64,
) -> c_int {
    neg(current()
        .and_then(|k| k.luo().get_token_outgoing(s, file))
        .and_then(|t| put_u64(tokenp, t)))
}

/// `liveupdate_get_file_incoming()`: see [`crate::luo::depend`]. The file is borrowed: the session
/// holds it until it finishes, after the caller.
///
/// # Safety
///
/// `filep` must be valid for a write; `s` is only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_get_file_incoming(
    s: *mut liveupdate_session,
    token: u64,
    filep: *mut *mut CFile,
) -> c_int {
    if filep.is_null() {
        return Errno::EFAULT.to_neg();
    }
    match current().and_then(|k| k.luo().get_file_incoming(s, token)) {
        Ok(f) => {
            // SAFETY: non-NULL (checked) and valid for a write (caller contract).
            unsafe { *filep = CoreFile::as_c(&f) };
            0
        }
        Err(e) => e.to_neg(),
    }
}

/// `liveupdate_register_flb()`.
///
/// # Safety
///
/// `flb` must point to an FLB that stays valid and unchanged while linked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_register_flb(
    fh: *mut liveupdate_file_handler,
    flb: *mut liveupdate_flb,
) -> c_int {
    // SAFETY: forwarded caller guarantee.
    neg(current().and_then(|k| unsafe { k.luo().register_flb(fh, flb) }))
}

/// `liveupdate_unregister_flb()`.
#[unsafe(no_mangle)]
pub extern "C" fn liveupdate_unregister_flb(
    fh: *mut liveupdate_file_handler,
    flb: *mut liveupdate_flb,
) {
    if let Ok(k) = current() {
        k.luo().unregister_flb(fh, flb);
    }
}

fn out_ptr(objp: *mut *mut c_void, r: Result<*mut c_void, Errno>) -> c_int {
    match r {
        Ok(p) => {
            if !objp.is_null() {
                // SAFETY: the caller passes a valid `void **` (or NULL, checked).
                unsafe { *objp = p };
            }
            0
        }
        Err(e) => e.to_neg(),
    }
}

/// `liveupdate_flb_get_incoming()`.
///
/// # Safety
///
/// `objp` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_flb_get_incoming(
    flb: *mut liveupdate_flb,
    objp: *mut *mut c_void,
) -> c_int {
    out_ptr(objp, current().and_then(|k| k.luo().flb_get_incoming(flb)))
}

/// `liveupdate_flb_put_incoming()`.
#[unsafe(no_mangle)]
pub extern "C" fn liveupdate_flb_put_incoming(flb: *mut liveupdate_flb) {
    if let Ok(k) = current() {
        k.luo().flb_put_incoming(flb);
    }
}

/// `liveupdate_flb_get_outgoing()`.
///
/// # Safety
///
/// `objp` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_flb_get_outgoing(
    flb: *mut liveupdate_flb,
    objp: *mut *mut c_void,
) -> c_int {
    out_ptr(objp, current().and_then(|k| k.luo().flb_get_outgoing(flb)))
}

/// `liveupdate_fh_global_state_register()`.
///
/// # Safety
///
/// `ops` must stay valid and unchanged while the handler is registered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_fh_global_state_register(
    fh: *mut liveupdate_file_handler,
    ops: *const liveupdate_fh_global_state_ops,
) -> c_int {
    // SAFETY: forwarded caller guarantee.
    neg(current().and_then(|k| unsafe { k.luo().global_state_register(fh, ops) }))
}

/// `liveupdate_fh_global_state_get()`: locks the handler's global state (until put).
///
/// # Safety
///
/// `objp` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_fh_global_state_get(
    fh: *mut liveupdate_file_handler,
    objp: *mut *mut c_void,
) -> c_int {
    out_ptr(objp, current().and_then(|k| k.luo().global_state_get(fh)))
}

/// `liveupdate_fh_global_state_put()`.
#[unsafe(no_mangle)]
pub extern "C" fn liveupdate_fh_global_state_put(fh: *mut liveupdate_file_handler) {
    if let Ok(k) = current() {
        k.luo().global_state_put(fh);
    }
}

/// `liveupdate_register_subsystem()`.
///
/// # Safety
///
/// `h` must point to a subsystem (with a NUL-terminated name) that stays valid while
/// registered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn liveupdate_register_subsystem(h: *mut liveupdate_subsystem) -> c_int {
    // SAFETY: forwarded caller guarantee.
    neg(current().and_then(|k| unsafe { k.luo().register_subsystem(h) }))
}

/// `liveupdate_unregister_subsystem()`.
#[unsafe(no_mangle)]
pub extern "C" fn liveupdate_unregister_subsystem(h: *mut liveupdate_subsystem) -> c_int {
    neg(current().and_then(|k| k.luo().unregister_subsystem(h)))
}

// ---- KHO for C handlers ---------------------------------------------------------------------

fn kho_call(f: impl FnOnce(&dyn KhoService) -> Result<(), Errno>) -> c_int {
    neg(current().and_then(|k| f(&**k.kho())))
}

fn put_u64(p: *mut u64, v: u64) -> Result<(), Errno> {
    if p.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: non-NULL pointers passed by C callers are valid for a `u64` write.
    unsafe { *p = v };
    Ok(())
}

/// `kho_alloc_preserve(size)`: zeroed preserved memory; its address goes to `*phys`.
///
/// # Safety
///
/// `phys` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_kho_alloc_preserve(size: usize, phys: *mut u64) -> c_int {
    kho_call(|k| put_u64(phys, k.alloc_preserve(size)?.as_u64()))
}

/// `kho_unpreserve_free()` (old kernel).
#[unsafe(no_mangle)]
pub extern "C" fn luo_kho_unpreserve_free(phys: u64) -> c_int {
    kho_call(|k| k.unpreserve_free(PhysAddr::new(phys)))
}

/// `kho_restore_free()` (new kernel).
#[unsafe(no_mangle)]
pub extern "C" fn luo_kho_restore_free(phys: u64) -> c_int {
    kho_call(|k| k.restore_free(PhysAddr::new(phys)))
}

/// Allocates a zeroed, unpreserved folio.
///
/// # Safety
///
/// `phys` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_kho_alloc_folio(order: c_uint, phys: *mut u64) -> c_int {
    kho_call(|k| put_u64(phys, k.alloc_folio(order)?.as_u64()))
}

/// Frees a folio from `luo_kho_alloc_folio` (or a restored one).
#[unsafe(no_mangle)]
pub extern "C" fn luo_kho_free_folio(phys: u64, order: c_uint) -> c_int {
    kho_call(|k| k.free_folio(PhysAddr::new(phys), order))
}

/// `kho_preserve_folio()`.
#[unsafe(no_mangle)]
pub extern "C" fn luo_kho_preserve_folio(phys: u64, order: c_uint) -> c_int {
    kho_call(|k| k.preserve_folio(PhysAddr::new(phys), order))
}

/// `kho_unpreserve_folio()`.
#[unsafe(no_mangle)]
pub extern "C" fn luo_kho_unpreserve_folio(phys: u64, order: c_uint) -> c_int {
    kho_call(|k| k.unpreserve_folio(PhysAddr::new(phys), order))
}

/// `kho_restore_folio()`: the folio's order goes to `*order`.
///
/// # Safety
///
/// `order` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_kho_restore_folio(phys: u64, order: *mut c_uint) -> c_int {
    kho_call(|k| {
        let o = k.restore_folio(PhysAddr::new(phys))?;
        if !order.is_null() {
            // SAFETY: non-NULL, valid for a write (caller contract).
            unsafe { *order = o };
        }
        Ok(())
    })
}

/// Copies `len` bytes of memory at `phys` into `buf`.
///
/// # Safety
///
/// `buf` must be valid for `len` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_kho_read(phys: u64, buf: *mut c_void, len: usize) -> c_int {
    if buf.is_null() && len > 0 {
        return Errno::EFAULT.to_neg();
    }
    kho_call(|k| {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees `buf` holds `len` writable bytes.
        let b = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        k.read(PhysAddr::new(phys), b)
    })
}

/// Copies `len` bytes from `buf` to memory at `phys`.
///
/// # Safety
///
/// `buf` must be valid for `len` bytes of reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_kho_write(phys: u64, buf: *const c_void, len: usize) -> c_int {
    if buf.is_null() && len > 0 {
        return Errno::EFAULT.to_neg();
    }
    kho_call(|k| {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees `buf` holds `len` readable bytes.
        let b = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        k.write(PhysAddr::new(phys), b)
    })
}

// ---- files for C handlers -------------------------------------------------------------------

/// A new synthetic test file carrying `value`, returned with one reference (what a handler's
/// `retrieve` hands to LUO). NULL without a current kernel.
#[unsafe(no_mangle)]
pub extern "C" fn luo_test_file_alloc(value: u64) -> *mut CFile {
    if Kernel::current().is_none() {
        return std::ptr::null_mut();
    }
    CoreFile::into_c(CoreFile::new(
        "test",
        FileObj::Test(std::sync::atomic::AtomicU64::new(value)),
    ))
}

/// The value of a synthetic test file: 0 on success, `-EINVAL` for any other file.
///
/// # Safety
///
/// `file` must be a file LUO passed to the caller (or NULL); `value` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_test_file_value(file: *mut CFile, value: *mut u64) -> c_int {
    // SAFETY: `from_c` validates the address against the live files.
    let v = unsafe { CoreFile::from_c(file) }.and_then(CoreFile::test_value);
    neg(v.ok_or(Errno::EINVAL).and_then(|v| put_u64(value, v)))
}

/// The identity LUO uses by default for a file (`get_id` default): its address.
#[unsafe(no_mangle)]
pub extern "C" fn luo_file_id(file: *mut CFile) -> c_ulong {
    file as c_ulong
}

/// The object behind a HugeTLB memfd made through the C API: its huge page order and count.
/// A C handler accounts for its pages in its own global state (`tests/c/huge_memfd_twin.c`);
/// Rust handlers bring their own HugeTLB memfd objects (`luo-handlers`' `HugeMemfd`).
pub struct CHugeMemfd {
    order: u32,
    nr: u64,
}

fn huge_memfd(_k: &Kernel, order: c_uint, nr: u64) -> Result<Box<CHugeMemfd>, Errno> {
    // A huge page is at least two pages; sizes (`nr << (order + 12)`) must not overflow.
    if order == 0 || order > 18 || nr == 0 || nr > u64::MAX >> (order + 12) {
        return Err(Errno::EINVAL);
    }
    Ok(Box::new(CHugeMemfd { order, nr }))
}

/// A new synthetic HugeTLB memfd holding `nr` huge pages of `order` (the file the Rust
/// `huge-memfd-v1` handler preserves too), returned with one reference (what a handler's
/// `retrieve` hands to LUO). NULL without a current kernel.
#[unsafe(no_mangle)]
pub extern "C" fn luo_huge_memfd_alloc(order: c_uint, nr: u64) -> *mut CFile {
    let Some(k) = Kernel::current() else {
        return std::ptr::null_mut();
    };
    match huge_memfd(&k, order, nr) {
        Ok(m) => CoreFile::into_c(CoreFile::new(
            "huge-memfd",
            FileObj::Synthetic(FileKind::HugeMemfd, m),
        )),
        Err(_) => std::ptr::null_mut(),
    }
}

/// The huge page order and count of a synthetic HugeTLB memfd: 0, or `-EINVAL` for any other
/// file.
///
/// # Safety
///
/// `file` must be a file LUO passed to the caller (or NULL); `order` and `nr` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_huge_memfd_backing(
    file: *mut CFile,
    order: *mut c_uint,
    nr: *mut u64,
) -> c_int {
    // SAFETY: `from_c` validates the address against the live files.
    let Some(f) = (unsafe { CoreFile::from_c(file) }) else {
        return Errno::EINVAL.to_neg();
    };
    neg(huge_out(f, order, nr))
}

fn huge_out(f: &CoreFile, order: *mut c_uint, nr: *mut u64) -> Result<(), Errno> {
    use luo_abi::file::File as _;
    if f.kind() != FileKind::HugeMemfd || order.is_null() {
        return Err(Errno::EINVAL);
    }
    let m = f.synthetic::<CHugeMemfd>().ok_or(Errno::EINVAL)?;
    put_u64(nr, m.nr)?;
    // SAFETY: non-NULL (checked) and valid for a write (caller contract).
    unsafe { *order = m.order };
    Ok(())
}

// ---- the model driver (C test programs) -----------------------------------------------------

static KERNEL: Ordered<Option<Kernel>> = Ordered::new(Level::CapiKernel, None);

fn with_kernel<R>(f: impl FnOnce(&Kernel) -> Result<R, Errno>) -> Result<R, Errno> {
    let g = lock(&KERNEL);
    let k = g.as_ref().ok_or(Errno::ENODEV)?;
    k.make_current();
    f(k)
}

/// Boots a fresh kernel (heap arena, memfd handler registered) and makes it current.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_boot() -> c_int {
    match Kernel::boot(&BootOptions::default(), None) {
        Ok(k) => {
            k.make_current();
            *lock(&KERNEL) = Some(k);
            0
        }
        Err(e) => e.errno().to_neg(),
    }
}

/// Kexec in-process into a new kernel, which becomes current. A failed reboot (freeze error)
/// keeps the old kernel.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_kexec() -> c_int {
    let mut g = lock(&KERNEL);
    let Some(k) = g.as_ref() else {
        return Errno::ENODEV.to_neg();
    };
    let h = match k.kexec() {
        Ok(h) => h,
        Err(e) => return e.to_neg(),
    };
    *g = None;
    match Kernel::boot(&BootOptions::default(), Some(h)) {
        Ok(k) => {
            k.make_current();
            *g = Some(k);
            0
        }
        Err(e) => e.errno().to_neg(),
    }
}

/// `liveupdate_num` of the current kernel, or -1.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_liveupdate_num() -> i64 {
    with_kernel(|k| Ok(k.liveupdate_num() as i64)).unwrap_or(-1)
}

fn fd_or_neg(r: Result<i32, Errno>) -> c_int {
    r.unwrap_or_else(Errno::to_neg)
}

/// Opens `/dev/liveupdate`: an fd or `-errno`.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_open_dev() -> c_int {
    fd_or_neg(with_kernel(|k| k.open_dev()))
}

/// `ioctl(fd, cmd, arg)`: `arg` points to a uAPI struct whose first `__u32` is its size;
/// returns 0 or `-errno`.
///
/// # Safety
///
/// `arg` must be NULL or point to at least `max(4, arg->size)` readable and writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_model_ioctl(fd: c_int, cmd: c_ulong, arg: *mut c_void) -> c_int {
    if arg.is_null() {
        return Errno::EFAULT.to_neg();
    }
    let Ok(cmd) = u32::try_from(cmd) else {
        return Errno::ENOTTY.to_neg();
    };
    // SAFETY: `arg` points to at least 4 readable bytes (caller contract); unaligned read.
    let size = unsafe { arg.cast::<u32>().read_unaligned() } as usize;
    // SAFETY: the caller guarantees `max(4, size)` valid bytes at `arg`.
    let user = unsafe { std::slice::from_raw_parts_mut(arg.cast::<u8>(), size.max(4)) };
    neg(with_kernel(|k| k.ioctl(fd, cmd, user)))
}

/// `close(fd)`.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_close(fd: c_int) -> c_int {
    neg(with_kernel(|k| k.close(fd)))
}

/// A synthetic test file carrying `value`: an fd or `-errno`.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_test_file(value: u64) -> c_int {
    fd_or_neg(with_kernel(|k| k.test_file(value)))
}

/// The value of the synthetic test file behind `fd`.
///
/// # Safety
///
/// `value` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_model_test_file_value(fd: c_int, value: *mut u64) -> c_int {
    neg(with_kernel(|k| {
        let v = k.file(fd)?.test_value().ok_or(Errno::EINVAL)?;
        put_u64(value, v)
    }))
}

/// A synthetic HugeTLB memfd of `nr` huge pages of `order`: an fd or `-errno`.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_huge_memfd(order: c_uint, nr: u64) -> c_int {
    fd_or_neg(with_kernel(|k| {
        k.open_synthetic(FileKind::HugeMemfd, "huge-memfd", huge_memfd(k, order, nr)?)
    }))
}

/// The order and page count of the HugeTLB memfd behind `fd`.
///
/// # Safety
///
/// `order` and `nr` must be valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_model_huge_memfd_backing(
    fd: c_int,
    order: *mut c_uint,
    nr: *mut u64,
) -> c_int {
    neg(with_kernel(|k| {
        let f = k.file(fd)?;
        huge_out(&f, order, nr)
    }))
}

/// Makes the model's kernel current on the calling thread, so that a thread the C program
/// started can call the kernel API (`liveupdate_fh_global_state_get`, KHO) directly.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_enter() -> c_int {
    neg(with_kernel(|_| Ok(())))
}

/// Preserved pages beyond LUO's root plus incoming pages never restored (0 = nothing leaked).
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_preserved_pages() -> i64 {
    with_kernel(|k| {
        let s = k.stats();
        Ok((s.preserved_beyond_root() + s.kho.incoming_pages) as i64)
    })
    .unwrap_or(-1)
}

/// Drops the current kernel.
#[unsafe(no_mangle)]
pub extern "C" fn luo_model_shutdown() {
    *lock(&KERNEL) = None;
}
