// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Kexec HandOver (KHO): the memory-preservation service handlers and the core use.
//!
//! [`KhoService`] mirrors `include/linux/kexec_handover.h` (7.x). The core implements it over its
//! memory model; handlers receive a `&dyn KhoService`.
//!
//! # Semantics of the model
//!
//! * **The preserved map crosses the kexec.** Everything preserved in the old kernel (folios,
//!   page runs, vmalloc chains with their chunk pages, `alloc_preserve` blocks) is in the new
//!   kernel's incoming map; each range can be restored exactly once.
//! * **New allocations come only from outside it** (KHO scratch): nothing the new kernel
//!   allocates can overlap incoming preserved memory.
//! * **Pages not preserved are poisoned at kexec**, so a handler that forgot to preserve
//!   something reads garbage and fails loudly, as with KHO's debug checks.
//! * Memory is modelled, not mapped: handlers copy bytes in and out with
//!   [`KhoService::read`] / [`KhoService::write`] (or the typed [`KhoExt`]).
//!
//! # Errors (chosen here; the kernel mostly WARNs or returns NULL)
//!
//! | situation | error |
//! |---|---|
//! | preserving memory that is already preserved (double preserve) | `EEXIST` |
//! | unpreserving memory that is not preserved as given | `EINVAL` |
//! | restoring memory that is not in the incoming map, or was already restored | `EINVAL` |
//! | address not aligned to `PAGE_SIZE << order`, zero size or count, unknown vmalloc flags | `EINVAL` |
//! | allocation failure | `ENOMEM` |
//! | `read`/`write` outside memory the caller may touch | `EFAULT` |
//! | `add_subtree` with a name already present | `EEXIST` |
//! | `retrieve_subtree`/`remove_subtree` of an absent subtree | `ENOENT` |
//! | KHO disabled | `EOPNOTSUPP` |
//!
//! Upstream's `kho_unpreserve_*` return `void`; here they return [`Result`] so the model can
//! report misuse, and a caller in a `void` callback may only log it.

use alloc::vec::Vec;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::file::ShmemFolio;
use crate::phys::{Phys, PhysAddr, PAGE_SIZE};

/// Marker for the page-sized `struct kho_vmalloc_chunk` of the KHO ABI, whose layout is
/// generated from the spec (`luo-generated`); only used as the target of [`Phys`].
pub enum VmallocChunk {}

/// A preserved vmalloc-style area, mirroring the ABI `struct kho_vmalloc`
/// {u64 first; u32 total_pages; u16 flags; u16 order}.
///
/// This is the plain Rust value; the `#[repr(C, packed)]` ABI struct lives in `luo-generated`,
/// which converts to and from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmallocDesc {
    /// First page of the chunk chain that lists the area's pages (0 for an empty area).
    pub first: Phys<VmallocChunk>,
    /// Number of pages (of order `order`) in the area.
    pub total_pages: u32,
    /// `KHO_VMALLOC_*` flags.
    pub flags: u16,
    /// Order of each page in the area.
    pub order: u16,
}

/// The KHO service (`kexec_handover.h`). Object-safe; every method takes `&self`.
pub trait KhoService {
    /// Whether KHO is enabled (`kho_is_enabled`).
    fn is_enabled(&self) -> bool;

    /// Whether this boot came from a KHO kexec, i.e. has an incoming map (`is_kho_boot`).
    fn is_kho_boot(&self) -> bool;

    /// Allocates a zeroed, *not* preserved folio of `PAGE_SIZE << order` bytes
    /// (`folio_alloc`); the model's general-purpose page allocator.
    fn alloc_folio(&self, order: u32) -> Result<PhysAddr>;

    /// Frees a folio from [`KhoService::alloc_folio`] (`folio_put`); it must not be preserved.
    fn free_folio(&self, phys: PhysAddr, order: u32) -> Result;

    /// Preserves the folio of `PAGE_SIZE << order` bytes at `phys` (`kho_preserve_folio`).
    fn preserve_folio(&self, phys: PhysAddr, order: u32) -> Result;

