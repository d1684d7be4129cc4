//! The memfd file handler (`mm/memfd_luo.c`), every version: writes `memfd-v1` (6.19/7.0),
//! `memfd-v2` (7.3) or the feature-negotiated `memfd` (next), and reads older versions
//! through reader-only registrations (`can_preserve` false) that migrate on retrieve.
//!
//! Upstream semantics (reference/luo-upstream.md §7, §8a):
//! * only unlinked shmem files qualify (`can_preserve`); `get_id` is the inode;
//! * PRESERVE_FD freezes the inode (growing/shrinking refused from then on), checks seals
//!   (`EOPNOTSUPP`) and size (`EFBIG`), pins and preserves every folio **without copying
//!   data**, and writes the folio array into a preserved vmalloc area;
//! * freeze refreshes `pos`; unpreserve undoes everything and unfreezes;
//! * retrieve builds a new memfd with seals, pos and size over the very same folios; folios
//!   a `memfd-v1` writer recorded as not up to date are zeroed;
//! * finish releases the folios of a file never retrieved.

pub mod format;

use std::ffi::{c_int, c_ulong};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::file::{File, MFD_ALLOW_SEALING, ShmemFile, ShmemFolio};
use luo_abi::kho::{KhoService, VmallocChunk, VmallocDesc};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::kho::kho_vmalloc;
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use luo_generated::memfd::{MEMFD_LUO_FOLIO_DIRTY, MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser};
use zerocopy::{FromZeros, IntoBytes};

pub use format::{Format, Next, V1, V2};

use crate::host::{FileOps, StaticHandler, host};

const PAGE: u64 = PAGE_SIZE as u64;
const ENTRY: usize = size_of::<memfd_luo_folio_ser>();

type Kho = Arc<dyn KhoService + Send + Sync>;

/// Counters of what the handler did to folio *data* (process-wide).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Folios whose data the handler copied: preserving a memfd never copies, so this stays 0.
    pub folios_copied: u64,
    /// Folios preserved.
    pub folios_preserved: u64,
    /// Folios restored into a retrieved file.
    pub folios_restored: u64,
    /// Folios a `memfd-v1` image recorded as not up to date, zeroed on retrieve.
    pub folios_zeroed: u64,
    /// Folios of never-retrieved files released at finish.
    pub folios_discarded: u64,
}

static COPIED: AtomicU64 = AtomicU64::new(0);
static PRESERVED: AtomicU64 = AtomicU64::new(0);
static RESTORED: AtomicU64 = AtomicU64::new(0);
static ZEROED: AtomicU64 = AtomicU64::new(0);
static DISCARDED: AtomicU64 = AtomicU64::new(0);

/// The handler's counters.
pub fn stats() -> Stats {
    Stats {
        folios_copied: COPIED.load(Ordering::Relaxed),
        folios_preserved: PRESERVED.load(Ordering::Relaxed),
        folios_restored: RESTORED.load(Ordering::Relaxed),
        folios_zeroed: ZEROED.load(Ordering::Relaxed),
        folios_discarded: DISCARDED.load(Ordering::Relaxed),
    }
}

const fn writer_ops<F: Format>() -> liveupdate_file_ops {
    liveupdate_file_ops {
        can_preserve: Some(can_preserve),
        preserve: Some(preserve::<F>),
        unpreserve: Some(unpreserve),
        freeze: Some(freeze::<F>),
        unfreeze: None,
        retrieve: Some(retrieve::<F>),
        can_finish: None,
        finish: Some(finish::<F>),
        get_id: Some(get_id),
        owner: std::ptr::null_mut(),
    }
}

const fn reader_ops<F: Format>() -> liveupdate_file_ops {
    liveupdate_file_ops {
        can_preserve: Some(never_preserve),
        preserve: Some(refuse_preserve),
        unpreserve: Some(nothing),
        freeze: None,
        unfreeze: None,
        retrieve: Some(retrieve::<F>),
        can_finish: None,
        finish: Some(finish::<F>),
        get_id: None,
        owner: std::ptr::null_mut(),
    }
}

