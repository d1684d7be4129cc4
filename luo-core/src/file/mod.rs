// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The core's files: the per-kernel fd table and the objects behind fds.
//!
//! A [`CoreFile`] is what upstream calls a `struct file`: handlers see it as
//! `&dyn luo_abi::file::File` (Rust) or an opaque `struct file *` (C). Kinds:
//! * memfds: a real host memfd ([`MemfdFile`]), an external region of the KHO model;
//! * the `/dev/liveupdate` device and session files;
//! * synthetic test objects (a `u64` payload) for test handlers, and a `/dev/null`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use luo_abi::file::{File, FileHead, FileId, FileKind, FileRef, ShmemFile};
use luo_abi::{Errno, PAGE_SIZE};
use luo_generated::liveupdate::file as CFile;

use crate::lock_order::{Level, Ordered, lock};

mod memfd;

pub use memfd::*;

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
    use luo_abi::file::seals;

    use super::*;
    use crate::kho::Kho;
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
