// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! File-lifecycle-bound global data (upstream `kernel/liveupdate/luo_flb.c`): the FLB's
//! traits, its cell shared by the handlers that list it, and the lock-free loans behind its
//! guards.

use alloc::sync::Arc;
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::host::{LuoHost, RawFlb};
use crate::kho::KhoExt;
use crate::lock::{Lock, LockBackend};
use crate::phys::{Phys, PhysAddr};

use super::*;

/// The ABI side of an FLB; implemented by `#[liveupdate_flb(...)]` on the type.
///
/// # Safety
///
/// Implemented only by the macro: [`FlbAbi::raw`] is the generated `liveupdate_flb` whose ops
/// table calls [`rt`] for `Self`.
pub unsafe trait FlbAbi: Global + Sized {
    /// The ABI struct handed over (`abi = ...`).
    type Ser: FromBytes + IntoBytes + Immutable + Copy + 'static;
    /// The generated `liveupdate_flb`.
    type Raw: Copy + 'static;
    /// The lock backend of the cell (`lock = ...`).
    type Lock: LockBackend<State: Send + Sync>;
    /// The compatible string (written to `luo_flb_ser.name`).
    const COMPATIBLE: &'static str;
    /// `immediate`: the FLB's data word is the 8-byte `Ser` itself, not the address of a
    /// preserved copy (upstream's test FLBs store a value in `data`).
    const IMMEDIATE: bool = false;
    /// The raw FLB struct.
    fn raw() -> Self::Raw;
    /// Validates an incoming struct (reserved fields).
    fn decode(ser: Self::Ser) -> Result<Self::Ser>;
}

/// The callbacks of an FLB (`struct liveupdate_flb_ops`); all four are required. Implement it
/// under `#[liveupdate_flb]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an FLB",
    label = "not declared with #[liveupdate_flb]",
    note = "`flbs = [...]` lists FLBs: a type with #[liveupdate_flb(compatible = \"...\", abi = ...)] and #[liveupdate_flb] on its `impl FlbState`; subsystems go in `subsystems = [...]`, handler-scoped state in `state = ...`"
)]
pub trait FlbState: FlbAbi {
    /// The live object in the old kernel, shared by every dependent file.
    type Outgoing: Send + Sync + 'static;
    /// The live object in the new kernel.
    type Incoming: Send + Sync + 'static;

    /// Set by `#[liveupdate_flb]` on the impl.
    const USE_LIVEUPDATE_FLB_ATTR: ();

    /// The first dependent file is being preserved: serialize the global state.
    fn preserve(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)> {
        let _ = cx;
        Err(Errno::EOPNOTSUPP)
    }

    /// The last dependent file was unpreserved. Guards still alive keep `obj` alive.
    fn unpreserve(&self, cx: &StateCtx<'_>, ser: Self::Ser, obj: Arc<Self::Outgoing>) {
        let _ = (cx, ser, obj);
    }

