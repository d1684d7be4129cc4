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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use luo_abi::file::ShmemFolio;
use luo_abi::kho::{KhoService, VmallocChunk, VmallocDesc};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::kho::{KHO_VMALLOC_SIZE, kho_vmalloc_chunk};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::error::ImageError;
use crate::lock_order::{Level, Ordered};
mod range;
mod track;

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

/// Magic of the model's KHO handover blob (`"KHOMDL01"`).
pub const BLOB_MAGIC: u64 = u64::from_le_bytes(*b"KHOMDL01");

/// Header of the model's KHO handover blob: the preserved-memory map and the subtrees.
///
/// This is the model's stand-in for KHO's FDT and radix tree, which the spec does not cover.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlobHeader {
    /// [`BLOB_MAGIC`].
    pub magic: u64,
    /// Number of [`BlobRange`] entries that follow.
    pub nr_ranges: u64,
    /// Number of [`BlobSubtree`] entries after the ranges.
    pub nr_subtrees: u64,
    /// Previous-kernel arena size in pages.
    pub arena_pages: u64,
}

/// `count` preserved blocks of `PAGE_SIZE << order` bytes, back to back from `phys`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlobRange {
    /// First address.
    pub phys: u64,
    /// Order of each block.
    pub order: u32,
    /// Number of blocks.
    pub count: u32,
}

/// A named subtree (`kho_add_subtree`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlobSubtree {
    /// NUL-terminated name.
    pub name: [u8; 64],
    /// Address of the blob.
    pub phys: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Fault injection for KHO allocations (issue 9): every call that allocates KHO memory or
/// tracking state (`alloc_folio`, `preserve_folio`, `preserve_pages`, `preserve_vmalloc`,
/// `alloc_preserve`, `add_subtree`) is an allocation site, and the n-th one on a thread can be
/// made to fail, as upstream's xarray, radix-tree and FDT allocations can. The model's handover
/// blob written at kexec is not a site: upstream builds its radix tree as pages are preserved
/// and has no allocation left at reboot (newest; 6.19's `kho_finalize` is not modelled). The plan is per thread (an in-process kernel runs on its caller's thread,
/// and it then spans both kernels of a kexec); when no thread has one armed, a site costs one
/// relaxed atomic load.
struct AllocFaults {
    /// The sites reached so far, in order.
    calls: Vec<&'static str>,
    /// Index (from 0) of the call to fail.
    fail_at: Option<usize>,
    errno: Errno,
}

/// Threads with an armed [`AllocFaults`] plan.
static ALLOC_FAULTS_ARMED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ALLOC_FAULTS: RefCell<Option<AllocFaults>> = const { RefCell::new(None) };
}

/// Arms KHO allocation fault injection on this thread: from now on every allocation site is
/// recorded, and the one at index `fail_at` (counting from 0) fails with `errno`. `None` only
/// counts. Re-arming resets the count.
pub fn inject_alloc_faults(fail_at: Option<usize>, errno: Errno) {
    ALLOC_FAULTS.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            ALLOC_FAULTS_ARMED.fetch_add(1, Ordering::Relaxed);
        }
        *f = Some(AllocFaults {
            calls: Vec::new(),
            fail_at,
            errno,
        });
    });
}

/// Disarms this thread's plan; returns the allocation sites reached while it was armed.
pub fn take_alloc_faults() -> Vec<&'static str> {
    ALLOC_FAULTS.with(|f| {
        let taken = f.borrow_mut().take();
        if taken.is_some() {
            ALLOC_FAULTS_ARMED.fetch_sub(1, Ordering::Relaxed);
        }
        taken.map(|t| t.calls).unwrap_or_default()
    })
}

