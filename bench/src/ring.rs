// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A KHO service for benchmarks: a ring of small preserved blocks, so that `preserve` can run
//! millions of times without growing memory, at a cost that is the same for every variant.
//!
//! Only [`KhoService::alloc_preserve`], [`KhoService::write`], [`KhoService::read`] and the
//! two frees do anything; the rest answer `EOPNOTSUPP`. Blocks are [`SLOT`] bytes (not whole
//! pages, unlike `kho_alloc_preserve`); allocation hands out the next slot of the ring and
//! never fails for a size that fits, reusing slots after [`SLOTS`] allocations. Memory is
//! words of relaxed atomics, so the type is `Sync` without locks; concurrent writers to one
//! slot would see each other's bytes, which no benchmark does.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use luo_abi::kho::{KhoService, VmallocDesc};
use luo_abi::{Errno, PhysAddr, Result};

/// Bytes per block.
pub const SLOT: usize = 64;
/// Blocks in the ring.
pub const SLOTS: usize = 1024;
/// Physical address of the first block (page 0 is never handed out).
const BASE: u64 = 0x1000;

/// A ring of [`SLOTS`] preserved blocks of [`SLOT`] bytes.
pub struct RingKho {
    words: &'static [AtomicU64],
    next: AtomicUsize,
}

/// Words of one ring.
pub const WORDS: usize = SLOTS * SLOT / 8;

impl Default for RingKho {
    fn default() -> Self {
        RingKho::new()
    }
}

impl RingKho {
    /// Zeroed memory (allocated once and kept for the life of the process: benchmark
    /// fixtures are few).
    pub fn new() -> Self {
        let words: Box<[AtomicU64]> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        RingKho::over(Box::leak(words))
    }

    /// A ring over `words` (a `static`, for the C handler's KHO).
    pub const fn over(words: &'static [AtomicU64]) -> Self {
        RingKho {
            words,
            next: AtomicUsize::new(0),
        }
    }

    /// The block at `phys` and `len` bytes from it, as a word range plus the byte offset
    /// inside the first word.
    #[inline]
    fn range(&self, phys: PhysAddr, len: usize) -> Result<(usize, usize)> {
        let off = phys
            .as_u64()
            .checked_sub(BASE)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(Errno::EFAULT)?;
        let end = off.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > self.words.len() * 8 {
            return Err(Errno::EFAULT);
        }
        Ok((off / 8, off % 8))
    }

    /// `kho_alloc_preserve` for the C handler: the address, 0 on failure.
    pub fn alloc_raw(&self, size: usize) -> u64 {
        if size == 0 || size > SLOT {
            return 0;
        }
        // Not an atomic read-modify-write: the ring is used by one thread at a time, and a
        // lost increment would only reuse a slot.
        let i = self.next.load(Ordering::Relaxed);
        self.next.store((i + 1) % SLOTS, Ordering::Relaxed);
        BASE + (i * SLOT) as u64
    }

