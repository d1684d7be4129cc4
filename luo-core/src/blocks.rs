// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! KHO block chains (`linux/kho/abi/block.h`): page-sized blocks, each a
//! `kho_block_header_ser` {next, count} followed by `count` fixed-size entries.

use std::collections::HashSet;

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::block::{KHO_MAX_BLOCKS, kho_block_header_ser};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::ImageError;

const PAGE: u64 = PAGE_SIZE as u64;
const HDR: usize = size_of::<kho_block_header_ser>();

/// Byte access to physical memory, for readers that only decode (boot and `luo inspect`).
pub trait PhysRead {
    /// Copies memory at `phys` into `buf`.
    fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Whether `len` bytes at `phys` lie in memory the previous kernel preserved. The readers
    /// here check it before every dereference, so a corrupt pointer is a typed error rather
    /// than a read of whatever the memory holds (upstream reads it), and before allocating a
    /// buffer for a size the handover claims, so a corrupt size cannot exhaust memory. Memory
    /// that holds only preserved pages (a saved image) answers whether it holds them all.
    fn is_preserved(&self, phys: u64, len: usize) -> bool;
}

/// Reads `size` bytes the handover claims at `phys` into a new buffer: the size is checked
/// against preserved memory before the buffer is allocated
/// ([`ImageError::SizeBeyondPreserved`] otherwise).
pub fn read_claimed<M: PhysRead + ?Sized>(
    mem: &M,
    phys: u64,
    size: usize,
    what: &'static str,
) -> Result<Vec<u8>, ImageError> {
    if !mem.is_preserved(phys, size) {
        return Err(ImageError::SizeBeyondPreserved {
            what,
            phys,
            size: size as u64,
        });
    }
    let mut b = vec![0u8; size];
    read_preserved(mem, phys, &mut b, what)?;
    Ok(b)
}