    /// In the new kernel, on first access: rebuild the object.
    fn retrieve(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming> {
        let _ = (cx, ser);
        Err(Errno::EOPNOTSUPP)
    }

    /// The last dependent file finished. Guards still alive keep `obj` alive.
    fn finish(&self, cx: &StateCtx<'_>, obj: Arc<Self::Incoming>) {
        let _ = (cx, obj);
    }
}

/// One direction's object of an FLB, lent to guards without taking a lock.
///
/// Upstream's `liveupdate_flb_get_outgoing/incoming` hand out the object and let the caller
/// use it unlocked; it lives until unpreserve or finish. Here a guard is counted in `state`, a
/// word next to the object: one atomic add when it is taken and one subtract when it drops, no
/// lock, no clone of the object's `Arc` and no host call (the `global_get_put` bench's fast
/// path). The first version locked the slot and cloned the `Arc` on every get: four locked
/// read-modify-writes per get + put instead of two.
///
/// `state` is [`LIVE`] (the object is published and may be lent) plus [`LENT`] per lent
/// guard. Everything else runs under `slot`'s lock, which keeps this invariant: `LIVE` is set
/// exactly when `slot.obj` is present and `slot.retired` is not, and then `ptr` is the address
/// of `slot.obj`.
///
/// - A get adds [`LENT`] (`Acquire`). If `LIVE` was set, the object at `ptr` is lent until the
///   guard subtracts it again; otherwise the get subtracts at once and takes the slow path
///   (under the lock: a guard holding a clone of the `Arc`, as before).
/// - Withdrawing the object (unpreserve, finish) clears `LIVE`. If guards were counted, a clone
///   of its `Arc` moves to `slot.retired`, so the object outlives them whatever the callback
///   does with its own `Arc`.
/// - The subtraction that leaves the word at 0 (no guard, not `LIVE`) takes the lock and, if
///   the word is still 0, drops `slot.retired` and lends the current object, if any.
/// - An object published while an older one is still retired (preserve again while guards of
///   the previous object live) is not `LIVE` until then: its guards take the slow path.
///
/// So each object is dropped exactly once, after it was withdrawn and its last guard dropped.
pub(super) struct Lent<T, L: LockBackend> {
    pub(super) state: AtomicUsize,
    pub(super) ptr: AtomicPtr<T>,
    pub(super) slot: Lock<LentSlot<T>, L>,
}

/// The `Arc`s of a [`Lent`] object, under its lock.
pub(super) struct LentSlot<T> {
    /// The published object.
    pub(super) obj: Option<Arc<T>>,
    /// A withdrawn object that lent guards still use.
    pub(super) retired: Option<Arc<T>>,
}

/// [`Lent::state`]: the object is published and may be lent.
pub(super) const LIVE: usize = 1;
/// [`Lent::state`]: one lent guard.
pub(super) const LENT: usize = 2;
/// Beyond this many lent guards (reachable only by leaking guards) gets take the slow path,
/// so the count cannot wrap.
pub(super) const LENT_MAX: usize = usize::MAX / 4;

impl<T, L: LockBackend> Lent<T, L> {
    pub(super) fn new() -> Self {
        Lent {
            state: AtomicUsize::new(0),
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            slot: Lock::new(LentSlot {
                obj: None,
                retired: None,
            }),
        }
    }

    /// The fast path: lends the published object, or `None` (take [`Lent::lend_slow`]).
    #[inline]
    pub(super) fn lend(&self) -> Option<Loan<'_, T, L>> {
        // Nothing to lend: do not count (a count that passes through a withdrawal makes it
        // park the object and hand its drop to this task).
        if self.state.load(Ordering::Relaxed) & LIVE == 0 {
            return None;
        }
        let prev = self.state.fetch_add(LENT, Ordering::Acquire);
        if prev & LIVE != 0 && prev < LENT_MAX {
            // `Acquire` read a `state` in the release sequence of the `fetch_or` that set
            // `LIVE` after storing `ptr`, so this load sees that address.
            let ptr = self.ptr.load(Ordering::Relaxed);
            // SAFETY: `LIVE` was set, so `ptr` is the address of the published `Arc`'s
            // object, never null.
            let ptr = unsafe { NonNull::new_unchecked(ptr) };
            return Some(Loan {
                lent: self,
                ptr,
                owned: None,
            });
        }
        self.unlend();
        None
    }

    /// Drops a count taken by [`Lent::lend`].
    #[inline]
    pub(super) fn unlend(&self) {
        // `Release`: this guard's uses of the object happen before whoever drops it.
        if self.state.fetch_sub(LENT, Ordering::Release) == LENT {
            self.release_retired();
        }
    }

    /// The word reached 0 (no guard, not `LIVE`): a retired object may be waiting for it.
    #[cold]
    pub(super) fn release_retired(&self) {
        let mut slot = self.slot.lock();
        // `Acquire`: every guard's uses of the retired object happen before it is dropped. Not
        // 0: a get is passing through; its own subtraction comes back here.
        if self.state.load(Ordering::Acquire) != 0 {
            return;
        }
        let retired = slot.retired.take();
        if retired.is_some() {
            if let Some(obj) = &slot.obj {
                self.set_live(obj);
            }
        }
        drop(slot);
        // Dropped outside the lock: the object's `Drop` may do anything.
        drop(retired);
    }

