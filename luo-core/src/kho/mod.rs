// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The KHO model: preserved-memory maps over [`crate::mem`], implementing
//! [`luo_abi::kho::KhoService`].
//!
//! * `outgoing`: what this kernel preserved (phys → order), handed to the next kernel.
//! * `incoming`: what the previous kernel preserved and nobody has restored yet. Its arena
//!   pages are reserved at boot, so new allocations come only from outside it (KHO scratch).
//!   Whatever is still unrestored at the next kexec is dropped (and poisoned).
//! * At kexec, every arena page allocated since boot and not preserved is poisoned with
//!   [`POISON`], and so are the unpreserved pages of carried regions; the
//!   preserved map and the subtrees are written to a blob in arena memory that the next kernel
//!   parses before it allocates anything.
//!
//! Both maps are bitmap trackers (module `track`, as upstream's `kho_mem_track`); so is the
//! set of blocks restored since boot, which catches a second claim of any of their pages.
//!
//! Errors follow the table of [`luo_abi::kho`].
//!
//! Upstream keeps all of this in `kernel/liveupdate/kexec_handover.c`; here it is split by
//! concern: this module holds a kernel's KHO state (arena, maps) and the kexec; `region` the
//! external regions (memfds' pages); `service` the calls handlers make ([`KhoService`]) and
//! `range` their run-granular forms; `track` the preserved-memory bitmaps; `folios` the order
//! of each live arena folio; `blob` the handover blob's format and parser; `fault` fault
//! injection at allocation sites.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};

use luo_abi::kho::{KhoService, VmallocDesc};
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_generated::kho::{KHO_VMALLOC_SIZE, kho_vmalloc_chunk};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::error::ImageError;
use crate::lock_order::{Level, Ordered};

mod blob;
mod fault;
mod folios;
mod range;
mod region;
mod service;
#[cfg(test)]
mod tests;
mod track;

use region::{live_region_base, poison_region_gaps, region_of};

use blob::BlobContents;
pub(crate) use blob::parse_blob_entries;
pub use blob::{BLOB_MAGIC, BlobHeader, BlobRange, BlobSubtree};
use fault::alloc_site;
pub use fault::{inject_alloc_faults, take_alloc_faults};
use track::MemTrack;

use crate::mem::{
    ARENA_BASE, Backing, BackingKind, ExtRegion, POISON, PageAlloc, REGION_BASE, REGION_SPAN,
    host_err, lock,
};

const PAGE: u64 = PAGE_SIZE as u64;

/// Largest folio order the model allocates (`MAX_PAGE_ORDER` on x86).
pub const MAX_ORDER: u32 = 10;

/// `KHO_VMALLOC_ALLOC`: the area came from vmalloc (upstream `kexec_handover.h`; not in the
/// generated spec, see the crate docs).
pub const KHO_VMALLOC_ALLOC: u16 = 0x0001;
/// `KHO_VMALLOC_HUGE_VMAP`: the area is a huge vmap (upstream; not in the generated spec).
pub const KHO_VMALLOC_HUGE_VMAP: u16 = 0x0002;
const KHO_VMALLOC_FLAGS: u16 = KHO_VMALLOC_ALLOC | KHO_VMALLOC_HUGE_VMAP;

/// A breach of the rules for the previous kernel's memory, recorded by a kernel booted from a
/// handover (see [`Kho::violations`]): the corrupt-image sweep asserts that reading any image
/// never reads outside preserved memory and never claims a page twice.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KhoViolation {
    /// A restore of a page that was already restored since boot; refused (`EINVAL`, as a
    /// restore of any page that is not incoming).
    #[error("page {phys:#x} claimed a second time (refused)")]
    DoubleClaim {
        /// The page.
        phys: u64,
    },
    /// A read of arena memory this kernel neither owns nor received preserved, or of a page
    /// of a carried region that was not preserved: a dereference outside the handover.
    #[error("read of {len} bytes at {phys:#x} outside preserved or owned memory")]
    StrayRead {
        /// First byte read.
        phys: u64,
        /// Length of the read.
        len: usize,
    },
}

