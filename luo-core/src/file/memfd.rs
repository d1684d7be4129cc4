// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Memfds of the model: shmem files whose pages are real folios (host memfd pages at
//! synthetic pfns), what memfd_luo preserves and retrieve rebuilds.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use luo_abi::file::{File, FileId, FileKind, ShmemFile, ShmemFolio, seals};
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PhysAddr};
use rustix::fs::SealFlags;

use crate::kho::Kho;
use crate::lock_order::{Level, Ordered, lock};
use crate::mem::{ExtRegion, REGION_SPAN, host_err};

use super::*;

pub(super) struct MemfdState {
    pub(super) region: Option<Arc<ExtRegion>>,
    pub(super) pending_size: Option<u64>,
    pub(super) pending_seals: u32,
    pub(super) pos: u64,
    pub(super) frozen: bool,
    pub(super) pinned: u32,
    pub(super) added: PageSet,
    /// A retrieve adopted the incoming host memfd in place: its pages that no folio restored
    /// are punched out when the retrieve settles.
    pub(super) in_place: bool,
}

/// Page indices of a retrieved memfd that already hold a restored folio: one bit per page,
/// grown on demand (indices stay below `REGION_SPAN / PAGE`, so at most 2 MiB). A bitmap
/// rather than a hash set: `add_folio` runs once per restored folio (the `memfd_retrieve`
/// benchmark), and hashing plus rehashing was most of its cost.
#[derive(Default)]
pub(super) struct PageSet {
    pub(super) bits: Vec<u64>,
    pub(super) len: u64,
}

impl PageSet {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first index in `from..end` that is in the set (`set`) or not (`!set`); `end`
    /// if none.
    pub(super) fn next_with(&self, from: u64, end: u64, set: bool) -> u64 {
        let mut i = from;
        while i < end {
            let w = i / 64;
            let word = usize::try_from(w)
                .ok()
                .and_then(|w| self.bits.get(w))
                .copied()
                .unwrap_or(0);
            let word = if set { word } else { !word } & (!0u64 << (i % 64));
            if word != 0 {
                return (w * 64 + u64::from(word.trailing_zeros())).min(end);
            }
            i = (w + 1) * 64;
        }
        end
    }

    /// Whether an index of `r` is in the set (a word per 64 indexes).
    pub(super) fn any_in(&self, r: std::ops::Range<u64>) -> bool {
        let mut i = r.start;
        while i < r.end {
            let w = (i / 64) as usize;
            let Some(&bits) = self.bits.get(w) else {
                return false;
            };
            let n = (64 - i % 64).min(r.end - i);
            let mask = (u64::MAX >> (64 - n)) << (i % 64);
            if bits & mask != 0 {
                return true;
            }
            i += n;
        }
        false
    }

    /// Adds every index of `r`, a word per 64 indexes (callers bound them by
    /// `REGION_SPAN / PAGE`).
    pub(super) fn insert_range(&mut self, r: std::ops::Range<u64>) {
        if r.is_empty() {
            return;
        }
        let last = ((r.end - 1) / 64) as usize;
        if last >= self.bits.len() {
            self.bits.resize(last + 1, 0);
        }
        let mut i = r.start;
        while i < r.end {
            let w = &mut self.bits[(i / 64) as usize];
            let n = (64 - i % 64).min(r.end - i);
            let mask = (u64::MAX >> (64 - n)) << (i % 64);
            self.len += u64::from((mask & !*w).count_ones());
            *w |= mask;
            i += n;
        }
    }
}

/// A shmem memfd: a host memfd that is an external region of the KHO model.
///
/// Created eagerly by `memfd_create`, or lazily by `memfd_alloc_file` on retrieve: the first
/// restored folio that sits at its own index in an incoming region makes that region (the very
/// same host memfd, no copy) this file's pages; otherwise folios are copied.
pub struct MemfdFile {
    pub(super) inode: FileId,
    pub(super) kho: Arc<Kho>,
    pub(super) st: Ordered<MemfdState>,
}

