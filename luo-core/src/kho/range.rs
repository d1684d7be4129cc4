// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Runs of folios: the KHO calls for `count` folios of one order, back to back.
//!
//! Upstream preserves and restores folio by folio (`kho_preserve_folio`,
//! `kho_restore_folio`). A memfd's folios are mostly one physically contiguous run, and a
//! HugeTLB memfd's are runs of 2 MiB folios, so the model does its bookkeeping once per run:
//! one check that the memory may be preserved, one overlap test and one tracker update of a
//! bitmap word per 64 pages ([`MemTrack::insert_run`]). The guarantees are those of the
//! per-folio calls, checked over the whole run before anything changes: misalignment and
//! memory that cannot be preserved are `EINVAL`, an overlap is `EEXIST`, a claim of a page
//! claimed before is refused and reported, and every call is one allocation site.

use luo_abi::Errno;

use super::track::MemTrack;
use super::{Kho, KhoViolation, MAX_ORDER, PAGE, State, alloc_site, live_region_base};

/// Bytes of a run of `count` folios of `order`, if the run is well formed: an order the
/// model has, at least one folio, a nonzero address aligned to the folio size, and no
/// overflow of the address space.
fn run_bytes(phys: u64, order: u32, count: usize) -> Option<u64> {
    if order > MAX_ORDER || count == 0 || phys == 0 || !phys.is_multiple_of(PAGE << order) {
        return None;
    }
    let len = (count as u64).checked_mul(PAGE << order)?;
    phys.checked_add(len)?;
    Some(len)
}