/// Preserved-page accounting, so tests can prove nothing leaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KhoStats {
    /// Pages this kernel preserves for the next one (blocks weighted by `1 << order`).
    pub preserved_pages: u64,
    /// Number of preserved blocks (folios and pages).
    pub preserved_ranges: usize,
    /// Incoming preserved pages nobody has restored yet.
    pub incoming_pages: u64,
    /// Arena pages in use (allocated, restored or reserved incoming).
    pub arena_pages_in_use: u64,
    /// Live external regions.
    pub regions: usize,
}

struct RegionSlot {
    weak: Weak<ExtRegion>,
    /// A strong reference for incoming regions until their pages are claimed.
    pin: Option<Arc<ExtRegion>>,
}

struct State {
    alloc: PageAlloc,
    /// Live arena allocations made with `alloc_folio`/`alloc_preserve` or restored: phys → order.
    folios: folios::FolioOrders,
    /// This kernel's preserved blocks, handed to the next kernel (`kho_out`).
    out: MemTrack,
    /// The previous kernel's preserved blocks not restored yet.
    inc: MemTrack,
    sub_out: BTreeMap<String, (u64, usize)>,
    sub_in: BTreeMap<String, (u64, usize)>,
    regions: BTreeMap<u64, RegionSlot>,
    /// Bases of the regions carried from the previous kernel.
    carried: HashSet<u64>,
    /// Every block restored since boot (incoming blocks leave `inc` as they are claimed).
    claimed: MemTrack,
    next_region: u64,
    /// A carried region's base is not `REGION_BASE` plus a multiple of `REGION_SPAN`.
    odd_region_base: bool,
    dead: bool,
}

/// What crosses a kexec at the memory level: the arena, the regions with preserved pages and
/// the location of the handover blob.
pub struct MemHandover {
    pub(crate) arena: Arc<dyn Backing>,
    pub(crate) arena_kind: BackingKind,
    pub(crate) regions: Vec<Arc<ExtRegion>>,
    pub(crate) blob: u64,
}

impl MemHandover {
    /// The arena backing kind.
    pub fn arena_kind(&self) -> BackingKind {
        self.arena_kind
    }

    /// Physical address of the handover blob.
    pub fn blob(&self) -> u64 {
        self.blob
    }
}

/// The KHO model of one booted kernel.
pub struct Kho {
    arena: Arc<dyn Backing>,
    arena_kind: BackingKind,
    arena_pages: u64,
    kho_boot: bool,
    st: Ordered<State>,
    /// Recorded [`KhoViolation`]s (a leaf lock, taken under `st`).
    violations: Ordered<Vec<KhoViolation>>,
}

/// Bytes in a block of `order`; saturates for orders no memory can have.
fn order_bytes(order: u32) -> u64 {
    if order > 40 { u64::MAX } else { PAGE << order }
}

fn order_for_pages(pages: u64) -> Option<u32> {
    pages.checked_next_power_of_two().map(u64::trailing_zeros)
}

impl Kho {
    /// A fresh kernel's KHO over a new arena of `arena_pages` pages.
    pub fn new(kind: BackingKind, arena_pages: u64) -> Result<Kho, Errno> {
        let arena: Arc<dyn Backing> = match kind {
            BackingKind::Heap => Arc::new(crate::mem::HeapBacking::new(arena_pages * PAGE)),
            BackingKind::Memfd => Arc::new(crate::mem::MmapBacking::new(arena_pages * PAGE)?),
        };
        Ok(Kho::with_arena(arena, kind, false))
    }

    fn with_arena(arena: Arc<dyn Backing>, arena_kind: BackingKind, kho_boot: bool) -> Kho {
        let arena_pages = arena.len() / PAGE;
        Kho {
            arena,
            arena_kind,
            arena_pages,
            kho_boot,
            st: Ordered::new(
                Level::Kho,
                State {
                    alloc: PageAlloc::new(arena_pages),
                    folios: folios::FolioOrders::new(ARENA_BASE, arena_pages),
                    out: MemTrack::new(),
                    inc: MemTrack::new(),
                    sub_out: BTreeMap::new(),
                    sub_in: BTreeMap::new(),
                    regions: BTreeMap::new(),
                    carried: HashSet::new(),
                    claimed: MemTrack::new(),
                    next_region: 0,
                    odd_region_base: false,
                    dead: false,
                },
            ),
            violations: Ordered::new(Level::KhoViolations, Vec::new()),
        }
    }

