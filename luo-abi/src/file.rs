// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The files handlers preserve and retrieve.
//!
//! The core keeps an fd table of files. Each is a [`FileKind`] plus either a real host object
//! (a memfd from `memfd_create`, see [`ShmemFile`]) or a synthetic object for kinds without a
//! usable host counterpart (iommufd, vfio-pci, KVM, guest_memfd). The core owns them; a Rust
//! handler sees a `&dyn File` (and gets a [`FileRef`], the model's `ARef<File>`, when it creates
//! one on retrieve). A C handler sees an opaque `struct file *` and reaches the same data through
//! the core's C API.
//!
//! # What a `struct file *` points to
//!
//! One representation serves the core, the macro runtime and C handlers: a `struct file *` is
//! the address of a [`FileHead`], the first field of the core's file object. The head knows how
//! to turn that address back into a `&dyn File` (as the kernel's `struct file` carries its
//! `f_op`), so a trampoline can borrow the file without asking anyone, even in `get_id`,
//! which gets nothing but the file. Handing a *new* file to the core (a `retrieve` result) goes
//! through the core ([`crate::host::LuoHost::file_into_raw`]), which checks that the file is
//! one of its own before it takes the reference.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::ffi::c_void;

use crate::errno::{Errno, Result};
use crate::phys::PhysAddr;

/// What kind of object a file is; handlers' `can_preserve` usually starts here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A shmem-backed memfd (`memfd_create` without `MFD_HUGETLB`).
    Memfd,
    /// A HugeTLB-backed memfd (`MFD_HUGETLB`); not shmem, so the memfd handler rejects it.
    HugeMemfd,
    /// An `/dev/iommu` file (iommufd).
    Iommufd,
    /// A vfio-pci device file.
    VfioPci,
    /// A KVM VM file (`KVM_CREATE_VM`).
    KvmVm,
    /// A guest_memfd (`KVM_CREATE_GUEST_MEMFD`).
    GuestMemfd,
    /// Anything else (`/dev/null`, pipes, …); no handler accepts it, so PRESERVE_FD gives
    /// `-ENOENT`.
    Other,
}

/// The identity of the object behind a file: the key of the double-preservation check
/// (`get_id` upstream, an `unsigned long`).
///
/// By default it identifies the file itself; the memfd handler uses the inode, so two files
/// over one memfd inode cannot both be preserved (`-EBUSY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

/// A file as a handler sees it (`struct file` upstream).
///
/// Implemented by the core's file objects. Downcast to the concrete synthetic object with
/// [`<dyn File>::downcast_ref`](trait.File.html#method.downcast_ref).
pub trait File: Any + Send + Sync {
    /// What kind of object this is.
    fn kind(&self) -> FileKind;

    /// The file's own identity (the `struct file *` upstream); handlers may key on something
    /// else, e.g. [`ShmemFile::inode_id`].
    fn id(&self) -> FileId;

    /// The shmem view of this file, if it is shmem-backed (`shmem_file(file)` upstream).
    fn as_shmem(&self) -> Option<&dyn ShmemFile> {
        None
    }

    /// The object behind a synthetic file (an iommufd's context, a VM, a guest_memfd), which
    /// the handler of its kind downcasts (`file->private_data` upstream).
    fn payload(&self) -> Option<&(dyn Any + Send + Sync)> {
        None
    }
}

/// The head of every object a C `struct file *` points to (see the [module docs](self)).
///
/// A file object is `#[repr(C)]` and starts with its head, so the address of the object is the
/// address of the head. The head holds the one function that recovers the `&dyn File` from
/// that address.
#[repr(C)]
pub struct FileHead {
    to_file: unsafe fn(*const FileHead) -> *const dyn File,
}

impl FileHead {
    /// The head of a `T` that starts with it.
    ///
    /// # Safety
    ///
    /// `T` is `#[repr(C)]` and this head is its first field, so that the head's address is
    /// the `T`'s address.
    pub const unsafe fn of<T: File>() -> FileHead {
        // SAFETY (of the stored function's use): callers of `to_file` pass the address of this
        // head, which is the address of a live `T` by the contract above.
        unsafe fn cast<T: File>(p: *const FileHead) -> *const dyn File {
            p.cast::<T>() as *const dyn File
        }
        FileHead { to_file: cast::<T> }
    }

    /// Borrows the file behind a `struct file *`; `None` for NULL.
    ///
    /// # Safety
    ///
    /// `raw` is NULL or the address of a live object that starts with a [`FileHead`] and
    /// outlives `'a` (a file the core passed to the running callback).
    #[inline]
    pub unsafe fn borrow<'a>(raw: *const c_void) -> Option<&'a dyn File> {
        let head = raw.cast::<FileHead>();
        if head.is_null() {
            return None;
        }
        // SAFETY: per the contract `head` is a live head, and its `to_file` returns a file
        // that lives as long as the object, which outlives `'a`.
        unsafe { Some(&*((*head).to_file)(head)) }
    }
}

impl dyn File {
    /// The concrete object behind this file, if it is a `T`.
    pub fn downcast_ref<T: File>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref::<T>()
    }
}

/// A shared reference to a core-owned file (`ARef<File>` in kernel Rust).
pub type FileRef = Arc<dyn File>;

/// `F_SEAL_*` values (uAPI `linux/fcntl.h`).
pub mod seals {
    /// Prevent further seals from being set.
    pub const F_SEAL_SEAL: u32 = 0x0001;
    /// Prevent the file from shrinking.
    pub const F_SEAL_SHRINK: u32 = 0x0002;
    /// Prevent the file from growing.
    pub const F_SEAL_GROW: u32 = 0x0004;
    /// Prevent writes.
    pub const F_SEAL_WRITE: u32 = 0x0008;
    /// Prevent future writes while mapped.
    pub const F_SEAL_FUTURE_WRITE: u32 = 0x0010;
    /// Prevent chmod of the exec bits.
    pub const F_SEAL_EXEC: u32 = 0x0020;
}