    /// The slow path: a guard holding a clone of the object's `Arc`, or `None` without one.
    pub(super) fn lend_slow(&self) -> Option<Loan<'_, T, L>> {
        let obj = self.slot.lock().obj.clone()?;
        Some(Loan {
            lent: self,
            ptr: NonNull::from(&*obj),
            owned: Some(obj),
        })
    }

    /// Under the lock, with `slot.retired` empty: lends `obj` from now on.
    pub(super) fn set_live(&self, obj: &Arc<T>) {
        self.ptr
            .store(Arc::as_ptr(obj).cast_mut(), Ordering::Relaxed);
        self.state.fetch_or(LIVE, Ordering::Release);
    }

    /// Publishes `obj` (preserve, retrieve); returns the object it replaces (none when the core
    /// calls in order).
    pub(super) fn publish(&self, obj: Arc<T>) -> Option<Arc<T>> {
        let mut slot = self.slot.lock();
        let old = self.withdraw_locked(&mut slot);
        if slot.retired.is_none() {
            self.set_live(&obj);
        }
        slot.obj = Some(obj);
        old
    }

    /// Withdraws the object (unpreserve, finish): later gets fail, guards alive keep it alive.
    pub(super) fn withdraw(&self) -> Option<Arc<T>> {
        let mut slot = self.slot.lock();
        self.withdraw_locked(&mut slot)
    }

    pub(super) fn withdraw_locked(&self, slot: &mut LentSlot<T>) -> Option<Arc<T>> {
        let obj = slot.obj.take()?;
        // `Acquire`: with no guard counted, their uses happen before the object is dropped.
        let prev = self.state.fetch_and(!LIVE, Ordering::AcqRel);
        if prev & LIVE != 0 && prev >= LENT {
            // Lent guards (or gets passing through) are counted: the last one releases it.
            slot.retired = Some(Arc::clone(&obj));
        }
        Some(obj)
    }
}

/// A guard's hold on a [`Lent`] object: counted in the word (`owned` empty) or a clone of its
/// `Arc` (slow path).
pub(super) struct Loan<'a, T, L: LockBackend> {
    pub(super) lent: &'a Lent<T, L>,
    pub(super) ptr: NonNull<T>,
    pub(super) owned: Option<Arc<T>>,
}

// SAFETY: a `Loan` gives `&T` (shared access, so `T: Sync`) and may drop an `Arc<T>` (so
// `T: Send`); its `Lent` is only touched through atomics and its lock (`Sync` state). The FLB
// guards wrapping it are `!Send` on purpose, by their own marker, which is then the one
// reason a compiler diagnostic gives (pinned by ui-tests `guard_not_send`).
unsafe impl<T: Send + Sync, L: LockBackend> Send for Loan<'_, T, L> where L::State: Sync {}
// SAFETY: as above.
unsafe impl<T: Send + Sync, L: LockBackend> Sync for Loan<'_, T, L> where L::State: Sync {}

impl<T, L: LockBackend> Deref for Loan<'_, T, L> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the object is alive while this loan exists: counted in `state` (a withdrawn
        // object waits in `slot.retired` until the count drops to 0) or held by `owned`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, L: LockBackend> Drop for Loan<'_, T, L> {
    #[inline]
    fn drop(&mut self) {
        if self.owned.is_none() {
            self.lent.unlend();
        }
    }
}