static V1_OPS: FileOps = FileOps(writer_ops::<V1>());
static V2_OPS: FileOps = FileOps(writer_ops::<V2>());
static NEXT_OPS: FileOps = FileOps(writer_ops::<Next>());
static V1_READ_OPS: FileOps = FileOps(reader_ops::<V1>());
static V2_READ_OPS: FileOps = FileOps(reader_ops::<V2>());

/// The 6.19/7.0 handler: writes `memfd-v1`.
pub static MEMFD_V1: StaticHandler = StaticHandler::new(&V1_OPS, V1::COMPAT);
/// The 7.3 handler: writes `memfd-v2`.
pub static MEMFD_V2: StaticHandler = StaticHandler::new(&V2_OPS, V2::COMPAT);
/// The next handler: writes the feature-negotiated `memfd`.
pub static MEMFD_NEXT: StaticHandler = StaticHandler::new(&NEXT_OPS, Next::COMPAT);
/// Reads `memfd-v1` in a newer kernel (migration; never preserves).
pub static MEMFD_V1_READER: StaticHandler = StaticHandler::new(&V1_READ_OPS, V1::COMPAT);
/// Reads `memfd-v2` in a newer kernel (never preserves).
pub static MEMFD_V2_READER: StaticHandler = StaticHandler::new(&V2_READ_OPS, V2::COMPAT);

/// A memfd format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `memfd-v1`.
    V1,
    /// `memfd-v2`.
    V2,
    /// `memfd` (feature negotiation).
    Next,
}

/// The handlers a kernel writing `writes` and reading `reads` registers: the writer first,
/// then a reader for each other version read.
pub fn handlers(writes: Version, reads: &[Version]) -> Vec<&'static StaticHandler> {
    let mut v = vec![match writes {
        Version::V1 => &MEMFD_V1,
        Version::V2 => &MEMFD_V2,
        Version::Next => &MEMFD_NEXT,
    }];
    for r in reads {
        match r {
            _ if *r == writes => {}
            Version::V1 => v.push(&MEMFD_V1_READER),
            Version::V2 => v.push(&MEMFD_V2_READER),
            // Nothing older than `next` can read it; no reader-only registration is needed.
            Version::Next => v.push(&MEMFD_NEXT),
        }
    }
    v
}

/// Registers [`handlers`] with the current kernel (upstream: late_initcall).
pub fn register(writes: Version, reads: &[Version]) -> Result<Vec<&'static StaticHandler>, Errno> {
    let h = host()?;
    let list = handlers(writes, reads);
    for fh in &list {
        // SAFETY: a `'static`, immutable handler.
        unsafe { h.register_file_handler(fh.as_ptr()) }?;
    }
    Ok(list)
}

/// What preserve keeps for unpreserve (`private_data`).
struct Private {
    folios: Vec<ShmemFolio>,
    array: Vec<PhysAddr>,
    desc: Option<VmallocDesc>,
    ser: PhysAddr,
}

fn kho() -> Result<Kho, Errno> {
    host()?.kho()
}

fn file_of<'a>(p: *mut CFile) -> Result<&'a dyn File, Errno> {
    // SAFETY: LUO passes files it holds a reference to for the whole callback.
    unsafe { host()?.file(p) }.ok_or(Errno::EINVAL)
}

fn to_c(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_neg(),
    }
}

fn read_ser<F: Format>(kho: &Kho, data: u64) -> Result<format::Ser, Errno> {
    if data == 0 {
        return Err(Errno::EINVAL);
    }
    let mut b = vec![0u8; F::SIZE];
    kho.read(PhysAddr::new(data), &mut b)?;
    F::decode(&b)
}