/// `MFD_ALLOW_SEALING` (uAPI `linux/memfd.h`).
pub const MFD_ALLOW_SEALING: u32 = 0x0002;

/// One page-cache folio of a shmem file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemFolio {
    /// Offset in the file, in pages (`folio->index`, a `pgoff_t`).
    pub index: u64,
    /// Physical address of the folio's first page.
    pub phys: PhysAddr,
    /// `log2` of the number of pages in the folio.
    pub order: u32,
    /// `folio_test_dirty`.
    pub dirty: bool,
    /// `folio_test_uptodate`.
    pub uptodate: bool,
}

/// The shmem (memfd) view of a file: what `mm/memfd_luo.c` reads and sets.
///
/// In the model a preserved memfd is a memory region with synthetic pfns, so preserving it
/// copies no data and the new kernel's file is over the very same pages. Methods take `&self`:
/// the core's file synchronises internally (the inode lock upstream).
pub trait ShmemFile: File {
    /// The inode's identity (what the memfd handler's `get_id` returns).
    fn inode_id(&self) -> FileId;

    /// File size in bytes (`i_size`).
    fn size(&self) -> u64;

    /// Sets the file size on retrieve (`i_size_write`); `-EPERM` while frozen.
    fn set_size(&self, size: u64) -> Result;

    /// File position (`f_pos`).
    fn pos(&self) -> u64;

    /// Sets the file position on retrieve.
    fn set_pos(&self, pos: u64);

    /// Current seals (`F_GET_SEALS`), a mask of [`seals`] values.
    fn seals(&self) -> u32;

    /// Adds seals (`F_ADD_SEALS`); `-EPERM` if `F_SEAL_SEAL` is set.
    fn add_seals(&self, seals: u32) -> Result;

    /// Link count (`i_nlink`); `0` for a memfd, which is what `can_preserve` checks.
    fn nlink(&self) -> u32;

    /// Whether the inode is frozen for live update.
    fn is_frozen(&self) -> bool;

    /// Freezes or unfreezes the inode (`shmem_freeze`). While frozen, writes within the size
    /// and new seals still work; growing, shrinking and fallocate fail with `-EPERM`.
    fn set_frozen(&self, frozen: bool);

    /// Pins every folio over `[0, size)` and returns them in index order
    /// (`memfd_pin_folios`): holes are allocated and swapped-out pages brought back first.
    fn pin_folios(&self) -> Result<Vec<ShmemFolio>>;

    /// Unpins folios returned by [`ShmemFile::pin_folios`] (`unpin_folios`).
    fn unpin_folios(&self, folios: &[ShmemFolio]);

    /// Inserts a restored folio into the page cache at `folio.index`, with its flags
    /// (`shmem_add_to_page_cache` and friends on retrieve). `-EEXIST` if the index is taken.
    fn add_folio(&self, folio: ShmemFolio) -> Result;

    /// Inserts `count` restored folios of `first.order`, back to back in memory from
    /// `first.phys` and in the file from `first.index`, with `first`'s flags: what `count`
    /// calls of [`ShmemFile::add_folio`] do. A file overrides it to take its lock and check
    /// the indexes once per run (the retrieve of a memfd installs runs, not folios); the
    /// default is the loop, which stops at the first error.
    fn add_folios(&self, first: ShmemFolio, count: usize) -> Result {
        let pages = 1u64.checked_shl(first.order).ok_or(Errno::EINVAL)?;
        for i in 0..count as u64 {
            let step = i.checked_mul(pages).ok_or(Errno::EINVAL)?;
            let phys = step
                .checked_mul(crate::PAGE_SIZE as u64)
                .and_then(|b| first.phys.as_u64().checked_add(b))
                .ok_or(Errno::EINVAL)?;
            self.add_folio(ShmemFolio {
                index: first.index.checked_add(step).ok_or(Errno::EINVAL)?,
                phys: PhysAddr::new(phys),
                ..first
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Null;

    impl File for Null {
        fn kind(&self) -> FileKind {
            FileKind::Other
        }
        fn id(&self) -> FileId {
            FileId(7)
        }
    }

    #[test]
    fn null_borrows_nothing() {
        // SAFETY: NULL is accepted.
        assert!(unsafe { FileHead::borrow(core::ptr::null()) }.is_none());
    }

    #[repr(C)]
    struct Embedded {
        head: FileHead,
        id: u64,
    }

    impl File for Embedded {
        fn kind(&self) -> FileKind {
            FileKind::Memfd
        }
        fn id(&self) -> FileId {
            FileId(self.id)
        }
    }

    #[test]
    fn embedded_head_borrows_its_object() {
        let e = Embedded {
            // SAFETY: `Embedded` is `#[repr(C)]` with the head first.
            head: unsafe { FileHead::of::<Embedded>() },
            id: 11,
        };
        // SAFETY: `e` outlives the borrow.
        let f = unsafe { FileHead::borrow((&raw const e).cast()) }.unwrap();
        assert_eq!((f.kind(), f.id()), (FileKind::Memfd, FileId(11)));
    }

    #[test]
    fn downcast_and_defaults() {
        let f: FileRef = Arc::new(Null);
        assert_eq!(f.kind(), FileKind::Other);
        assert_eq!(f.id(), FileId(7));
        assert!(f.as_shmem().is_none());
        assert!(f.payload().is_none());
        assert!(f.downcast_ref::<Null>().is_some());
    }
}
