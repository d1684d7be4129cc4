// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A sleeping [`LockBackend`] on std primitives (feature `std`): the default lock of Rust
//! global state in the userspace model. A kernel build names a backend over `struct mutex`
//! instead (`lock = ...` in the global-state attributes).

extern crate std;

use core::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::lock::LockBackend;

/// A sleeping lock: an atomic state word, and a std mutex plus condvar that only contended
/// callers touch. Never spins.
///
/// The state is 0 (free), 1 (held, nobody waiting) or 2 (held, maybe waiters). An uncontended
/// lock + unlock is one compare-exchange and one swap, the same price as `std::sync::Mutex`
/// (bench `global_get_put`); the first version took the inner mutex twice per lock + unlock.
pub struct StdBackend;

const FREE: u32 = 0;
const HELD: u32 = 1;
const CONTENDED: u32 = 2;

/// State of [`StdBackend`].
pub struct StdState {
    state: AtomicU32,
    /// Serialises sleeping waiters with the unlocker's wake-up (no lost wake-ups: a waiter
    /// marks the state [`CONTENDED`] and goes to sleep without releasing this mutex in
    /// between, and the unlocker takes it before notifying).
    sleep: Mutex<()>,
    cond: Condvar,
}

// SAFETY: `lock` and `try_lock` return only after changing `state` from FREE to HELD or
// CONTENDED (compare-exchange or swap that read FREE), so one caller at a time holds it; only
// `unlock` sets it back to FREE.
unsafe impl LockBackend for StdBackend {
    type State = StdState;
    type GuardState = ();

    fn new_state() -> StdState {
        StdState {
            state: AtomicU32::new(FREE),
            sleep: Mutex::new(()),
            cond: Condvar::new(),
        }
    }

    /// The uncontended path is inlined into the caller (one compare-exchange, as
    /// `std::sync::Mutex`); sleeping is out of line.
    #[inline]
    fn lock(state: &StdState) {
        if state
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        lock_contended(state);
    }

    #[inline]
    fn try_lock(state: &StdState) -> Option<()> {
        state
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(drop)
    }

    #[inline]
    unsafe fn unlock(state: &StdState, _: &()) {
        if state.state.swap(FREE, Ordering::Release) == CONTENDED {
            wake_one(state);
        }
    }
}

/// [`StdBackend::lock`] when the lock is taken: sleeps until it is free.
#[cold]
#[inline(never)]
fn lock_contended(state: &StdState) {
    let mut g = state.sleep.lock().unwrap_or_else(PoisonError::into_inner);
    // Taking it as CONTENDED (not HELD) is conservative: the unlock then wakes a waiter that
    // may not exist, never misses one that does.
    while state.state.swap(CONTENDED, Ordering::Acquire) != FREE {
        g = state.cond.wait(g).unwrap_or_else(PoisonError::into_inner);
    }
}

/// [`StdBackend::unlock`] of a lock that may have sleepers: wakes one.
#[cold]
#[inline(never)]
fn wake_one(state: &StdState) {
    // A waiter may be between its swap and its wait: taking the mutex waits until it sleeps
    // (it holds the mutex until then), so the notification reaches it.
    drop(state.sleep.lock().unwrap_or_else(PoisonError::into_inner));
    state.cond.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Lock;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn try_lock_sees_holder() {
        let l: Lock<u32, StdBackend> = Lock::new(0);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        drop(g);
        *l.try_lock().expect("free after unlock") += 1;
        assert_eq!(*l.lock(), 1);
    }

    /// Contended: every increment must survive (mutual exclusion) and every sleeper must be
    /// woken (the test would hang otherwise).
    #[test]
    fn contended_increments_all_land() {
        const THREADS: usize = 4;
        const EACH: u64 = 20_000;
        let l: Arc<Lock<u64, StdBackend>> = Arc::new(Lock::new(0));
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let mut g = l.lock();
                        let v = *g;
                        if i % 512 == 0 {
                            // Hold the lock across a yield so others pile up and sleep.
                            std::thread::yield_now();
                        }
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("worker");
        }
        assert_eq!(*l.lock(), THREADS as u64 * EACH);
    }
}
