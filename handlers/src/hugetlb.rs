//! HugeTLB global state both ways (issue 6, the seed's question), shared by two file types:
//! HugeTLB memfds (`huge-memfd-v1`) and guest_memfd (`guest_memfd_luo_v1`, HugeTLB-backed or
//! not).
//!
//! The pools (per huge page size: pages, free pages, pages of preserved files) are handed over
//! as `struct hugetlb_ser` (spec `hugetlb/v1`) in one of two forms, chosen at [`register`]:
//!
//! * [`Form::Flb`] — upstream's RFC: the FLB `"hugetlb-v1"`, linked to both handlers. It is
//!   preserved with the first file of *either* handler (even a guest_memfd that uses no huge
//!   page) and not at all when no such file is preserved; in the new kernel it is retrieved on
//!   demand (the huge-memfd handler calls `get_incoming` eagerly at registration, as the RFC's
//!   init does) and finished with the last dependent file.
//! * [`Form::Subsystem`] — the seed's choice: the subsystem `"hugetlb"` with its own lifecycle,
//!   frozen on the reboot path after the files, booted when it registers in the new kernel
//!   (before any file is retrieved, so the free pages are back in the pool), finished after the
//!   last incoming session.
//!
//! The model's huge pages are counts per size, not page frames: a file holds `nr` pages of one
//! order, a never-retrieved file's pages go back to the free pool at finish, a retrieved file
//! keeps them. The folio arrays of `hugemfd_ser` / `guest_memfd_luo_ser` are left empty.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use luo_abi::Errno;
use luo_abi::file::FileKind;
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Phys, PhysAddr};
use luo_generated::hugetlb::hugetlb_hstate_ser;
use luo_generated::hugetlb::v1::{
    HUGEMFD_LUO_FH_COMPATIBLE, HUGETLB_LUO_FLB_COMPATIBLE, hugemfd_ser, hugetlb_ser,
};
use luo_generated::kho::kho_vmalloc;
use luo_generated::kvm::GUEST_MEMFD_LUO_FLAG_HUGETLB;
use luo_generated::kvm::v1::{GUEST_MEMFD_LUO_FH_COMPATIBLE, guest_memfd_luo_ser};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
    liveupdate_flb, liveupdate_flb_op_args, liveupdate_flb_ops, liveupdate_subsystem,
    liveupdate_subsystem_ops,
};
use zerocopy::FromZeros;

use crate::host::{StaticHandler, compat48, host};

type Kho = Arc<dyn KhoService + Send + Sync>;

/// How the HugeTLB pools cross the live update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Upstream's RFC: the FLB `"hugetlb-v1"` linked to both handlers.
    Flb,
    /// The seed's choice: a subsystem with its own lifecycle.
    Subsystem,
}

/// One huge page size's pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    /// Pages in the pool.
    pub total: u64,
    /// Free pages.
    pub free: u64,
    /// Pages of incoming files not yet retrieved or finished.
    pub held_incoming: u64,
}

/// What happened to the HugeTLB global state in one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The pools by page order.
    pub pools: BTreeMap<u32, Pool>,
    /// Pages of outgoing preserved files, by order.
    pub preserved: BTreeMap<u32, u64>,
    /// FLB preserve / unpreserve / retrieve / finish calls in this kernel.
    pub flb_preserved: u64,
    /// FLB unpreserve calls.
    pub flb_unpreserved: u64,
    /// FLB retrieve calls.
    pub flb_retrieved: u64,
    /// FLB finish calls.
    pub flb_finished: u64,
    /// Subsystem freeze calls.
    pub sub_frozen: u64,
    /// Subsystem boot calls.
    pub sub_booted: u64,
    /// Subsystem finish calls.
    pub sub_finished: u64,
    form: Option<Form>,
    out_data: u64,
}

/// The payload of a HugeTLB memfd or guest_memfd synthetic file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backing {
    /// Backed by HugeTLB pages (always for a HugeTLB memfd).
    pub hugetlb: bool,
    /// Page order (9 = 2 MiB).
    pub order: u32,
    /// Pages the file holds.
    pub nr: u64,
}

