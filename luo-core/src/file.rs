// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The core's files: the per-kernel fd table and the objects behind fds.
//!
//! A [`CoreFile`] is what upstream calls a `struct file`: handlers see it as
//! `&dyn luo_abi::file::File` (Rust) or an opaque `struct file *` (C). Kinds:
//! * memfds: a real host memfd ([`MemfdFile`]), an external region of the KHO model;
//! * the `/dev/liveupdate` device and session files;
//! * synthetic test objects (a `u64` payload) for test handlers, and a `/dev/null`.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use luo_abi::file::{File, FileHead, FileId, FileKind, FileRef, ShmemFile, ShmemFolio, seals};
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_generated::liveupdate::file as CFile;
use rustix::fs::SealFlags;

use crate::kho::Kho;
use crate::lock_order::{Level, Ordered, lock};
use crate::mem::{ExtRegion, REGION_SPAN, host_err};

const PAGE: u64 = PAGE_SIZE as u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Bytes of file data copied into retrieved memfds (process-wide; see [`file_data_copied`]).
static DATA_COPIED: AtomicU64 = AtomicU64::new(0);

/// Bytes of file data the core has copied into retrieved memfds, process-wide: a folio that
/// is not in place in the file's host memfd is copied by [`ShmemFile::add_folio`]. A live
/// update that hands memfds over without copying leaves this unchanged (the benchmarks'
/// `blackout` row measures it).
pub fn file_data_copied() -> u64 {
    DATA_COPIED.load(Ordering::Relaxed)
}

/// Addresses of live [`CoreFile`]s, so a `struct file *` coming back from C can be checked.
/// Keyed by the core's own allocations: no hashing of input, so the fast hasher.
fn live_files() -> &'static Ordered<rustc_hash::FxHashSet<usize>> {
    static LIVE: OnceLock<Ordered<rustc_hash::FxHashSet<usize>>> = OnceLock::new();
    LIVE.get_or_init(|| Ordered::new(Level::LiveFiles, rustc_hash::FxHashSet::default()))
}

/// What is behind a [`CoreFile`].
pub enum FileObj {
    /// `/dev/liveupdate`.
    Dev,
    /// A session fd (an anonymous inode upstream): its private data is the LUO session, which
    /// only LUO looks into (`crate::luo::Session::of_private`).
    Session(Arc<dyn std::any::Any + Send + Sync>),
    /// A memfd.
    Memfd(MemfdFile),
    /// A synthetic object for test handlers, carrying a value.
    Test(AtomicU64),
    /// A file no handler accepts (`/dev/null`).
    Null,
    /// A synthetic object of another kind (iommufd, vfio-pci, KVM VM, guest_memfd, ...),
    /// with a payload the handlers of that kind downcast.
    Synthetic(FileKind, Box<dyn std::any::Any + Send + Sync>),
}

/// A file of the model (`struct file`). `#[repr(C)]` with its [`FileHead`] first: the
/// `struct file *` handlers get is the address of a `CoreFile`, and Rust handlers borrow the
/// file back through the head.
#[repr(C)]
pub struct CoreFile {
    head: FileHead,
    id: FileId,
    name: String,
    obj: FileObj,
}

impl CoreFile {
    /// A new file. Its address is registered so that [`CoreFile::from_c`] can validate it.
    pub fn new(name: impl Into<String>, obj: FileObj) -> Arc<CoreFile> {
        let f = Arc::new(CoreFile {
            // SAFETY: `CoreFile` is `#[repr(C)]` and `head` is its first field.
            head: unsafe { FileHead::of::<CoreFile>() },
            id: FileId(next_id()),
            name: name.into(),
            obj,
        });
        lock(live_files()).insert(Arc::as_ptr(&f) as usize);
        f
    }

    /// The file's name (`"[luo_session] NAME"`, `"memfd:NAME"`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object behind the file.
    pub fn obj(&self) -> &FileObj {
        &self.obj
    }

    /// The memfd behind the file, if it is one.
    pub fn memfd(&self) -> Option<&MemfdFile> {
        match &self.obj {
            FileObj::Memfd(m) => Some(m),
            _ => None,
        }
    }

