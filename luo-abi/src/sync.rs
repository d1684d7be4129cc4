//! A sleeping [`LockBackend`] on std primitives (feature `std`): the default lock of Rust
//! global state in the userspace model. A kernel build names a backend over `struct mutex`
//! instead (`lock = ...` in the global-state attributes).

extern crate std;

use std::sync::{Condvar, Mutex, PoisonError};

use crate::lock::LockBackend;

/// A sleeping lock: a locked flag under a std mutex, waiters on a condvar. Never spins.
pub struct StdBackend;

/// State of [`StdBackend`].
pub struct StdState {
    /// (locked, waiters)
    locked: Mutex<(bool, u32)>,
    cond: Condvar,
}

// SAFETY: `lock` returns only after it flipped `locked` from false to true under the mutex,
// `try_lock` likewise or returns `None`; only `unlock` sets it back to false.
unsafe impl LockBackend for StdBackend {
    type State = StdState;
    type GuardState = ();

    fn new_state() -> StdState {
        StdState {
            locked: Mutex::new((false, 0)),
            cond: Condvar::new(),
        }
    }

    fn lock(state: &StdState) {
        let mut locked = state.locked.lock().unwrap_or_else(PoisonError::into_inner);
        while locked.0 {
            locked.1 += 1;
            locked = state
                .cond
                .wait(locked)
                .unwrap_or_else(PoisonError::into_inner);
            locked.1 -= 1;
        }
        locked.0 = true;
    }

    fn try_lock(state: &StdState) -> Option<()> {
        let mut locked = state.locked.lock().unwrap_or_else(PoisonError::into_inner);
        if locked.0 {
            None
        } else {
            locked.0 = true;
            Some(())
        }
    }

    unsafe fn unlock(state: &StdState, _: &()) {
        let mut locked = state.locked.lock().unwrap_or_else(PoisonError::into_inner);
        locked.0 = false;
        let waiters = locked.1;
        drop(locked);
        // std's notify makes a futex syscall even with nobody waiting; an
        // uncontended get/put must not pay it (bench `global_get_put`).
        if waiters > 0 {
            state.cond.notify_one();
        }
    }
}