fn states() -> MutexGuard<'static, HashMap<usize, State>> {
    static S: OnceLock<Mutex<HashMap<usize, State>>> = OnceLock::new();
    S.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn key(k: &Kho) -> usize {
    Arc::as_ptr(k) as *const u8 as usize
}

/// Runs `f` on the current kernel's HugeTLB state.
fn with<R>(f: impl FnOnce(&mut State, &Kho) -> R) -> Result<R, Errno> {
    let kho = host()?.kho()?;
    let mut s = states();
    Ok(f(s.entry(key(&kho)).or_default(), &kho))
}

/// The current kernel's HugeTLB state.
pub fn state() -> Result<State, Errno> {
    with(|s, _| s.clone())
}

/// Sets the current kernel's pool of `order` to `nr` free pages (`nr_hugepages`).
pub fn configure(order: u32, nr: u64) -> Result<(), Errno> {
    with(|s, _| {
        s.pools.insert(
            order,
            Pool {
                total: nr,
                free: nr,
                held_incoming: 0,
            },
        );
    })
}

/// Takes `nr` pages of `order` from the current kernel's pool for a new file (`ENOMEM`).
pub fn alloc(order: u32, nr: u64) -> Result<Backing, Errno> {
    with(|s, _| {
        let p = s.pools.get_mut(&order).ok_or(Errno::ENOMEM)?;
        if p.free < nr {
            return Err(Errno::ENOMEM);
        }
        p.free -= nr;
        Ok(Backing {
            hugetlb: true,
            order,
            nr,
        })
    })?
}

fn snapshot(s: &State) -> hugetlb_ser {
    let mut ser = hugetlb_ser::new_zeroed();
    for (i, (order, p)) in s.pools.iter().take(ser.hstates.len()).enumerate() {
        ser.hstates[i] = hugetlb_hstate_ser {
            order: *order,
            flags: 0,
            nr_huge_pages: p.total,
            free_huge_pages: p.free,
            nr_preserved: s.preserved.get(order).copied().unwrap_or(0),
        };
        ser.nr_hstates = i as u64 + 1;
    }
    ser
}

fn write_snapshot(s: &State, kho: &Kho) -> Result<u64, Errno> {
    Ok(kho.alloc_preserve_obj(&snapshot(s))?.addr().as_u64())
}

/// Rebuilds the pools from handed-over data: every page comes back, those of preserved files
/// held for them, the rest free.
fn rebuild(s: &mut State, kho: &Kho, data: u64) -> Result<(), Errno> {
    let ser: hugetlb_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
    let n = usize::try_from(ser.nr_hstates).map_err(|_| Errno::EINVAL)?;
    if n > ser.hstates.len() {
        return Err(Errno::EINVAL);
    }
    for h in &ser.hstates[..n] {
        let (total, held) = (h.nr_huge_pages, h.nr_preserved);
        let p = s.pools.entry(h.order).or_default();
        p.total += total;
        p.free += total.saturating_sub(held);
        p.held_incoming += held;
    }
    Ok(())
}

// ---- the FLB form ----------------------------------------------------------------------

#[repr(transparent)]
struct FlbOps(liveupdate_flb_ops);
// SAFETY: immutable function pointers.
unsafe impl Sync for FlbOps {}
#[repr(transparent)]
struct StaticFlb(liveupdate_flb);
// SAFETY: immutable after construction.
unsafe impl Sync for StaticFlb {}

static FLB_OPS: FlbOps = FlbOps(liveupdate_flb_ops {
    preserve: Some(flb_preserve),
    unpreserve: Some(flb_unpreserve),
    retrieve: Some(flb_retrieve),
    finish: Some(flb_finish),
    owner: std::ptr::null_mut(),
});

static HUGETLB_FLB: StaticFlb = StaticFlb(liveupdate_flb {
    ops: &FLB_OPS.0,
    compatible: compat48(HUGETLB_LUO_FLB_COMPATIBLE),
});

fn flb_ptr() -> *mut liveupdate_flb {
    (&HUGETLB_FLB.0 as *const liveupdate_flb).cast_mut()
}

