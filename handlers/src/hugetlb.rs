//! HugeTLB global state both ways (issue 6, the seed's question), shared by two file types:
//! HugeTLB memfds (`huge-memfd-v1`, here) and guest_memfd (`guest_memfd_luo_v1`,
//! [`crate::guest_memfd`], HugeTLB-backed or not).
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
//! The pools are counts per size; a file's pages are taken from its pool when it is created and
//! are real folios of the KHO model ([`crate::pages`]), listed in the file's handed-over folio
//! array (`hugemfd_folio_ser` here, `guest_memfd_luo_folio_ser` in [`crate::guest_memfd`]). A
//! never-retrieved file's pages go back to the free pool at finish; a retrieved file keeps
//! them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use luo_abi::Errno;
use luo_abi::file::FileKind;
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{PAGE_SIZE, Phys, PhysAddr};
use luo_generated::hugetlb::v1::{
    HUGEMFD_LUO_FH_COMPATIBLE, HUGETLB_LUO_FLB_COMPATIBLE, hugemfd_ser, hugetlb_ser,
};
use luo_generated::hugetlb::{hugemfd_folio_ser, hugetlb_hstate_ser};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
    liveupdate_flb, liveupdate_flb_op_args, liveupdate_flb_ops, liveupdate_subsystem,
    liveupdate_subsystem_ops,
};
use zerocopy::FromZeros;

use crate::folio_array;
use crate::guest_memfd::GUEST_MEMFD;
use crate::host::{FileOps, FlbOps, StaticFlb, StaticHandler, host, kind_of, rc, synthetic_of};
use crate::kvm::KVM_VM;
use crate::pages::{self, Folio, Pages};

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
pub(crate) fn alloc(order: u32, nr: u64) -> Result<(), Errno> {
    with(|s, _| {
        let p = s.pools.get_mut(&order).ok_or(Errno::ENOMEM)?;
        if p.free < nr {
            return Err(Errno::ENOMEM);
        }
        p.free -= nr;
        Ok(())
    })?
}

/// `nr` pages of `order` now belong to a preserved file (kept in step with the FLB data).
pub(crate) fn preserve_pages(order: u32, nr: u64) -> Result<(), Errno> {
    with(|s, kho| {
        *s.preserved.entry(order).or_default() += nr;
        sync_outgoing(s, kho)
    })?
}

/// Undoes [`preserve_pages`].
pub(crate) fn unpreserve_pages(order: u32, nr: u64) -> Result<(), Errno> {
    with(|s, kho| {
        if let Some(n) = s.preserved.get_mut(&order) {
            *n = n.saturating_sub(nr);
        }
        sync_outgoing(s, kho)
    })?
}

/// In the FLB form, the pools exist only once the FLB is retrieved.
fn ensure_pools() -> Result<(), Errno> {
    if with(|s, _| s.form)? == Some(Form::Flb) {
        let h = host()?;
        h.flb_get_incoming(flb_ptr())?;
        h.flb_put_incoming(flb_ptr());
    }
    Ok(())
}

/// A retrieved file takes its `nr` pages of `order` held for it (`EINVAL` if the pool holds
/// fewer).
pub(crate) fn claim_incoming(order: u32, nr: u64) -> Result<(), Errno> {
    ensure_pools()?;
    with(|s, _| {
        let p = s.pools.get_mut(&order).ok_or(Errno::EINVAL)?;
        p.held_incoming = p.held_incoming.checked_sub(nr).ok_or(Errno::EINVAL)?;
        Ok(())
    })?
}