    /// The payload of a synthetic file, if it is a `T`.
    pub fn synthetic<T: 'static>(&self) -> Option<&T> {
        match &self.obj {
            FileObj::Synthetic(_, p) => p.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// The value of a synthetic test file.
    pub fn test_value(&self) -> Option<u64> {
        match &self.obj {
            FileObj::Test(v) => Some(v.load(Ordering::Relaxed)),
            _ => None,
        }
    }

    /// The `struct file *` C handlers see for this file (borrowed, no reference taken).
    pub fn as_c(f: &Arc<CoreFile>) -> *mut CFile {
        Arc::as_ptr(f).cast_mut().cast()
    }

    /// Validates a `struct file *` from C and borrows the file, `None` unless it is live.
    ///
    /// # Safety
    ///
    /// The file must stay alive while the returned reference is used, which holds while the
    /// caller (a handler callback) runs with the reference LUO or the fd table holds.
    pub unsafe fn from_c<'a>(p: *const CFile) -> Option<&'a CoreFile> {
        if p.is_null() || !lock(live_files()).contains(&(p as usize)) {
            return None;
        }
        // SAFETY: the address is that of a live `CoreFile` (registered in `new`, removed in
        // `drop`), and the caller keeps it alive while the reference is used.
        Some(unsafe { &*p.cast::<CoreFile>() })
    }

    /// Takes ownership of a reference handed over as a raw `struct file *` (a handler's
    /// `retrieve` output), `None` unless it is a live file.
    ///
    /// # Safety
    ///
    /// `p` must carry one strong reference produced by [`CoreFile::into_c`] (or
    /// `Arc::into_raw`), which this call consumes.
    pub unsafe fn from_c_owned(p: *const CFile) -> Option<Arc<CoreFile>> {
        if p.is_null() || !lock(live_files()).contains(&(p as usize)) {
            return None;
        }
        // SAFETY: `p` is a live `CoreFile` allocated by `Arc` and the caller transfers one
        // strong reference to us.
        Some(unsafe { Arc::from_raw(p.cast::<CoreFile>()) })
    }

    /// Gives one reference away as a raw `struct file *` (for a handler's `retrieve`).
    pub fn into_c(f: Arc<CoreFile>) -> *mut CFile {
        Arc::into_raw(f).cast_mut().cast()
    }

    /// Converts a handler-visible [`FileRef`] back into the core's file.
    pub fn from_ref(f: FileRef) -> Option<Arc<CoreFile>> {
        let any: Arc<dyn std::any::Any + Send + Sync> = f;
        any.downcast::<CoreFile>().ok()
    }
}

impl Drop for CoreFile {
    fn drop(&mut self) {
        lock(live_files()).remove(&(self as *const CoreFile as usize));
    }
}

impl File for CoreFile {
    fn kind(&self) -> FileKind {
        match &self.obj {
            FileObj::Memfd(_) => FileKind::Memfd,
            FileObj::Synthetic(k, _) => *k,
            _ => FileKind::Other,
        }
    }

    fn id(&self) -> FileId {
        self.id
    }

    fn as_shmem(&self) -> Option<&dyn ShmemFile> {
        match &self.obj {
            FileObj::Memfd(m) => Some(m),
            _ => None,
        }
    }