impl MemfdFile {
    /// A memfd over a fresh host memfd.
    pub(crate) fn create(kho: &Arc<Kho>, name: &str) -> Result<MemfdFile, Errno> {
        let region = kho.new_region(name)?;
        Ok(MemfdFile::with_region(kho, Some(region)))
    }

    /// A memfd over a host memfd created elsewhere (see [`Kho::adopt_region`]).
    pub(crate) fn adopt(kho: &Arc<Kho>, fd: std::os::fd::OwnedFd) -> Result<MemfdFile, Errno> {
        let region = kho.adopt_region(fd)?;
        Ok(MemfdFile::with_region(kho, Some(region)))
    }

    /// An empty memfd whose host memfd is created (or adopted) on first use.
    pub(crate) fn lazy(kho: &Arc<Kho>) -> MemfdFile {
        MemfdFile::with_region(kho, None)
    }

    pub(super) fn with_region(kho: &Arc<Kho>, region: Option<Arc<ExtRegion>>) -> MemfdFile {
        MemfdFile {
            inode: FileId(next_id()),
            kho: Arc::clone(kho),
            st: Ordered::new(
                Level::Memfd,
                MemfdState {
                    region,
                    pending_size: None,
                    pending_seals: 0,
                    pos: 0,
                    frozen: false,
                    pinned: 0,
                    added: PageSet::default(),
                    in_place: false,
                },
            ),
        }
    }

    pub(super) fn region_locked(&self, st: &mut MemfdState) -> Result<Arc<ExtRegion>, Errno> {
        if let Some(r) = &st.region {
            return Ok(Arc::clone(r));
        }
        let r = self.kho.new_region("memfd")?;
        st.region = Some(Arc::clone(&r));
        Ok(r)
    }

    /// Applies what was set before the file had pages (size, then seals).
    pub(super) fn settle_locked(&self, st: &mut MemfdState) -> Result<(), Errno> {
        let r = self.region_locked(st)?;
        if let Some(size) = st.pending_size.take()
            && r.size()? != size
        {
            rustix::fs::ftruncate(r.fd(), size).map_err(host_err)?;
        }
        let mut pending = std::mem::take(&mut st.pending_seals);
        // Pending seals come from a retrieve. The kernel's new file is created with the exec
        // bits (memfd_alloc_file), and on such a file memfd_add_seals makes F_SEAL_EXEC imply
        // the write seals: an MFD_NOEXEC_SEAL memfd comes back write-sealed (7.2.13).
        if pending & seals::F_SEAL_EXEC != 0 {
            pending |= seals::F_SEAL_SHRINK
                | seals::F_SEAL_GROW
                | seals::F_SEAL_WRITE
                | seals::F_SEAL_FUTURE_WRITE;
        }
        let have = rustix::fs::fcntl_get_seals(r.fd())
            .map_err(host_err)?
            .bits();
        let missing = pending & !have;
        if missing != 0 {
            rustix::fs::fcntl_add_seals(r.fd(), SealFlags::from_bits_retain(missing))
                .map_err(host_err)?;
        }
        Ok(())
    }

    /// Finishes a retrieve: pending size and seals go to the host memfd.
    pub fn settle(&self) -> Result<(), Errno> {
        let mut st = lock(&self.st);
        self.settle_locked(&mut st)?;
        if std::mem::take(&mut st.in_place) {
            self.punch_unrestored(&st)?;
        }
        Ok(())
    }

    /// The kernel's new file holds only the folios that were restored; the adopted host memfd
    /// still has every page of the old one, so the pages no folio restored (a record whose
    /// folio count was lowered, a folio that failed) would show old data: punch them out, so
    /// they read as holes as on the kernel.
    pub(super) fn punch_unrestored(&self, st: &MemfdState) -> Result<(), Errno> {
        let Some(r) = &st.region else { return Ok(()) };
        let pages = r.size()?.div_ceil(PAGE);
        let punch = |from: u64, to: u64| {
            rustix::fs::fallocate(
                r.fd(),
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                from * PAGE,
                (to - from) * PAGE,
            )
            .map_err(host_err)
        };
        // The gaps of the restored set, a word of 64 pages at a time.
        let mut i = 0;
        while i < pages {
            let gap = st.added.next_with(i, pages, false);
            if gap == pages {
                break;
            }
            i = st.added.next_with(gap, pages, true);
            punch(gap, i)?;
        }
        Ok(())
    }

