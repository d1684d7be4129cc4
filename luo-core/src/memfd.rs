//! A minimal but real memfd handler (`memfd-v2`, `mm/memfd_luo.c`), written by hand against
//! the generated ops table.
//!
//! * preserve: freeze the inode, check seals (`EOPNOTSUPP`) and size (`EFBIG`), pin every
//!   folio, preserve each one, write the `memfd_luo_folio_ser` array (always
//!   DIRTY|UPTODATE) into a preserved vmalloc area, `kho_alloc_preserve` the `memfd_luo_ser`;
//! * freeze refreshes `pos`; unpreserve undoes everything;
//! * retrieve: a new memfd with the seals, pos and size, each folio restored and inserted at its
//!   index (in the model, the same host memfd: no copy);
//! * finish: for a file never retrieved, discard every folio.

use std::ffi::{c_int, c_ulong};
use std::sync::Arc;

use luo_abi::file::{File, MFD_ALLOW_SEALING, MemfdService, ShmemFolio};
use luo_abi::kho::{KhoExt, KhoService, VmallocChunk, VmallocDesc};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::kho::kho_vmalloc;
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use luo_generated::memfd::v2::{MEMFD_LUO_ALL_SEALS, MEMFD_LUO_FH_COMPATIBLE, memfd_luo_ser};
use luo_generated::memfd::{MEMFD_LUO_FOLIO_DIRTY, MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser};
use zerocopy::{FromZeros, IntoBytes};

use crate::file::CoreFile;
use crate::kernel::Kernel;
use crate::kho::Kho;
use crate::{StaticHandler, StaticOps};

const PAGE: u64 = PAGE_SIZE as u64;
const ENTRY: usize = size_of::<memfd_luo_folio_ser>();

static OPS: StaticOps = StaticOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: Some(freeze),
    unfreeze: None,
    retrieve: Some(retrieve),
    can_finish: None,
    finish: Some(finish),
    get_id: Some(get_id),
    owner: std::ptr::null_mut(),
});

/// The memfd file handler.
pub static MEMFD_HANDLER: StaticHandler = StaticHandler::new(&OPS, MEMFD_LUO_FH_COMPATIBLE);

/// Registers [`MEMFD_HANDLER`] with `k` (upstream: late_initcall).
pub fn register(k: &Kernel) -> Result<(), Errno> {
    k.register_file_handler(&MEMFD_HANDLER)
}

/// What preserve keeps for unpreserve (`private_data`).
struct Private {
    folios: Vec<ShmemFolio>,
    array: Vec<PhysAddr>,
    desc: Option<VmallocDesc>,
    ser: PhysAddr,
}

fn kho() -> Result<Arc<Kho>, Errno> {
    Kernel::current()
        .map(|k| Arc::clone(k.kho()))
        .ok_or(Errno::EOPNOTSUPP)
}

fn file_of<'a>(p: *mut CFile) -> Result<&'a CoreFile, Errno> {
    // SAFETY: LUO passes files it holds a reference to for the whole callback.
    unsafe { CoreFile::from_c(p) }.ok_or(Errno::EINVAL)
}

fn to_c(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_neg(),
    }
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

unsafe extern "C" fn get_id(file: *mut CFile) -> c_ulong {
    file_of(file)
        .ok()
        .and_then(|f| f.as_shmem())
        .map_or(0, |s| s.inode_id().0 as c_ulong)
}

unsafe extern "C" fn preserve(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    to_c(do_preserve(a))
}