fn rc(r: Result<(), Errno>) -> c_int {
    r.map_or_else(Errno::to_neg, |()| 0)
}

unsafe extern "C" fn flb_preserve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc(with(|s, kho| {
        let d = write_snapshot(s, kho)?;
        s.out_data = d;
        s.flb_preserved += 1;
        a.data = d;
        a.obj = std::ptr::null_mut();
        Ok(())
    })
    .and_then(|r| r))
}

unsafe extern "C" fn flb_unpreserve(a: *mut liveupdate_flb_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    let _ = with(|s, kho| {
        let _ = kho.unpreserve_free(PhysAddr::new(a.data));
        s.out_data = 0;
        s.flb_unpreserved += 1;
    });
}

unsafe extern "C" fn flb_retrieve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc(with(|s, kho| {
        rebuild(s, kho, a.data)?;
        let _ = kho.restore_free(PhysAddr::new(a.data));
        s.flb_retrieved += 1;
        a.obj = flb_ptr().cast::<c_void>();
        Ok(())
    })
    .and_then(|r| r))
}

unsafe extern "C" fn flb_finish(_a: *mut liveupdate_flb_op_args) {
    let _ = with(|s, _| s.flb_finished += 1);
}

/// Keeps the outgoing FLB data in step with the preserved files (upstream: get_outgoing).
fn sync_outgoing(s: &State, kho: &Kho) -> Result<(), Errno> {
    if s.out_data != 0 {
        kho.write_obj(
            Phys::<hugetlb_ser>::new(PhysAddr::new(s.out_data)),
            &snapshot(s),
        )?;
    }
    Ok(())
}

// ---- the subsystem form ----------------------------------------------------------------

#[repr(transparent)]
struct SubOps(liveupdate_subsystem_ops);
// SAFETY: immutable function pointers.
unsafe impl Sync for SubOps {}
#[repr(transparent)]
struct StaticSub(liveupdate_subsystem);
// SAFETY: immutable after construction; the name is a `'static` C string.
unsafe impl Sync for StaticSub {}

static SUB_OPS: SubOps = SubOps(liveupdate_subsystem_ops {
    prepare: None,
    freeze: Some(sub_freeze),
    cancel: Some(sub_cancel),
    boot: Some(sub_boot),
    finish: Some(sub_finish),
    owner: std::ptr::null_mut(),
});

/// Name of the subsystem (and of its handed-over data).
pub const SUBSYSTEM_NAME: &str = "hugetlb";

static HUGETLB_SUB: StaticSub = StaticSub(liveupdate_subsystem {
    ops: &SUB_OPS.0,
    name: c"hugetlb".as_ptr().cast(),
});

unsafe extern "C" fn sub_freeze(_h: *mut liveupdate_subsystem, data: *mut u64) -> c_int {
    rc(with(|s, kho| {
        let d = write_snapshot(s, kho)?;
        // SAFETY: LUO passes a valid out-pointer.
        unsafe { *data = d };
        s.sub_frozen += 1;
        Ok(())
    })
    .and_then(|r| r))
}

unsafe extern "C" fn sub_cancel(_h: *mut liveupdate_subsystem, data: u64) {
    if let Ok(kho) = host().and_then(|h| h.kho())
        && data != 0
    {
        let _ = kho.unpreserve_free(PhysAddr::new(data));
    }
}

unsafe extern "C" fn sub_boot(_h: *mut liveupdate_subsystem, data: u64) {
    let _ = with(|s, kho| {
        if rebuild(s, kho, data).is_ok() {
            let _ = kho.restore_free(PhysAddr::new(data));
            s.sub_booted += 1;
        }
    });
}

unsafe extern "C" fn sub_finish(_h: *mut liveupdate_subsystem, _data: u64) {
    let _ = with(|s, _| s.sub_finished += 1);
}

// ---- the two file handlers -------------------------------------------------------------

#[repr(transparent)]
struct Ops(liveupdate_file_ops);
// SAFETY: immutable function pointers.
unsafe impl Sync for Ops {}

