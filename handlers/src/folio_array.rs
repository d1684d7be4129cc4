//! A handler's array of fixed-size records (`guest_memfd_luo_folio_ser`, `hugemfd_folio_ser`)
//! in a preserved vmalloc area (`struct kho_vmalloc`), as upstream's
//! `kho_preserve_vmalloc` / `kho_restore_vmalloc` users keep their folio arrays.

use luo_abi::kho::{KhoExt, KhoService, VmallocChunk, VmallocDesc};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::kho::{kho_vmalloc, kho_vmalloc_chunk};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

/// An outgoing array: the area's pages (order 0) and its preserved descriptor.
#[derive(Debug, Default)]
pub struct Preserved {
    /// The pages holding the records, in order.
    pub pages: Vec<PhysAddr>,
    /// The vmalloc descriptor (`None` for an empty array, handed over as all zeroes).
    pub desc: Option<VmallocDesc>,
}

impl Preserved {
    /// Hands the array to LUO as the file's `private_data`, which LUO gives back to
    /// unpreserve ([`Preserved::take_private`]).
    pub(crate) fn into_private(self) -> *mut core::ffi::c_void {
        Box::into_raw(Box::new(self)).cast()
    }

    /// Takes back the array [`Preserved::into_private`] handed to LUO, leaving NULL.
    ///
    /// # Safety
    ///
    /// `*private` is NULL or a value of [`Preserved::into_private`] not taken back yet.
    pub(crate) unsafe fn take_private(private: &mut *mut core::ffi::c_void) -> Option<Preserved> {
        let p = core::mem::replace(private, core::ptr::null_mut());
        // SAFETY: a `Box<Preserved>` leaked by `into_private`, taken back once (the caller's
        // contract; the slot is NULL from now on).
        (!p.is_null()).then(|| *unsafe { Box::from_raw(p.cast::<Preserved>()) })
    }

    /// The descriptor as handed over.
    pub fn abi(&self) -> kho_vmalloc {
        self.desc
            .as_ref()
            .map_or_else(kho_vmalloc::new_zeroed, |d| kho_vmalloc {
                first: d.first.cast(),
                total_pages: d.total_pages,
                flags: d.flags,
                order: d.order,
            })
    }
}

fn desc_of(v: &kho_vmalloc) -> VmallocDesc {
    VmallocDesc {
        first: Phys::<VmallocChunk>::new(v.first.addr()),
        total_pages: v.total_pages,
        flags: v.flags,
        order: v.order,
    }
}

/// Writes `records` into fresh pages and preserves them as a vmalloc area. On failure
/// nothing stays allocated or preserved.
pub fn preserve<T: IntoBytes + Immutable>(
    kho: &dyn KhoService,
    records: &[T],
) -> Result<Preserved, Errno> {
    let mut p = Preserved::default();
    if records.is_empty() {
        return Ok(p);
    }
    let r = (|| {
        for chunk in records.as_bytes().chunks(PAGE_SIZE) {
            let page = kho.alloc_folio(0)?;
            p.pages.push(page);
            kho.write(page, chunk)?;
        }
        p.desc = Some(kho.preserve_vmalloc(&p.pages, 0)?);
        Ok(())
    })();
    match r {
        Ok(()) => Ok(p),
        Err(e) => {
            unpreserve(kho, p);
            Err(e)
        }
    }
}

/// Undoes [`preserve`] in the old kernel: unpreserves the area and frees its pages.
pub fn unpreserve(kho: &dyn KhoService, p: Preserved) {
    if let Some(d) = &p.desc {
        let _ = kho.unpreserve_vmalloc(d);
    }
    for page in p.pages {
        let _ = kho.free_folio(page, 0);
    }
}

/// In the new kernel: claims the area `v`, reads its first `nr` records and frees the area.
/// `EINVAL` when `nr` does not fit the area, or `nr` is nonzero and there is no area; the
/// area is claimed (and freed) whenever it is valid, so a bad `nr` leaks nothing.
pub fn restore<T: FromBytes>(
    kho: &dyn KhoService,
    v: &kho_vmalloc,
    nr: u64,
) -> Result<Vec<T>, Errno> {
    let desc = desc_of(v);
    if desc.first.addr().is_null() {
        return if nr == 0 {
            Ok(Vec::new())
        } else {
            Err(Errno::EINVAL)
        };
    }
    let pages = kho.restore_vmalloc(&desc)?;
    let r = read_records(kho, &pages, u32::from(desc.order), nr);
    for p in pages {
        let _ = kho.free_folio(p, u32::from(desc.order));
    }
    r
}

fn read_records<T: FromBytes>(
    kho: &dyn KhoService,
    pages: &[PhysAddr],
    order: u32,
    nr: u64,
) -> Result<Vec<T>, Errno> {
    let size = size_of::<T>();
    let page_bytes = PAGE_SIZE << order;
    let cap = (pages.len() * page_bytes / size) as u64;
    if nr > cap {
        return Err(Errno::EINVAL);
    }
    let mut bytes = vec![0u8; nr as usize * size];
    for (i, chunk) in bytes.chunks_mut(page_bytes).enumerate() {
        kho.read(pages[i], chunk)?;
    }
    bytes
        .chunks_exact(size)
        .map(|c| T::read_from_bytes(c).map_err(|_| Errno::EINVAL))
        .collect()
}

/// The address of page `i` of an incoming area, read from its first chunk without claiming
/// anything (for tests that corrupt a handed-over array before its handler reads it).
pub fn page_of(kho: &dyn KhoService, v: &kho_vmalloc, i: usize) -> Result<PhysAddr, Errno> {
    if v.first.addr().is_null() {
        return Err(Errno::EINVAL);
    }
    let c: kho_vmalloc_chunk = kho.read_obj(v.first)?;
    let p = *c.phys.get(i).ok_or(Errno::EINVAL)?;
    Ok(PhysAddr::new(p))
}
