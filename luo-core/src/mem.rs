// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Physical memory of the model: one metadata arena plus external regions.
//!
//! * The **arena** holds everything LUO, KHO and handlers allocate (`luo_ser`, block chains,
//!   handler serializations, vmalloc chunk lists). Its pages have physical addresses from
//!   [`ARENA_BASE`]. Its backing is pluggable: a [`HeapBacking`] (sparse pages on the heap:
//!   fast, Miri-friendly, in-process kexec only) or an [`MmapBacking`] (a host memfd mapped
//!   `MAP_SHARED`, whose fd survives `execve`).
//! * Each host memfd the model creates is an **external region** ([`ExtRegion`]): its pages get
//!   synthetic physical addresses from [`REGION_BASE`], one [`REGION_SPAN`] per region, so
//!   preserving a memfd copies no data; the fd itself crosses the kexec.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use luo_abi::{Errno, PAGE_SIZE};
use rustix::fs::MemfdFlags;

/// Physical address of the first arena page: address 0 stays NULL, and 4 MiB keeps every
/// folio up to `kho::MAX_ORDER` naturally aligned in physical memory, as KHO requires.
pub const ARENA_BASE: u64 = 0x40_0000;
/// Physical address of the first external region.
pub const REGION_BASE: u64 = 1 << 40;
/// Address space reserved for each external region (the largest memfd the model supports).
pub const REGION_SPAN: u64 = 1 << 36;
/// Byte written over pages that were not preserved when a kexec happens.
pub const POISON: u8 = 0x6b;

const PAGE: u64 = PAGE_SIZE as u64;

/// Maps a host I/O error to an [`Errno`].
pub(crate) fn host_err(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error()).unwrap_or(Errno::EIO)
}

pub(crate) use crate::lock_order::lock;
use crate::lock_order::{Level, Ordered};

/// Storage behind the arena.
pub trait Backing: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the size is 0.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies bytes at `off` into `buf`; `EFAULT` outside `0..len`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `buf` to `off`; `EFAULT` outside `0..len`.
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), Errno>;
    /// Sets `len` bytes at `off` to `byte`.
    fn fill(&self, off: u64, len: u64, byte: u8) -> Result<(), Errno>;
    /// The host fd, for backings that can cross `execve`.
    fn fd(&self) -> Option<BorrowedFd<'_>>;
}

fn check_range(off: u64, len: usize, total: u64) -> Result<(), Errno> {
    let end = off.checked_add(len as u64).ok_or(Errno::EFAULT)?;
    if end > total {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Sparse pages on the heap; never-written pages read as zero.
pub struct HeapBacking {
    len: u64,
    /// By page number (only pages this backing wrote are keys: the fast hasher).
    pages: Ordered<rustc_hash::FxHashMap<u64, Box<[u8]>>>,
}

impl HeapBacking {
    /// A backing of `len` bytes (rounded up to pages); costs nothing until written.
    pub fn new(len: u64) -> HeapBacking {
        HeapBacking {
            len: len.div_ceil(PAGE) * PAGE,
            pages: Ordered::new(Level::Backing, rustc_hash::FxHashMap::default()),
        }
    }

    /// Number of materialised pages.
    pub fn resident_pages(&self) -> usize {
        lock(&self.pages).len()
    }
}

/// Splits `off..off+len` into (page, offset in page, length) pieces.
fn pieces(off: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = off + done as u64;
        let page = at / PAGE;
        let in_page = (at % PAGE) as usize;
        let n = (PAGE_SIZE - in_page).min(len - done);
        let item = (page, in_page, done, n);
        done += n;
        Some(item)
    })
}

impl Backing for HeapBacking {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        check_range(off, buf.len(), self.len)?;
        let pages = lock(&self.pages);
        for (page, in_page, at, n) in pieces(off, buf.len()) {
            let dst = &mut buf[at..at + n];
            match pages.get(&page) {
                Some(p) => dst.copy_from_slice(&p[in_page..in_page + n]),
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8]) -> Result<(), Errno> {
        check_range(off, buf.len(), self.len)?;
        let mut pages = lock(&self.pages);
        for (page, in_page, at, n) in pieces(off, buf.len()) {
            let p = pages
                .entry(page)
                .or_insert_with(|| vec![0u8; PAGE_SIZE].into_boxed_slice());
            p[in_page..in_page + n].copy_from_slice(&buf[at..at + n]);
        }
        Ok(())
    }