fn do_preserve(a: &mut liveupdate_file_op_args) -> Result<(), Errno> {
    let kho = kho()?;
    let file = file_of(a.file)?;
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    shm.set_frozen(true);
    let mut p = Private {
        folios: Vec::new(),
        array: Vec::new(),
        desc: None,
        ser: PhysAddr::NULL,
    };
    match preserve_steps(&kho, file, &mut p) {
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

fn preserve_steps(kho: &Kho, file: &CoreFile, p: &mut Private) -> Result<(), Errno> {
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    let seals = shm.seals();
    if u64::from(seals) & !MEMFD_LUO_ALL_SEALS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let size = shm.size();
    if size.div_ceil(PAGE) > u64::from(u32::MAX) {
        return Err(Errno::EFBIG);
    }
    let mut ser = memfd_luo_ser::new_zeroed();
    ser.pos = shm.pos();
    ser.size = size;
    ser.seals = seals;
    p.ser = kho.alloc_preserve(size_of::<memfd_luo_ser>())?;
    let folios = shm.pin_folios()?;
    p.folios = folios;
    for (done, f) in p.folios.iter().enumerate() {
        if let Err(e) = kho.preserve_folio(f.phys, f.order) {
            for g in &p.folios[..done] {
                let _ = kho.unpreserve_folio(g.phys, g.order);
            }
            return Err(e);
        }
    }
    if !p.folios.is_empty() {
        let mut bytes = Vec::with_capacity(p.folios.len() * ENTRY);
        for f in &p.folios {
            let mut e = memfd_luo_folio_ser::new_zeroed();
            e.set_pfn(f.phys.pfn());
            e.set_flags(MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE);
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
    kho.write_obj(Phys::<memfd_luo_ser>::new(p.ser), &ser)
}

/// Undoes a (possibly partial) preserve.
fn undo(kho: &Kho, file: &CoreFile, p: Private) {
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

unsafe extern "C" fn freeze(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    to_c((|| {
        let kho = kho()?;
        let shm = file_of(a.file)?.as_shmem().ok_or(Errno::EINVAL)?;
        let at = Phys::<memfd_luo_ser>::new(PhysAddr::new(a.serialized_data));
        let mut ser = kho.read_obj(at)?;
        ser.pos = shm.pos();
        kho.write_obj(at, &ser)
    })())
}

/// Restores the folio array of `ser` (vmalloc area) and returns its entries and the area's
/// pages.
fn restore_array(
    kho: &Kho,
    ser: &memfd_luo_ser,
) -> Result<(Vec<memfd_luo_folio_ser>, Vec<PhysAddr>), Errno> {
    let nr = ser.nr_folios;
    if nr == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let folios = ser.folios;
    let desc = desc_from_abi(&folios);
    let pages = kho.restore_vmalloc(&desc)?;
    let cap = (pages.len() as u64 * (PAGE << desc.order)) / ENTRY as u64;
    if nr > cap {
        return Err(Errno::EINVAL);
    }
    let mut bytes = vec![0u8; nr as usize * ENTRY];
    let per_page = (PAGE_SIZE << desc.order) / ENTRY;
    for (i, chunk) in bytes.chunks_mut(per_page * ENTRY).enumerate() {
        kho.read(pages[i], chunk)?;
    }
    let entries = bytes
        .chunks_exact(ENTRY)
        .filter_map(|c| zerocopy::FromBytes::read_from_bytes(c).ok())
        .collect();
    Ok((entries, pages))
}

unsafe extern "C" fn retrieve(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    match do_retrieve(a.serialized_data) {
        Ok(f) => {
            a.file = CoreFile::into_c(f);
            0
        }
        Err(e) => e.to_neg(),
    }
}

fn do_retrieve(data: u64) -> Result<Arc<CoreFile>, Errno> {
    let kho = kho()?;
    let at = Phys::<memfd_luo_ser>::new(PhysAddr::new(data));
    let ser = kho.read_obj(at).map_err(|_| Errno::EINVAL)?;
    if u64::from(ser.seals) & !MEMFD_LUO_ALL_SEALS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    // No flags are defined in memfd-v2: refuse unknown bits rather than ignore them.
    if ser.flags != 0 {
        return Err(Errno::EINVAL);
    }
    let k = Kernel::current().ok_or(Errno::EOPNOTSUPP)?;
    let file =
        CoreFile::from_ref(k.memfd_alloc_file("", MFD_ALLOW_SEALING)?).ok_or(Errno::EINVAL)?;
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    shm.add_seals(ser.seals)?;
    shm.set_pos(ser.pos);
    shm.set_size(ser.size)?;
    let (entries, pages) = restore_array(&kho, &ser).map_err(|_| Errno::EINVAL)?;
    for e in &entries {
        let phys = PhysAddr::from_pfn(e.pfn()).ok_or(Errno::EIO)?;
        let order = kho.restore_folio(phys).map_err(|_| Errno::EIO)?;
        shm.add_folio(ShmemFolio {
            index: e.index,
            phys,
            order,
            dirty: e.flags() & MEMFD_LUO_FOLIO_DIRTY != 0,
            uptodate: e.flags() & MEMFD_LUO_FOLIO_UPTODATE != 0,
        })?;
        // In the model the folio now belongs to the file's region; nothing to free.
        let _ = kho.free_folio(phys, order);
    }
    for p in pages {
        kho.free_folio(p, u32::from({ ser.folios }.order))?;
    }
    kho.restore_free(at.addr())?;
    Ok(file)
}

unsafe extern "C" fn finish(args: *mut liveupdate_file_op_args) {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *args };
    if a.retrieve_status != 0 {
        return;
    }
    let Ok(kho) = kho() else {
        return;
    };
    let at = Phys::<memfd_luo_ser>::new(PhysAddr::new(a.serialized_data));
    let Ok(ser) = kho.read_obj(at) else {
        return;
    };
    if let Ok((entries, pages)) = restore_array(&kho, &ser) {
        for e in &entries {
            if let Some(phys) = PhysAddr::from_pfn(e.pfn())
                && let Ok(order) = kho.restore_folio(phys)
            {
                let _ = kho.free_folio(phys, order);
            }
        }
        for p in pages {
            let _ = kho.free_folio(p, u32::from({ ser.folios }.order));
        }
    }
    let _ = kho.restore_free(at.addr());
}