/// Claims the page of a handed-over `memfd_luo_ser` (KHO refuses an address that is not an
/// incoming preserved page, so a corrupt `serialized_data` is never dereferenced) and reads
/// it; returns it with the page's order, for [`KhoService::free_folio`]. A record that does
/// not decode is released at once.
fn claim_ser<F: Format>(kho: &Kho, data: u64) -> Result<(format::Ser, u32), Errno> {
    if data == 0 {
        return Err(Errno::EINVAL);
    }
    let at = PhysAddr::new(data);
    let order = kho.restore_folio(at)?;
    let r = read_ser::<F>(kho, data);
    if r.is_err() {
        let _ = kho.free_folio(at, order);
    }
    r.map(|s| (s, order))
}

fn desc_to_abi(d: &VmallocDesc) -> kho_vmalloc {
    kho_vmalloc {
        first: d.first.cast(),
        total_pages: d.total_pages,
        flags: d.flags,
        order: d.order,
    }
}

fn desc_from_abi(v: &kho_vmalloc) -> VmallocDesc {
    VmallocDesc {
        first: Phys::<VmallocChunk>::new(v.first.addr()),
        total_pages: v.total_pages,
        flags: v.flags,
        order: v.order,
    }
}

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, file: *mut CFile) -> bool {
    file_of(file)
        .ok()
        .and_then(|f| f.as_shmem())
        .is_some_and(|s| s.nlink() == 0)
}

unsafe extern "C" fn never_preserve(_h: *mut liveupdate_file_handler, _f: *mut CFile) -> bool {
    false
}

unsafe extern "C" fn refuse_preserve(_a: *mut liveupdate_file_op_args) -> c_int {
    Errno::EOPNOTSUPP.to_neg()
}

unsafe extern "C" fn nothing(_a: *mut liveupdate_file_op_args) {}

unsafe extern "C" fn get_id(file: *mut CFile) -> c_ulong {
    file_of(file)
        .ok()
        .and_then(|f| f.as_shmem())
        .map_or(0, |s| s.inode_id().0 as c_ulong)
}

unsafe extern "C" fn preserve<F: Format>(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    to_c(do_preserve::<F>(a))
}

fn do_preserve<F: Format>(a: &mut liveupdate_file_op_args) -> Result<(), Errno> {
    let kho = kho()?;
    let file = file_of(a.file)?;
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    // Upstream: inode_lock + shmem_freeze(inode, true) first.
    shm.set_frozen(true);
    let mut p = Private {
        folios: Vec::new(),
        array: Vec::new(),
        desc: None,
        ser: PhysAddr::NULL,
    };
    match preserve_steps::<F>(&kho, file, &mut p) {
        Ok(()) => {
            a.serialized_data = p.ser.as_u64();
            a.private_data = Box::into_raw(Box::new(p)).cast();
            Ok(())
        }
        Err(e) => {
            undo(&kho, file, p);
            Err(e)
        }
    }
}

fn preserve_steps<F: Format>(kho: &Kho, file: &dyn File, p: &mut Private) -> Result<(), Errno> {
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    let seals = shm.seals();
    if let Some(all) = F::SEALS
        && u64::from(seals) & !all != 0
    {
        return Err(Errno::EOPNOTSUPP);
    }
    let size = shm.size();
    if size.div_ceil(PAGE) > u64::from(u32::MAX) {
        return Err(Errno::EFBIG);
    }
    let mut ser = format::Ser {
        pos: shm.pos(),
        size,
        seals: if F::SEALS.is_some() { seals } else { 0 },
        nr_folios: 0,
        folios: kho_vmalloc::new_zeroed(),
    };
    p.ser = kho.alloc_preserve(F::SIZE)?;
    p.folios = shm.pin_folios()?;
    // All or nothing: on an error none of them stays preserved.
    kho.preserve_folios(&p.folios)?;
    PRESERVED.fetch_add(p.folios.len() as u64, Ordering::Relaxed);
    if !p.folios.is_empty() {
        let mut bytes = Vec::with_capacity(p.folios.len() * ENTRY);
        for f in &p.folios {
            let mut e = memfd_luo_folio_ser::new_zeroed();
            e.set_pfn(f.phys.pfn());
            let flags = if F::REAL_FLAGS {
                (if f.dirty { MEMFD_LUO_FOLIO_DIRTY } else { 0 })
                    | (if f.uptodate {
                        MEMFD_LUO_FOLIO_UPTODATE
                    } else {
                        0
                    })
            } else {
                // 7.3 on: always dirty; a folio not up to date would have been zeroed.
                MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE
            };
            e.set_flags(flags);
            e.index = f.index;
            bytes.extend_from_slice(e.as_bytes());
        }
        for chunk in bytes.chunks(PAGE_SIZE) {
            let page = kho.alloc_folio(0)?;
            p.array.push(page);
            kho.write(page, chunk)?;
        }
        let desc = kho.preserve_vmalloc(&p.array, 0)?;
        ser.nr_folios = p.folios.len() as u64;
        ser.folios = desc_to_abi(&desc);
        p.desc = Some(desc);
    }
    kho.write(p.ser, &F::encode(&ser))
}