/// An allocation site: fails when this thread's plan says so.
#[inline]
fn alloc_site(site: &'static str) -> Result<(), Errno> {
    if ALLOC_FAULTS_ARMED.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    ALLOC_FAULTS.with(|f| match f.borrow_mut().as_mut() {
        Some(plan) => {
            let n = plan.calls.len();
            plan.calls.push(site);
            if plan.fail_at == Some(n) {
                Err(plan.errno)
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    })
}

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
    folios: HashMap<u64, u32>,
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
                    folios: HashMap::new(),
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

    /// The [`KhoViolation`]s recorded since boot, each once.
    pub fn violations(&self) -> Vec<KhoViolation> {
        lock(&self.violations).clone()
    }

    /// Number of pages restored since boot.
    pub fn claimed_pages(&self) -> usize {
        lock(&self.st).claimed.pages() as usize
    }

    /// Records `v` (a second claim once: a range call refused for a second claim and the per-folio calls
    /// a caller falls back to name the same page).
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

    /// Creates a new external region (a fresh host memfd).
    pub fn new_region(&self, name: &str) -> Result<Arc<ExtRegion>, Errno> {
        self.add_region(|base| ExtRegion::create(base, name))
    }

    /// Makes a host memfd created elsewhere (a program's, passed over
    /// SCM_RIGHTS to luo-sim) a region: its pages become the file's, no copy.
    pub fn adopt_region(&self, fd: std::os::fd::OwnedFd) -> Result<Arc<ExtRegion>, Errno> {
        let size = rustix::fs::fstat(&fd).map_err(host_err)?.st_size;
        if u64::try_from(size).map_or(true, |s| s > REGION_SPAN) {
            return Err(Errno::EFBIG);
        }
        self.add_region(|base| Ok(ExtRegion::from_fd(base, fd)))
    }

    fn add_region(
        &self,
        make: impl FnOnce(u64) -> Result<ExtRegion, Errno>,
    ) -> Result<Arc<ExtRegion>, Errno> {
        let mut st = lock(&self.st);
        let slot = st.next_region;
        let base = REGION_BASE
            .checked_add(slot.checked_mul(REGION_SPAN).ok_or(Errno::ENOMEM)?)
            .ok_or(Errno::ENOMEM)?;
        let r = Arc::new(make(base)?);
        st.next_region += 1;
        st.regions.insert(
            base,
            RegionSlot {
                weak: Arc::downgrade(&r),
                pin: None,
            },
        );
        Ok(r)
    }

    /// The live region containing `phys`, if any.
    pub fn region_at(&self, phys: u64) -> Option<Arc<ExtRegion>> {
        let st = lock(&self.st);
        region_of(&st, phys)
    }

    /// Drops the boot-time pins of incoming regions that no longer hold unrestored pages
    /// (their files have adopted them, or they were discarded), and forgets dead slots.
    pub fn release_idle_regions(&self) {
        let mut st = lock(&self.st);
        let State { regions, inc, .. } = &mut *st;
        regions.retain(|&base, slot| {
            if slot.pin.is_some() && !inc.overlaps(base, REGION_SPAN) {
                slot.pin = None;
            }
            slot.pin.is_some() || slot.weak.strong_count() > 0
        });
    }

    /// Prepares the kexec: poisons what is not preserved, writes the handover blob, and hands
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
        for i in 0..st.alloc.pages() {
            while let Some(&(first, n)) = blocks.peek()
                && first <= i
            {
                kept_until = kept_until.max(first + n);
                blocks.next();
            }
            if st.alloc.is_touched(i) && i >= kept_until {
                self.arena.fill(i * PAGE, PAGE, POISON)?;
            }
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
            if st.folios.get(&phys) != Some(&order) || st.out.overlaps(phys, order_bytes(order)) {
                return Err(Errno::EINVAL);
            }
            st.folios.remove(&phys);
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

/// Poisons the pages of region `r` that no block of `blocks` (its preserved blocks, in
/// address order) covers. Walks the ordered blocks and writes the gaps between them, so a
/// kexec costs O(preserved blocks + poisoned pages) without a set of every preserved page
/// (for a 16 GiB memfd that set held 4 Mi entries; the `blackout` benchmark).
fn poison_region_gaps(
    r: &ExtRegion,
    blocks: impl Iterator<Item = (u64, u32)>,
) -> Result<(), Errno> {
    let size_pages = r.size()?.div_ceil(PAGE);
    let poison = vec![POISON; PAGE_SIZE];
    let mut next = 0u64;
    for (p, o) in blocks {
        let first = (p - r.base()) / PAGE;
        for i in next..first.min(size_pages) {
            r.write(i * PAGE, &poison)?;
        }
        next = next.max(first.saturating_add(1u64 << o));
    }
    for i in next..size_pages {
        r.write(i * PAGE, &poison)?;
    }
    Ok(())
}

type BlobContents = (Vec<BlobRange>, BTreeMap<String, (u64, usize)>);

/// Decodes the ranges and subtrees after a blob header. `read` reads arena memory; `valid`
/// says whether `pages` pages from an address exist in the handover.
pub(crate) fn parse_blob_entries(
    hdr: &BlobHeader,
    phys: u64,
    max_bytes: u64,
    read: impl Fn(u64, &mut [u8]) -> Result<(), ImageError>,
    valid: impl Fn(u64, u64) -> bool,
) -> Result<BlobContents, ImageError> {
    let hlen = size_of::<BlobHeader>() as u64;
    let rlen = size_of::<BlobRange>() as u64;
    let slen = size_of::<BlobSubtree>() as u64;
    let trunc = ImageError::Truncated {
        what: "KHO blob",
        phys,
    };
    // Bound the sizes by the address space before allocating anything.
    let nr = usize::try_from(hdr.nr_ranges).map_err(|_| trunc.clone())?;
    let ns = usize::try_from(hdr.nr_subtrees).map_err(|_| trunc.clone())?;
    let need = hdr
        .nr_ranges
        .checked_mul(rlen)
        .and_then(|r| hdr.nr_subtrees.checked_mul(slen)?.checked_add(r))
        .and_then(|n| n.checked_add(hlen));
    if need.is_none_or(|n| n > max_bytes) {
        return Err(trunc);
    }
    let mut ranges = vec![BlobRange::new_zeroed(); nr];
    read(phys + hlen, ranges.as_mut_bytes())?;
    let mut subs = vec![BlobSubtree::new_zeroed(); ns];
    read(phys + hlen + rlen * hdr.nr_ranges, subs.as_mut_bytes())?;
    for r in &ranges {
        if r.order > MAX_ORDER || r.count == 0 || !r.phys.is_multiple_of(order_bytes(r.order)) {
            return Err(ImageError::Misaligned {
                phys: r.phys,
                order: r.order,
            });
        }
        let pages = u64::from(r.count) << r.order;
        if r.phys == 0 || !valid(r.phys, pages) {
            return Err(ImageError::OutOfRange {
                phys: r.phys,
                pages,
            });
        }
    }
    let mut subtrees = BTreeMap::new();
    for (index, s) in subs.iter().enumerate() {
        let name = crate::util::cstr(&s.name).ok_or(ImageError::SubtreeName { index })?;
        let size = usize::try_from(s.size).map_err(|_| ImageError::SubtreeName { index })?;
        subtrees.insert(name.to_owned(), (s.phys, size));
    }
    Ok((ranges, subtrees))
}

/// The base of the live region containing `phys`, if any: [`region_of`] without taking a
/// reference (no `Arc` upgrade and drop, two atomic read-modify-writes), for the checks that
/// run once per preserved or freed folio (the `memfd_preserve` / `memfd_retrieve` benchmarks).
/// Like `region_of`, it answers for this instant only (a file may drop the region's last
/// reference right after); callers only check an address with it.
fn region_base_of(st: &State, phys: u64) -> Option<u64> {
    let (base, slot) = region_slot(st, phys)?;
    (slot.weak.strong_count() > 0).then_some(base)
}

/// [`region_base_of`] with a cache for batches under one hold of the lock: `region` holds the
/// base of the live region found last, and an address inside its span needs no lookup (the
/// folios of one memfd all lie in its region; regions only come and go under the lock, and
/// with regions at their usual bases spans do not overlap).
#[inline]
fn live_region_base(st: &State, phys: u64, region: &mut Option<u64>) -> Option<u64> {
    if let Some(b) = *region
        && !st.odd_region_base
        && phys >= b
        && phys - b < REGION_SPAN
    {
        return Some(b);
    }
    *region = region_base_of(st, phys);
    *region
}

fn region_of(st: &State, phys: u64) -> Option<Arc<ExtRegion>> {
    region_slot(st, phys)?.1.weak.upgrade()
}

/// The slot of the region whose span contains `phys` (the last region starting at or below
/// it). Regions sit at `REGION_BASE` plus a multiple of `REGION_SPAN` (`add_region`), so the
/// base is computed and looked up as one key, unless a handover brought a region based
/// elsewhere (a corrupt image or descriptor): then the ordered search, as for any base.
fn region_slot(st: &State, phys: u64) -> Option<(u64, &RegionSlot)> {
    if !st.odd_region_base {
        let off = phys.checked_sub(REGION_BASE)?;
        let base = REGION_BASE + off / REGION_SPAN * REGION_SPAN;
        return st.regions.get(&base).map(|slot| (base, slot));
    }
    let (&base, slot) = st.regions.range(..=phys).next_back()?;
    (phys < base + REGION_SPAN).then_some((base, slot))
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

impl KhoService for Kho {
    fn is_enabled(&self) -> bool {
        true
    }

    fn is_kho_boot(&self) -> bool {
        self.kho_boot
    }

    fn alloc_folio(&self, order: u32) -> luo_abi::Result<PhysAddr> {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("alloc_folio")?;
        self.alloc_locked(&mut st, order).map(PhysAddr::new)
    }

    fn free_folio(&self, phys: PhysAddr, order: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.free_locked(&mut st, phys.as_u64(), order)
    }

    fn preserve_folio(&self, phys: PhysAddr, order: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("preserve_folio")?;
        self.preserve_locked(&mut st, phys.as_u64(), order)
    }

    fn unpreserve_folio(&self, phys: PhysAddr, order: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::unpreserve_locked(&mut st, phys.as_u64(), order)
    }

    fn restore_folio(&self, phys: PhysAddr) -> luo_abi::Result<u32> {
        let mut st = lock(&self.st);
        self.restore_locked(&mut st, phys.as_u64())
    }

    fn is_incoming(&self, phys: PhysAddr) -> bool {
        lock(&self.st).inc.contains_page(phys.as_u64())
    }

    /// One hold of the lock and one region lookup for the whole batch; each folio is still
    /// an allocation site and gets every check of [`KhoService::preserve_folio`].
    fn preserve_folios(&self, folios: &[ShmemFolio]) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        let mut region = None;
        for (done, f) in folios.iter().enumerate() {
            let r = alloc_site("preserve_folio")
                .and_then(|()| self.preserve_in(&mut st, f.phys.as_u64(), f.order, &mut region));
            if let Err(e) = r {
                for g in &folios[..done] {
                    let _ = Kho::unpreserve_locked(&mut st, g.phys.as_u64(), g.order);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// One hold of the lock and one region lookup for the whole batch.
    fn free_folios(&self, phys: &[PhysAddr], orders: &[u32]) -> luo_abi::Result {
        if phys.len() != orders.len() {
            return Err(Errno::EINVAL);
        }
        let mut st = lock(&self.st);
        let mut region = None;
        let mut r = Ok(());
        for (&p, &o) in phys.iter().zip(orders) {
            let e = self.free_in(&mut st, p.as_u64(), o, &mut region);
            if r.is_ok() {
                r = e;
            }
        }
        r
    }

    /// One hold of the lock for the whole batch.
    fn restore_folios(&self, phys: &[PhysAddr], orders: &mut Vec<u32>) -> luo_abi::Result {
        let mut st = lock(&self.st);
        orders.reserve(phys.len());
        for p in phys {
            orders.push(self.restore_locked(&mut st, p.as_u64())?);
        }
        Ok(())
    }

    fn preserve_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.preserve_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn unpreserve_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::unpreserve_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn restore_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.restore_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn free_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.free_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn preserve_pages(&self, phys: PhysAddr, nr_pages: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("preserve_pages")?;
        let p = phys.as_u64();
        let len = (nr_pages as u64).checked_mul(PAGE).ok_or(Errno::EINVAL)?;
        if nr_pages == 0 || p == 0 || !phys.is_page_aligned() || !self.preservable(&st, p, len) {
            return Err(Errno::EINVAL);
        }
        if st.out.overlaps(p, len) {
            return Err(Errno::EEXIST);
        }
        for i in 0..nr_pages as u64 {
            st.out.insert(p + i * PAGE, 0);
        }
        Ok(())
    }

    fn unpreserve_pages(&self, phys: PhysAddr, nr_pages: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        if nr_pages == 0 || !(0..nr_pages as u64).all(|i| st.out.get(p + i * PAGE) == Some(0)) {
            return Err(Errno::EINVAL);
        }
        for i in 0..nr_pages as u64 {
            st.out.remove(p + i * PAGE);
        }
        Ok(())
    }

    fn restore_pages(&self, phys: PhysAddr, nr_pages: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        if nr_pages == 0 || !(0..nr_pages as u64).all(|i| st.inc.get(p + i * PAGE) == Some(0)) {
            return Err(Errno::EINVAL);
        }
        for i in 0..nr_pages as u64 {
            self.restore_locked(&mut st, p + i * PAGE)?;
        }
        Ok(())
    }

    fn preserve_vmalloc(&self, pages: &[PhysAddr], order: u16) -> luo_abi::Result<VmallocDesc> {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("preserve_vmalloc")?;
        let order32 = u32::from(order);
        let block = order_bytes(order32.min(MAX_ORDER + 1));
        if pages.is_empty() || order32 > MAX_ORDER {
            return Err(Errno::EINVAL);
        }
        let total = u32::try_from((pages.len() as u64) << order).map_err(|_| Errno::EINVAL)?;
        let mut seen = HashSet::new();
        for p in pages {
            let a = p.as_u64();
            if a == 0 || !a.is_multiple_of(block) || !self.preservable(&st, a, block) {
                return Err(Errno::EINVAL);
            }
            if !seen.insert(a) || st.out.overlaps(a, block) {
                return Err(Errno::EEXIST);
            }
        }
        // Chunk pages, allocated first so a failure leaves nothing behind.
        let per = KHO_VMALLOC_SIZE as usize;
        let n_chunks = pages.len().div_ceil(per);
        let mut chunks = Vec::with_capacity(n_chunks);
        for _ in 0..n_chunks {
            match self.alloc_locked(&mut st, 0) {
                Ok(c) => chunks.push(c),
                Err(e) => {
                    for c in chunks {
                        let _ = self.free_locked(&mut st, c, 0);
                    }
                    return Err(e);
                }
            }
        }
        for (i, group) in pages.chunks(per).enumerate() {
            let mut chunk = kho_vmalloc_chunk::new_zeroed();
            chunk.hdr.next = Phys::new(PhysAddr::new(chunks.get(i + 1).copied().unwrap_or(0)));
            for (slot, p) in chunk.phys.iter_mut().zip(group) {
                *slot = p.as_u64();
            }
            self.write_locked(&st, chunks[i], chunk.as_bytes())?;
        }
        for &c in &chunks {
            st.out.insert(c, 0);
        }
        for p in pages {
            for i in 0..(1u64 << order) {
                st.out.insert(p.as_u64() + i * PAGE, 0);
            }
        }
        Ok(VmallocDesc {
            first: Phys::<VmallocChunk>::new(PhysAddr::new(chunks[0])),
            total_pages: total,
            flags: KHO_VMALLOC_ALLOC,
            order,
        })
    }

    fn unpreserve_vmalloc(&self, desc: &VmallocDesc) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let (chunks, entries) = self.walk_vmalloc(&st, desc, false)?;
        let n = 1u64 << desc.order;
        if !entries
            .iter()
            .all(|&e| (0..n).all(|i| st.out.get(e + i * PAGE) == Some(0)))
        {
            return Err(Errno::EINVAL);
        }
        for e in entries {
            for i in 0..n {
                st.out.remove(e + i * PAGE);
            }
        }
        for c in chunks {
            st.out.remove(c);
            self.free_locked(&mut st, c, 0)?;
        }
        Ok(())
    }

    fn restore_vmalloc(&self, desc: &VmallocDesc) -> luo_abi::Result<Vec<PhysAddr>> {
        let mut st = lock(&self.st);
        let (chunks, entries) = self.walk_vmalloc(&st, desc, true)?;
        let n = 1u64 << desc.order;
        if !entries
            .iter()
            .all(|&e| (0..n).all(|i| st.inc.get(e + i * PAGE) == Some(0)))
        {
            return Err(Errno::EINVAL);
        }
        for &e in &entries {
            for i in 0..n {
                self.restore_locked(&mut st, e + i * PAGE)?;
            }
            // The area's pages become one allocation of `order` each.
            if self.arena_index(e).is_some() {
                for i in 0..n {
                    st.folios.remove(&(e + i * PAGE));
                }
                st.folios.insert(e, u32::from(desc.order));
            }
        }
        for c in chunks {
            self.restore_locked(&mut st, c)?;
            self.free_locked(&mut st, c, 0)?;
        }
        Ok(entries.into_iter().map(PhysAddr::new).collect())
    }

    fn alloc_preserve(&self, size: usize) -> luo_abi::Result<PhysAddr> {
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let order = order_for_pages(luo_abi::kho::pages_for(size) as u64).ok_or(Errno::EINVAL)?;
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("alloc_preserve")?;
        let phys = self.alloc_locked(&mut st, order)?;
        if let Err(e) = self.preserve_locked(&mut st, phys, order) {
            let _ = self.free_locked(&mut st, phys, order);
            return Err(e);
        }
        Ok(PhysAddr::new(phys))
    }

    fn unpreserve_free(&self, phys: PhysAddr) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        let order = st.out.get(p).ok_or(Errno::EINVAL)?;
        if st.folios.get(&p) != Some(&order) {
            return Err(Errno::EINVAL);
        }
        Kho::unpreserve_locked(&mut st, p, order)?;
        self.free_locked(&mut st, p, order)
    }

    fn restore_free(&self, phys: PhysAddr) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        if self.arena_index(p).is_none() {
            return Err(Errno::EINVAL);
        }
        let order = self.restore_locked(&mut st, p)?;
        self.free_locked(&mut st, p, order)
    }

    fn add_subtree(&self, name: &str, phys: PhysAddr, size: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        if name.is_empty() || name.len() >= 64 || name.contains('\0') {
            return Err(Errno::EINVAL);
        }
        if st.sub_out.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        alloc_site("add_subtree")?;
        st.sub_out.insert(name.to_owned(), (phys.as_u64(), size));
        Ok(())
    }

    fn remove_subtree(&self, phys: PhysAddr) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let name = st
            .sub_out
            .iter()
            .find(|(_, (p, _))| *p == phys.as_u64())
            .map(|(n, _)| n.clone())
            .ok_or(Errno::ENOENT)?;
        st.sub_out.remove(&name);
        Ok(())
    }

    fn retrieve_subtree(&self, name: &str) -> luo_abi::Result<(PhysAddr, usize)> {
        let st = lock(&self.st);
        st.sub_in
            .get(name)
            .map(|&(p, s)| (PhysAddr::new(p), s))
            .ok_or(Errno::ENOENT)
    }

    fn read(&self, phys: PhysAddr, buf: &mut [u8]) -> luo_abi::Result {
        let st = lock(&self.st);
        self.read_locked(&st, phys.as_u64(), buf)
    }

    fn write(&self, phys: PhysAddr, buf: &[u8]) -> luo_abi::Result {
        let st = lock(&self.st);
        self.write_locked(&st, phys.as_u64(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use luo_abi::kho::KhoExt;

    fn pa(p: u64) -> PhysAddr {
        PhysAddr::new(p)
    }

    #[test]
    fn folios_preserve_and_cross() {
        let k = Kho::new(BackingKind::Heap, 256).unwrap();
        let f = k.alloc_folio(2).unwrap();
        assert!(f.as_u64().is_multiple_of(4 * PAGE));
        k.write(f, b"folio data").unwrap();
        k.preserve_folio(f, 2).unwrap();
        assert_eq!(k.preserve_folio(f, 2), Err(Errno::EEXIST));
        assert_eq!(
            k.preserve_pages(pa(f.as_u64() + PAGE), 1),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            k.preserve_folio(pa(f.as_u64() + PAGE), 0),
            Err(Errno::EEXIST)
        );
        assert_eq!(k.unpreserve_folio(f, 1), Err(Errno::EINVAL));
        assert_eq!(k.free_folio(f, 2), Err(Errno::EINVAL));
        let lost = k.alloc_folio(0).unwrap();
        k.write(lost, b"forgotten").unwrap();
        let blob = k.alloc_preserve(100).unwrap();
        k.write_obj(Phys::<u64>::new(blob), &0xfeed_u64).unwrap();
        k.add_subtree("test", blob, 8).unwrap();
        assert_eq!(k.add_subtree("test", blob, 8), Err(Errno::EEXIST));
        assert_eq!(
            k.stats(),
            KhoStats {
                preserved_pages: 5,
                preserved_ranges: 2,
                incoming_pages: 0,
                arena_pages_in_use: 6,
                regions: 0
            }
        );

        let h = k.kexec().unwrap();
        assert_eq!(k.alloc_folio(0), Err(Errno::EINVAL));
        drop(k);
        let k2 = Kho::boot(h).unwrap();
        assert!(k2.is_kho_boot());
        assert_eq!(k2.stats().incoming_pages, 5);
        let mut buf = [0u8; 10];
        k2.read(f, &mut buf).unwrap();
        assert_eq!(&buf, b"folio data");
        k2.read(lost, &mut buf).unwrap();
        assert_eq!(buf, [POISON; 10]);
        // New allocations avoid incoming memory.
        for _ in 0..50 {
            let p = k2.alloc_folio(0).unwrap().as_u64();
            assert!(!(f.as_u64()..f.as_u64() + 4 * PAGE).contains(&p));
            assert_ne!(p, blob.as_u64());
        }
        let (sp, ss) = k2.retrieve_subtree("test").unwrap();
        assert_eq!((sp, ss), (blob, 8));
        assert_eq!(k2.read_obj(Phys::<u64>::new(sp)).unwrap(), 0xfeed);
        assert_eq!(k2.restore_folio(pa(f.as_u64() + PAGE)), Err(Errno::EINVAL));
        assert_eq!(k2.restore_folio(f), Ok(2));
        assert_eq!(k2.restore_folio(f), Err(Errno::EINVAL));
        k2.restore_free(blob).unwrap();
        k2.free_folio(f, 2).unwrap();
        assert_eq!(k2.stats().incoming_pages, 0);
        assert_eq!(k2.retrieve_subtree("nope"), Err(Errno::ENOENT));
    }

    fn folio(phys: PhysAddr, order: u32) -> ShmemFolio {
        ShmemFolio {
            index: 0,
            phys,
            order,
            dirty: false,
            uptodate: true,
        }
    }

    /// `preserve_folios` is a loop of `preserve_folio` that undoes itself on an error;
    /// `restore_folios` a loop of `restore_folio` that stops at the first error.
    #[test]
    fn batched_folio_calls_match_the_per_folio_calls() {
        let k = Kho::new(BackingKind::Heap, 256).unwrap();
        let a = k.alloc_folio(0).unwrap();
        let b = k.alloc_folio(2).unwrap();
        let c = k.alloc_folio(0).unwrap();
        let unallocated = pa(ARENA_BASE + 200 * PAGE);
        for (bad, err) in [
            (folio(a, 0), Errno::EEXIST),
            (folio(pa(b.as_u64() + PAGE), 0), Errno::EEXIST),
            (folio(pa(c.as_u64() + 8), 0), Errno::EINVAL),
            (folio(c, 1), Errno::EINVAL),
            (folio(unallocated, 0), Errno::EINVAL),
        ] {
            let batch = [folio(a, 0), folio(b, 2), bad, folio(c, 0)];
            assert_eq!(k.preserve_folios(&batch), Err(err), "{bad:?}");
            assert!(k.outgoing_map().is_empty(), "{bad:?}");
        }
        // Every folio is an allocation site; a fault at any of them undoes the batch.
        let all = [folio(a, 0), folio(b, 2), folio(c, 0)];
        for n in 0..all.len() {
            inject_alloc_faults(Some(n), Errno::ENOMEM);
            assert_eq!(k.preserve_folios(&all), Err(Errno::ENOMEM));
            assert_eq!(take_alloc_faults(), vec!["preserve_folio"; n + 1]);
            assert!(k.outgoing_map().is_empty());
        }
        k.preserve_folios(&all).unwrap();
        let mut want = vec![(a.as_u64(), 0), (b.as_u64(), 2), (c.as_u64(), 0)];
        want.sort();
        assert_eq!(k.outgoing_map(), want);
        assert_eq!(k.preserve_folios(&[folio(c, 0)]), Err(Errno::EEXIST));
        assert_eq!(k.stats().preserved_pages, 6);

        let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
        let mut orders = Vec::new();
        assert_eq!(
            k2.restore_folios(&[b, unallocated, a], &mut orders),
            Err(Errno::EINVAL)
        );
        assert_eq!(orders, [2]);
        orders.clear();
        assert_eq!(
            k2.restore_folios(&[a, c, pa(b.as_u64() + PAGE)], &mut orders),
            Err(Errno::EINVAL)
        );
        assert_eq!(orders, [0, 0]);
        assert_eq!(
            k2.violations(),
            vec![KhoViolation::DoubleClaim {
                phys: b.as_u64() + PAGE
            }]
        );
        assert_eq!((k2.stats().incoming_pages, k2.claimed_pages()), (0, 6));
        assert_eq!(k2.restore_folios(&[], &mut orders), Ok(()));
        // `free_folios` tries every folio and returns the first error.
        assert_eq!(k2.free_folios(&[a, c], &[0]), Err(Errno::EINVAL));
        let in_use = k2.stats().arena_pages_in_use;
        assert_eq!(
            k2.free_folios(&[a, unallocated, c, b], &[0, 0, 0, 2]),
            Err(Errno::EINVAL)
        );
        assert_eq!(k2.stats().arena_pages_in_use, in_use - 6);
        assert_eq!(k2.free_folios(&[a], &[0]), Err(Errno::EINVAL));
    }

    #[test]
    #[cfg_attr(miri, ignore = "host memfd syscalls")]
    fn batched_preserve_over_regions() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let r1 = k.new_region("one").unwrap();
        let r2 = k.new_region("two").unwrap();
        let f = |p: u64, order| folio(pa(p), order);
        k.preserve_folios(&[
            f(r1.base(), 0),
            f(r1.base() + 4 * PAGE, 2),
            f(r2.base() + PAGE, 0),
            f(r1.base() + REGION_SPAN - PAGE, 0),
        ])
        .unwrap();
        assert_eq!(k.stats().preserved_pages, 7);
        // The region found for the first folio does not vouch for an address past its span,
        // nor does a region whose last reference is gone.
        let gone = r2.base();
        drop(r2);
        for bad in [f(gone + 8 * PAGE, 0), f(REGION_BASE + 5 * REGION_SPAN, 0)] {
            assert_eq!(
                k.preserve_folios(&[f(r1.base() + PAGE, 0), bad]),
                Err(Errno::EINVAL)
            );
        }
        assert_eq!(k.stats().preserved_pages, 7);
    }

    #[test]
    fn incoming_until_claimed() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let p = k.alloc_preserve(8).unwrap();
        let q = k.alloc_folio(0).unwrap();
        let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
        assert!(k2.is_incoming(p));
        // Never preserved, or not a page of the arena at all: nothing to peek at.
        assert!(!k2.is_incoming(q));
        assert!(!k2.is_incoming(PhysAddr::new(1 << 60)));
        k2.restore_folio(p).unwrap();
        assert!(!k2.is_incoming(p), "claimed");
        assert_eq!(k2.violations(), vec![]);
    }

    #[test]
    fn a_second_claim_is_refused_and_named() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let p = k.alloc_preserve(8).unwrap();
        let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
        assert!(crate::blocks::PhysRead::is_preserved(&k2, p.as_u64(), 8));
        k2.restore_free(p).unwrap();
        // Freed: no longer readable as handed-over memory, and not claimable again.
        assert!(!crate::blocks::PhysRead::is_preserved(&k2, p.as_u64(), 8));
        assert_eq!(k2.restore_free(p), Err(Errno::EINVAL));
        let mut b = [0u8; 8];
        k2.read(p, &mut b).unwrap();
        assert_eq!(
            k2.violations(),
            vec![
                KhoViolation::DoubleClaim { phys: p.as_u64() },
                KhoViolation::StrayRead {
                    phys: p.as_u64(),
                    len: 8
                }
            ]
        );
        assert_eq!(k2.claimed_pages(), 1);
    }

    #[test]
    fn vmalloc_chains_round_trip() {
        let k = Kho::new(BackingKind::Heap, 2048).unwrap();
        let pages: Vec<PhysAddr> = (0..600).map(|_| k.alloc_folio(0).unwrap()).collect();
        for (i, p) in pages.iter().enumerate() {
            k.write(*p, &(i as u64).to_ne_bytes()).unwrap();
        }
        let d = k.preserve_vmalloc(&pages, 0).unwrap();
        assert_eq!(d.total_pages, 600);
        assert_eq!(k.stats().preserved_pages, 602);
        assert_eq!(k.preserve_vmalloc(&pages[..1], 0), Err(Errno::EEXIST));
        k.unpreserve_vmalloc(&d).unwrap();
        assert_eq!(k.stats().preserved_pages, 0);
        let d = k.preserve_vmalloc(&pages, 0).unwrap();
        let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
        let mut bad = d;
        bad.total_pages += 1;
        assert_eq!(k2.restore_vmalloc(&bad), Err(Errno::EINVAL));
        bad = d;
        bad.flags = 0x80;
        assert_eq!(k2.restore_vmalloc(&bad), Err(Errno::EINVAL));
        let back = k2.restore_vmalloc(&d).unwrap();
        assert_eq!(back, pages);
        for (i, p) in back.iter().enumerate() {
            let mut b = [0u8; 8];
            k2.read(*p, &mut b).unwrap();
            assert_eq!(u64::from_ne_bytes(b), i as u64);
            k2.free_folio(*p, 0).unwrap();
        }
        assert_eq!(k2.restore_vmalloc(&d), Err(Errno::EINVAL));
        assert_eq!(k2.stats().incoming_pages, 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "host memfd syscalls")]
    fn regions_cross_without_copy() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let r = k.new_region("data").unwrap();
        r.write(0, &vec![7u8; 3 * PAGE_SIZE]).unwrap();
        let other = k.new_region("unpreserved").unwrap();
        other.write(0, b"x").unwrap();
        k.preserve_pages(pa(r.base()), 2).unwrap();
        assert_eq!(k.stats().regions, 2);
        let h = k.kexec().unwrap();
        assert_eq!(h.regions.len(), 1);
        drop((k, r, other));
        let k2 = Kho::boot(h).unwrap();
        let r2 = k2.region_at(REGION_BASE + 5).unwrap();
        let mut b = vec![0u8; 3 * PAGE_SIZE];
        r2.read(0, &mut b).unwrap();
        assert!(b[..2 * PAGE_SIZE].iter().all(|&x| x == 7));
        assert!(b[2 * PAGE_SIZE..].iter().all(|&x| x == POISON));
        k2.restore_pages(pa(REGION_BASE), 2).unwrap();
        drop(r2);
        k2.release_idle_regions();
        assert_eq!(k2.stats().regions, 0);
    }

    #[test]
    fn absurd_arguments_are_errors() {
        let k = Kho::new(BackingKind::Heap, 16).unwrap();
        let top = PhysAddr::new(!(PAGE - 1));
        assert_eq!(k.preserve_pages(top, usize::MAX), Err(Errno::EINVAL));
        assert_eq!(
            k.preserve_pages(pa(ARENA_BASE), usize::MAX / 2),
            Err(Errno::EINVAL)
        );
        assert_eq!(k.preserve_folio(top, 0), Err(Errno::EINVAL));
        assert_eq!(k.preserve_folio(pa(ARENA_BASE), 64), Err(Errno::EINVAL));
        assert_eq!(k.alloc_folio(40), Err(Errno::EINVAL));
        assert_eq!(k.restore_pages(top, usize::MAX), Err(Errno::EINVAL));
        assert_eq!(k.unpreserve_pages(top, 3), Err(Errno::EINVAL));
        let mut b = [0u8; 16];
        assert_eq!(k.read(top, &mut b), Err(Errno::EFAULT));
        assert_eq!(k.write(pa(u64::MAX - 3), &b), Err(Errno::EFAULT));
        assert_eq!(k.alloc_preserve(usize::MAX), Err(Errno::EINVAL));
        let d = VmallocDesc {
            first: Phys::new(top),
            total_pages: u32::MAX,
            flags: 0,
            order: 9,
        };
        assert_eq!(k.restore_vmalloc(&d), Err(Errno::EINVAL));
    }

    #[test]
    fn corrupt_blob_is_an_error() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let p = k.alloc_preserve(10).unwrap();
        let h = k.kexec().unwrap();
        // Smash the first range: misaligned address.
        let at = h.blob + size_of::<BlobHeader>() as u64 - ARENA_BASE;
        h.arena.write(at, &(p.as_u64() + 1).to_ne_bytes()).unwrap();
        assert!(matches!(
            Kho::boot(h).err(),
            Some(ImageError::Misaligned { .. })
        ));
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let h = k.kexec().unwrap();
        h.arena.write(h.blob - ARENA_BASE, &[0u8; 8]).unwrap();
        assert!(matches!(
            Kho::boot(h).err(),
            Some(ImageError::BadMagic { .. })
        ));
    }
}