    fn payload(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        match &self.obj {
            FileObj::Synthetic(_, p) => Some(&**p),
            // A test file's payload is its value (`luo_testing`).
            FileObj::Test(v) => Some(v),
            _ => None,
        }
    }
}

struct MemfdState {
    region: Option<Arc<ExtRegion>>,
    pending_size: Option<u64>,
    pending_seals: u32,
    pos: u64,
    frozen: bool,
    pinned: u32,
    added: PageSet,
    /// A retrieve adopted the incoming host memfd in place: its pages that no folio restored
    /// are punched out when the retrieve settles.
    in_place: bool,
}

/// Page indices of a retrieved memfd that already hold a restored folio: one bit per page,
/// grown on demand (indices stay below `REGION_SPAN / PAGE`, so at most 2 MiB). A bitmap
/// rather than a hash set: `add_folio` runs once per restored folio (the `memfd_retrieve`
/// benchmark), and hashing plus rehashing was most of its cost.
#[derive(Default)]
struct PageSet {
    bits: Vec<u64>,
    len: u64,
}

impl PageSet {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first index in `from..end` that is in the set (`set`) or not (`!set`); `end`
    /// if none.
    fn next_with(&self, from: u64, end: u64, set: bool) -> u64 {
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
    fn any_in(&self, r: std::ops::Range<u64>) -> bool {
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
    fn insert_range(&mut self, r: std::ops::Range<u64>) {
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

/// Extended attribute that marks a host memfd frozen (preserved): the programs of the
/// simulator share the host file itself, so the freeze of `shmem_freeze` (size changes,
/// fallocate and writes past the end refused with `EPERM`) is enforced for them by the preload
/// library, which reads this mark; the file's seals stay the program's own.
pub const FROZEN_XATTR: &str = "user.luo.frozen";

fn mark_frozen(fd: BorrowedFd<'_>, frozen: bool) {
    // Best effort: a host tmpfs without user xattrs only loses the enforcement for programs.
    if frozen {
        let _ = rustix::fs::fsetxattr(fd, FROZEN_XATTR, b"1", rustix::fs::XattrFlags::empty());
    } else {
        let _ = rustix::fs::fremovexattr(fd, FROZEN_XATTR);
    }
}

/// A shmem memfd: a host memfd that is an external region of the KHO model.
///
/// Created eagerly by `memfd_create`, or lazily by `memfd_alloc_file` on retrieve: the first
/// restored folio that sits at its own index in an incoming region makes that region (the very
/// same host memfd, no copy) this file's pages; otherwise folios are copied.
pub struct MemfdFile {
    inode: FileId,
    kho: Arc<Kho>,
    st: Ordered<MemfdState>,
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

    fn with_region(kho: &Arc<Kho>, region: Option<Arc<ExtRegion>>) -> MemfdFile {
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

    fn region_locked(&self, st: &mut MemfdState) -> Result<Arc<ExtRegion>, Errno> {
        if let Some(r) = &st.region {
            return Ok(Arc::clone(r));
        }
        let r = self.kho.new_region("memfd")?;
        st.region = Some(Arc::clone(&r));
        Ok(r)
    }

    /// Applies what was set before the file had pages (size, then seals).
    fn settle_locked(&self, st: &mut MemfdState) -> Result<(), Errno> {
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
        // A retrieved file is a new, unfrozen file; the host memfd it adopted still carries
        // the previous kernel's mark.
        if !st.frozen
            && let Some(r) = &st.region
        {
            mark_frozen(r.fd(), false);
        }
        Ok(())
    }

    /// The kernel's new file holds only the folios that were restored; the adopted host memfd
    /// still has every page of the old one, so the pages no folio restored (a record whose
    /// folio count was lowered, a folio that failed) would show old data: punch them out, so
    /// they read as holes as on the kernel.
    fn punch_unrestored(&self, st: &MemfdState) -> Result<(), Errno> {
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
        let mut st = lock(&self.st);
        st.frozen = frozen;
        if let Some(r) = &st.region {
            mark_frozen(r.fd(), frozen);
        }
    }

    fn pin_folios(&self) -> luo_abi::Result<Vec<ShmemFolio>> {
        let mut st = lock(&self.st);
        self.settle_locked(&mut st)?;
        let r = self.region_locked(&mut st)?;
        let pages = r.size()?.div_ceil(PAGE);
        if st.frozen {
            mark_frozen(r.fd(), true);
        }
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

/// The per-kernel fd table: userspace's view of its open files.
#[derive(Default)]
pub struct FdTable {
    /// The file of each fd from [`FIRST_FD`], by index: `fget` is an index, as the kernel's
    /// fd array.
    slots: Vec<Option<Arc<CoreFile>>>,
    /// Open fds.
    open: usize,
    /// Free slots below the last one, so the lowest free fd is found in O(log n).
    holes: std::collections::BTreeSet<i32>,
    /// How many fds refer to each file (by address), so `close` knows in O(1) whether it
    /// closed the last one (the addresses are the table's own `Arc`s: no hashing of input).
    refs: rustc_hash::FxHashMap<usize, usize>,
}

/// The lowest fd the table hands out (0-2 are stdio).
pub const FIRST_FD: i32 = 3;

impl FdTable {
    fn slot(fd: i32) -> Option<usize> {
        usize::try_from(fd.checked_sub(FIRST_FD)?).ok()
    }

    /// Installs `f` at the lowest free fd.
    pub fn install(&mut self, f: Arc<CoreFile>) -> Result<i32, Errno> {
        let fd = match self.holes.pop_first() {
            Some(fd) => fd,
            None => i32::try_from(self.slots.len())
                .ok()
                .and_then(|n| n.checked_add(FIRST_FD))
                .ok_or(Errno::EMFILE)?,
        };
        let i = Self::slot(fd).ok_or(Errno::EMFILE)?;
        *self.refs.entry(Arc::as_ptr(&f) as usize).or_default() += 1;
        if i == self.slots.len() {
            self.slots.push(Some(f));
        } else {
            self.slots[i] = Some(f);
        }
        self.open += 1;
        Ok(fd)
    }

    /// The file at `fd` (`fget`), `EBADF` if none.
    pub fn get(&self, fd: i32) -> Result<Arc<CoreFile>, Errno> {
        Self::slot(fd)
            .and_then(|i| self.slots.get(i)?.clone())
            .ok_or(Errno::EBADF)
    }

    /// Removes `fd` and returns its file, `EBADF` if none.
    pub fn remove(&mut self, fd: i32) -> Result<Arc<CoreFile>, Errno> {
        let i = Self::slot(fd).ok_or(Errno::EBADF)?;
        let f = self
            .slots
            .get_mut(i)
            .and_then(Option::take)
            .ok_or(Errno::EBADF)?;
        self.open -= 1;
        let key = Arc::as_ptr(&f) as usize;
        if let Some(n) = self.refs.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&key);
            }
        }
        if i + 1 < self.slots.len() {
            self.holes.insert(fd);
        } else {
            // `fd` was the highest: free slots at the end go, and their holes with them.
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            let end = FIRST_FD + self.slots.len() as i32;
            drop(self.holes.split_off(&end));
        }
        Ok(f)
    }

    /// Whether any fd refers to the same file as `f`.
    pub fn refers_to(&self, f: &Arc<CoreFile>) -> bool {
        self.refs.contains_key(&(Arc::as_ptr(f) as usize))
    }

    /// Number of open fds.
    pub fn len(&self) -> usize {
        self.open
    }

    /// Whether no fd is open.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Drops every fd (at kexec), returning the files.
    pub fn drain(&mut self) -> Vec<Arc<CoreFile>> {
        self.holes.clear();
        self.refs.clear();
        self.open = 0;
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::BackingKind;

    #[test]
    #[cfg_attr(miri, ignore = "host memfd syscalls")]
    fn memfd_data_and_freeze() {
        let kho = Arc::new(Kho::new(BackingKind::Heap, 64).unwrap());
        let m = MemfdFile::create(&kho, "t").unwrap();
        m.pwrite(0, b"hello world").unwrap();
        assert_eq!(m.size(), 11);
        m.set_frozen(true);
        assert_eq!(m.pwrite(8, b"rld!"), Err(Errno::EPERM));
        m.pwrite(0, b"H").unwrap();
        assert_eq!(m.truncate(0), Err(Errno::EPERM));
        let mut buf = [0u8; 32];
        assert_eq!(m.pread(0, &mut buf).unwrap(), 11);
        assert_eq!(&buf[..11], b"Hello world");
        let folios = m.pin_folios().unwrap();
        assert_eq!(folios.len(), 1);
        m.add_seals(seals::F_SEAL_GROW).unwrap();
        assert_eq!(m.seals(), seals::F_SEAL_GROW);

        let lazy = MemfdFile::lazy(&kho);
        lazy.add_seals(seals::F_SEAL_SHRINK).unwrap();
        lazy.set_size(11).unwrap();
        lazy.add_folio(folios[0]).unwrap();
        assert_eq!(lazy.add_folio(folios[0]), Err(Errno::EEXIST));
        lazy.settle().unwrap();
        assert_eq!(lazy.region_base(), m.region_base());
        assert_eq!(lazy.seals(), seals::F_SEAL_GROW | seals::F_SEAL_SHRINK);
    }

    /// A retrieve that adopts the incoming host memfd but restores only some folios leaves the
    /// other pages as holes (they used to show the old data: only the leak check noticed).
    #[test]
    #[cfg_attr(miri, ignore = "host memfd syscalls")]
    fn pages_not_restored_read_as_holes() {
        let kho = Arc::new(Kho::new(BackingKind::Heap, 64).unwrap());
        let m = MemfdFile::create(&kho, "t").unwrap();
        m.pwrite(0, &vec![7u8; 3 * PAGE as usize]).unwrap();
        let folios = m.pin_folios().unwrap();
        assert_eq!(folios.len(), 3);
        let lazy = MemfdFile::lazy(&kho);
        lazy.set_size(3 * PAGE).unwrap();
        lazy.add_folio(folios[0]).unwrap();
        lazy.add_folio(folios[2]).unwrap();
        lazy.settle().unwrap();
        assert_eq!(lazy.region_base(), m.region_base(), "adopted in place");
        let mut page = vec![0u8; PAGE as usize];
        for (i, want) in [(0u64, 7u8), (1, 0), (2, 7)] {
            assert_eq!(lazy.pread(i * PAGE, &mut page).unwrap(), PAGE as usize);
            assert!(page.iter().all(|&b| b == want), "page {i}");
        }
        let hole = lazy
            .with_host_fd(|h| rustix::fs::seek(h, rustix::fs::SeekFrom::Hole(0)))
            .unwrap()
            .unwrap();
        assert_eq!(hole, PAGE);
    }

    #[test]
    fn fd_table_lowest_free() {
        let mut t = FdTable::default();
        let a = CoreFile::new("a", FileObj::Null);
        assert_eq!(t.install(Arc::clone(&a)).unwrap(), 3);
        assert_eq!(t.install(CoreFile::new("b", FileObj::Null)).unwrap(), 4);
        t.remove(3).unwrap();
        assert_eq!(t.get(3).err(), Some(Errno::EBADF));
        assert_eq!(t.install(Arc::clone(&a)).unwrap(), 3);
        assert_eq!(t.install(CoreFile::new("c", FileObj::Null)).unwrap(), 5);
        t.remove(4).unwrap();
        t.remove(5).unwrap();
        assert_eq!(t.install(CoreFile::new("d", FileObj::Null)).unwrap(), 4);
        let p = CoreFile::as_c(&a);
        // SAFETY: `a` is alive for the whole test.
        assert!(unsafe { CoreFile::from_c(p) }.is_some());
        let dangling = 0x1234usize as *const CFile;
        // SAFETY: the address is checked against the live set and rejected.
        assert!(unsafe { CoreFile::from_c(dangling) }.is_none());
    }

    /// `close` of one fd of a file another fd still refers to keeps it; the last one does
    /// not (the count per file replaced a scan of every fd).
    #[test]
    fn fd_table_counts_the_fds_of_a_file() {
        let mut t = FdTable::default();
        let f = CoreFile::new("t", FileObj::Null);
        let g = CoreFile::new("u", FileObj::Null);
        let a = t.install(Arc::clone(&f)).unwrap();
        let b = t.install(Arc::clone(&f)).unwrap();
        let c = t.install(Arc::clone(&g)).unwrap();
        assert_eq!((a, b, c), (FIRST_FD, FIRST_FD + 1, FIRST_FD + 2));
        let x = t.remove(a).unwrap();
        assert!(t.refers_to(&x));
        let x = t.remove(b).unwrap();
        assert!(!t.refers_to(&x));
        assert!(t.refers_to(&g));
        // The lowest free fd comes back first; holes above the highest are forgotten.
        assert_eq!(t.install(Arc::clone(&f)).unwrap(), FIRST_FD);
        t.remove(c).unwrap();
        assert_eq!(t.install(f).unwrap(), FIRST_FD + 1);
        assert_eq!(t.drain().len(), 2);
        assert!(!t.refers_to(&g));
    }
}