    fn fill(&self, off: u64, len: u64, byte: u8) -> Result<(), Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::EFAULT)?;
        check_range(off, len, self.len)?;
        let mut pages = lock(&self.pages);
        for (page, in_page, _, n) in pieces(off, len) {
            if byte == 0 && n == PAGE_SIZE {
                pages.remove(&page);
                continue;
            }
            let p = pages
                .entry(page)
                .or_insert_with(|| vec![0u8; PAGE_SIZE].into_boxed_slice());
            p[in_page..in_page + n].fill(byte);
        }
        Ok(())
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A host memfd mapped `MAP_SHARED`: real memory that survives `execve` when its fd does.
pub struct MmapBacking {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    /// Serialises copies, so concurrent callers never race on the same bytes.
    guard: Ordered<()>,
}

// SAFETY: the mapping is owned by this value and only touched through `read`/`write`/`fill`,
// which hold `guard`; the raw pointer is never handed out.
unsafe impl Send for MmapBacking {}
// SAFETY: as above; every access to the mapped bytes is serialised by `guard`.
unsafe impl Sync for MmapBacking {}

impl MmapBacking {
    /// Creates a new memfd of `len` bytes (rounded up to pages; sparse) and maps it.
    pub fn new(len: u64) -> Result<MmapBacking, Errno> {
        let fd = rustix::fs::memfd_create("luo-arena", MemfdFlags::CLOEXEC).map_err(host_err)?;
        let len = len.div_ceil(PAGE) * PAGE;
        rustix::fs::ftruncate(&fd, len).map_err(host_err)?;
        MmapBacking::from_fd(fd, len)
    }

    /// Maps an existing memfd (for example one inherited across `execve`) of at least `len`
    /// bytes.
    pub fn from_fd(fd: OwnedFd, len: u64) -> Result<MmapBacking, Errno> {
        let st = rustix::fs::fstat(&fd).map_err(host_err)?;
        let size = u64::try_from(st.st_size).map_err(|_| Errno::EINVAL)?;
        if size < len || len == 0 || !len.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let ulen = usize::try_from(len).map_err(|_| Errno::ENOMEM)?;
        // SAFETY: a fresh shared mapping of `ulen` bytes of `fd` at an address the kernel
        // picks; it aliases no Rust object. It is unmapped exactly once, in `Drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                ulen,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(host_err)?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        Ok(MmapBacking {
            fd,
            ptr,
            len: ulen,
            guard: Ordered::new(Level::Backing, ()),
        })
    }
}

impl Drop for MmapBacking {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping created in `from_fd`, unmapped only here.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Backing for MmapBacking {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        check_range(off, buf.len(), self.len as u64)?;
        let _g = lock(&self.guard);
        // SAFETY: `off + buf.len() <= len` (checked above, so `off` fits in usize), the source
        // lies inside the live mapping, the destination is a distinct Rust buffer, and `guard`
        // excludes concurrent writers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(off as usize),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8]) -> Result<(), Errno> {
        check_range(off, buf.len(), self.len as u64)?;
        let _g = lock(&self.guard);
        // SAFETY: the destination range is inside the live mapping (checked above), the source
        // is a distinct Rust buffer, and `guard` excludes concurrent access.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                self.ptr.as_ptr().add(off as usize),
                buf.len(),
            );
        }
        Ok(())
    }

    fn fill(&self, off: u64, len: u64, byte: u8) -> Result<(), Errno> {
        let ulen = usize::try_from(len).map_err(|_| Errno::EFAULT)?;
        check_range(off, ulen, self.len as u64)?;
        let _g = lock(&self.guard);
        // SAFETY: the range is inside the live mapping (checked above) and `guard` excludes
        // concurrent access.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off as usize), byte, ulen) };
        Ok(())
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }
}

/// Which arena backing a kernel boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackingKind {
    /// Sparse heap pages: fast; in-process kexec only.
    #[default]
    Heap,
    /// A mapped host memfd: can cross `execve`.
    Memfd,
}

/// A host memfd whose pages have synthetic physical addresses `base..base + REGION_SPAN`.
#[derive(Debug)]
pub struct ExtRegion {
    base: u64,
    fd: OwnedFd,
}