    /// Boots from a handover: parses the blob, reserves incoming memory and pins the regions.
    pub fn boot(h: MemHandover) -> Result<Kho, ImageError> {
        let kho = Kho::with_arena(h.arena, h.arena_kind, true);
        {
            let mut st = lock(&kho.st);
            for r in &h.regions {
                st.regions.insert(
                    r.base(),
                    RegionSlot {
                        weak: Arc::downgrade(r),
                        pin: Some(Arc::clone(r)),
                    },
                );
                st.carried.insert(r.base());
                st.odd_region_base |= r
                    .base()
                    .checked_sub(REGION_BASE)
                    .is_none_or(|off| !off.is_multiple_of(REGION_SPAN));
                let slot = (r.base() - REGION_BASE) / REGION_SPAN;
                st.next_region = st.next_region.max(slot + 1);
            }
            let bases: Vec<u64> = st.regions.keys().copied().collect();
            let (ranges, subtrees) = kho.parse_blob(h.blob, &bases)?;
            for r in ranges {
                // A run outside the arena (a memfd's folios in its region) that overlaps
                // nothing is one tracker update; otherwise block by block, which names the
                // first overlapping block.
                if kho.arena_index(r.phys).is_none()
                    && st.inc.insert_run(r.phys, r.order, u64::from(r.count))
                {
                    continue;
                }
                let size = order_bytes(r.order);
                for i in 0..u64::from(r.count) {
                    let phys = r.phys + i * size;
                    if !st.inc.insert(phys, r.order) {
                        return Err(ImageError::Overlap { phys });
                    }
                    if let Some(idx) = kho.arena_index(phys)
                        && !st.alloc.claim(idx, 1 << r.order)
                    {
                        return Err(ImageError::Overlap { phys });
                    }
                }
            }
            st.sub_in = subtrees;
        }
        Ok(kho)
    }

    /// Validates and decodes the blob at `phys` (it lives in the arena).
    fn parse_blob(&self, phys: u64, regions: &[u64]) -> Result<BlobContents, ImageError> {
        let hdr: BlobHeader = self.read_arena_obj(phys, "KHO blob header")?;
        if hdr.magic != BLOB_MAGIC {
            return Err(ImageError::BadMagic {
                phys,
                found: hdr.magic,
            });
        }
        parse_blob_entries(
            &hdr,
            phys,
            self.arena.len(),
            |at, buf| self.read_arena(at, buf),
            |p, pages| {
                let len = pages * PAGE;
                let in_arena = p >= ARENA_BASE
                    && p.checked_add(len)
                        .is_some_and(|e| e <= ARENA_BASE + self.arena_pages * PAGE);
                let in_region = regions
                    .iter()
                    .any(|&b| p >= b && p.checked_add(len).is_some_and(|e| e <= b + REGION_SPAN));
                in_arena || in_region
            },
        )
    }

    fn read_arena(&self, phys: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let off = phys.checked_sub(ARENA_BASE).ok_or(ImageError::Truncated {
            what: "arena read",
            phys,
        })?;
        self.arena
            .read(off, buf)
            .map_err(|_| ImageError::Truncated {
                what: "arena read",
                phys,
            })
    }

    fn read_arena_obj<T: FromBytes + IntoBytes>(
        &self,
        phys: u64,
        what: &'static str,
    ) -> Result<T, ImageError> {
        let mut v = T::new_zeroed();
        self.read_arena(phys, v.as_mut_bytes())
            .map_err(|_| ImageError::Truncated { what, phys })?;
        Ok(v)
    }

    fn arena_index(&self, phys: u64) -> Option<u64> {
        let off = phys.checked_sub(ARENA_BASE)?;
        let idx = off / PAGE;
        (idx < self.arena_pages).then_some(idx)
    }

    /// Preserved-page accounting.
    pub fn stats(&self) -> KhoStats {
        let st = lock(&self.st);
        KhoStats {
            preserved_pages: st.out.pages(),
            preserved_ranges: st.out.len(),
            incoming_pages: st.inc.pages(),
            arena_pages_in_use: st.alloc.in_use(),
            regions: st
                .regions
                .values()
                .filter(|s| s.pin.is_some() || s.weak.strong_count() > 0)
                .count(),
        }
    }

    /// The [`KhoViolation`]s recorded since boot, each second claim once.
    pub fn violations(&self) -> Vec<KhoViolation> {
        lock(&self.violations).clone()
    }