    /// The host memfd (created if needed), for mapping or direct I/O by "userspace".
    pub fn with_host_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Result<R, Errno> {
        let mut st = lock(&self.st);
        self.settle_locked(&mut st)?;
        let r = self.region_locked(&mut st)?;
        Ok(f(r.fd()))
    }

    /// Writes at `off` as `pwrite(2)` would; growing a frozen file fails with `EPERM`.
    pub fn pwrite(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        let mut st = lock(&self.st);
        self.settle_locked(&mut st)?;
        let r = self.region_locked(&mut st)?;
        let end = off.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > REGION_SPAN {
            return Err(Errno::EFBIG);
        }
        if st.frozen && end > r.size()? {
            return Err(Errno::EPERM);
        }
        let sealed = rustix::fs::fcntl_get_seals(r.fd())
            .map_err(host_err)?
            .bits();
        if sealed & (seals::F_SEAL_WRITE | seals::F_SEAL_FUTURE_WRITE) != 0
            || (sealed & seals::F_SEAL_GROW != 0 && end > r.size()?)
        {
            return Err(Errno::EPERM);
        }
        r.write(off, data)
    }

    /// Reads at `off` as `pread(2)` would; returns the number of bytes read.
    pub fn pread(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut st = lock(&self.st);
        self.settle_locked(&mut st)?;
        let r = self.region_locked(&mut st)?;
        let size = r.size()?;
        if off >= size {
            return Ok(0);
        }
        let n = buf
            .len()
            .min(usize::try_from(size - off).unwrap_or(usize::MAX));
        r.read(off, &mut buf[..n])?;
        Ok(n)
    }

    /// `ftruncate(2)`; `EPERM` while frozen.
    pub fn truncate(&self, size: u64) -> Result<(), Errno> {
        let mut st = lock(&self.st);
        if st.frozen {
            return Err(Errno::EPERM);
        }
        if size > REGION_SPAN {
            return Err(Errno::EFBIG);
        }
        self.settle_locked(&mut st)?;
        let r = self.region_locked(&mut st)?;
        rustix::fs::ftruncate(r.fd(), size).map_err(host_err)
    }

    /// Physical address of the file's first page (its region base), if it has pages.
    pub fn region_base(&self) -> Option<u64> {
        lock(&self.st).region.as_ref().map(|r| r.base())
    }
}

impl File for MemfdFile {
    fn kind(&self) -> FileKind {
        FileKind::Memfd
    }

    fn id(&self) -> FileId {
        self.inode
    }
}

impl ShmemFile for MemfdFile {
    fn inode_id(&self) -> FileId {
        self.inode
    }

    fn size(&self) -> u64 {
        let st = lock(&self.st);
        match (&st.region, st.pending_size) {
            (_, Some(s)) => s,
            (Some(r), None) => r.size().unwrap_or(0),
            (None, None) => 0,
        }
    }

    fn set_size(&self, size: u64) -> luo_abi::Result {
        let mut st = lock(&self.st);
        if st.frozen {
            return Err(Errno::EPERM);
        }
        if size > REGION_SPAN {
            return Err(Errno::EFBIG);
        }
        match &st.region {
            Some(r) if st.added.is_empty() && st.pending_size.is_none() => {
                rustix::fs::ftruncate(r.fd(), size).map_err(host_err)
            }
            _ => {
                st.pending_size = Some(size);
                Ok(())
            }
        }
    }

    fn pos(&self) -> u64 {
        lock(&self.st).pos
    }

