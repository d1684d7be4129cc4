// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The core's lock order, and its check in debug builds.
//!
//! Every mutex of the core is an [`Ordered`] mutex with a [`Level`]. A thread may only take
//! a lock whose level is **strictly greater** than that of every lock it already holds, so
//! no two threads can wait for each other in a cycle. The order, outermost first, is the
//! order of the [`Level`] variants:
//!
//! | level | lock | why it comes there |
//! |---|---|---|
//! | `CapiKernel` | `capi::KERNEL`, the C API's kernel | taken to find the kernel, before anything in it |
//! | `FdTable` | `KernelInner::fds` | the fd table is resolved before the object behind the fd |
//! | `Deser` | `Luo::deser` | the first open deserializes the incoming sessions under it (takes `reg`, `lists`, KHO) |
//! | `Lists` | `Luo::lists` | session lists; reboot walks them and takes each session |
//! | `Session` | `Session::st` | held across handler callbacks (preserve, freeze, retrieve, finish) |
//! | `Registry` | `Luo::reg` | handlers and FLBs registered; looked up from session operations |
//! | `HandlerFlbs` | the FLBs and global state linked to one handler | read while a session op runs |
//! | `Flb` | `Flb::users`, `out`, `inc` | FLB refcount and data, held across FLB callbacks |
//! | `GlobalState` | a handler global state's `data` | taken from handler callbacks |
//! | `GlobalCb` | a handler global state's `in_cb` | set under `data` around its callbacks |
//! | `Subsystems` | the registered subsystems | reboot and boot walk them |
//! | `SubsystemData` | a subsystem's `data`, `incoming` | held across subsystem callbacks |
//! | `ExtIncoming` | the incoming global-state entries | read at boot and first open |
//! | `Ids` | `Luo::ids` | the double-preservation set, taken inside preserve |
//! | `V1Area` | `Luo::v1_area` | 6.19/7.0 session area, taken at reboot |
//! | `Memfd` | a memfd's state | handler callbacks reach into the file; it calls KHO |
//! | `LiveFiles` | the set of live core files | a leaf |
//! | `Kho` | `Kho::st`, the KHO model | every path above ends in KHO; it calls only the backings |
//! | `KhoViolations` | `Kho::violations` | recorded under `Kho::st` |
//! | `Backing` | a heap or mmap backing | the innermost: memory itself |
//! | `Registrations` | `KernelInner::registrations`, the Rust handlers a kernel owns | a leaf: only pushed to after registering |
//!
//! Outside the order: a global state's `holder`, a plain mutex held only for its condvar
//! handshake (nothing is taken under it), and mutexes of test code.
//!
//! In debug builds each thread keeps the stack of levels it holds, and taking a lock out of
//! order panics naming both locks (tests, the fault sweeps and the 8-thread stress test run
//! with it). In release builds an [`Ordered`] mutex is a plain mutex: the check is compiled
//! out.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A place in the lock order; see the module docs. Declaration order is the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    CapiKernel,
    FdTable,
    Deser,
    Lists,
    Session,
    Registry,
    HandlerFlbs,
    Flb,
    GlobalState,
    GlobalCb,
    Subsystems,
    SubsystemData,
    ExtIncoming,
    Ids,
    V1Area,
    Memfd,
    LiveFiles,
    Kho,
    KhoViolations,
    Backing,
    Registrations,
}

/// A mutex with a place in the lock order.
pub(crate) struct Ordered<T> {
    #[cfg(debug_assertions)]
    level: Level,
    m: Mutex<T>,
}

impl<T> Ordered<T> {
    /// A mutex at `level`.
    pub(crate) const fn new(level: Level, v: T) -> Ordered<T> {
        #[cfg(not(debug_assertions))]
        let _ = level;
        Ordered {
            #[cfg(debug_assertions)]
            level,
            m: Mutex::new(v),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Ordered<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.m.fmt(f)
    }
}

/// The guard of an [`Ordered`] mutex; leaving it pops its level.
pub(crate) struct OrderedGuard<'a, T> {
    g: MutexGuard<'a, T>,
    #[cfg(debug_assertions)]
    level: Level,
}

impl<T> Deref for OrderedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T> DerefMut for OrderedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}

#[cfg(debug_assertions)]
thread_local! {
    /// The levels this thread holds, in acquisition order.
    static HELD: std::cell::RefCell<Vec<Level>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(debug_assertions)]
fn acquire(level: Level) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if let Some(&top) = h.iter().max()
            && top >= level
        {
            // Drop the borrow first: the panic may unwind through guards that pop.
            let held = h.clone();
            drop(h);
            panic!("lock order violation: taking {level:?} while holding {held:?}");
        }
        h.push(level);
    });
}

#[cfg(debug_assertions)]
impl<T> Drop for OrderedGuard<'_, T> {
    fn drop(&mut self) {
        let level = self.level;
        // Guards may be dropped out of acquisition order: remove this one wherever it is.
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&l| l == level) {
                h.remove(i);
            }
        });
    }
}

/// Something [`lock`] can take: a plain `Mutex` (outside the order: test statics) or an
/// [`Ordered`] one.
pub(crate) trait Lockable {
    /// The guard.
    type Guard<'a>
    where
        Self: 'a;
    /// Takes the lock.
    fn take(&self) -> Self::Guard<'_>;
}

impl<T> Lockable for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    fn take(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Lockable for Ordered<T> {
    type Guard<'a>
        = OrderedGuard<'a, T>
    where
        T: 'a;
    fn take(&self) -> OrderedGuard<'_, T> {
        #[cfg(debug_assertions)]
        acquire(self.level);
        OrderedGuard {
            g: self.m.lock().unwrap_or_else(PoisonError::into_inner),
            #[cfg(debug_assertions)]
            level: self.level,
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panicking holder cannot leave model state
/// half-written in a way that matters more than the panic itself), checking the lock order in
/// debug builds.
pub(crate) fn lock<L: Lockable + ?Sized>(m: &L) -> L::Guard<'_> {
    m.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_fine_and_guards_pop() {
        let a = Ordered::new(Level::Lists, 1);
        let b = Ordered::new(Level::Kho, 2);
        {
            let ga = lock(&a);
            let gb = lock(&b);
            assert_eq!(*ga + *gb, 3);
            drop(ga);
            // Out-of-order release, then the outer lock again after the inner one is gone.
        }
        let _gb = lock(&b);
        drop(_gb);
        let _ga = lock(&a);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "lock order violation: taking Lists while holding [Kho]")]
    fn out_of_order_panics_in_debug() {
        let a = Ordered::new(Level::Lists, ());
        let b = Ordered::new(Level::Kho, ());
        let _gb = lock(&b);
        let _ga = lock(&a);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "lock order violation: taking Session while holding [Session]")]
    fn same_level_twice_panics_in_debug() {
        let a = Ordered::new(Level::Session, ());
        let b = Ordered::new(Level::Session, ());
        let _ga = lock(&a);
        let _gb = lock(&b);
    }
}