    /// Number of pages restored since boot.
    pub fn claimed_pages(&self) -> usize {
        lock(&self.st).claimed.pages() as usize
    }

    /// Records `v` (a second claim once: a range call refused for a second claim and the
    /// per-folio calls a caller falls back to name the same page).
    fn violation(&self, v: KhoViolation) {
        let mut all = lock(&self.violations);
        if !(matches!(v, KhoViolation::DoubleClaim { .. }) && all.contains(&v)) {
            all.push(v);
        }
    }

    /// Whether a read of `len` bytes at `phys` stays inside memory this kernel may read: its
    /// own allocations, incoming preserved pages (restored or not), pages of its own regions,
    /// and the preserved pages of carried regions.
    fn read_allowed(&self, st: &State, phys: u64, len: usize) -> bool {
        let (first, last) = (
            phys / PAGE,
            phys.saturating_add(len.max(1) as u64 - 1) / PAGE,
        );
        if self.arena_index(phys).is_some() {
            let base = ARENA_BASE / PAGE;
            return (first..=last).all(|p| st.alloc.is_used(p - base));
        }
        let Some((&base, _)) = st.regions.range(..=phys).next_back() else {
            return false;
        };
        !st.carried.contains(&base)
            || (first..=last).all(|p| {
                let a = p * PAGE;
                st.claimed.contains_page(a) || st.inc.contains_page(a)
            })
    }

    /// The outgoing preserved map (phys → order), for inspection.
    pub fn outgoing_map(&self) -> Vec<(u64, u32)> {
        lock(&self.st).out.iter().collect()
    }

    /// The arena backing kind.
    pub fn arena_kind(&self) -> BackingKind {
        self.arena_kind
    }

    /// over the arena and every region with preserved pages. This KHO is dead afterwards.
    pub fn kexec(&self) -> Result<MemHandover, Errno> {
        let mut st = lock(&self.st);
        if st.dead {
            return Err(Errno::EINVAL);
        }
        // Arena: poison every page touched since boot that is not preserved. The preserved
        // blocks are walked in address order alongside the pages (they are disjoint, so page
        // `i` is kept iff it lies below the furthest end of the blocks starting at or before
        // it), without a set of every preserved page.
        let mut blocks = st
            .out
            .range(ARENA_BASE, ARENA_BASE + self.arena_pages * PAGE)
            .map(|(p, o)| ((p - ARENA_BASE) / PAGE, 1u64 << o))
            .peekable();
        let mut kept_until = 0u64;
        let mut i = 0;
        let pages = st.alloc.pages();
        while i < pages {
            while let Some(&(first, n)) = blocks.peek()
                && first <= i
            {
                kept_until = kept_until.max(first + n);
                blocks.next();
            }
            // Kept pages and untouched ones are skipped a block or a bitmap word at a time,
            // so this costs O(preserved blocks + touched pages), not O(arena pages).
            if i < kept_until {
                i = kept_until;
                continue;
            }
            let next = st.alloc.next_touched(i).unwrap_or(pages);
            if next > i {
                i = next;
                continue;
            }
            self.arena.fill(i * PAGE, PAGE, POISON)?;
            i += 1;
        }
        drop(blocks);
        // Regions: carry those with preserved pages; poison their other pages.
        let mut carried = Vec::new();
        for (&base, slot) in &st.regions {
            let Some(r) = slot.weak.upgrade() else {
                continue;
            };
            if !st.out.overlaps(base, REGION_SPAN) {
                continue;
            }
            poison_region_gaps(&r, st.out.range(base, base + REGION_SPAN))?;
            carried.push(r);
        }
        // The blob: compressed runs of the preserved map, then the subtrees.
        let mut ranges: Vec<BlobRange> = Vec::new();
        for (p, o) in st.out.iter() {
            if let Some(last) = ranges.last_mut()
                && last.order == o
                && last.count < u32::MAX
                && last.phys + u64::from(last.count) * order_bytes(o) == p
            {
                last.count += 1;
                continue;
            }
            ranges.push(BlobRange {
                phys: p,
                order: o,
                count: 1,
            });
        }
        let mut subtrees = Vec::new();
        for (name, &(phys, size)) in &st.sub_out {
            let mut e = BlobSubtree {
                name: [0; 64],
                phys,
                size: size as u64,
            };
            let b = name.as_bytes();
            if b.len() >= 64 {
                return Err(Errno::ENAMETOOLONG);
            }
            e.name[..b.len()].copy_from_slice(b);
            subtrees.push(e);
        }
        let hdr = BlobHeader {
            magic: BLOB_MAGIC,
            nr_ranges: ranges.len() as u64,
            nr_subtrees: subtrees.len() as u64,
            arena_pages: self.arena_pages,
        };
        let mut blob = hdr.as_bytes().to_vec();
        blob.extend_from_slice(ranges.as_bytes());
        blob.extend_from_slice(subtrees.as_bytes());
        let pages = (blob.len() as u64).div_ceil(PAGE);
        let idx = st.alloc.alloc(pages, 1).ok_or(Errno::ENOMEM)?;
        self.arena.write(idx * PAGE, &blob)?;
        st.dead = true;
        Ok(MemHandover {
            arena: Arc::clone(&self.arena),
            arena_kind: self.arena_kind,
            regions: carried,
            blob: ARENA_BASE + idx * PAGE,
        })
    }