/// Undoes a (possibly partial) preserve.
fn undo(kho: &Kho, file: &dyn File, p: Private) {
    if let Some(d) = &p.desc {
        let _ = kho.unpreserve_vmalloc(d);
    }
    for page in &p.array {
        let _ = kho.free_folio(*page, 0);
    }
    // Folios that were never preserved make this fail harmlessly.
    for f in &p.folios {
        let _ = kho.unpreserve_folio(f.phys, f.order);
    }
    if let Some(shm) = file.as_shmem() {
        if !p.folios.is_empty() {
            shm.unpin_folios(&p.folios);
        }
        shm.set_frozen(false);
    }
    if !p.ser.is_null() {
        let _ = kho.unpreserve_free(p.ser);
    }
}

unsafe extern "C" fn unpreserve(args: *mut liveupdate_file_op_args) {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    if a.private_data.is_null() {
        return;
    }
    // SAFETY: `private_data` is the `Box<Private>` preserve leaked; LUO hands it back once.
    let p = unsafe { Box::from_raw(a.private_data.cast::<Private>()) };
    a.private_data = std::ptr::null_mut();
    if let (Ok(kho), Ok(file)) = (kho(), file_of(a.file)) {
        undo(&kho, file, *p);
    }
}

unsafe extern "C" fn freeze<F: Format>(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    to_c((|| {
        let kho = kho()?;
        let shm = file_of(a.file)?.as_shmem().ok_or(Errno::EINVAL)?;
        let mut ser = read_ser::<F>(&kho, a.serialized_data)?;
        ser.pos = shm.pos();
        kho.write(PhysAddr::new(a.serialized_data), &F::encode(&ser))
    })())
}

/// Restores the folio array of `ser` (vmalloc area): its entries and the area's pages.
fn restore_array(
    kho: &Kho,
    ser: &format::Ser,
) -> Result<(Vec<memfd_luo_folio_ser>, Vec<PhysAddr>), Errno> {
    let nr = ser.nr_folios;
    if nr == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let folios = ser.folios;
    let desc = desc_from_abi(&folios);
    let pages = kho.restore_vmalloc(&desc)?;
    let per_page = (PAGE_SIZE << desc.order) / ENTRY;
    let cap = pages.len() as u64 * per_page as u64;
    if nr > cap {
        return Err(Errno::EINVAL);
    }
    let mut bytes = vec![0u8; nr as usize * ENTRY];
    for (i, chunk) in bytes.chunks_mut(per_page * ENTRY).enumerate() {
        kho.read(pages[i], chunk)?;
    }
    let entries = bytes
        .chunks_exact(ENTRY)
        .filter_map(|c| zerocopy::FromBytes::read_from_bytes(c).ok())
        .collect();
    Ok((entries, pages))
}

