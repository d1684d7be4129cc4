// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The model's KHO handover blob: the preserved-memory map and the subtrees that cross a
//! kexec, written by [`super::Kho::kexec`] and parsed before the next kernel allocates
//! anything (upstream keeps the same facts in the KHO FDT and its radix tree,
//! `kernel/liveupdate/kexec_handover.c`).

use super::{MAX_ORDER, order_bytes};
use crate::error::ImageError;
use std::collections::BTreeMap;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

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

pub(super) type BlobContents = (Vec<BlobRange>, BTreeMap<String, (u64, usize)>);

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