impl Kho {
    pub(super) fn preserve_range_locked(
        &self,
        st: &mut State,
        phys: u64,
        order: u32,
        count: usize,
    ) -> Result<(), Errno> {
        Kho::check_alive(st)?;
        alloc_site("preserve_range")?;
        let len = run_bytes(phys, order, count).ok_or(Errno::EINVAL)?;
        if !self.preservable_in(st, phys, len, &mut None) {
            return Err(Errno::EINVAL);
        }
        if !st.out.insert_run(phys, order, count as u64) {
            // Well formed (checked above), so only an overlap refuses it.
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    pub(super) fn unpreserve_range_locked(
        st: &mut State,
        phys: u64,
        order: u32,
        count: usize,
    ) -> Result<(), Errno> {
        if st.out.remove_run(phys, order, count as u64) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    pub(super) fn restore_range_locked(
        &self,
        st: &mut State,
        phys: u64,
        order: u32,
        count: usize,
    ) -> Result<(), Errno> {
        let Some(len) = run_bytes(phys, order, count) else {
            return Err(Errno::EINVAL);
        };
        if !st.inc.remove_run(phys, order, count as u64) {
            // Refused whole. A page of the run claimed before is a second claim: report the
            // first, as `restore_folio` of that folio would.
            if let Some(p) = first_claimed(&st.claimed, phys, len) {
                self.violation(KhoViolation::DoubleClaim { phys: p });
            }
            return Err(Errno::EINVAL);
        }
        // The run was incoming, and incoming blocks are never claimed ones.
        let fresh = st.claimed.insert_run(phys, order, count as u64);
        debug_assert!(fresh, "an incoming run was claimed before");
        if self.arena_index(phys).is_some() {
            // Restored arena memory is an allocation of the folio's order, freed one by one.
            for i in 0..count as u64 {
                st.folios.insert(phys + ((i * PAGE) << order), order);
            }
        }
        Ok(())
    }

    pub(super) fn free_range_locked(
        &self,
        st: &mut State,
        phys: u64,
        order: u32,
        count: usize,
    ) -> Result<(), Errno> {
        let len = run_bytes(phys, order, count).ok_or(Errno::EINVAL)?;
        if self.arena_index(phys).is_none() {
            // Region pages (restored memfd folios): nothing to free in the arena; the run
            // must lie in one live region and not be preserved, as for one folio.
            let mut region = None;
            return match live_region_base(st, phys, &mut region) {
                Some(base)
                    if phys + len - base <= super::REGION_SPAN && !st.out.overlaps(phys, len) =>
                {
                    Ok(())
                }
                _ => Err(Errno::EINVAL),
            };
        }
        let mut r = Ok(());
        for i in 0..count as u64 {
            let e = self.free_locked(st, phys + ((i * PAGE) << order), order);
            if r.is_ok() {
                r = e;
            }
        }
        r
    }
}

/// The first page of `phys..phys + len` in `claimed`, if any.
fn first_claimed(claimed: &MemTrack, phys: u64, len: u64) -> Option<u64> {
    if !claimed.overlaps(phys, len) {
        return None;
    }
    (0..len / PAGE)
        .map(|i| phys + i * PAGE)
        .find(|&p| claimed.contains_page(p))
}

#[cfg(test)]
mod tests {
    use luo_abi::PhysAddr;
    use luo_abi::kho::KhoService;

    use super::super::BackingKind;
    use super::super::fault::{inject_alloc_faults, take_alloc_faults};
    use super::*;

    fn pa(p: u64) -> PhysAddr {
        PhysAddr::new(p)
    }

    /// A run is refused whole for every reason one of its folios would be, and otherwise
    /// tracked as the folios one by one would be.
    #[test]
    fn a_range_has_the_guarantees_of_its_folios() {
        let k = Kho::new(BackingKind::Heap, 256).unwrap();
        let a = k.alloc_folio(3).unwrap().as_u64(); // 8 pages
        let b = k.alloc_folio(0).unwrap().as_u64();
        k.preserve_folio(pa(a + 5 * PAGE), 0).unwrap();
        for (phys, order, count, err) in [
            (a, 0, 8, Errno::EEXIST),             // overlaps the preserved page
            (a + PAGE, 1, 1, Errno::EINVAL),      // misaligned
            (a, MAX_ORDER + 1, 1, Errno::EINVAL), // no such order
            (a, 0, 0, Errno::EINVAL),             // empty
            (a, 0, 300, Errno::EINVAL),           // past what is allocated
            (0, 0, 1, Errno::EINVAL),             // address 0
            (!0 << 12, 0, 2, Errno::EINVAL),      // past the address space
        ] {
            assert_eq!(
                k.preserve_range(pa(phys), order, count),
                Err(err),
                "{phys:#x} {order} {count}"
            );
        }
        assert_eq!(
            k.stats().preserved_pages,
            1,
            "nothing of a refused run stays"
        );
        // One allocation site per call.
        inject_alloc_faults(Some(0), Errno::ENOMEM);
        assert_eq!(k.preserve_range(pa(a), 0, 4), Err(Errno::ENOMEM));
        assert_eq!(take_alloc_faults(), vec!["preserve_range"]);
        k.preserve_range(pa(a), 0, 4).unwrap();
        k.preserve_range(pa(a + 6 * PAGE), 1, 1).unwrap();
        assert_eq!(
            k.outgoing_map(),
            [0, 1, 2, 3, 5]
                .map(|i| (a + i * PAGE, 0))
                .into_iter()
                .chain([(a + 6 * PAGE, 1)])
                .collect::<Vec<_>>()
        );
        // Unpreserve only with the order and extent preserved.
        assert_eq!(k.unpreserve_range(pa(a), 1, 2), Err(Errno::EINVAL));
        assert_eq!(k.unpreserve_range(pa(a), 0, 5), Err(Errno::EINVAL));
        k.unpreserve_range(pa(a + 2 * PAGE), 0, 2).unwrap();
        k.preserve_range(pa(a + 2 * PAGE), 0, 2).unwrap();

        let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
        // All or nothing: a run with a folio of another order claims nothing.
        assert_eq!(k2.restore_range(pa(a), 0, 8), Err(Errno::EINVAL));
        assert_eq!(k2.stats().incoming_pages, 7);
        k2.restore_range(pa(a), 0, 4).unwrap();
        assert_eq!(k2.restore_folio(pa(a + 6 * PAGE)), Ok(1));
        assert_eq!(k2.claimed_pages(), 6);
        // A second claim inside a run is refused and named once, also when the caller
        // then tries the folios one by one.
        assert_eq!(k2.restore_range(pa(a + 2 * PAGE), 0, 4), Err(Errno::EINVAL));
        assert_eq!(k2.restore_folio(pa(a + 2 * PAGE)), Err(Errno::EINVAL));
        assert_eq!(
            k2.violations(),
            vec![KhoViolation::DoubleClaim { phys: a + 2 * PAGE }]
        );
        assert_eq!(k2.stats().incoming_pages, 1, "page 5 still incoming");
        // Restored arena memory is freed as the folios one by one: every folio tried, the
        // first error returned (page 4 was never restored).
        let in_use = k2.stats().arena_pages_in_use;
        assert_eq!(k2.free_range(pa(a), 0, 5), Err(Errno::EINVAL));
        assert_eq!(k2.stats().arena_pages_in_use, in_use - 4);
        k2.free_range(pa(a + 6 * PAGE), 1, 1).unwrap();
        assert_eq!(
            k2.free_folio(pa(b), 0),
            Err(Errno::EINVAL),
            "poisoned, not ours"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "host memfd syscalls")]
    fn a_run_of_region_pages_crosses_as_one_range() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let r = k.new_region("ram").unwrap();
        r.write(0, &vec![3u8; 4 * PAGE as usize]).unwrap();
        k.preserve_range(pa(r.base()), 0, 3).unwrap();
        assert_eq!(
            k.preserve_range(pa(r.base() + 2 * PAGE), 0, 2),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            k.preserve_range(
                pa(r.base()),
                0,
                (super::super::REGION_SPAN / PAGE) as usize + 1
            ),
            Err(Errno::EINVAL),
            "past the region"
        );
        let h = k.kexec().unwrap();
        drop((k, r));
        let k2 = Kho::boot(h).unwrap();
        assert_eq!(k2.stats().incoming_pages, 3);
        let base = h_base(&k2);
        let mut buf = [0u8; 4];
        k2.read(pa(base + 3 * PAGE), &mut buf).unwrap();
        assert_eq!(buf, [super::super::POISON; 4], "the page not preserved");
        k2.restore_range(pa(base), 0, 3).unwrap();
        assert_eq!(k2.free_range(pa(base), 0, 3), Ok(()));
        assert_eq!(k2.stats().incoming_pages, 0);
    }

    fn h_base(k: &Kho) -> u64 {
        k.region_at(super::super::REGION_BASE).unwrap().base()
    }
}
