// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! KHO block chains (`linux/kho/abi/block.h`) for handler data: page-sized blocks, each a
//! `kho_block_header_ser` {next, count} followed by `count` fixed-size entries. Upstream's
//! `kho_block_set` (kernel/liveupdate/kho_block.c); the PCI FLB keeps its devices in one.
//!
//! The writer grows the chain a block at a time as entries are added (so nothing is
//! allocated at reboot) and rewrites it whole; the reader checks every block before using
//! it: preserved by the previous kernel, page-aligned, visited once, `0 < count <= per
//! block`, at most `KHO_MAX_BLOCKS` of them.

use std::collections::HashSet;

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::block::{KHO_BLOCK_SIZE, KHO_MAX_BLOCKS, kho_block_header_ser};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

const HDR: usize = size_of::<kho_block_header_ser>();

// One block is one page: KHO never hands over between kernels with different page sizes.
const _: () = assert!(KHO_BLOCK_SIZE as usize == PAGE_SIZE);

/// Entries of `E` one block holds.
pub const fn per_block<E>() -> usize {
    (KHO_BLOCK_SIZE as usize - HDR) / size_of::<E>()
}

/// An outgoing chain of `E` entries: its preserved blocks, in chain order.
pub struct BlockChain<E> {
    blocks: Vec<PhysAddr>,
    _entry: std::marker::PhantomData<E>,
}

impl<E: IntoBytes + Immutable> BlockChain<E> {
    /// No block yet.
    pub fn new() -> Self {
        BlockChain {
            blocks: Vec::new(),
            _entry: std::marker::PhantomData,
        }
    }

    /// Grows the chain to hold `n` entries (`kho_block_set_grow`): `ENOSPC` past
    /// `KHO_MAX_BLOCKS`, the allocator's error when memory runs out.
    pub fn ensure(&mut self, kho: &dyn KhoService, n: usize) -> Result<(), Errno> {
        let need = n.div_ceil(per_block::<E>());
        if need as u64 > KHO_MAX_BLOCKS {
            return Err(Errno::ENOSPC);
        }
        while self.blocks.len() < need {
            self.blocks.push(kho.alloc_preserve(PAGE_SIZE)?);
        }
        Ok(())
    }

    /// Writes `entries` (all of them fit: [`BlockChain::ensure`] first); returns the head's
    /// address, 0 for no entry. Blocks past the last used one stay preserved, unlinked.
    pub fn write(&self, kho: &dyn KhoService, entries: &[E]) -> Result<u64, Errno> {
        let per = per_block::<E>();
        let chunks: Vec<&[E]> = entries.chunks(per).collect();
        if chunks.len() > self.blocks.len() {
            return Err(Errno::ENOSPC);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let next = match chunks.get(i + 1) {
                Some(_) => self.blocks[i + 1],
                None => PhysAddr::new(0),
            };
            let hdr = kho_block_header_ser {
                next: Phys::new(next),
                count: chunk.len() as u64,
            };
            kho.write(self.blocks[i], hdr.as_bytes())?;
            kho.write(
                PhysAddr::new(self.blocks[i].as_u64() + HDR as u64),
                chunk.as_bytes(),
            )?;
        }
        Ok(chunks.first().map_or(0, |_| self.blocks[0].as_u64()))
    }

    /// Unpreserves and frees every block (`kho_block_set_destroy` in the old kernel).
    pub fn free(&mut self, kho: &dyn KhoService) {
        for b in self.blocks.drain(..) {
            // Cannot fail for a block this chain preserved.
            let _ = kho.unpreserve_free(b);
        }
    }
}

impl<E: IntoBytes + Immutable> Default for BlockChain<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the chain at `head` in the new kernel (`kho_block_set_restore`): every entry, in
/// order. Each block is checked before it is read; once all are read they are claimed and
/// freed (the entries are copies). `EINVAL` for a block the previous kernel did not preserve,
/// a misaligned block, a cycle, an empty or overfull block; `ENOSPC` past `KHO_MAX_BLOCKS`.
pub fn read_chain<E: FromBytes + IntoBytes>(
    kho: &dyn KhoService,
    head: u64,
) -> Result<Vec<E>, Errno> {
    let per = per_block::<E>() as u64;
    let mut blocks = Vec::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut next = head;
    while next != 0 {
        if blocks.len() as u64 >= KHO_MAX_BLOCKS {
            return Err(Errno::ENOSPC);
        }
        let at = PhysAddr::new(next);
        if !next.is_multiple_of(KHO_BLOCK_SIZE) || !seen.insert(next) || !kho.is_incoming(at) {
            return Err(Errno::EINVAL);
        }
        let mut hdr = kho_block_header_ser::new_zeroed();
        kho.read(at, hdr.as_mut_bytes())?;
        let count = hdr.count;
        if count == 0 || count > per {
            return Err(Errno::EINVAL);
        }
        for i in 0..count {
            let mut e = E::new_zeroed();
            let off = HDR as u64 + i * size_of::<E>() as u64;
            kho.read(PhysAddr::new(next + off), e.as_mut_bytes())?;
            out.push(e);
        }
        blocks.push(at);
        next = hdr.next.addr().as_u64();
    }
    for b in blocks {
        kho.restore_free(b)?;
    }
    Ok(out)
}