/// A file that is not coming back returns its `nr` pages of `order` to the free pool.
pub(crate) fn release_incoming(order: u32, nr: u64) -> Result<(), Errno> {
    ensure_pools()?;
    with(|s, _| {
        if let Some(p) = s.pools.get_mut(&order) {
            let n = nr.min(p.held_incoming);
            p.held_incoming -= n;
            p.free += n;
        }
    })
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

static FLB_OPS: FlbOps = FlbOps(liveupdate_flb_ops {
    preserve: Some(flb_preserve),
    unpreserve: Some(flb_unpreserve),
    retrieve: Some(flb_retrieve),
    finish: Some(flb_finish),
    owner: std::ptr::null_mut(),
});

static HUGETLB_FLB: StaticFlb = StaticFlb::new(&FLB_OPS, HUGETLB_LUO_FLB_COMPATIBLE);

fn flb_ptr() -> *mut liveupdate_flb {
    HUGETLB_FLB.as_ptr()
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

// ---- the HugeTLB memfd handler ----------------------------------------------------------

/// A HugeTLB memfd (`memfd_create(MFD_HUGETLB)`): the payload of a [`FileKind::HugeMemfd`]
/// synthetic file. Its pages come from the HugeTLB pool at creation, all faulted in.
pub struct HugeMemfd {
    pages: Pages,
}

impl HugeMemfd {
    /// A HugeTLB memfd of `nr` huge pages of `order` from the current kernel's pool
    /// (`ENOMEM` if it has too few).
    pub fn new(order: u32, nr: u64) -> Result<HugeMemfd, Errno> {
        if order == 0 {
            return Err(Errno::EINVAL);
        }
        let pages = Pages::new(order, nr)?;
        alloc(order, nr)?;
        for i in 0..nr {
            pages.populate(i)?;
        }
        Ok(HugeMemfd { pages })
    }

    /// A HugeTLB memfd of `nr` huge pages of `order` whose pages belong to pools kept
    /// elsewhere — a C handler's own global state (`tests/c/huge_memfd_twin.c`): nothing is
    /// taken from this module's pools and folios are allocated on first write.
    pub fn accounted_elsewhere(order: u32, nr: u64) -> Result<HugeMemfd, Errno> {
        if order == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(HugeMemfd {
            pages: Pages::new(order, nr)?,
        })
    }

    /// Its memory.
    pub fn pages(&self) -> &Pages {
        &self.pages
    }
}

static HUGE_OPS: FileOps = FileOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: None,
    unfreeze: None,
    retrieve: Some(retrieve),
    can_finish: None,
    finish: Some(finish),
    get_id: None,
    owner: std::ptr::null_mut(),
});

/// The `huge-memfd-v1` handler.
pub static HUGE_MEMFD: StaticHandler = StaticHandler::new(&HUGE_OPS, HUGEMFD_LUO_FH_COMPATIBLE);

fn huge_of<'a>(f: *mut CFile) -> Option<&'a HugeMemfd> {
    synthetic_of::<HugeMemfd>(f)
}

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    kind_of(f) == Some(FileKind::HugeMemfd) && huge_of(f).is_some()
}

fn ser_at(data: u64) -> Phys<hugemfd_ser> {
    Phys::new(PhysAddr::new(data))
}

unsafe extern "C" fn preserve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc((|| {
        let m = huge_of(a.file).ok_or(Errno::EINVAL)?;
        let kho = host()?.kho()?;
        let order = m.pages.order();
        let records = m.pages.preserve_folios(|index, f| {
            let mut r = hugemfd_folio_ser::new_zeroed();
            r.set_pfn(f.phys.pfn());
            r.index = index;
            r
        })?;
        let array =
            folio_array::preserve(&*kho, &records).inspect_err(|_| m.pages.unpreserve_folios())?;
        let ser = hugemfd_ser {
            size: m.pages.size(),
            pos: 0,
            nr_folios: records.len() as u64,
            folios: array.abi(),
            order: order as u8,
        };
        let r = kho
            .alloc_preserve_obj(&ser)
            .and_then(|p| preserve_pages(order, m.pages.nr()).map(|()| p));
        match r {
            Ok(p) => {
                a.serialized_data = p.addr().as_u64();
                a.private_data = array.into_private();
                Ok(())
            }
            Err(e) => {
                folio_array::unpreserve(&*kho, array);
                m.pages.unpreserve_folios();
                Err(e)
            }
        }
    })())
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    let (Some(m), Ok(kho)) = (huge_of(a.file), host().and_then(|h| h.kho())) else {
        return;
    };
    // SAFETY: `private_data` is NULL or the array preserve handed to LUO, given back once.
    if let Some(array) = unsafe { folio_array::Preserved::take_private(&mut a.private_data) } {
        folio_array::unpreserve(&*kho, array);
    }
    m.pages.unpreserve_folios();
    let _ = unpreserve_pages(m.pages.order(), m.pages.nr());
    let _ = kho.unpreserve_free(PhysAddr::new(a.serialized_data));
}

