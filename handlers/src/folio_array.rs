// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A handler's array of fixed-size records (`guest_memfd_luo_folio_ser`, `hugemfd_folio_ser`)
//! in a preserved vmalloc area (`struct kho_vmalloc`), as upstream's
//! `kho_preserve_vmalloc` / `kho_restore_vmalloc` users keep their folio arrays.
//!
//! [`FolioArray`] is the outgoing side: a handler's `preserve` builds one from its records,
//! puts [`FolioArray::abi`] into the struct it hands over and keeps the array as its private
//! data (`type Private = FolioArray<R>`), which the runtime gives back to `unpreserve`. The
//! incoming side is [`FolioArray::restore`]: it claims the area, reads the records and frees
//! the area, whatever the records say.

use core::marker::PhantomData;

use luo_abi::kho::{KhoExt, KhoService, VmallocChunk, VmallocDesc};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::kho::{kho_vmalloc, kho_vmalloc_chunk};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

/// An outgoing array of `R` records: the area's pages (order 0) and its preserved descriptor.
///
/// Not freed on drop: releasing needs the KHO of the kernel that preserved it, and a
/// preserved array of a kernel that kexec'd belongs to the next kernel. Give it back with
/// [`FolioArray::unpreserve`].
#[derive(Debug)]
#[must_use = "a preserved array stays preserved until `unpreserve`"]
pub struct FolioArray<R> {
    /// The pages holding the records, in order.
    pages: Vec<PhysAddr>,
    /// The vmalloc descriptor (`None` for an empty array, handed over as all zeroes).
    desc: Option<VmallocDesc>,
    _records: PhantomData<fn() -> R>,
}

impl<R> FolioArray<R> {
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

    /// The pages holding the records, in order.
    pub fn pages(&self) -> &[PhysAddr] {
        &self.pages
    }

    /// Undoes [`FolioArray::preserve`] in the old kernel: unpreserves the area and frees its
    /// pages.
    pub fn unpreserve(self, kho: &dyn KhoService) {
        if let Some(d) = &self.desc {
            // `void` path (unpreserve, or a failed preserve being undone): KHO keeps its own
            // accounting, a failure here is nothing the caller could act on.
            let _ = kho.unpreserve_vmalloc(d);
        }
        for page in self.pages {
            let _ = kho.free_folio(page, 0);
        }
    }
}

impl<R> FolioArray<R> {
    /// Preserves `n_pages` fresh pages as a vmalloc area, each filled by `write_page(index,
    /// page)` first. On failure nothing stays allocated or preserved.
    fn preserve_pages(
        kho: &dyn KhoService,
        n_pages: usize,
        mut write_page: impl FnMut(usize, PhysAddr) -> Result<(), Errno>,
    ) -> Result<FolioArray<R>, Errno> {
        let mut a = FolioArray {
            pages: Vec::new(),
            desc: None,
            _records: PhantomData,
        };
        if n_pages == 0 {
            return Ok(a);
        }
        let r = (|| {
            for i in 0..n_pages {
                let page = kho.alloc_folio(0)?;
                a.pages.push(page);
                write_page(i, page)?;
            }
            a.desc = Some(kho.preserve_vmalloc(&a.pages, 0)?);
            Ok(())
        })();
        match r {
            Ok(()) => Ok(a),
            Err(e) => {
                a.unpreserve(kho);
                Err(e)
            }
        }
    }
}

impl<R: IntoBytes + Immutable> FolioArray<R> {
    /// Writes `records` into fresh pages and preserves them as a vmalloc area. On failure
    /// nothing stays allocated or preserved.
    pub fn preserve(kho: &dyn KhoService, records: &[R]) -> Result<FolioArray<R>, Errno> {
        let bytes = records.as_bytes();
        FolioArray::preserve_pages(kho, bytes.len().div_ceil(PAGE_SIZE), |i, page| {
            let end = bytes.len().min((i + 1) * PAGE_SIZE);
            kho.write(page, &bytes[i * PAGE_SIZE..end])
        })
    }
}