/// One registered FLB: the raw `struct liveupdate_flb` (first, so the core's pointer leads
/// back here), the FLB value, its host and its objects. Shared by `Arc` among the handlers
/// that link it.
#[repr(C)]
pub struct FlbCell<S: FlbState> {
    pub(super) raw: S::Raw,
    pub(super) flb: S,
    pub(super) host: Arc<dyn LuoHost>,
    pub(super) outgoing: Lent<S::Outgoing, S::Lock>,
    pub(super) incoming: Lent<S::Incoming, S::Lock>,
    /// The task running `preserve`/`unpreserve`, and the one running `retrieve`/`finish`:
    /// one word per direction, because the core serializes each direction's callbacks but
    /// may run an outgoing one and an incoming one at once on two tasks.
    pub(super) callback_out: AtomicUsize,
    pub(super) callback_in: AtomicUsize,
    /// The handle of the outgoing handed-over struct while preserved (0 otherwise), for
    /// [`FlbCell::write_outgoing`] and [`FlbCell::outgoing_data`]. Behind a lock so that a
    /// rewrite never writes memory that `unpreserve` is freeing. Always 0 for an immediate
    /// FLB, which has no memory.
    pub(super) out_data: Lock<u64, S::Lock>,
}

// SAFETY: `raw` is immutable after construction and points to `'static` data; everything else
// is `Send + Sync` (objects are `Send + Sync`, lent through atomics and behind locks).
unsafe impl<S: FlbState> Send for FlbCell<S> {}
// SAFETY: as above.
unsafe impl<S: FlbState> Sync for FlbCell<S> {}

impl<S: FlbState> FlbCell<S> {
    /// The FLB `flb`, run by `host`.
    pub fn new(flb: S, host: Arc<dyn LuoHost>) -> Arc<Self> {
        Arc::new(FlbCell {
            raw: S::raw(),
            flb,
            host,
            outgoing: Lent::new(),
            incoming: Lent::new(),
            callback_out: AtomicUsize::new(0),
            callback_in: AtomicUsize::new(0),
            out_data: Lock::new(0),
        })
    }

    /// The address of the handed-over ABI struct while the FLB is preserved (between its
    /// `preserve` and `unpreserve`), else `None`: for FLB data rewritten after the preserve
    /// (refcounts, entries of a variable-length record, see [`StateCtx::reserve_trailer`]).
    /// The outgoing object's users write it under the object's own lock.
    pub fn outgoing_data(&self) -> Option<PhysAddr> {
        let d = *self.out_data.lock();
        (d != 0).then(|| PhysAddr::new(d))
    }

    /// No callback of this FLB runs on any task, so none on this one: a get cannot be a
    /// re-entry and may take the fast path.
    #[inline]
    pub(super) fn no_callback_running(&self) -> bool {
        self.callback_out.load(Ordering::Relaxed) == 0
            && self.callback_in.load(Ordering::Relaxed) == 0
    }

    /// `EDEADLK` when this task is running one of this FLB's callbacks.
    pub(super) fn check_reentry(&self) -> Result {
        let task = self.host.current_task();
        check_reentry(task, &self.callback_out, None)?;
        check_reentry(task, &self.callback_in, None)
    }

    /// The `struct liveupdate_flb *` to register (`liveupdate_register_flb`).
    pub fn raw(&self) -> RawFlb {
        &self.raw as *const S::Raw as *mut c_void
    }

    /// The FLB value.
    pub fn flb(&self) -> &S {
        &self.flb
    }

