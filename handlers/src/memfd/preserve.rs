// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! PRESERVE_FD and its undo: the folios pinned and preserved run by run, one record per
//! folio written into the folio array.

use std::sync::atomic::Ordering;

use luo_abi::file::{File, ShmemFile, ShmemFolio};
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PhysAddr};
use luo_generated::kho::kho_vmalloc;
use luo_generated::memfd::{MEMFD_LUO_FOLIO_DIRTY, MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser};
use zerocopy::FromZeros;

use crate::folio_array::FolioArray;

use super::*;

/// Only unlinked shmem files (memfds) qualify.
pub(super) fn can_preserve(file: &dyn File) -> bool {
    file.as_shmem().is_some_and(|s| s.nlink() == 0)
}

pub(super) fn preserve<W: Writer>(
    kho: &dyn KhoService,
    file: &dyn File,
) -> Result<(W::Ser, Private), Errno> {
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    // Upstream: inode_lock + shmem_freeze(inode, true) first.
    shm.set_frozen(true);
    let mut p = Private {
        folios: Vec::new(),
        runs: Vec::new(),
        array: None,
    };
    match preserve_steps::<W>(kho, shm, &mut p) {
        Ok(ser) => Ok((W::to_abi(&ser), p)),
        Err(e) => {
            undo(kho, file, p);
            Err(e)
        }
    }
}

pub(super) fn preserve_steps<W: Writer>(
    kho: &dyn KhoService,
    shm: &dyn ShmemFile,
    p: &mut Private,
) -> Result<Record, Errno> {
    let seals = shm.seals();
    if let Some(all) = W::SEALS
        && u64::from(seals) & !all != 0
    {
        return Err(Errno::EOPNOTSUPP);
    }
    let size = shm.size();
    if size.div_ceil(PAGE) > u64::from(u32::MAX) {
        return Err(Errno::EFBIG);
    }
    let mut ser = Record {
        pos: shm.pos(),
        size,
        seals: if W::SEALS.is_some() { seals } else { 0 },
        nr_folios: 0,
        folios: kho_vmalloc::new_zeroed(),
    };
    p.folios = shm.pin_folios()?;
    if !p.folios.is_empty() {
        // The folios as physically contiguous runs of one order, each preserved with one KHO
        // call. On an error the runs preserved so far are in `p.runs`, which `undo`
        // unpreserves.
        let mut i = 0;
        while i < p.folios.len() {
            let f = &p.folios[i];
            let mut r = Run::one(f.index, f.phys, f.order);
            let size = PAGE << f.order;
            let mut next = f.phys.as_u64().wrapping_add(size);
            i += 1;
            while let Some(g) = p.folios.get(i)
                && g.phys.as_u64() == next
                && g.order == r.order
                && next != 0
            {
                r.count += 1;
                next = next.wrapping_add(size);
                i += 1;
            }
            preserve_run(kho, &mut p.runs, r)?;
        }
        PRESERVED.fetch_add(p.folios.len() as u64, Ordering::Relaxed);
        let array = FolioArray::preserve_map(kho, &p.folios, record::<W>)?;
        ser.nr_folios = p.folios.len() as u64;
        ser.folios = array.abi();
        p.array = Some(array);
    }
    Ok(ser)
}

/// The handed-over record of a pinned folio.
#[inline]
pub(super) fn record<W: Writer>(f: &ShmemFolio) -> memfd_luo_folio_ser {
    let mut e = memfd_luo_folio_ser::new_zeroed();
    e.set_pfn(f.phys.pfn());
    let flags = if W::REAL_FLAGS {
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
    e
}

/// Undoes a (possibly partial) preserve.
pub(super) fn undo(kho: &dyn KhoService, file: &dyn File, p: Private) {
    if let Some(array) = p.array {
        array.unpreserve(kho);
    }
    for r in &p.runs {
        let _ = kho.unpreserve_range(r.phys, r.order, r.count);
    }
    if let Some(shm) = file.as_shmem() {
        if !p.folios.is_empty() {
            shm.unpin_folios(&p.folios);
        }
        shm.set_frozen(false);
    }
}

/// `count` folios of `order`, back to back from `phys`, at file indexes `index` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) index: u64,
    pub(super) phys: PhysAddr,
    pub(super) order: u32,
    pub(super) count: usize,
}

impl Run {
    pub(super) fn one(index: u64, phys: PhysAddr, order: u32) -> Run {
        Run {
            index,
            phys,
            order,
            count: 1,
        }
    }
}

pub(super) fn preserve_run(kho: &dyn KhoService, runs: &mut Vec<Run>, r: Run) -> Result<(), Errno> {
    kho.preserve_range(r.phys, r.order, r.count)?;
    runs.push(r);
    Ok(())
}
