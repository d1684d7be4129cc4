// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! What crosses the C ABI between the core and Rust handlers, and how Rust code behaves there.
//!
//! The macros of `luo-derive` fill the *generated* C ops tables with `extern "C"` trampolines.
//! Those trampolines only unpack the raw C arguments and call the generic runtime functions in
//! [`crate::handler::rt`] and [`crate::global::rt`], which use the conventions of this module:
//!
//! * **`struct file *`** is the address of a [`crate::file::FileHead`], the first field of the
//!   core's file object: every callback borrows the file through it; `retrieve` hands a new
//!   file to the core through [`crate::host::LuoHost::file_into_raw`].
//! * **Panics** never unwind into C. With the `std` feature (the userspace model) every
//!   callback runs under [`catch`]: a panic is caught, counted ([`panic_count`]) and turned into
//!   the callback's failure value: `-EIO` for `int` callbacks, `false` for `bool` callbacks,
//!   nothing for `void` callbacks (the effect of the callback is lost, and the resources it was
//!   to release stay leaked). Without `std` (a kernel build, where `panic=abort` anyway), or
//!   with `set_panic_policy(PanicPolicy::Abort)`, the panic reaches the `extern "C"`
//!   boundary, where Rust aborts the process (guaranteed since Rust 1.81).
//! * **Task identity** ([`current_task`]) is what the global-state runtime compares to detect a
//!   re-entrant `get` (`-EDEADLK`) instead of deadlocking.

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

    #[inline]
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
#[inline]
pub fn current_task() -> usize {
    #[cfg(feature = "std")]
    return policy::task();
    #[cfg(not(feature = "std"))]
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_non_zero() {
        assert_ne!(current_task(), 0);
        assert_eq!(catch(0, || 5), 5);
    }
}