impl ExtRegion {
    /// Creates an empty host memfd (sealable) as a region at `base`.
    pub fn create(base: u64, name: &str) -> Result<ExtRegion, Errno> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(host_err)?;
        Ok(ExtRegion { base, fd })
    }

    /// Wraps an inherited host fd as the region at `base`.
    pub fn from_fd(base: u64, fd: OwnedFd) -> ExtRegion {
        ExtRegion { base, fd }
    }

    /// First physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The host memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Current size of the host file in bytes.
    pub fn size(&self) -> Result<u64, Errno> {
        let st = rustix::fs::fstat(&self.fd).map_err(host_err)?;
        u64::try_from(st.st_size).map_err(|_| Errno::EIO)
    }

    /// Reads at file offset `off`; bytes past the end of the file read as zero.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        check_range(off, buf.len(), REGION_SPAN)?;
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&self.fd, &mut buf[done..], off + done as u64)
                .map_err(host_err)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes at file offset `off` (extending the file if needed).
    pub fn write(&self, off: u64, buf: &[u8]) -> Result<(), Errno> {
        check_range(off, buf.len(), REGION_SPAN)?;
        let mut done = 0;
        while done < buf.len() {
            let n =
                rustix::io::pwrite(&self.fd, &buf[done..], off + done as u64).map_err(host_err)?;
            if n == 0 {
                return Err(Errno::EIO);
            }
            done += n;
        }
        Ok(())
    }
}

/// Allocation bitmap of the arena.
pub(crate) struct PageAlloc {
    used: Vec<u64>,
    /// Pages allocated at least once since boot: what a kexec poisons unless preserved.
    touched: Vec<u64>,
    pages: u64,
    cursor: u64,
    in_use: u64,
}

impl PageAlloc {
    pub(crate) fn new(pages: u64) -> PageAlloc {
        let words = pages.div_ceil(64) as usize;
        PageAlloc {
            used: vec![0; words],
            touched: vec![0; words],
            pages,
            cursor: 0,
            in_use: 0,
        }
    }

