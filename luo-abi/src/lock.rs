// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Locks over a pluggable backend, mirroring kernel Rust's `kernel::sync::lock`.
//!
//! [`Lock<T, B>`] owns a `T` and a [`LockBackend`] state; [`Lock::lock`] returns a [`Guard`]
//! that dereferences to the data and unlocks on drop. The same handler and macro code runs on
//! a std mutex in the userspace model and on a kernel `struct mutex` in a kernel build; only
//! the backend differs. LUO's locks are all sleeping locks (registration rwsem, per-FLB and
//! per-handler mutexes), and the model runs on small machines, so backends must block, not
//! spin.
//!
//! Difference from the kernel: there the state is initialised in place on pinned memory
//! (`Backend::init` through pin-init); here [`LockBackend::new_state`] builds it by value, so a
//! kernel backend would keep its `struct mutex` behind a stable allocation.

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

/// The low-level lock operations behind a [`Lock`] (`kernel::sync::lock::Backend`).
///
/// # Safety
///
/// Implementers must guarantee mutual exclusion: after [`LockBackend::lock`] returns, or
/// [`LockBackend::try_lock`] returns `Some`, no other caller acquires the same state until
/// [`LockBackend::unlock`] is called with the returned guard state.
pub unsafe trait LockBackend {
    /// The lock itself (`struct mutex` in the kernel).
    type State;

    /// What a holder keeps between lock and unlock (e.g. saved IRQ flags); often `()`.
    type GuardState;

    /// A new, unlocked state.
    fn new_state() -> Self::State;

    /// Acquires the lock, sleeping until it is free.
    fn lock(state: &Self::State) -> Self::GuardState;

    /// Acquires the lock if it is free, without waiting.
    fn try_lock(state: &Self::State) -> Option<Self::GuardState>;

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// The caller must hold the lock on `state`, acquired by [`LockBackend::lock`] or
    /// [`LockBackend::try_lock`], which returned `guard_state`; it is released exactly once.
    unsafe fn unlock(state: &Self::State, guard_state: &Self::GuardState);
}

/// A value of type `T` protected by a lock with backend `B` (`kernel::sync::lock::Lock`).
pub struct Lock<T: ?Sized, B: LockBackend> {
    state: B::State,
    data: UnsafeCell<T>,
}

// SAFETY: `Lock` only hands out access to `data` through a `Guard`, one holder at a time, so
// sharing it between threads moves the `T` between them: `T: Send` suffices, as in the
// kernel. The backend state itself is shared, hence `B::State: Sync`.
unsafe impl<T: ?Sized + Send, B: LockBackend> Sync for Lock<T, B> where B::State: Sync {}

impl<T, B: LockBackend> Lock<T, B> {
    /// A new unlocked lock holding `data`.
    pub fn new(data: T) -> Self {
        Lock {
            state: B::new_state(),
            data: UnsafeCell::new(data),
        }
    }

    /// Consumes the lock and returns the data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized, B: LockBackend> Lock<T, B> {
    /// Acquires the lock, sleeping until it is free.
    pub fn lock(&self) -> Guard<'_, T, B> {
        let state = B::lock(&self.state);
        // SAFETY: the lock was just acquired with `B::lock`, returning `state`.
        unsafe { Guard::new(self, state) }
    }

    /// Acquires the lock if it is free; `None` if someone holds it.
    pub fn try_lock(&self) -> Option<Guard<'_, T, B>> {
        let state = B::try_lock(&self.state)?;
        // SAFETY: the lock was just acquired with `B::try_lock`, returning `state`.
        Some(unsafe { Guard::new(self, state) })
    }

    /// Direct access to the data; no locking needed since `&mut self` is exclusive.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<T: Default, B: LockBackend> Default for Lock<T, B> {
    fn default() -> Self {
        Lock::new(T::default())
    }
}

impl<T: ?Sized, B: LockBackend> fmt::Debug for Lock<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

/// Proof that a [`Lock`] is held: dereferences to the data and unlocks on drop
/// (`kernel::sync::lock::Guard`).
///
/// A guard is `!Send`: the thread that locked must be the one that unlocks, as kernel mutexes
/// require.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct Guard<'a, T: ?Sized, B: LockBackend> {
    lock: &'a Lock<T, B>,
    state: B::GuardState,
    _not_send: PhantomData<*mut ()>,
}

// SAFETY: a shared `&Guard` only gives `&T`, so sharing it needs `T: Sync` (as in the kernel);
// the guard state is only read through `&`, hence `B::GuardState: Sync`.
unsafe impl<T: ?Sized + Sync, B: LockBackend> Sync for Guard<'_, T, B> where B::GuardState: Sync {}