const fn ops(kind: u8) -> liveupdate_file_ops {
    liveupdate_file_ops {
        can_preserve: Some(if kind == 0 { can_huge } else { can_gmem }),
        preserve: Some(if kind == 0 {
            preserve::<0>
        } else {
            preserve::<1>
        }),
        unpreserve: Some(unpreserve),
        freeze: None,
        unfreeze: None,
        retrieve: Some(if kind == 0 {
            retrieve::<0>
        } else {
            retrieve::<1>
        }),
        can_finish: None,
        finish: Some(finish),
        get_id: None,
        owner: std::ptr::null_mut(),
    }
}

static HUGE_OPS: Ops = Ops(ops(0));
static GMEM_OPS: Ops = Ops(ops(1));

/// The `huge-memfd-v1` handler.
pub static HUGE_MEMFD: StaticHandler = StaticHandler(liveupdate_file_handler {
    ops: &HUGE_OPS.0,
    compatible: compat48(HUGEMFD_LUO_FH_COMPATIBLE),
    depends_on: std::ptr::null(),
});

/// The `guest_memfd_luo_v1` handler.
pub static GUEST_MEMFD: StaticHandler = StaticHandler(liveupdate_file_handler {
    ops: &GMEM_OPS.0,
    compatible: compat48(GUEST_MEMFD_LUO_FH_COMPATIBLE),
    depends_on: std::ptr::null(),
});

fn backing(f: *mut CFile) -> Result<Backing, Errno> {
    // SAFETY: LUO holds the file for the whole callback.
    let p: &(dyn Any + Send + Sync) = unsafe { host()?.synthetic(f) }.ok_or(Errno::EINVAL)?;
    p.downcast_ref::<Backing>().copied().ok_or(Errno::EINVAL)
}

fn kind_of(f: *mut CFile) -> Option<FileKind> {
    // SAFETY: as above.
    unsafe { host().ok()?.file(f) }.map(|f| f.kind())
}

unsafe extern "C" fn can_huge(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    kind_of(f) == Some(FileKind::HugeMemfd) && backing(f).is_ok()
}

unsafe extern "C" fn can_gmem(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    kind_of(f) == Some(FileKind::GuestMemfd) && backing(f).is_ok()
}

const HUGE_PAGE_BYTES: u64 = 4096;

unsafe extern "C" fn preserve<const K: u8>(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc((|| {
        let b = backing(a.file)?;
        let kho = host()?.kho()?;
        let size = b.nr * (HUGE_PAGE_BYTES << b.order);
        let data = if K == 0 {
            kho.alloc_preserve_obj(&hugemfd_ser {
                size,
                pos: 0,
                nr_folios: b.nr,
                folios: kho_vmalloc::new_zeroed(),
                order: b.order as u8,
            })?
            .addr()
            .as_u64()
        } else {
            let mut flags = 0;
            if b.hugetlb {
                flags |= GUEST_MEMFD_LUO_FLAG_HUGETLB;
            }
            kho.alloc_preserve_obj(&guest_memfd_luo_ser {
                size,
                flags,
                nr_folios: b.nr,
                vm_token: 0,
                folios: kho_vmalloc::new_zeroed(),
            })?
            .addr()
            .as_u64()
        };
        if b.hugetlb {
            with(|s, kho| {
                *s.preserved.entry(b.order).or_default() += b.nr;
                sync_outgoing(s, kho)
            })??;
        }
        a.serialized_data = data;
        Ok(())
    })())
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    if let Ok(b) = backing(a.file) {
        if b.hugetlb {
            let _ = with(|s, kho| {
                if let Some(n) = s.preserved.get_mut(&b.order) {
                    *n = n.saturating_sub(b.nr);
                }
                sync_outgoing(s, kho)
            });
        }
        if let Ok(kho) = host().and_then(|h| h.kho()) {
            let _ = kho.unpreserve_free(PhysAddr::new(a.serialized_data));
        }
    }
}