    /// The outgoing object (`liveupdate_flb_get_outgoing`); `-ENODATA` while no dependent
    /// file is preserved, `-EDEADLK` from inside this FLB's callbacks.
    ///
    /// While the object is preserved and none of this FLB's callbacks runs, the cell lends it
    /// without asking the core (see [`FlbOutgoing`]); otherwise the core answers.
    #[inline]
    pub fn get_outgoing(&self) -> Result<FlbOutgoing<'_, S>> {
        if self.no_callback_running() {
            if let Some(loan) = self.outgoing.lend() {
                return Ok(FlbOutgoing {
                    loan,
                    _not_send: PhantomData,
                });
            }
        }
        self.get_outgoing_slow()
    }

    #[cold]
    pub(super) fn get_outgoing_slow(&self) -> Result<FlbOutgoing<'_, S>> {
        self.check_reentry()?;
        self.host.flb_get_outgoing(self.raw())?;
        let loan = self.outgoing.lend_slow().ok_or(Errno::ENODATA)?;
        Ok(FlbOutgoing {
            loan,
            _not_send: PhantomData,
        })
    }

    /// The incoming object, retrieved on first use (`liveupdate_flb_get_incoming`);
    /// `-ENODATA` without incoming data or once finished, `-ENOENT` when the previous kernel
    /// did not hand this FLB over, `-EDEADLK` from inside this FLB's callbacks.
    ///
    /// The first get goes through the core, which runs `retrieve`; once the object is
    /// retrieved, and until `finish`, the cell lends it without asking the core (see
    /// [`FlbIncoming`]).
    #[inline]
    pub fn get_incoming(&self) -> Result<FlbIncoming<'_, S>> {
        if self.no_callback_running() {
            if let Some(loan) = self.incoming.lend() {
                return Ok(FlbIncoming {
                    loan,
                    _not_send: PhantomData,
                });
            }
        }
        self.get_incoming_slow()
    }

    #[cold]
    pub(super) fn get_incoming_slow(&self) -> Result<FlbIncoming<'_, S>> {
        self.check_reentry()?;
        self.host.flb_get_incoming(self.raw())?;
        // The core's reference covered the lazy retrieve; from here the cell's own count (or
        // `Arc`) keeps the object alive for the guard, so the reference goes back at once.
        let loan = self.incoming.lend_slow();
        self.host.flb_put_incoming(self.raw());
        Ok(FlbIncoming {
            loan: loan.ok_or(Errno::ENODATA)?,
            _not_send: PhantomData,
        })
    }

    pub(super) fn ctx(&self) -> StateCtx<'_> {
        StateCtx::new(&*self.host)
    }
}

impl<S: FlbState> FlbCell<S> {
    /// Rewrites the outgoing handed-over struct in place: for FLB data that changes after the
    /// first dependent file's preserve, as upstream's users write through the object
    /// `liveupdate_flb_get_outgoing` returns (HugeTLB's count of preserved pages grows with
    /// every preserved file). The next kernel's `retrieve` reads the last struct written.
    ///
    /// `-ENODATA` while the FLB is not preserved. Serialized with the FLB's `preserve` and
    /// `unpreserve`, so it never writes memory that is being freed; not to be called from the
    /// FLB's own callbacks (they return the struct instead).
    pub fn write_outgoing(&self, ser: &S::Ser) -> Result {
        let handle = self.out_data.lock();
        if *handle == 0 {
            return Err(Errno::ENODATA);
        }
        self.host
            .kho()
            .write_obj(Phys::<S::Ser>::new(PhysAddr::new(*handle)), ser)
    }
}

/// The outgoing object of an FLB (`liveupdate_flb_get_outgoing`); the FLB's lock is not held,
/// as upstream. The guard is counted by the cell: if the last dependent file is unpreserved
/// while it lives, `unpreserve` runs and the object is dropped after the last guard.
#[must_use = "the object is released when the guard is dropped"]
pub struct FlbOutgoing<'a, S: FlbState> {
    pub(super) loan: Loan<'a, S::Outgoing, S::Lock>,
    pub(super) _not_send: PhantomData<*mut ()>,
}

impl<S: FlbState> Deref for FlbOutgoing<'_, S> {
    type Target = S::Outgoing;
    #[inline]
    fn deref(&self) -> &S::Outgoing {
        &self.loan
    }
}

/// The incoming object of an FLB (`liveupdate_flb_get_incoming`); the FLB's lock is not held.
/// The guard is counted by the cell rather than by a reference of the core: if the last
/// dependent file finishes while it lives, `finish` runs and the object is dropped after the
/// last guard, and later gets return `-ENODATA`.
#[must_use = "the object is released when the guard is dropped"]
pub struct FlbIncoming<'a, S: FlbState> {
    pub(super) loan: Loan<'a, S::Incoming, S::Lock>,
    pub(super) _not_send: PhantomData<*mut ()>,
}

impl<S: FlbState> Deref for FlbIncoming<'_, S> {
    type Target = S::Incoming;
    #[inline]
    fn deref(&self) -> &S::Incoming {
        &self.loan
    }
}
