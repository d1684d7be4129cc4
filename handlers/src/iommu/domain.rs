// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The model's I/O page tables: a domain's top-level table is one page listing the mapped
//! IOVA ranges; what crosses the kexec is that very page.

use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};

/// An I/O page table (`struct iommu_domain`) of the current kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Unique in the process; also the VT-d domain id recorded as the attachment id.
    pub id: u64,
    /// Physical address of the top-level table page.
    pub top_table: u64,
    /// Level of the top table.
    pub top_level: u64,
    /// Width of the IO virtual address space, in bits.
    pub vasz: u32,
}

/// Top-table entries the model's page-table page holds: a `u64` count, then `(iova, length)`.
pub const DOMAIN_MAX_RANGES: usize = (PAGE_SIZE - 8) / 16;

/// Allocates a new domain (`iommu_paging_domain_alloc`): an empty top-level table page in the
/// kernel of `kho`, with an id from `ids` (unique in that kernel).
pub(super) fn alloc_domain(kho: &dyn KhoService, ids: &AtomicU64) -> Result<Domain, Errno> {
    let top = kho.alloc_folio(0)?;
    if let Err(e) = kho.write(top, &[0u8; 8]) {
        let _ = kho.free_folio(top, 0);
        return Err(e);
    }
    Ok(Domain {
        id: ids.fetch_add(1, Ordering::Relaxed),
        top_table: top.as_u64(),
        top_level: 4,
        vasz: 48,
    })
}

/// Writes `ranges` (`(iova, length)`) into the domain's page-table page (`iommu_map`);
/// `ENOSPC` beyond [`DOMAIN_MAX_RANGES`].
pub fn domain_map(
    kho: &dyn KhoService,
    top_table: u64,
    ranges: &[(u64, u64)],
) -> Result<(), Errno> {
    if ranges.len() > DOMAIN_MAX_RANGES {
        return Err(Errno::ENOSPC);
    }
    let mut page = Vec::with_capacity(8 + 16 * ranges.len());
    page.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    for (iova, len) in ranges {
        page.extend_from_slice(&iova.to_le_bytes());
        page.extend_from_slice(&len.to_le_bytes());
    }
    kho.write(PhysAddr::new(top_table), &page)
}

/// Reads the ranges mapped by the page-table page at `top_table` (`EINVAL` if corrupt).
pub fn domain_ranges(kho: &dyn KhoService, top_table: u64) -> Result<Vec<(u64, u64)>, Errno> {
    let mut n = [0u8; 8];
    kho.read(PhysAddr::new(top_table), &mut n)?;
    let n = usize::try_from(u64::from_le_bytes(n)).map_err(|_| Errno::EINVAL)?;
    if n > DOMAIN_MAX_RANGES {
        return Err(Errno::EINVAL);
    }
    let mut buf = vec![0u8; 16 * n];
    kho.read(PhysAddr::new(top_table + 8), &mut buf)?;
    Ok(buf
        .chunks_exact(16)
        .map(|c| {
            let (a, b) = c.split_at(8);
            (
                u64::from_le_bytes(a.try_into().unwrap_or_default()),
                u64::from_le_bytes(b.try_into().unwrap_or_default()),
            )
        })
        .collect())
}