/// Reads `buf.len()` bytes of preserved memory at `phys`: [`ImageError::NotPreserved`]
/// outside it, [`ImageError::Truncated`] if the memory cannot be read.
pub fn read_preserved<M: PhysRead + ?Sized>(
    mem: &M,
    phys: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ImageError> {
    if !mem.is_preserved(phys, buf.len()) {
        return Err(ImageError::NotPreserved { what, phys });
    }
    mem.read_phys(phys, buf)
        .map_err(|_| ImageError::Truncated { what, phys })
}

/// Reads a `T` at `phys` of preserved memory, as a typed error if it cannot.
pub fn read_obj<T: FromBytes + IntoBytes, M: PhysRead + ?Sized>(
    mem: &M,
    phys: u64,
    what: &'static str,
) -> Result<T, ImageError> {
    let mut v = T::new_zeroed();
    read_preserved(mem, phys, v.as_mut_bytes(), what)?;
    Ok(v)
}

/// An outgoing block set: blocks are allocated (and preserved) as the set grows, so that
/// serialization at reboot never allocates.
pub struct BlockSet {
    entry: usize,
    per: u64,
    blocks: Vec<u64>,
}

impl BlockSet {
    /// An empty set of `entry`-byte entries, `per` to a block.
    pub fn new(entry: usize, per: u64) -> BlockSet {
        BlockSet {
            entry,
            per,
            blocks: Vec::new(),
        }
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Grows the set to hold `n` entries (`kho_block_set_grow`): `ENOSPC` past
    /// `KHO_MAX_BLOCKS`, `ENOMEM` when memory runs out.
    pub fn ensure(&mut self, kho: &dyn KhoService, n: u64) -> Result<(), Errno> {
        let need = n.div_ceil(self.per);
        if need > KHO_MAX_BLOCKS {
            return Err(Errno::ENOSPC);
        }
        while (self.blocks.len() as u64) < need {
            let p = kho.alloc_preserve(PAGE_SIZE)?;
            self.blocks.push(p.as_u64());
        }
        Ok(())
    }

    /// Frees blocks beyond what `n` entries need.
    pub fn trim(&mut self, kho: &dyn KhoService, n: u64) {
        let need = n.div_ceil(self.per) as usize;
        while self.blocks.len() > need {
            if let Some(p) = self.blocks.pop() {
                // Cannot fail for a block this set preserved.
                let _ = kho.unpreserve_free(PhysAddr::new(p));
            }
        }
    }

    /// Writes `entries` (a whole number of entries) into the chain; returns the head (0 when
    /// there are no entries).
    pub fn write(&self, kho: &dyn KhoService, entries: &[u8]) -> Result<u64, Errno> {
        let n = (entries.len() / self.entry) as u64;
        if n == 0 {
            return Ok(0);
        }
        let used = n.div_ceil(self.per) as usize;
        if used > self.blocks.len() {
            return Err(Errno::ENOSPC);
        }
        let per_bytes = self.per as usize * self.entry;
        for (i, chunk) in entries.chunks(per_bytes).enumerate() {
            let hdr = kho_block_header_ser {
                next: Phys::new(PhysAddr::new(if i + 1 < used {
                    self.blocks[i + 1]
                } else {
                    0
                })),
                count: (chunk.len() / self.entry) as u64,
            };
            let at = PhysAddr::new(self.blocks[i]);
            kho.write(at, hdr.as_bytes())?;
            kho.write(PhysAddr::new(self.blocks[i] + HDR as u64), chunk)?;
        }
        Ok(self.blocks[0])
    }

    /// Zeroes every block (rollback of a failed serialization).
    pub fn clear(&self, kho: &dyn KhoService) {
        let zero = vec![0u8; PAGE_SIZE];
        for &b in &self.blocks {
            let _ = kho.write(PhysAddr::new(b), &zero);
        }
    }

    /// Frees every block.
    pub fn free_all(&mut self, kho: &dyn KhoService) {
        self.trim(kho, 0);
    }
}

/// A chain read back: its block addresses and the concatenated entries.
pub struct Chain {
    /// Block addresses in chain order.
    pub blocks: Vec<u64>,
    /// Entry bytes, `entry` bytes each.
    pub entries: Vec<u8>,
}

/// Reads and validates a chain (`kho_block_set_restore`): no cycle, no empty or overfull
/// block, at most `KHO_MAX_BLOCKS` blocks, page-aligned blocks.
pub fn read_chain<M: PhysRead + ?Sized>(
    mem: &M,
    head: u64,
    entry: usize,
    per: u64,
    what: &'static str,
) -> Result<Chain, ImageError> {
    let mut blocks = Vec::new();
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    let mut next = head;
    while next != 0 {
        if blocks.len() as u64 >= KHO_MAX_BLOCKS {
            return Err(ImageError::TooManyBlocks {
                what,
                max: KHO_MAX_BLOCKS,
            });
        }
        if !seen.insert(next) {
            return Err(ImageError::BlockCycle { what, phys: next });
        }
        if !next.is_multiple_of(PAGE) {
            return Err(ImageError::BlockMisaligned { what, phys: next });
        }
        let hdr: kho_block_header_ser = read_obj(mem, next, what)?;
        let count = hdr.count;
        if count == 0 {
            return Err(ImageError::BlockEmpty { what, phys: next });
        }
        if count > per {
            return Err(ImageError::BlockOverfull {
                what,
                phys: next,
                count,
                cap: per,
            });
        }
        let at = entries.len();
        entries.resize(at + count as usize * entry, 0);
        read_preserved(mem, next + HDR as u64, &mut entries[at..], what)?;
        blocks.push(next);
        next = hdr.next.addr().as_u64();
    }
    Ok(Chain { blocks, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kho::Kho;
    use crate::mem::BackingKind;

    #[test]
    fn chains_round_trip_and_reject_corruption() {
        let k = Kho::new(BackingKind::Heap, 64).unwrap();
        let mut set = BlockSet::new(16, 3);
        set.ensure(&k, 7).unwrap();
        assert_eq!(set.len(), 3);
        let entries: Vec<u8> = (0..7 * 16).map(|i| i as u8).collect();
        let head = set.write(&k, &entries).unwrap();
        let c = read_chain(&k, head, 16, 3, "test").unwrap();
        assert_eq!(c.entries, entries);
        assert_eq!(c.blocks.len(), 3);
        assert!(read_chain(&k, head, 16, 2, "test").is_err());

        // A cycle: the last block points back at the first.
        let last = c.blocks[2];
        k.write(PhysAddr::new(last), &head.to_ne_bytes()).unwrap();
        assert!(matches!(
            read_chain(&k, head, 16, 3, "test"),
            Err(ImageError::BlockCycle { .. })
        ));
        // An empty block.
        k.write(PhysAddr::new(last + 8), &0u64.to_ne_bytes())
            .unwrap();
        assert!(matches!(
            read_chain(&k, last, 16, 3, "test"),
            Err(ImageError::BlockEmpty { .. })
        ));
        assert!(matches!(
            read_chain(&k, head + 8, 16, 3, "test"),
            Err(ImageError::BlockMisaligned { .. })
        ));
        let mut big = BlockSet::new(16, 1);
        assert_eq!(big.ensure(&k, KHO_MAX_BLOCKS + 1), Err(Errno::ENOSPC));
        set.trim(&k, 3);
        assert_eq!(set.len(), 1);
        set.free_all(&k);
        assert_eq!(k.stats().preserved_pages, 0);
    }
}