impl<'a, T: ?Sized, B: LockBackend> Guard<'a, T, B> {
    /// # Safety
    ///
    /// The caller must hold `lock`, acquired through its backend, which returned `state`.
    unsafe fn new(lock: &'a Lock<T, B>, state: B::GuardState) -> Self {
        Guard {
            lock,
            state,
            _not_send: PhantomData,
        }
    }

    /// The lock this guard holds.
    pub fn lock_ref(&self) -> &'a Lock<T, B> {
        self.lock
    }
}

impl<T: ?Sized, B: LockBackend> Deref for Guard<'_, T, B> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no one else accesses `data` until it drops.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized, B: LockBackend> DerefMut for Guard<'_, T, B> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the only access through
        // the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized, B: LockBackend> Drop for Guard<'_, T, B> {
    fn drop(&mut self) {
        // SAFETY: the guard was created holding the lock with `self.state` (see `Guard::new`),
        // and drop runs once.
        unsafe { B::unlock(&self.lock.state, &self.state) }
    }
}

impl<T: ?Sized + fmt::Debug, B: LockBackend> fmt::Debug for Guard<'_, T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex, PoisonError};
    use std::thread;
    use std::vec::Vec;

    /// A sleeping lock on std primitives: a locked flag under a mutex, waiters on a condvar.
    pub(crate) struct StdBackend;

    /// State of [`StdBackend`].
    pub(crate) struct StdState {
        locked: Mutex<bool>,
        cond: Condvar,
    }

    // SAFETY: `lock` returns only after it flipped `locked` from false to true under the mutex,
    // `try_lock` likewise or returns `None`; only `unlock` sets it back to false.
    unsafe impl LockBackend for StdBackend {
        type State = StdState;
        type GuardState = ();

        fn new_state() -> StdState {
            StdState {
                locked: Mutex::new(false),
                cond: Condvar::new(),
            }
        }

        fn lock(state: &StdState) {
            let mut locked = state.locked.lock().unwrap_or_else(PoisonError::into_inner);
            while *locked {
                locked = state
                    .cond
                    .wait(locked)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *locked = true;
        }

        fn try_lock(state: &StdState) -> Option<()> {
            let mut locked = state.locked.lock().unwrap_or_else(PoisonError::into_inner);
            if *locked {
                None
            } else {
                *locked = true;
                Some(())
            }
        }

        unsafe fn unlock(state: &StdState, _: &()) {
            *state.locked.lock().unwrap_or_else(PoisonError::into_inner) = false;
            state.cond.notify_one();
        }
    }

    type TestLock<T> = Lock<T, StdBackend>;

    /// Compiles only if `T` is not `Send` (the `static_assertions` trick: with `T: Send`, both
    /// impls apply and the `_` in `assert_not_send` is ambiguous).
    trait AmbiguousIfSend<A> {
        fn some_item() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    #[allow(dead_code)]
    struct IsSend;
    impl<T: ?Sized + Send> AmbiguousIfSend<IsSend> for T {}
    const _: fn() = || {
        let _ = <Guard<'static, u32, StdBackend> as AmbiguousIfSend<_>>::some_item;
    };

    const fn assert_sync<T: ?Sized + Sync>() {}
    const _: () = assert_sync::<TestLock<u32>>();
    const _: () = assert_sync::<Guard<'static, u32, StdBackend>>();

    #[test]
    fn guard_derefs() {
        let l = TestLock::new(Vec::from([1, 2]));
        {
            let mut g = l.lock();
            assert_eq!(g.len(), 2);
            g.push(3);
            assert_eq!(*g, [1, 2, 3]);
            assert!(core::ptr::eq(g.lock_ref(), &l));
        }
        assert_eq!(l.into_inner(), [1, 2, 3]);
    }

    #[test]
    fn unlocks_on_drop() {
        let l = TestLock::new(0u32);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        drop(g);
        let g = l.try_lock().expect("free after drop");
        assert!(l.try_lock().is_none());
        drop(g);
        *l.lock() += 1;
        assert_eq!(*l.lock(), 1);
    }

    #[test]
    fn get_mut_needs_no_lock() {
        let mut l: TestLock<u8> = Lock::default();
        *l.get_mut() = 5;
        assert_eq!(*l.lock(), 5);
    }

    #[test]
    fn excludes_across_threads() {
        let l = Arc::new(TestLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = Arc::clone(&l);
                thread::spawn(move || {
                    for _ in 0..250 {
                        let mut g = l.lock();
                        let v = *g;
                        thread::yield_now();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*l.lock(), 1000);
    }
}
