// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! External regions: host memfds with synthetic pfns (a memfd's pages), created, adopted
//! after a kexec, found by address, and poisoned where nothing of them was preserved.

use std::sync::Arc;

use luo_abi::Errno;

use super::*;
use crate::mem::{ExtRegion, REGION_BASE, REGION_SPAN};

impl Kho {
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

    pub(super) fn add_region(
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
}

/// Poisons the pages of region `r` that no block of `blocks` (its preserved blocks, in
/// address order) covers. Walks the ordered blocks and writes the gaps between them, so a
/// kexec costs O(preserved blocks + poisoned pages) without a set of every preserved page
/// (for a 16 GiB memfd that set held 4 Mi entries; the `blackout` benchmark).
pub(super) fn poison_region_gaps(
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

/// The base of the live region containing `phys`, if any: [`region_of`] without taking a
/// reference (no `Arc` upgrade and drop, two atomic read-modify-writes), for the checks that
/// run once per preserved or freed folio (the `memfd_preserve` / `memfd_retrieve` benchmarks).
/// Like `region_of`, it answers for this instant only (a file may drop the region's last
/// reference right after); callers only check an address with it.
pub(super) fn region_base_of(st: &State, phys: u64) -> Option<u64> {
    let (base, slot) = region_slot(st, phys)?;
    (slot.weak.strong_count() > 0).then_some(base)
}

/// [`region_base_of`] with a cache for batches under one hold of the lock: `region` holds the
/// base of the live region found last, and an address inside its span needs no lookup (the
/// folios of one memfd all lie in its region; regions only come and go under the lock, and
/// with regions at their usual bases spans do not overlap).
#[inline]
pub(super) fn live_region_base(st: &State, phys: u64, region: &mut Option<u64>) -> Option<u64> {
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

pub(super) fn region_of(st: &State, phys: u64) -> Option<Arc<ExtRegion>> {
    region_slot(st, phys)?.1.weak.upgrade()
}

/// The slot of the region whose span contains `phys` (the last region starting at or below
/// it). Regions sit at `REGION_BASE` plus a multiple of `REGION_SPAN` (`add_region`), so the
/// base is computed and looked up as one key, unless a handover brought a region based
/// elsewhere (a corrupt image or descriptor): then the ordered search, as for any base.
pub(super) fn region_slot(st: &State, phys: u64) -> Option<(u64, &RegionSlot)> {
    if !st.odd_region_base {
        let off = phys.checked_sub(REGION_BASE)?;
        let base = REGION_BASE + off / REGION_SPAN * REGION_SPAN;
        return st.regions.get(&base).map(|slot| (base, slot));
    }
    let (&base, slot) = st.regions.range(..=phys).next_back()?;
    (phys < base + REGION_SPAN).then_some((base, slot))
}
