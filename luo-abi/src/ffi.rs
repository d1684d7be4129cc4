//! What crosses the C ABI between the core and Rust handlers, and how Rust code behaves there.
//!
//! The macros of `luo-derive` fill the *generated* C ops tables with `extern "C"` trampolines.
//! Those trampolines only unpack the raw C arguments and call the generic runtime functions in
//! [`crate::handler::rt`] and [`crate::global::rt`], which use the conventions of this module:
//!
//! * **`struct file *`** is a pointer to a [`FileCell`], which owns a [`FileRef`]. The core
//!   passes a borrowed one to every callback that takes a file; `retrieve` hands a new one to the
//!   core, which takes ownership with [`FileCell::from_raw`].
//! * **Panics** never unwind into C. With the `std` feature (the userspace model) every
//!   callback runs under [`catch`]: a panic is caught, counted ([`panic_count`]) and turned into
//!   the callback's failure value: `-EIO` for `int` callbacks, `false` for `bool` callbacks,
//!   nothing for `void` callbacks (the effect of the callback is lost, and the resources it was
//!   to release stay leaked). Without `std` (a kernel build, where `panic=abort` anyway), or
//!   with `set_panic_policy(PanicPolicy::Abort)`, the panic reaches the `extern "C"`
//!   boundary, where Rust aborts the process (guaranteed since Rust 1.81).
//! * **Task identity** ([`current_task`]) is what the global-state runtime compares to detect a
//!   re-entrant `get` (`-EDEADLK`) instead of deadlocking.

use alloc::boxed::Box;
use core::ffi::c_void;

use crate::file::{File, FileRef};

/// What a C `struct file *` points to in this model: a cell owning a shared reference to a
/// core file.
///
/// The core allocates one per file it hands through the C ABI and keeps it alive for the
/// duration of the call. A C handler treats the pointer as opaque.
#[repr(C)]
pub struct FileCell {
    file: FileRef,
}

impl FileCell {
    /// Boxes `file` and returns the raw `struct file *` that owns it; release it with
    /// [`FileCell::from_raw`] (or [`FileCell::drop_raw`]).
    pub fn into_raw(file: FileRef) -> *mut c_void {
        Box::into_raw(Box::new(FileCell { file })).cast()
    }

    /// Takes back ownership of a pointer made by [`FileCell::into_raw`]; `None` for NULL.
    ///
    /// # Safety
    ///
    /// `raw` is NULL or came from [`FileCell::into_raw`] and is not used afterwards.
    pub unsafe fn from_raw(raw: *mut c_void) -> Option<FileRef> {
        if raw.is_null() {
            return None;
        }
        // SAFETY: per the contract, `raw` is a leaked `Box<FileCell>` owned by the caller.
        let cell = unsafe { Box::from_raw(raw.cast::<FileCell>()) };
        Some(cell.file)
    }

    /// Releases a pointer made by [`FileCell::into_raw`].
    ///
    /// # Safety
    ///
    /// As [`FileCell::from_raw`].
    pub unsafe fn drop_raw(raw: *mut c_void) {
        // SAFETY: forwarded contract.
        drop(unsafe { FileCell::from_raw(raw) });
    }

    /// Borrows the file behind a `struct file *`; `None` for NULL.
    ///
    /// # Safety
    ///
    /// `raw` is NULL or points to a live [`FileCell`] that outlives `'a`.
    pub unsafe fn borrow<'a>(raw: *mut c_void) -> Option<&'a dyn File> {
        if raw.is_null() {
            return None;
        }
        // SAFETY: per the contract, `raw` points to a live `FileCell`.
        let cell = unsafe { &*raw.cast::<FileCell>() };
        Some(&*cell.file)
    }

    /// The file this cell owns.
    pub fn file(&self) -> &FileRef {
        &self.file
    }
}

/// What a panic in a Rust callback turns into (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicPolicy {
    /// Catch the panic and return the callback's failure value (`-EIO`, `false`, nothing).
    /// Needs the `std` feature; without it this behaves as [`PanicPolicy::Abort`].
    Errno,
    /// Let the panic reach the `extern "C"` boundary, which aborts the process.
    Abort,
}