    /// Undoes [`KhoService::preserve_folio`] (`kho_unpreserve_folio`).
    fn unpreserve_folio(&self, phys: PhysAddr, order: u32) -> Result;

    /// Claims an incoming preserved folio in the new kernel (`kho_restore_folio`); returns
    /// its order as recorded in the preserved map.
    fn restore_folio(&self, phys: PhysAddr) -> Result<u32>;

    /// Whether the page at `phys` was handed over by the previous kernel and is not claimed
    /// yet: memory the new kernel may read before it claims it (a record a `can_finish`
    /// peeks at). `false` when the service cannot tell.
    fn is_incoming(&self, phys: PhysAddr) -> bool {
        let _ = phys;
        false
    }

    /// Preserves every folio of `folios`, as a loop of [`KhoService::preserve_folio`] (the
    /// preserve loop of `memfd_luo`), all or nothing: on an error the folios this call
    /// preserved are unpreserved again and the error is returned.
    ///
    /// Not an upstream call: the default makes one call per folio; a service overrides it to
    /// take its lock and find the memory once per batch instead of once per folio (the
    /// `memfd_preserve` benchmark).
    fn preserve_folios(&self, folios: &[ShmemFolio]) -> Result {
        for (done, f) in folios.iter().enumerate() {
            if let Err(e) = self.preserve_folio(f.phys, f.order) {
                for g in &folios[..done] {
                    let _ = self.unpreserve_folio(g.phys, g.order);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Claims the incoming folios at `phys` in order, as a loop of
    /// [`KhoService::restore_folio`], appending each one's order to `orders`. Stops at the
    /// first error and returns it; the folios before it stay restored (their orders are in
    /// `orders`), as they would after the loop.
    ///
    /// Not an upstream call: a service overrides it to take its lock once per batch (the
    /// `memfd_retrieve` benchmark).
    fn restore_folios(&self, phys: &[PhysAddr], orders: &mut Vec<u32>) -> Result {
        orders.reserve(phys.len());
        for &p in phys {
            orders.push(self.restore_folio(p)?);
        }
        Ok(())
    }

    /// Frees the folios at `phys`, of `orders[i]` each, as a loop of
    /// [`KhoService::free_folio`]: every folio is tried, and the first error is returned.
    /// `EINVAL` without freeing anything when the two slices differ in length.
    ///
    /// Not an upstream call: a service overrides it to take its lock once per batch (the
    /// `memfd_retrieve` benchmark, which releases every restored folio).
    fn free_folios(&self, phys: &[PhysAddr], orders: &[u32]) -> Result {
        if phys.len() != orders.len() {
            return Err(Errno::EINVAL);
        }
        let mut r = Ok(());
        for (&p, &o) in phys.iter().zip(orders) {
            let e = self.free_folio(p, o);
            if r.is_ok() {
                r = e;
            }
        }
        r
    }

    /// Preserves `count` folios of `order`, back to back from `phys` (a physically
    /// contiguous run, as a memfd's folios mostly are), with the guarantees of `count` calls
    /// of [`KhoService::preserve_folio`]: `EINVAL` for a misaligned run, an order above the
    /// largest, or memory that cannot be preserved; `EEXIST` when any page of the run is
    /// preserved already. All or nothing.
    ///
    /// Not an upstream call (upstream preserves folio by folio): a service overrides it to do
    /// its bookkeeping once per run (one range check, one update of its tracker), not once
    /// per folio. The default is the loop, undone on an error.
    fn preserve_range(&self, phys: PhysAddr, order: u32, count: usize) -> Result {
        let size = block_bytes(order)?;
        for i in 0..count {
            if let Err(e) = self.preserve_folio(nth_block(phys, size, i)?, order) {
                for j in 0..i {
                    let _ = self.unpreserve_folio(nth_block(phys, size, j)?, order);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undoes [`KhoService::preserve_range`]: `EINVAL`, and nothing unpreserved, unless every
    /// folio of the run is preserved with exactly `order`. The default is the loop (every
    /// folio tried, the first error returned).
    fn unpreserve_range(&self, phys: PhysAddr, order: u32, count: usize) -> Result {
        let size = block_bytes(order)?;
        let mut r = Ok(());
        for i in 0..count {
            let e = self.unpreserve_folio(nth_block(phys, size, i)?, order);
            if r.is_ok() {
                r = e;
            }
        }
        r
    }

    /// Claims `count` incoming folios of `order`, back to back from `phys`, in the new kernel
    /// (a run of [`KhoService::restore_folio`] calls that each return `order`). A service
    /// claims all or none: `EINVAL`, nothing claimed, when any folio of the run is not an
    /// incoming folio of exactly `order`; a folio of the run claimed before is reported as
    /// [`KhoService::restore_folio`] reports it. The default is the loop, which stops at the
    /// first error (the folios before it stay claimed).
    fn restore_range(&self, phys: PhysAddr, order: u32, count: usize) -> Result {
        let size = block_bytes(order)?;
        for i in 0..count {
            if self.restore_folio(nth_block(phys, size, i)?)? != order {
                return Err(Errno::EINVAL);
            }
        }
        Ok(())
    }

    /// Frees `count` folios of `order`, back to back from `phys` (after
    /// [`KhoService::restore_range`], or of [`KhoService::alloc_folio`]), as `count` calls of
    /// [`KhoService::free_folio`]: every folio tried, the first error returned.
    fn free_range(&self, phys: PhysAddr, order: u32, count: usize) -> Result {
        let size = block_bytes(order)?;
        let mut r = Ok(());
        for i in 0..count {
            let e = self.free_folio(nth_block(phys, size, i)?, order);
            if r.is_ok() {
                r = e;
            }
        }
        r
    }

    /// Preserves `nr_pages` order-0 pages starting at `phys` (`kho_preserve_pages`).
    fn preserve_pages(&self, phys: PhysAddr, nr_pages: usize) -> Result;

    /// Undoes [`KhoService::preserve_pages`] (`kho_unpreserve_pages`).
    fn unpreserve_pages(&self, phys: PhysAddr, nr_pages: usize) -> Result;

    /// Claims `nr_pages` incoming order-0 pages starting at `phys` (`kho_restore_pages`).
    fn restore_pages(&self, phys: PhysAddr, nr_pages: usize) -> Result;

    /// Preserves a vmalloc-style area made of `pages` (each of order `order`, in area order)
    /// together with a newly allocated chunk chain listing them (`kho_preserve_vmalloc`).
    fn preserve_vmalloc(&self, pages: &[PhysAddr], order: u16) -> Result<VmallocDesc>;

    /// Undoes [`KhoService::preserve_vmalloc`] and frees the chunk chain
    /// (`kho_unpreserve_vmalloc`); the area's pages stay allocated.
    fn unpreserve_vmalloc(&self, desc: &VmallocDesc) -> Result;

    /// Claims an incoming vmalloc-style area (`kho_restore_vmalloc`): validates and frees the
    /// chunk chain, restores every page and returns them in area order.
    fn restore_vmalloc(&self, desc: &VmallocDesc) -> Result<Vec<PhysAddr>>;

    /// Allocates `size` zeroed bytes (rounded up to whole pages) and preserves them
    /// (`kho_alloc_preserve`).
    fn alloc_preserve(&self, size: usize) -> Result<PhysAddr>;

    /// Unpreserves and frees memory from [`KhoService::alloc_preserve`] in the old kernel
    /// (`kho_unpreserve_free`).
    fn unpreserve_free(&self, phys: PhysAddr) -> Result;

    /// Restores and frees memory from [`KhoService::alloc_preserve`] in the new kernel
    /// (`kho_restore_free`).
    fn restore_free(&self, phys: PhysAddr) -> Result;

    /// Publishes the preserved blob of `size` bytes at `phys` under `name` for the next kernel
    /// (`kho_add_subtree`); the blob itself must be preserved by the caller.
    fn add_subtree(&self, name: &str, phys: PhysAddr, size: usize) -> Result;

    /// Withdraws the subtree whose blob is at `phys` (`kho_remove_subtree`).
    fn remove_subtree(&self, phys: PhysAddr) -> Result;

    /// Looks up an incoming subtree by name (`kho_retrieve_subtree`): its address and size.
    fn retrieve_subtree(&self, name: &str) -> Result<(PhysAddr, usize)>;

    /// Copies `buf.len()` bytes of memory at `phys` into `buf`.
    fn read(&self, phys: PhysAddr, buf: &mut [u8]) -> Result;

    /// Copies `buf` into memory at `phys`.
    fn write(&self, phys: PhysAddr, buf: &[u8]) -> Result;
}

/// Bytes in a folio of `order`; `EINVAL` for an order no memory has.
fn block_bytes(order: u32) -> Result<u64> {
    (PAGE_SIZE as u64)
        .checked_shl(order)
        .filter(|_| order < 40)
        .ok_or(Errno::EINVAL)
}

/// The `i`-th folio of `size` bytes of a run from `phys`; `EINVAL` past the address space.
fn nth_block(phys: PhysAddr, size: u64, i: usize) -> Result<PhysAddr> {
    (i as u64)
        .checked_mul(size)
        .and_then(|off| phys.as_u64().checked_add(off))
        .map(PhysAddr::new)
        .ok_or(Errno::EINVAL)
}

/// Typed access to modelled memory, for every [`KhoService`].
pub trait KhoExt: KhoService {
    /// Reads the `T` at `ptr` (a byte copy; any bit pattern is a valid `T`). `EFAULT` for a
    /// NULL pointer.
    fn read_obj<T: FromBytes + IntoBytes>(&self, ptr: Phys<T>) -> Result<T> {
        if ptr.is_null() {
            return Err(Errno::EFAULT);
        }
        let mut v = T::new_zeroed();
        self.read(ptr.addr(), v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes `value` to `ptr`. `EFAULT` for a NULL pointer.
    fn write_obj<T: IntoBytes + Immutable>(&self, ptr: Phys<T>, value: &T) -> Result {
        if ptr.is_null() {
            return Err(Errno::EFAULT);
        }
        self.write(ptr.addr(), value.as_bytes())
    }

    /// Allocates preserved, zeroed memory for one `T`, writes `value` there and returns the
    /// typed pointer (`kho_alloc_preserve(sizeof(*v))` followed by a copy).
    fn alloc_preserve_obj<T: IntoBytes + Immutable>(&self, value: &T) -> Result<Phys<T>> {
        let phys = self.alloc_preserve(size_of_val(value).max(1))?;
        let ptr = Phys::new(phys);
        if let Err(e) = self.write_obj(ptr, value) {
            // Best effort: the write error is the one to report.
            let _ = self.unpreserve_free(phys);
            return Err(e);
        }
        Ok(ptr)
    }
}

impl<K: KhoService + ?Sized> KhoExt for K {}

/// Number of pages needed for `size` bytes (`DIV_ROUND_UP(size, PAGE_SIZE)`).
pub const fn pages_for(size: usize) -> usize {
    size.div_ceil(PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec;
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    /// Flat memory with a bump allocator; only what the `KhoExt` tests touch.
    struct FlatMem {
        bytes: RefCell<Vec<u8>>,
    }

    impl FlatMem {
        fn range(&self, phys: PhysAddr, len: usize) -> Result<core::ops::Range<usize>> {
            let start = usize::try_from(phys.as_u64()).map_err(|_| Errno::EFAULT)?;
            let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
            if end > self.bytes.borrow().len() {
                return Err(Errno::EFAULT);
            }
            Ok(start..end)
        }
    }

    impl KhoService for FlatMem {
        fn is_enabled(&self) -> bool {
            true
        }
        fn is_kho_boot(&self) -> bool {
            false
        }
        fn alloc_folio(&self, _: u32) -> Result<PhysAddr> {
            Err(Errno::ENOMEM)
        }
        fn free_folio(&self, _: PhysAddr, _: u32) -> Result {
            Err(Errno::EINVAL)
        }
        fn preserve_folio(&self, _: PhysAddr, _: u32) -> Result {
            Err(Errno::EOPNOTSUPP)
        }
        fn unpreserve_folio(&self, _: PhysAddr, _: u32) -> Result {
            Err(Errno::EOPNOTSUPP)
        }
        fn restore_folio(&self, _: PhysAddr) -> Result<u32> {
            Err(Errno::EINVAL)
        }
        fn preserve_pages(&self, _: PhysAddr, _: usize) -> Result {
            Err(Errno::EOPNOTSUPP)
        }
        fn unpreserve_pages(&self, _: PhysAddr, _: usize) -> Result {
            Err(Errno::EOPNOTSUPP)
        }
        fn restore_pages(&self, _: PhysAddr, _: usize) -> Result {
            Err(Errno::EINVAL)
        }
        fn preserve_vmalloc(&self, _: &[PhysAddr], _: u16) -> Result<VmallocDesc> {
            Err(Errno::EOPNOTSUPP)
        }
        fn unpreserve_vmalloc(&self, _: &VmallocDesc) -> Result {
            Err(Errno::EOPNOTSUPP)
        }
        fn restore_vmalloc(&self, _: &VmallocDesc) -> Result<Vec<PhysAddr>> {
            Err(Errno::EINVAL)
        }
        fn alloc_preserve(&self, size: usize) -> Result<PhysAddr> {
            let mut b = self.bytes.borrow_mut();
            let at = b.len();
            b.resize(at + pages_for(size) * PAGE_SIZE, 0);
            Ok(PhysAddr::new(at as u64))
        }
        fn unpreserve_free(&self, _: PhysAddr) -> Result {
            Ok(())
        }
        fn restore_free(&self, _: PhysAddr) -> Result {
            Ok(())
        }
        fn add_subtree(&self, _: &str, _: PhysAddr, _: usize) -> Result {
            Err(Errno::EOPNOTSUPP)
        }
        fn remove_subtree(&self, _: PhysAddr) -> Result {
            Err(Errno::ENOENT)
        }
        fn retrieve_subtree(&self, _: &str) -> Result<(PhysAddr, usize)> {
            Err(Errno::ENOENT)
        }
        fn read(&self, phys: PhysAddr, buf: &mut [u8]) -> Result {
            let r = self.range(phys, buf.len())?;
            buf.copy_from_slice(&self.bytes.borrow()[r]);
            Ok(())
        }
        fn write(&self, phys: PhysAddr, buf: &[u8]) -> Result {
            let r = self.range(phys, buf.len())?;
            self.bytes.borrow_mut()[r].copy_from_slice(buf);
            Ok(())
        }
    }

    #[repr(C, packed)]
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
    struct Ser {
        pos: u64,
        next: Phys<Ser>,
        seals: u32,
    }

    #[test]
    fn typed_round_trip() {
        // Page 0 stays unused so that no object lives at the NULL address.
        let mem = FlatMem {
            bytes: RefCell::new(vec![0; PAGE_SIZE]),
        };
        let kho: &dyn KhoService = &mem;
        let v = Ser {
            pos: 42,
            next: Phys::NULL,
            seals: 0x3f,
        };
        let p = kho.alloc_preserve_obj(&v).unwrap();
        assert_eq!(p.addr(), PhysAddr::new(PAGE_SIZE as u64));
        let back = kho.read_obj(p).unwrap();
        assert_eq!(back.as_bytes(), v.as_bytes());
        let mut raw = [0u8; 8];
        kho.read(p.addr(), &mut raw).unwrap();
        assert_eq!(u64::from_ne_bytes(raw), 42);

        assert_eq!(kho.read_obj(Phys::<Ser>::NULL).err(), Some(Errno::EFAULT));
        let beyond = Phys::<Ser>::new(PhysAddr::new(2 * PAGE_SIZE as u64));
        assert_eq!(kho.read_obj(beyond).err(), Some(Errno::EFAULT));
        assert_eq!(kho.write_obj(beyond, &v), Err(Errno::EFAULT));
    }

    #[test]
    fn vmalloc_desc_default_is_empty() {
        let d = VmallocDesc::default();
        assert!(d.first.is_null());
        assert_eq!((d.total_pages, d.flags, d.order), (0, 0, 0));
        assert_eq!(pages_for(0), 0);
        assert_eq!(pages_for(1), 1);
        assert_eq!(pages_for(PAGE_SIZE + 1), 2);
    }
}