impl<R: IntoBytes + Immutable + Copy> FolioArray<R> {
    /// [`FolioArray::preserve`] of the records `record(item)` of `items`, built a page at a
    /// time in a page-sized buffer: no array of every record is allocated (for a 1 GiB memfd
    /// that was 4 MiB of fresh memory per preserve, and a second pass over it).
    pub fn preserve_map<T>(
        kho: &dyn KhoService,
        items: &[T],
        record: impl Fn(&T) -> R,
    ) -> Result<FolioArray<R>, Errno> {
        let size = size_of::<R>();
        if size == 0 || !PAGE_SIZE.is_multiple_of(size) {
            // Records would straddle pages: cut the byte stream as `preserve` does.
            return FolioArray::preserve(kho, &items.iter().map(record).collect::<Vec<R>>());
        }
        let per_page = PAGE_SIZE / size;
        let mut buf: Vec<R> = Vec::with_capacity(per_page);
        FolioArray::preserve_pages(kho, items.len().div_ceil(per_page), |i, page| {
            let end = items.len().min((i + 1) * per_page);
            buf.clear();
            buf.extend(items[i * per_page..end].iter().map(&record));
            kho.write(page, buf.as_bytes())
        })
    }
}

impl<R: FromBytes + IntoBytes> FolioArray<R> {
    /// In the new kernel: claims the area `v`, reads its first `nr` records and frees the
    /// area. `EINVAL` when `nr` does not fit the area, or `nr` is nonzero and there is no
    /// area; the area is claimed (and freed) whenever it is valid, so a bad `nr` leaks nothing.
    pub fn restore(kho: &dyn KhoService, v: &kho_vmalloc, nr: u64) -> Result<Vec<R>, Errno> {
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
}

impl<R: FromBytes + IntoBytes> FolioArray<R> {
    /// [`FolioArray::restore`] that hands the records to `f` a page at a time, read into one
    /// page-sized buffer, instead of returning an array of all of them (a retrieve then
    /// touches no fresh memory per record). Stops at the first error of `f` and returns it;
    /// the area is freed in every case, as by `restore`.
    pub fn restore_each(
        kho: &dyn KhoService,
        v: &kho_vmalloc,
        nr: u64,
        mut f: impl FnMut(&[R]) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let desc = desc_of(v);
        if desc.first.addr().is_null() {
            return if nr == 0 { Ok(()) } else { Err(Errno::EINVAL) };
        }
        let pages = kho.restore_vmalloc(&desc)?;
        let r = each_record(kho, &pages, u32::from(desc.order), nr, &mut f);
        for p in pages {
            let _ = kho.free_folio(p, u32::from(desc.order));
        }
        r
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

fn read_records<R: FromBytes + IntoBytes>(
    kho: &dyn KhoService,
    pages: &[PhysAddr],
    order: u32,
    nr: u64,
) -> Result<Vec<R>, Errno> {
    let size = size_of::<R>();
    if size == 0 {
        // No record type is empty; refusing one keeps the sizes below meaningful.
        return Err(Errno::EINVAL);
    }
    // Checked: the order comes from the handed-over descriptor.
    let page_bytes = 1usize
        .checked_shl(order)
        .and_then(|n| n.checked_mul(PAGE_SIZE))
        .ok_or(Errno::EINVAL)?;
    let cap = (pages.len().checked_mul(page_bytes).ok_or(Errno::EINVAL)? / size) as u64;
    if nr > cap {
        return Err(Errno::EINVAL);
    }
    // `nr <= cap`, and `cap` records fit the pages already in memory. The records are read
    // straight into their vector (one copy per page, no per-record decoding: any bytes are a
    // valid `R`).
    let mut records: Vec<R> = (0..nr).map(|_| R::new_zeroed()).collect();
    for (chunk, page) in records.as_mut_bytes().chunks_mut(page_bytes).zip(pages) {
        kho.read(*page, chunk)?;
    }
    Ok(records)
}

fn each_record<R: FromBytes + IntoBytes>(
    kho: &dyn KhoService,
    pages: &[PhysAddr],
    order: u32,
    nr: u64,
    f: &mut impl FnMut(&[R]) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let size = size_of::<R>();
    let page_bytes = 1usize
        .checked_shl(order)
        .and_then(|n| n.checked_mul(PAGE_SIZE))
        .ok_or(Errno::EINVAL)?;
    if size == 0 || !page_bytes.is_multiple_of(size) {
        // Records straddle pages (or are refused): read them all, as `restore` does.
        return f(&read_records::<R>(kho, pages, order, nr)?);
    }
    let per_page = page_bytes / size;
    let cap = (pages.len() as u64).saturating_mul(per_page as u64);
    if nr > cap {
        return Err(Errno::EINVAL);
    }
    // `nr <= cap`: the records are in the pages already in memory.
    let mut left = nr as usize;
    let mut buf: Vec<R> = (0..per_page.min(left)).map(|_| R::new_zeroed()).collect();
    for page in pages {
        if left == 0 {
            break;
        }
        let n = left.min(per_page);
        kho.read(*page, buf[..n].as_mut_bytes())?;
        f(&buf[..n])?;
        left -= n;
    }
    Ok(())
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