#[cfg(feature = "std")]
mod policy {
    extern crate std;

    use super::PanicPolicy;
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    static ABORT: AtomicBool = AtomicBool::new(false);
    static PANICS: AtomicUsize = AtomicUsize::new(0);

    pub fn set(p: PanicPolicy) {
        ABORT.store(p == PanicPolicy::Abort, Ordering::SeqCst);
    }

    #[inline]
    pub fn get() -> PanicPolicy {
        if ABORT.load(Ordering::SeqCst) {
            PanicPolicy::Abort
        } else {
            PanicPolicy::Errno
        }
    }

    pub fn count() -> usize {
        PANICS.load(Ordering::SeqCst)
    }

    /// The policy is read only once a panic has been caught: `catch_unwind` costs nothing
    /// on the happy path, so a callback that does not panic runs exactly the instructions of
    /// a hand-written one (the `dispatch` benchmark), whatever the policy.
    #[inline(always)]
    pub fn catch<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            // Unwinding goes on to the `extern "C"` boundary, which aborts.
            Err(payload) if get() == PanicPolicy::Abort => std::panic::resume_unwind(payload),
            Err(_) => {
                PANICS.fetch_add(1, Ordering::SeqCst);
                on_panic
            }
        }
    }

    std::thread_local! {
        static TASK: u8 = const { 0 };
    }

    pub fn task() -> usize {
        // The address of a thread-local is unique among live threads and never 0.
        TASK.with(|t| t as *const u8 as usize)
    }
}

/// Sets the process-wide [`PanicPolicy`] (default [`PanicPolicy::Errno`] with `std`).
#[cfg(feature = "std")]
pub fn set_panic_policy(policy: PanicPolicy) {
    policy::set(policy)
}

/// The current [`PanicPolicy`]: always [`PanicPolicy::Abort`] without the `std` feature.
pub fn panic_policy() -> PanicPolicy {
    #[cfg(feature = "std")]
    return policy::get();
    #[cfg(not(feature = "std"))]
    PanicPolicy::Abort
}

/// How many callback panics [`catch`] has turned into failure values in this process.
pub fn panic_count() -> usize {
    #[cfg(feature = "std")]
    return policy::count();
    #[cfg(not(feature = "std"))]
    0
}

/// Runs `f`; if it panics (and the policy is [`PanicPolicy::Errno`]), returns `on_panic`.
///
/// Every runtime function behind a trampoline runs its body through this.
#[inline(always)]
pub fn catch<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "std")]
    return policy::catch(on_panic, f);
    #[cfg(not(feature = "std"))]
    {
        let _ = on_panic;
        f()
    }
}

/// A non-zero identity of the running task (thread), for the re-entrancy checks of global
/// state. With `std`, a per-thread address; without, `1` (a kernel build supplies its own
/// through [`crate::host::LuoHost::current_task`]).
pub fn current_task() -> usize {
    #[cfg(feature = "std")]
    return policy::task();
    #[cfg(not(feature = "std"))]
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::{FileId, FileKind};
    use alloc::sync::Arc;

    struct F;
    impl File for F {
        fn kind(&self) -> FileKind {
            FileKind::Other
        }
        fn id(&self) -> FileId {
            FileId(3)
        }
    }

    #[test]
    fn file_cell_round_trip() {
        let raw = FileCell::into_raw(Arc::new(F));
        // SAFETY: `raw` is live until `from_raw` below.
        let f = unsafe { FileCell::borrow(raw) }.unwrap();
        assert_eq!(f.id(), FileId(3));
        // SAFETY: `raw` came from `into_raw`.
        let back = unsafe { FileCell::from_raw(raw) }.unwrap();
        assert_eq!(back.kind(), FileKind::Other);
        // SAFETY: NULL is accepted.
        assert!(unsafe { FileCell::from_raw(core::ptr::null_mut()) }.is_none());
        // SAFETY: NULL is accepted.
        assert!(unsafe { FileCell::borrow(core::ptr::null_mut()) }.is_none());
    }

    #[test]
    fn task_ids_are_non_zero() {
        assert_ne!(current_task(), 0);
        assert_eq!(catch(0, || 5), 5);
    }
}
