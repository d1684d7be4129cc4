// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! RETRIEVE_FD and finish of a file never retrieved: the records streamed from the folio
//! array, split into runs, each run claimed and installed (or discarded) at once.

use std::sync::atomic::Ordering;

use luo_abi::file::{FileRef, ShmemFile, ShmemFolio};
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PhysAddr};
use luo_generated::memfd::{MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser};

use crate::folio_array::FolioArray;

use super::*;

/// Consecutive records of a retrieved file whose pfn and index both advance by the same power
/// of two `step` (a folio of `step` pages followed by the next, as `memfd_pin_folios` lists
/// them, holes filled), all up to date or all not: what one run of folios should be.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecordRun {
    pub(super) index: u64,
    pub(super) pfn: u64,
    pub(super) n: usize,
    pub(super) step: u64,
    pub(super) uptodate: bool,
    pub(super) last_index: u64,
    pub(super) last_pfn: u64,
}

impl RecordRun {
    /// A run of the one record `e`; `EIO` for a pfn no address has.
    pub(super) fn start(e: &memfd_luo_folio_ser) -> Result<RecordRun, Errno> {
        PhysAddr::from_pfn(e.pfn()).ok_or(Errno::EIO)?;
        Ok(RecordRun {
            index: e.index,
            pfn: e.pfn(),
            n: 1,
            step: 1,
            uptodate: e.flags() & MEMFD_LUO_FOLIO_UPTODATE != 0,
            last_index: e.index,
            last_pfn: e.pfn(),
        })
    }

    /// Adds `e` if it continues the run.
    #[inline]
    pub(super) fn extend(&mut self, e: &memfd_luo_folio_ser) -> bool {
        let step = e.pfn().wrapping_sub(self.last_pfn);
        let uptodate = e.flags() & MEMFD_LUO_FOLIO_UPTODATE != 0;
        let same_step = if self.n > 1 {
            step == self.step
        } else {
            step.is_power_of_two()
        };
        if !same_step || uptodate != self.uptodate || step != e.index.wrapping_sub(self.last_index)
        {
            return false;
        }
        self.step = step;
        self.n += 1;
        self.last_index = e.index;
        self.last_pfn = e.pfn();
        true
    }

    /// Adds all of `records` if they all continue the run with its step, else nothing: one
    /// pass without branches per record (the common case: a page of records of one
    /// contiguous memfd), so it runs at the speed of reading them.
    #[inline]
    pub(super) fn extend_all(&mut self, records: &[memfd_luo_folio_ser]) -> bool {
        let Some(first) = records.first() else {
            return true;
        };
        let step = if self.n > 1 {
            self.step
        } else {
            first.pfn().wrapping_sub(self.last_pfn)
        };
        if !step.is_power_of_two() {
            return false;
        }
        // Every record minus its expected value, OR-ed: zero iff all match. The pfn and
        // index advance together, so one running difference checks both.
        let flag = if self.uptodate {
            MEMFD_LUO_FOLIO_UPTODATE
        } else {
            0
        };
        let delta = self.last_index.wrapping_sub(self.last_pfn);
        let mut want = self.last_pfn;
        let mut diff = 0u64;
        for e in records {
            want = want.wrapping_add(step);
            let pfn = e.pfn();
            diff |= (pfn ^ want)
                | (e.index ^ pfn.wrapping_add(delta))
                | ((e.flags() & MEMFD_LUO_FOLIO_UPTODATE) ^ flag);
        }
        if diff != 0 {
            return false;
        }
        let last = &records[records.len() - 1];
        self.step = step;
        self.n += records.len();
        self.last_pfn = last.pfn();
        self.last_index = last.index;
        true
    }

    /// The address of its `i`-th folio (a pfn that `start` or `extend` accepted, or between
    /// two such).
    pub(super) fn phys(&self, i: usize) -> Result<PhysAddr, Errno> {
        let pfn = self.pfn.wrapping_add((i as u64).wrapping_mul(self.step));
        PhysAddr::from_pfn(pfn).ok_or(Errno::EIO)
    }
}

/// Feeds the records of a file to `take` as [`RecordRun`]s, in order.
pub(super) struct RunSplitter {
    pub(super) cur: Option<RecordRun>,
}

impl RunSplitter {
    /// Feeds `records`; `take` gets every run they complete. Stops at the first record
    /// [`RecordRun::start`] refuses, or error of `take`.
    pub(super) fn push(
        &mut self,
        records: &[memfd_luo_folio_ser],
        take: &mut impl FnMut(RecordRun) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let Some((first, rest)) = records.split_first() else {
            return Ok(());
        };
        // The current run is kept in a local through the loop (in registers, not in `self`).
        let (mut cur, rest) = match self.cur.take() {
            Some(c) => (c, records),
            None => (RecordRun::start(first)?, rest),
        };
        if cur.extend_all(rest) {
            self.cur = Some(cur);
            return Ok(());
        }
        for e in rest {
            if cur.extend(e) {
                continue;
            }
            match RecordRun::start(e) {
                Ok(next) => take(std::mem::replace(&mut cur, next))?,
                Err(err) => {
                    self.cur = Some(cur);
                    return Err(err);
                }
            }
        }
        self.cur = Some(cur);
        Ok(())
    }