    fn check_alive(st: &State) -> Result<(), Errno> {
        if st.dead { Err(Errno::EINVAL) } else { Ok(()) }
    }

    /// Whether `phys..phys+len` is memory that can be preserved: allocated arena pages or
    /// pages of a live region.
    fn preservable(&self, st: &State, phys: u64, len: u64) -> bool {
        self.preservable_in(st, phys, len, &mut None)
    }

    /// [`Kho::preservable`] with [`live_region_base`]'s cache.
    #[inline]
    fn preservable_in(&self, st: &State, phys: u64, len: u64, region: &mut Option<u64>) -> bool {
        if let Some(idx) = self.arena_index(phys) {
            let n = len / PAGE;
            return idx.checked_add(n).is_some_and(|e| e <= self.arena_pages)
                && (idx..idx + n).all(|i| st.alloc.is_used(i));
        }
        live_region_base(st, phys, region).is_some_and(|base| {
            phys.checked_add(len)
                .is_some_and(|e| e <= base + REGION_SPAN)
        })
    }

    fn alloc_locked(&self, st: &mut State, order: u32) -> Result<u64, Errno> {
        if order > MAX_ORDER {
            return Err(Errno::EINVAL);
        }
        let n = 1u64 << order;
        let idx = st.alloc.alloc(n, n).ok_or(Errno::ENOMEM)?;
        self.arena.fill(idx * PAGE, n * PAGE, 0)?;
        let phys = ARENA_BASE + idx * PAGE;
        st.folios.insert(phys, order);
        Ok(phys)
    }

    fn free_locked(&self, st: &mut State, phys: u64, order: u32) -> Result<(), Errno> {
        self.free_in(st, phys, order, &mut None)
    }

    /// [`Kho::free_locked`] with [`live_region_base`]'s cache.
    #[inline]
    fn free_in(
        &self,
        st: &mut State,
        phys: u64,
        order: u32,
        region: &mut Option<u64>,
    ) -> Result<(), Errno> {
        if let Some(idx) = self.arena_index(phys) {
            if st.folios.get(phys) != Some(order) || st.out.overlaps(phys, order_bytes(order)) {
                return Err(Errno::EINVAL);
            }
            st.folios.remove(phys);
            if !st.alloc.free(idx, 1 << order) {
                return Err(Errno::EINVAL);
            }
            return Ok(());
        }
        // A region page (a restored memfd folio): nothing to free in the arena.
        if live_region_base(st, phys, region).is_some()
            && !st.out.overlaps(phys, order_bytes(order))
        {
            return Ok(());
        }
        Err(Errno::EINVAL)
    }

    fn preserve_locked(&self, st: &mut State, phys: u64, order: u32) -> Result<(), Errno> {
        self.preserve_in(st, phys, order, &mut None)
    }