    /// Copies `buf` to `phys`.
    #[inline]
    pub fn write_raw(&self, phys: u64, buf: &[u8]) -> Result {
        let (w, b) = self.range(PhysAddr::new(phys), buf.len())?;
        if b == 0 {
            let full = buf.len() / 8;
            let mut chunks = buf.chunks_exact(8);
            for (word, c) in self.words[w..w + full].iter().zip(&mut chunks) {
                let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                word.store(v, Ordering::Relaxed);
            }
            let tail = chunks.remainder();
            if !tail.is_empty() {
                let word = &self.words[w + full];
                let mut bytes = word.load(Ordering::Relaxed).to_le_bytes();
                bytes[..tail.len()].copy_from_slice(tail);
                word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
        } else {
            for (k, &byte) in buf.iter().enumerate() {
                let (i, j) = (w + (b + k) / 8, (b + k) % 8);
                let mut bytes = self.words[i].load(Ordering::Relaxed).to_le_bytes();
                bytes[j] = byte;
                self.words[i].store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Copies from `phys` into `buf`.
    #[inline]
    pub fn read_raw(&self, phys: u64, buf: &mut [u8]) -> Result {
        let (w, b) = self.range(PhysAddr::new(phys), buf.len())?;
        for (k, out) in buf.iter_mut().enumerate() {
            let (i, j) = (w + (b + k) / 8, (b + k) % 8);
            *out = self.words[i].load(Ordering::Relaxed).to_le_bytes()[j];
        }
        Ok(())
    }
}

impl KhoService for RingKho {
    fn is_enabled(&self) -> bool {
        true
    }
    fn is_kho_boot(&self) -> bool {
        false
    }
    fn alloc_folio(&self, _: u32) -> Result<PhysAddr> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Releases a record claimed by `restore_folio`: slots are reused by the ring anyway.
    fn free_folio(&self, phys: PhysAddr, _: u32) -> Result {
        self.range(phys, 1).map(drop)
    }
    fn preserve_folio(&self, _: PhysAddr, _: u32) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve_folio(&self, _: PhysAddr, _: u32) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    /// Claims a record: any slot of the ring, as one order-0 folio.
    fn restore_folio(&self, phys: PhysAddr) -> Result<u32> {
        self.range(phys, SLOT).map(|_| 0)
    }
    fn preserve_pages(&self, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve_pages(&self, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn restore_pages(&self, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn preserve_vmalloc(&self, _: &[PhysAddr], _: u16) -> Result<VmallocDesc> {
        Err(Errno::EOPNOTSUPP)
    }
    fn unpreserve_vmalloc(&self, _: &VmallocDesc) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn restore_vmalloc(&self, _: &VmallocDesc) -> Result<Vec<PhysAddr>> {
        Err(Errno::EOPNOTSUPP)
    }
    fn alloc_preserve(&self, size: usize) -> Result<PhysAddr> {
        match self.alloc_raw(size) {
            0 => Err(Errno::ENOMEM),
            p => Ok(PhysAddr::new(p)),
        }
    }
    fn unpreserve_free(&self, phys: PhysAddr) -> Result {
        self.range(phys, 1).map(drop)
    }
    fn restore_free(&self, phys: PhysAddr) -> Result {
        self.range(phys, 1).map(drop)
    }
    fn add_subtree(&self, _: &str, _: PhysAddr, _: usize) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn remove_subtree(&self, _: PhysAddr) -> Result {
        Err(Errno::EOPNOTSUPP)
    }
    fn retrieve_subtree(&self, _: &str) -> Result<(PhysAddr, usize)> {
        Err(Errno::ENOENT)
    }
    fn read(&self, phys: PhysAddr, buf: &mut [u8]) -> Result {
        self.read_raw(phys.as_u64(), buf)
    }
    fn write(&self, phys: PhysAddr, buf: &[u8]) -> Result {
        self.write_raw(phys.as_u64(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrap() {
        let k = RingKho::new();
        let p = k.alloc_preserve(48).unwrap();
        let data: Vec<u8> = (0..48).collect();
        k.write(p, &data).unwrap();
        let mut back = [0u8; 48];
        k.read(p, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        // Unaligned and partial.
        let q = PhysAddr::new(p.as_u64() + 3);
        k.write(q, &[9, 8, 7]).unwrap();
        let mut b = [0u8; 6];
        k.read(p, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 9, 8, 7]);
        assert_eq!(k.alloc_preserve(SLOT + 1), Err(Errno::ENOMEM));
        for _ in 0..SLOTS - 1 {
            k.alloc_preserve(1).unwrap();
        }
        assert_eq!(k.alloc_preserve(1).unwrap(), p, "the ring wraps");
        assert_eq!(
            k.write(PhysAddr::new(0), &[1]),
            Err(Errno::EFAULT),
            "page 0 is not memory"
        );
    }
}