/// What a preserved file's data says: its backing.
fn read_backing<const K: u8>(kho: &Kho, data: u64) -> Result<Backing, Errno> {
    if K == 0 {
        let s: hugemfd_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
        Ok(Backing {
            hugetlb: true,
            order: u32::from(s.order),
            nr: s.nr_folios,
        })
    } else {
        let s: guest_memfd_luo_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
        let huge = s.flags & GUEST_MEMFD_LUO_FLAG_HUGETLB != 0;
        Ok(Backing {
            hugetlb: huge,
            order: if huge {
                (s.size / s.nr_folios.max(1) / HUGE_PAGE_BYTES).trailing_zeros()
            } else {
                0
            },
            nr: s.nr_folios,
        })
    }
}

/// In the FLB form, the pools exist only once the FLB is retrieved.
fn ensure_pools(hugetlb: bool) -> Result<(), Errno> {
    if hugetlb && with(|s, _| s.form)? == Some(Form::Flb) {
        let h = host()?;
        h.flb_get_incoming(flb_ptr())?;
        h.flb_put_incoming(flb_ptr());
    }
    Ok(())
}

unsafe extern "C" fn retrieve<const K: u8>(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let h = host()?;
        let kho = h.kho()?;
        let b = read_backing::<K>(&kho, a.serialized_data)?;
        ensure_pools(b.hugetlb)?;
        if b.hugetlb {
            with(|s, _| {
                let p = s.pools.get_mut(&b.order).ok_or(Errno::EINVAL)?;
                p.held_incoming = p.held_incoming.checked_sub(b.nr).ok_or(Errno::EINVAL)?;
                Ok::<(), Errno>(())
            })??;
        }
        let (kind, name) = if K == 0 {
            (FileKind::HugeMemfd, "huge-memfd")
        } else {
            (FileKind::GuestMemfd, "guest_memfd")
        };
        let f = h.open_synthetic(kind, name, Box::new(b))?;
        a.file = h.file_to_c(f)?;
        let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
        Ok(())
    })())
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    if a.retrieve_status > 0 {
        return;
    }
    // Never retrieved: its pages go back to the free pool.
    let Ok(kho) = host().and_then(|h| h.kho()) else {
        return;
    };
    let b = if std::ptr::eq(a.handler.cast_const(), &HUGE_MEMFD.0) {
        read_backing::<0>(&kho, a.serialized_data)
    } else {
        read_backing::<1>(&kho, a.serialized_data)
    };
    let Ok(b) = b else { return };
    let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
    let _ = kho.unpreserve_free(PhysAddr::new(a.serialized_data));
    if b.hugetlb && ensure_pools(true).is_ok() {
        let _ = with(|s, _| {
            if let Some(p) = s.pools.get_mut(&b.order) {
                let n = b.nr.min(p.held_incoming);
                p.held_incoming -= n;
                p.free += n;
            }
        });
    }
}

/// Registers both handlers in the current kernel, with the HugeTLB state in `form`; call it
/// once per boot, before anything else touches HugeTLB (it resets the kernel's state).
pub fn register(form: Form) -> Result<(), Errno> {
    let h = host()?;
    // A fresh kernel (a dead kernel's KHO may have had the same address).
    with(|s, _| {
        *s = State {
            form: Some(form),
            ..State::default()
        }
    })?;
    for fh in [&HUGE_MEMFD, &GUEST_MEMFD] {
        // SAFETY: `'static`, immutable handlers.
        unsafe { h.register_file_handler(fh.as_ptr()) }?;
    }
    match form {
        Form::Flb => {
            for fh in [&HUGE_MEMFD, &GUEST_MEMFD] {
                // SAFETY: `'static` descriptors; the handler is registered.
                unsafe { h.register_flb(fh.as_ptr(), flb_ptr()) }?;
            }
            // The RFC's init: get the incoming state eagerly so free pages return to the pool.
            match h.flb_get_incoming(flb_ptr()) {
                Ok(_) => h.flb_put_incoming(flb_ptr()),
                Err(Errno::ENODATA | Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Form::Subsystem => {
            // SAFETY: a `'static` subsystem with a NUL-terminated name.
            unsafe {
                h.register_subsystem((&HUGETLB_SUB.0 as *const liveupdate_subsystem).cast_mut())
            }?;
        }
    }
    Ok(())
}