    fn bit(v: &[u64], i: u64) -> bool {
        v[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub(crate) fn is_used(&self, i: u64) -> bool {
        i < self.pages && Self::bit(&self.used, i)
    }

    /// The first touched page at or after `from`, if any.
    pub(crate) fn next_touched(&self, from: u64) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut bits = self.touched.get(w)? & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                let i = w as u64 * 64 + u64::from(bits.trailing_zeros());
                return (i < self.pages).then_some(i);
            }
            w += 1;
            bits = *self.touched.get(w)?;
        }
    }

    /// Sets (`on`) or clears the pages `start..start + n` in `used` (and marks them
    /// touched when set), a word at a time.
    fn set_run(&mut self, start: u64, n: u64, on: bool) {
        let mut i = start;
        let end = start + n;
        while i < end {
            let w = (i / 64) as usize;
            let k = (64 - i % 64).min(end - i);
            let mask = (u64::MAX >> (64 - k)) << (i % 64);
            if on {
                self.used[w] |= mask;
                self.touched[w] |= mask;
            } else {
                self.used[w] &= !mask;
            }
            i += k;
        }
    }

    /// Whether `start..start + n` are all used (`used`) or all free (`!used`), a word at a
    /// time.
    fn run_is(&self, start: u64, n: u64, used: bool) -> bool {
        let mut i = start;
        let end = start + n;
        while i < end {
            let w = (i / 64) as usize;
            let k = (64 - i % 64).min(end - i);
            let mask = (u64::MAX >> (64 - k)) << (i % 64);
            let bits = self.used[w] & mask;
            if (used && bits != mask) || (!used && bits != 0) {
                return false;
            }
            i += k;
        }
        true
    }

    fn run_free(&self, start: u64, n: u64) -> bool {
        self.run_is(start, n, false)
    }

    /// Allocates `n` contiguous pages whose first index is a multiple of `align`.
    pub(crate) fn alloc(&mut self, n: u64, align: u64) -> Option<u64> {
        if n == 0 || n > self.pages {
            return None;
        }
        let align = align.max(1);
        let mut tries = 0;
        let mut i = self.cursor.div_ceil(align) * align;
        while tries < 2 {
            if i + n > self.pages {
                tries += 1;
                i = 0;
                continue;
            }
            // Skip full words quickly for single pages.
            if n == 1 && align == 1 && self.used[(i / 64) as usize] == u64::MAX {
                i = (i / 64 + 1) * 64;
                continue;
            }
            if self.run_free(i, n) {
                self.set_run(i, n, true);
                self.in_use += n;
                self.cursor = i + n;
                return Some(i);
            }
            i += align;
        }
        None
    }

    /// Marks a specific run as used (incoming preserved memory); `false` if any page was.
    pub(crate) fn claim(&mut self, start: u64, n: u64) -> bool {
        if start.checked_add(n).is_none_or(|e| e > self.pages) || !self.run_free(start, n) {
            return false;
        }
        self.set_run(start, n, true);
        self.in_use += n;
        true
    }

    /// Frees a run; `false` (and nothing freed) unless every page of it is in use.
    pub(crate) fn free(&mut self, start: u64, n: u64) -> bool {
        if start.checked_add(n).is_none_or(|e| e > self.pages) || !self.run_is(start, n, true) {
            return false;
        }
        self.set_run(start, n, false);
        self.in_use -= n;
        // The next allocation starts at the freed run, as the page allocator hands out hot
        // pages first: memory freed and allocated again (a preserve undone and redone) is
        // host memory already faulted in, not fresh pages of the arena.
        self.cursor = self.cursor.min(start);
        true
    }

    pub(crate) fn in_use(&self) -> u64 {
        self.in_use
    }

    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_backing_is_sparse_and_bounded() {
        let b = HeapBacking::new(4 * PAGE);
        let mut buf = [1u8; 10];
        b.read(PAGE - 5, &mut buf).unwrap();
        assert_eq!(buf, [0; 10]);
        b.write(PAGE - 5, b"0123456789").unwrap();
        assert_eq!(b.resident_pages(), 2);
        b.read(PAGE - 5, &mut buf).unwrap();
        assert_eq!(&buf, b"0123456789");
        assert_eq!(b.write(4 * PAGE - 1, b"ab"), Err(Errno::EFAULT));
        assert_eq!(b.read(u64::MAX, &mut buf), Err(Errno::EFAULT));
        b.fill(0, 2 * PAGE, 0).unwrap();
        assert_eq!(b.resident_pages(), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "host memfd syscalls")]
    fn mmap_backing_round_trips() {
        let b = MmapBacking::new(3 * PAGE).unwrap();
        b.write(PAGE + 1, b"hello").unwrap();
        b.fill(PAGE + 3, 1, b'L').unwrap();
        let mut buf = [0u8; 5];
        b.read(PAGE + 1, &mut buf).unwrap();
        assert_eq!(&buf, b"heLlo");
        assert_eq!(b.read(3 * PAGE, &mut buf), Err(Errno::EFAULT));
        assert!(b.fd().is_some());
    }

    #[test]
    fn page_alloc_aligns_and_frees() {
        let mut a = PageAlloc::new(130);
        assert_eq!(a.alloc(1, 1), Some(0));
        assert_eq!(a.alloc(4, 4), Some(4));
        assert!(a.claim(64, 2));
        assert!(!a.claim(65, 1));
        assert_eq!(a.in_use(), 7);
        assert!(a.free(4, 4));
        assert!(!a.free(4, 1));
        assert!(a.next_touched(5) == Some(5) && !a.is_used(5));
        // Freed pages are handed out again first (hot pages), not the next fresh ones.
        assert_eq!(a.alloc(2, 1), Some(4));
        assert_eq!(a.alloc(200, 1), None);
        // Runs across bitmap words: all or nothing, a word at a time.
        assert!(!a.claim(60, 8), "64 and 65 are used");
        assert!(a.claim(66, 60));
        assert!(!a.free(60, 10));
        assert!(a.free(64, 62));
        assert_eq!(a.next_touched(70), Some(70));
        assert_eq!(a.next_touched(126), None);
        let b = PageAlloc::new(200);
        assert_eq!(b.next_touched(0), None);
        if cfg!(miri) {
            // Regions are host memfds.
            return;
        }
        let r = ExtRegion::create(REGION_BASE, "t").unwrap();
        r.write(10, b"abc").unwrap();
        let mut buf = [9u8; 6];
        r.read(10, &mut buf).unwrap();
        assert_eq!(&buf, b"abc\0\0\0");
        assert_eq!(r.size().unwrap(), 13);
    }
}