    /// [`Kho::preserve_locked`] with [`Kho::preservable_in`]'s region cache.
    #[inline]
    fn preserve_in(
        &self,
        st: &mut State,
        phys: u64,
        order: u32,
        region: &mut Option<u64>,
    ) -> Result<(), Errno> {
        let size = order_bytes(order);
        if order > MAX_ORDER || phys == 0 || !phys.is_multiple_of(size) {
            return Err(Errno::EINVAL);
        }
        if !self.preservable_in(st, phys, size, region) {
            return Err(Errno::EINVAL);
        }
        if !st.out.insert(phys, order) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn unpreserve_locked(st: &mut State, phys: u64, order: u32) -> Result<(), Errno> {
        if st.out.get(phys) != Some(order) {
            return Err(Errno::EINVAL);
        }
        st.out.remove(phys);
        Ok(())
    }

    fn restore_locked(&self, st: &mut State, phys: u64) -> Result<u32, Errno> {
        // A claimed page is never incoming (blocks leave `inc` as they are claimed), so the
        // claimed set is consulted only for an address that is not incoming.
        let Some(order) = st.inc.remove(phys) else {
            if phys.is_multiple_of(PAGE) && st.claimed.contains_page(phys) {
                self.violation(KhoViolation::DoubleClaim { phys });
            }
            return Err(Errno::EINVAL);
        };
        // Incoming blocks are disjoint, so this cannot overlap a claimed block.
        st.claimed.insert(phys, order);
        if self.arena_index(phys).is_some() {
            st.folios.insert(phys, order);
        }
        Ok(order)
    }

    fn read_locked(&self, st: &State, phys: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if self.kho_boot && !self.read_allowed(st, phys, buf.len()) {
            self.violation(KhoViolation::StrayRead {
                phys,
                len: buf.len(),
            });
        }
        if let Some(off) = phys.checked_sub(ARENA_BASE)
            && off < self.arena.len()
        {
            return self.arena.read(off, buf);
        }
        let r = region_of(st, phys).ok_or(Errno::EFAULT)?;
        r.read(phys - r.base(), buf)
    }

    fn write_locked(&self, st: &State, phys: u64, buf: &[u8]) -> Result<(), Errno> {
        if let Some(off) = phys.checked_sub(ARENA_BASE)
            && off < self.arena.len()
        {
            return self.arena.write(off, buf);
        }
        let r = region_of(st, phys).ok_or(Errno::EFAULT)?;
        r.write(phys - r.base(), buf)
    }

    /// Walks a vmalloc chunk chain in `map`-owned memory: returns the chunk pages and the
    /// area's block addresses, validating the chain (no cycle, bounded length).
    fn walk_vmalloc(
        &self,
        st: &State,
        desc: &VmallocDesc,
        incoming: bool,
    ) -> Result<(Vec<u64>, Vec<u64>), Errno> {
        if desc.flags & !KHO_VMALLOC_FLAGS != 0 || u32::from(desc.order) > MAX_ORDER {
            return Err(Errno::EINVAL);
        }
        let per = u64::from(desc.total_pages) >> desc.order;
        if per << desc.order != u64::from(desc.total_pages) {
            return Err(Errno::EINVAL);
        }
        let max_chunks = per.div_ceil(KHO_VMALLOC_SIZE).max(1);
        let map = if incoming { &st.inc } else { &st.out };
        let mut chunks = Vec::new();
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let mut next = desc.first.addr().as_u64();
        while next != 0 {
            if !seen.insert(next) || chunks.len() as u64 >= max_chunks {
                return Err(Errno::EINVAL);
            }
            if map.get(next) != Some(0) {
                return Err(Errno::EINVAL);
            }
            let mut chunk = kho_vmalloc_chunk::new_zeroed();
            self.read_locked(st, next, chunk.as_mut_bytes())?;
            chunks.push(next);
            for &p in chunk.phys.iter() {
                if p == 0 {
                    break;
                }
                entries.push(p);
            }
            next = chunk.hdr.next.addr().as_u64();
        }
        if entries.len() as u64 != per {
            return Err(Errno::EINVAL);
        }
        Ok((chunks, entries))
    }
}

impl crate::blocks::PhysRead for Kho {
    fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.read(PhysAddr::new(phys), buf)
    }

    /// Incoming preserved pages not restored yet, or restored and not freed since (and this
    /// kernel's own outgoing preserved pages).
    fn is_preserved(&self, phys: u64, len: usize) -> bool {
        let st = lock(&self.st);
        let Some(end) = phys.checked_add(len.max(1) as u64) else {
            return false;
        };
        (phys / PAGE..end.div_ceil(PAGE)).all(|p| {
            let a = p * PAGE;
            let live = self.arena_index(a).is_none_or(|i| st.alloc.is_used(i));
            st.inc.contains_page(a)
                || (st.claimed.contains_page(a) && live)
                || st.out.contains_page(a)
        })
    }
}