    pub(super) fn finish(
        self,
        take: &mut impl FnMut(RecordRun) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        self.cur.map_or(Ok(()), take)
    }
}

/// Claims the folios of the record run `rr` and appends what was claimed to `claimed`. All
/// but the last are folios of `step` pages (each is followed by the next): one
/// [`KhoService::restore_range`]; the last folio's size is known only to KHO:
/// [`KhoService::restore_folio`].
pub(super) fn claim_run(
    kho: &dyn KhoService,
    rr: &RecordRun,
    claimed: &mut Vec<Run>,
) -> Result<(), Errno> {
    let phys = rr.phys(0)?;
    if rr.n > 1 {
        let order = rr.step.trailing_zeros();
        kho.restore_range(phys, order, rr.n - 1)?;
        claimed.push(Run {
            index: rr.index,
            phys,
            order,
            count: rr.n - 1,
        });
    }
    let last = rr.phys(rr.n - 1)?;
    let order = kho.restore_folio(last)?;
    match claimed.last_mut() {
        Some(r) if rr.n > 1 && r.order == order => r.count += 1,
        _ => claimed.push(Run::one(rr.last_index, last, order)),
    }
    Ok(())
}

/// Makes a restored run the file's, zeroing its folios first when they were never written.
pub(super) fn install_run(
    kho: &dyn KhoService,
    shm: &dyn ShmemFile,
    r: &Run,
    uptodate: bool,
) -> Result<(), Errno> {
    if !uptodate {
        // A memfd-v1 writer recorded the folios' real flags: one never written holds
        // garbage, so zero it before it becomes visible (as memfd_luo.c does).
        let zeroes = vec![0u8; (PAGE << r.order) as usize];
        for i in 0..r.count as u64 {
            kho.write(
                PhysAddr::new(r.phys.as_u64() + i * (PAGE << r.order)),
                &zeroes,
            )?;
        }
        ZEROED.fetch_add(r.count as u64, Ordering::Relaxed);
    }
    shm.add_folios(
        ShmemFolio {
            index: r.index,
            phys: r.phys,
            order: r.order,
            dirty: true,
            uptodate: true,
        },
        r.count,
    )?;
    RESTORED.fetch_add(r.count as u64, Ordering::Relaxed);
    Ok(())
}

/// Rebuilds `file` (a new memfd) from a validated record: seals, pos, size, then the very
/// same folios, a run at a time (`kho_restore_folio` and the page-cache insert for each
/// folio, upstream), as the records are read from the folio array.
pub(super) fn retrieve(kho: &dyn KhoService, file: &FileRef, ser: &Record) -> Result<(), Errno> {
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    shm.add_seals(ser.seals)?;
    shm.set_pos(ser.pos);
    shm.set_size(ser.size)?;
    let mut claimed: Vec<Run> = Vec::new();
    // The first error of a record or a run, as opposed to one of the array itself.
    let mut failed = None;
    let mut take = |rr: RecordRun| -> Result<(), Errno> {
        let before = claimed.len();
        claim_run(kho, &rr, &mut claimed).map_err(|_| Errno::EIO)?;
        claimed[before..]
            .iter()
            .try_for_each(|run| install_run(kho, shm, run, rr.uptodate))
    };
    let mut split = RunSplitter { cur: None };
    let read = FolioArray::restore_each(kho, &{ ser.folios }, ser.nr_folios, |records| {
        split
            .push(records, &mut take)
            .inspect_err(|&e| failed = Some(e))
    });
    let r = match (read, failed) {
        (_, Some(e)) => Err(e),
        (Err(_), None) => Err(Errno::EINVAL),
        (Ok(()), None) => split.finish(&mut take),
    };
    // In the model a folio now belongs to the file's region (after an error, to nobody): the
    // restore's reference is dropped, which frees nothing there.
    for run in &claimed {
        let _ = kho.free_range(run.phys, run.order, run.count);
    }
    r
}

/// Releases the folios and the folio array of a file never retrieved.
pub(super) fn discard(kho: &dyn KhoService, ser: &Record) {
    let mut claimed: Vec<Run> = Vec::new();
    let mut take = |rr: RecordRun| -> Result<(), Errno> {
        let before = claimed.len();
        if claim_run(kho, &rr, &mut claimed).is_err() {
            // Not a whole run: every folio of it not claimed yet, one by one, so only the
            // folios KHO refuses stay behind (as a per-folio discard leaves them).
            let done: usize = claimed[before..].iter().map(|r| r.count).sum();
            for i in done..rr.n {
                if let Ok(phys) = rr.phys(i)
                    && let Ok(order) = kho.restore_folio(phys)
                {
                    claimed.push(Run::one(0, phys, order));
                }
            }
        }
        Ok(())
    };
    let mut split = RunSplitter { cur: None };
    // A record with an impossible pfn is skipped (`take` itself never fails).
    if FolioArray::restore_each(kho, &{ ser.folios }, ser.nr_folios, |records| {
        for e in records {
            let _ = split.push(core::slice::from_ref(e), &mut take);
        }
        Ok(())
    })
    .is_ok()
    {
        let _ = split.finish(&mut take);
    }
    for run in &claimed {
        if kho.free_range(run.phys, run.order, run.count).is_ok() {
            DISCARDED.fetch_add(run.count as u64, Ordering::Relaxed);
        }
    }
}