    fn set_pos(&self, pos: u64) {
        lock(&self.st).pos = pos;
    }

    fn seals(&self) -> u32 {
        let st = lock(&self.st);
        let host = st
            .region
            .as_ref()
            .and_then(|r| rustix::fs::fcntl_get_seals(r.fd()).ok())
            .map_or(0, |s| s.bits());
        host | st.pending_seals
    }

    fn add_seals(&self, s: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        if st.region.is_none() || !st.added.is_empty() || st.pending_size.is_some() {
            if st.pending_seals & seals::F_SEAL_SEAL != 0 {
                return Err(Errno::EPERM);
            }
            st.pending_seals |= s;
            return Ok(());
        }
        let r = self.region_locked(&mut st)?;
        rustix::fs::fcntl_add_seals(r.fd(), SealFlags::from_bits_retain(s)).map_err(host_err)
    }

    fn nlink(&self) -> u32 {
        0
    }

    fn is_frozen(&self) -> bool {
        lock(&self.st).frozen
    }

    fn set_frozen(&self, frozen: bool) {
        lock(&self.st).frozen = frozen;
    }

    fn pin_folios(&self) -> luo_abi::Result<Vec<ShmemFolio>> {
        let mut st = lock(&self.st);
        self.settle_locked(&mut st)?;
        let r = self.region_locked(&mut st)?;
        let pages = r.size()?.div_ceil(PAGE);
        st.pinned += 1;
        Ok((0..pages)
            .map(|i| ShmemFolio {
                index: i,
                phys: PhysAddr::new(r.base() + i * PAGE),
                order: 0,
                dirty: true,
                uptodate: true,
            })
            .collect())
    }

    fn unpin_folios(&self, _folios: &[ShmemFolio]) {
        let mut st = lock(&self.st);
        st.pinned = st.pinned.saturating_sub(1);
    }

    fn add_folio(&self, folio: ShmemFolio) -> luo_abi::Result {
        self.add_folios(folio, 1)
    }

    /// One lock, one bounds and index check and one update of the index set per run; the
    /// run is adopted in place when it sits at its own offset in a region (always for a
    /// memfd handed over by the model).
    fn add_folios(&self, first: ShmemFolio, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let pages = (count as u64)
            .checked_shl(first.order)
            .filter(|p| first.order < 40 && p >> first.order == count as u64)
            .ok_or(Errno::EINVAL)?;
        let bytes = pages.checked_mul(PAGE).ok_or(Errno::EFBIG)?;
        let off = first.index.checked_mul(PAGE).ok_or(Errno::EINVAL)?;
        if off.checked_add(bytes).is_none_or(|e| e > REGION_SPAN) {
            return Err(Errno::EFBIG);
        }
        if count == 0 {
            return Ok(());
        }
        let indexes = first.index..first.index + pages;
        if st.added.any_in(indexes.clone()) {
            return Err(Errno::EEXIST);
        }
        let phys = first.phys.as_u64();
        let in_place = match &st.region {
            // Adopt the incoming region: the very same host memfd, no copy.
            None => match self.kho.region_at(phys) {
                Some(r) if phys - r.base() == off && off + bytes <= REGION_SPAN => {
                    st.region = Some(r);
                    st.in_place = true;
                    true
                }
                _ => false,
            },
            // Regions' address spans are disjoint, so a run is in this file's own region
            // exactly when its address falls in that span at its own offset: no KHO lookup
            // per folio or run.
            Some(mine) => phys.checked_sub(mine.base()) == Some(off),
        };
        let r = self.region_locked(&mut st)?;
        if !in_place {
            let mut buf = vec![0u8; bytes as usize];
            self.kho.read(first.phys, &mut buf)?;
            r.write(off, &buf)?;
            DATA_COPIED.fetch_add(bytes, Ordering::Relaxed);
        }
        if !first.uptodate {
            r.write(off, &vec![0u8; bytes as usize])?;
        }
        st.added.insert_range(indexes);
        Ok(())
    }
}