/// A handed-over HugeTLB memfd: its state and folio records (the array claimed).
struct Incoming {
    ser: hugemfd_ser,
    records: Vec<hugemfd_folio_ser>,
}

fn read_incoming(kho: &Kho, data: u64) -> Result<Incoming, Errno> {
    let ser = kho.read_obj(ser_at(data))?;
    let records = folio_array::restore(&**kho, &{ ser.folios }, ser.nr_folios)?;
    Ok(Incoming { ser, records })
}

impl Incoming {
    fn order(&self) -> u32 {
        u32::from(self.ser.order)
    }

    /// Folio slots of the file (its size in huge pages); `EINVAL` unless the size is a
    /// nonzero multiple of the huge page size.
    fn slots(&self) -> Result<u64, Errno> {
        let order = self.order();
        if order == 0 || order > 18 {
            return Err(Errno::EINVAL);
        }
        let fb = (PAGE_SIZE as u64) << order;
        let size = self.ser.size;
        if size == 0 || !size.is_multiple_of(fb) {
            return Err(Errno::EINVAL);
        }
        Ok(size / fb)
    }

    /// Claims every folio after checking every record (reserved bits clear, index inside the
    /// file, once each, a folio of the file's order). On failure the claimed folios are freed.
    fn restore_folios<'k>(
        &self,
        kho: &'k Kho,
    ) -> Result<(pages::Claimed<'k>, BTreeMap<u64, Folio>), Errno> {
        let slots = self.slots()?;
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.records {
            if r.reserved() != 0
                || r.index >= slots
                || !seen.insert(r.index)
                || PhysAddr::from_pfn(r.pfn()).is_none()
            {
                return Err(Errno::EINVAL);
            }
        }
        let mut claimed = pages::Claimed::new(kho, true);
        let mut out = BTreeMap::new();
        for r in &self.records {
            let (phys, o) = claimed.claim(r.pfn())?;
            if o != self.order() {
                return Err(Errno::EINVAL);
            }
            out.insert(
                r.index,
                Folio {
                    phys,
                    uptodate: true,
                },
            );
        }
        Ok((claimed, out))
    }

    /// Claims and frees every folio that can be claimed, their pages back to the free pool.
    fn discard(&self, kho: &Kho) {
        pages::discard(kho, self.records.iter().map(|r| r.pfn()), true);
    }
}

unsafe extern "C" fn retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let h = host()?;
        let kho = h.kho()?;
        let inc = read_incoming(&kho, a.serialized_data);
        // Rebuilt or not, the handed-over state goes now: finish skips a failed retrieve.
        let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
        let inc = inc?;
        let r = (|| {
            let slots = inc.slots()?;
            let (claimed, folios) = inc.restore_folios(&kho)?;
            let n = folios.len() as u64;
            let pages = Pages::restored(inc.order(), slots, folios)?;
            claimed.keep();
            // The file keeps the pages held for it; on failure dropping `pages` frees them.
            claim_incoming(inc.order(), n)?;
            Ok(pages)
        })();
        match r {
            Ok(pages) => {
                let f = h.open_synthetic(
                    FileKind::HugeMemfd,
                    "memfd:huge",
                    Box::new(HugeMemfd { pages }),
                )?;
                a.file = h.file_to_c(f)?;
                Ok(())
            }
            Err(e) => {
                inc.discard(&kho);
                Err(e)
            }
        }
    })())
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    if a.retrieve_status != 0 {
        return;
    }
    // Never retrieved: its pages go back to the free pool.
    let Ok(kho) = host().and_then(|h| h.kho()) else {
        return;
    };
    if let Ok(inc) = read_incoming(&kho, a.serialized_data) {
        inc.discard(&kho);
    }
    let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
}

/// Registers, in the current kernel, the HugeTLB state in `form` and the handlers of the
/// files that use it: `huge-memfd-v1`, `guest_memfd_luo_v1` and the `kvm_vm_luo_v1` handler
/// guest_memfd depends on. Call it once per boot, before anything else touches HugeTLB (it
/// resets the kernel's state).
pub fn register(form: Form) -> Result<(), Errno> {
    let h = host()?;
    // A fresh kernel (a dead kernel's KHO may have had the same address).
    with(|s, _| {
        *s = State {
            form: Some(form),
            ..State::default()
        }
    })?;
    for fh in [&HUGE_MEMFD, &KVM_VM, &GUEST_MEMFD] {
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