unsafe extern "C" fn retrieve<F: Format>(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    match do_retrieve::<F>(a.serialized_data) {
        Ok(f) => {
            a.file = f;
            0
        }
        Err(e) => e.to_neg(),
    }
}

fn do_retrieve<F: Format>(data: u64) -> Result<*mut CFile, Errno> {
    let h = host()?;
    let kho = kho()?;
    let (ser, ser_order) = claim_ser::<F>(&kho, data)?;
    let r = retrieve_claimed(h, &kho, &ser);
    // The record is consumed either way (found by the bit-flip sweep, which read records
    // at corrupt addresses before they were claimed).
    let _ = kho.free_folio(PhysAddr::new(data), ser_order);
    r
}

/// Makes a restored folio the file's, zeroing it first when it was never written.
fn install_folio(
    kho: &Kho,
    shm: &dyn ShmemFile,
    e: &memfd_luo_folio_ser,
    phys: PhysAddr,
    order: u32,
) -> Result<(), Errno> {
    if e.flags() & MEMFD_LUO_FOLIO_UPTODATE == 0 {
        // A memfd-v1 writer recorded the folio's real flags: one never written holds
        // garbage, so zero it before it becomes visible (§8a).
        kho.write(phys, &vec![0u8; (PAGE << order) as usize])?;
        ZEROED.fetch_add(1, Ordering::Relaxed);
    }
    shm.add_folio(ShmemFolio {
        index: e.index,
        phys,
        order,
        dirty: true,
        uptodate: true,
    })?;
    RESTORED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn retrieve_claimed(
    h: &dyn crate::host::Host,
    kho: &Kho,
    ser: &format::Ser,
) -> Result<*mut CFile, Errno> {
    let file = h.memfd_alloc_file("", MFD_ALLOW_SEALING)?;
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    shm.add_seals(ser.seals)?;
    shm.set_pos(ser.pos);
    shm.set_size(ser.size)?;
    let (entries, pages) = restore_array(kho, ser).map_err(|_| Errno::EINVAL)?;
    let phys = entries
        .iter()
        .map(|e| PhysAddr::from_pfn(e.pfn()).ok_or(Errno::EIO))
        .collect::<Result<Vec<_>, _>>()?;
    // One call for every folio (`kho_restore_folio` each). After an error the folios
    // already claimed are still released below: the file that would hold them is dropped.
    let mut orders = Vec::with_capacity(phys.len());
    let mut r = kho
        .restore_folios(&phys, &mut orders)
        .map_err(|_| Errno::EIO);
    for ((e, &phys), &order) in entries.iter().zip(&phys).zip(&orders) {
        if r.is_ok() {
            r = install_folio(kho, shm, e, phys, order);
        }
    }
    // In the model a folio now belongs to the file's region (after an error, to nobody): the
    // restore's reference is dropped, which frees nothing there.
    let _ = kho.free_folios(&phys[..orders.len()], &orders);
    r?;
    let order = u32::from({ ser.folios }.order);
    for p in pages {
        kho.free_folio(p, order)?;
    }
    h.file_to_c(file)
}

unsafe extern "C" fn finish<F: Format>(args: *mut liveupdate_file_op_args) {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    if a.retrieve_status != 0 {
        return;
    }
    let Ok(kho) = kho() else {
        return;
    };
    let Ok((ser, ser_order)) = claim_ser::<F>(&kho, a.serialized_data) else {
        return;
    };
    if let Ok((entries, pages)) = restore_array(&kho, &ser) {
        for e in &entries {
            if let Some(phys) = PhysAddr::from_pfn(e.pfn())
                && let Ok(order) = kho.restore_folio(phys)
            {
                let _ = kho.free_folio(phys, order);
                DISCARDED.fetch_add(1, Ordering::Relaxed);
            }
        }
        let order = u32::from({ ser.folios }.order);
        for p in pages {
            let _ = kho.free_folio(p, order);
        }
    }
    let _ = kho.free_folio(PhysAddr::new(a.serialized_data), ser_order);
}
