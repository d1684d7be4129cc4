// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Handler global state: the vocabulary, the typed runtime (cells and guards) and the
//! trampoline runtime behind the generated `liveupdate_flb_ops`,
//! `liveupdate_fh_global_state_ops` and `liveupdate_subsystem_ops` tables.
//!
//! A handler can keep state that is global rather than per file, in one of three forms. `luo`
//! supports all three over one runtime, with typed, generated locking:
//!
//! | form | lifetime | lock | API |
//! |---|---|---|---|
//! | [`GlobalStateForm::FileBound`] (the v4 seed): `global_state_create/restore/destroy` + `liveupdate_fh_global_state_get/put` | per file handler; created on the first preserve, destroyed after the last unpreserve or finish; restored before first access in the new kernel | held from get until put (handler-scoped) | C API of the core |
//! | [`GlobalStateForm::Flb`] (upstream): `liveupdate_register_flb`, `liveupdate_flb_get_incoming/outgoing` (+ `put_incoming` in the newest) | shared by every linked handler; preserved on the first dependent file, unpreserved on the last, retrieved lazily, finished on the last | not held after get returns; the core counts dependent files, a Rust guard is counted by its cell (`finish` may run while one lives: the object outlives it) | C API of the core |
//! | [`GlobalStateForm::Subsystem`] (v4 style; the choice for HugeTLB) | independent of files: frozen on the reboot path after the files (unfrozen on rollback), restored eagerly at boot, finished after the last incoming session finishes; serialized in its own KHO subtree | handler-scoped | C API and Rust |
//! | Rust, all three | typed: `get` returns a guard (`!Send`, `#[must_use]`) that puts on drop; incoming and outgoing are different types ([`Incoming`], [`Outgoing`]) | held by the guard | `luo-abi` + macros |
//!
//! Calling `get` from inside the state's own callbacks would deadlock (the callbacks run under
//! the same lock): it is rejected at compile time where a capability token can express it, and
//! at run time with `EDEADLK` otherwise.
//!
//! # The Rust runtime
//!
//! | form | declared with | cell (one per registration) | guards |
//! |---|---|---|---|
//! | FLB | `#[liveupdate_flb(compatible = .., abi = ..)]` + `impl FlbState` | [`FlbCell`], shared (`Arc`) by every handler that lists it in `flbs = [..]` | [`FlbOutgoing`], [`FlbIncoming`] (no lock held: the cell counts the guard next to the object, which lives until unpreserve or finish and its last guard) |
//! | handler-scoped (seed) | `#[liveupdate_global_state(abi = ..)]` + `impl HandlerState` | [`HandlerStateCell`], inside the one handler that names it in `state = ..` | [`StateOutgoing`], [`StateIncoming`] (hold the handler-scoped lock; put on drop) |
//! | subsystem | `#[liveupdate_subsystem(name = .., abi = ..)]` + `impl Subsystem` | [`SubsystemCell`], shared (`Arc`) by the handlers that list it in `subsystems = [..]` | [`SubsystemOutgoing`], [`SubsystemIncoming`] (hold the subsystem's lock) |
//!
//! Every guard is `!Send`, `#[must_use]`, borrows its cell (and, when obtained through a
//! handler's [`crate::handler::Ctx`], that callback's context), and releases on drop.
//!
//! **Capability:** handler callbacks get [`crate::handler::Ctx`], whose `global::<S>()` /
//! `state()` compile only for state the handler declared. The state's *own* callbacks get a
//! [`StateCtx`], which has no way to reach any cell: a `get` there does not compile. A cell
//! reached some other way (a clone of its `Arc`) still refuses, at run time, a `get` from the
//! task that is running one of its callbacks or already holds its lock: `-EDEADLK`.
//!
//! The handed-over data of every form is a typed ABI struct that the runtime writes to KHO
//! preserved memory (`alloc_preserve`) and whose physical address is the `u64` the core keeps.
//! Data that changes after it was first written is rewritten in place: a subsystem's in
//! `freeze`, handler-scoped state's with [`StateOutgoing::write_ser`], an FLB's with
//! [`FlbCell::write_outgoing`] (from its dependent files' callbacks).
//!
//! An FLB chosen at run time (linked or not depending on the kernel's configuration) is not
//! declared in `flbs = [...]`: it is linked with
//! [`Registration::link_flb`](crate::handler::Registration::link_flb).

use alloc::sync::Arc;
use core::cell::Cell;
use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::handler::{read_ser, Claimed, HandlerAbi};
use crate::host::{LuoHost, RawFlb};
use crate::kho::{KhoExt, KhoService};
use crate::lock::{Guard, Lock, LockBackend};
use crate::phys::{Phys, PhysAddr};

/// Which side of the kexec a piece of global state belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Handed over by the previous kernel, retrieved in this one (`get_incoming`).
    Incoming,
    /// Built in this kernel, to be handed to the next one (`get_outgoing`).
    Outgoing,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        })
    }
}

/// The three forms of handler global state (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobalStateForm {
    /// State bound to one file handler's file lifecycle (the v4 seed's
    /// `global_state_create/restore/destroy`).
    FileBound,
    /// File-Lifecycle-Bound object shared by several handlers (upstream `liveupdate_flb`).
    Flb,
    /// State with its own lifecycle, independent of files (v4 `liveupdate_register_subsystem`).
    Subsystem,
}

mod sealed {
    pub trait Sealed {}
}

/// Type-level [`Direction`], so that incoming and outgoing guards are different types.
/// Sealed: implemented only by [`Incoming`] and [`Outgoing`].
pub trait DirectionMarker: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The value-level direction.
    const DIRECTION: Direction;
}

/// Type-level [`Direction::Incoming`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Incoming;

/// Type-level [`Direction::Outgoing`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Outgoing;

impl sealed::Sealed for Incoming {}
impl sealed::Sealed for Outgoing {}

impl DirectionMarker for Incoming {
    const DIRECTION: Direction = Direction::Incoming;
}

impl DirectionMarker for Outgoing {
    const DIRECTION: Direction = Direction::Outgoing;
}

/// What kind of global state a type is, and its cell; implemented by `#[liveupdate_flb]` and
/// `#[liveupdate_subsystem]`. Only such types can be linked to a handler.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not declared global state",
    label = "not global state",
    note = "declare it with #[liveupdate_flb(compatible = \"...\", abi = ...)] or #[liveupdate_subsystem(name = \"...\", abi = ...)] on the type (and the same attribute on its impl)"
)]
pub trait Global: Send + Sync + 'static {
    /// The cell a handler reaches it through.
    type Cell: Send + Sync + 'static;
    /// Which form it is.
    const FORM: GlobalStateForm;
}

/// The context of a global state's own callbacks: KHO and the host, and deliberately no way
/// to reach any global-state cell (a `get` from here would deadlock).
pub struct StateCtx<'a> {
    host: &'a dyn LuoHost,
    /// Bytes to allocate after the ABI struct ([`StateCtx::reserve_trailer`]).
    trailer: Cell<usize>,
    /// The handed-over data of the callback, 0 for none ([`StateCtx::data`]).
    data: u64,
    /// Readable bytes of the record at `data` in `retrieve`, claimed by the runtime
    /// ([`StateCtx::read_record`]); 0 elsewhere.
    record_len: Cell<usize>,
    _not_send: PhantomData<*mut ()>,
}

impl<'a> StateCtx<'a> {
    fn new(host: &'a dyn LuoHost) -> Self {
        StateCtx::with_data(host, 0)
    }

    fn with_data(host: &'a dyn LuoHost, data: u64) -> Self {
        StateCtx {
            host,
            trailer: Cell::new(0),
            data,
            record_len: Cell::new(0),
            _not_send: PhantomData,
        }
    }

    /// From an FLB's `preserve`: makes the handed-over allocation `bytes` longer than the ABI
    /// struct, zeroed, for a variable-length record (a header followed by entries, such as
    /// `struct pci_ser` and its `pci_dev_ser` array). The FLB writes the entries later through
    /// [`FlbCell::outgoing_data`] and reads them in `retrieve` through [`StateCtx::data`].
    /// Ignored by the other callbacks.
    pub fn reserve_trailer(&self, bytes: usize) {
        self.trailer.set(bytes);
    }

    /// In an FLB's `retrieve` and `unpreserve`: the address of the handed-over ABI struct (the
    /// start of a variable-length record), which the runtime frees after the callback. `None`
    /// in the other callbacks.
    pub fn data(&self) -> Option<PhysAddr> {
        (self.data != 0).then(|| PhysAddr::new(self.data))
    }

    /// In an FLB's `retrieve`: reads `buf.len()` bytes at `offset` into the handed-over record
    /// (the ABI struct, then the entries of a variable-length record), within the folio the
    /// runtime claimed for the callback. `-EINVAL` beyond it or in other callbacks: corrupt
    /// counts in the record cannot make the FLB read memory that was not handed over with it.
    pub fn read_record(&self, offset: usize, buf: &mut [u8]) -> Result {
        let end = offset.checked_add(buf.len()).ok_or(Errno::EINVAL)?;
        if self.data == 0 || end > self.record_len.get() {
            return Err(Errno::EINVAL);
        }
        self.kho()
            .read(PhysAddr::new(self.data + offset as u64), buf)
    }

    /// The KHO service.
    pub fn kho(&self) -> &'a dyn KhoService {
        self.host.kho()
    }

    /// The core.
    pub fn host(&self) -> &'a dyn LuoHost {
        self.host
    }
}

/// Marks the task running a state's callback (restored on drop), for the `EDEADLK` check.
struct CallbackScope<'a> {
    slot: &'a AtomicUsize,
    prev: usize,
}

impl<'a> CallbackScope<'a> {
    fn enter(slot: &'a AtomicUsize, task: usize) -> Self {
        let prev = slot.swap(task, Ordering::SeqCst);
        CallbackScope { slot, prev }
    }
}

impl Drop for CallbackScope<'_> {
    fn drop(&mut self) {
        self.slot.store(self.prev, Ordering::SeqCst);
    }
}

fn check_reentry(task: usize, callback: &AtomicUsize, holder: Option<&AtomicUsize>) -> Result {
    if callback.load(Ordering::Relaxed) == task {
        return Err(Errno::EDEADLK);
    }
    if let Some(h) = holder {
        if h.load(Ordering::Relaxed) == task {
            return Err(Errno::EDEADLK);
        }
    }
    Ok(())
}

/// Writes `ser` to newly preserved memory; its physical address is the handle.
fn preserve_ser<T: IntoBytes + Immutable>(kho: &dyn KhoService, ser: &T) -> Result<u64> {
    Ok(kho.alloc_preserve_obj(ser)?.addr().as_u64())
}

/// The data word of an immediate FLB: its 8-byte `Ser`, bit for bit.
fn word_of<T: IntoBytes + Immutable>(ser: &T) -> Result<u64> {
    u64::read_from_bytes(ser.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// The `Ser` of an immediate FLB from its data word.
fn ser_of_word<T: FromBytes>(word: u64) -> Result<T> {
    T::read_from_bytes(&word.to_ne_bytes()).map_err(|_| Errno::EINVAL)
}

/// Writes `ser` to newly preserved memory `trailer` bytes longer than `T` (zeroed past it).
fn preserve_ser_with_trailer<T: IntoBytes + Immutable>(
    kho: &dyn KhoService,
    ser: &T,
    trailer: usize,
) -> Result<u64> {
    if trailer == 0 {
        return preserve_ser(kho, ser);
    }
    let size = size_of::<T>().checked_add(trailer).ok_or(Errno::ENOMEM)?;
    let at = kho.alloc_preserve(size)?;
    if let Err(e) = kho.write_obj(Phys::<T>::new(at), ser) {
        let _ = kho.unpreserve_free(at);
        return Err(e);
    }
    Ok(at.as_u64())
}

#[cold]
fn missing_object() -> ! {
    unreachable!("a guard is only built over a present object")
}

// ---------------------------------------------------------------------------------------------
// FLB

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
struct Lent<T, L: LockBackend> {
    state: AtomicUsize,
    ptr: AtomicPtr<T>,
    slot: Lock<LentSlot<T>, L>,
}

/// The `Arc`s of a [`Lent`] object, under its lock.
struct LentSlot<T> {
    /// The published object.
    obj: Option<Arc<T>>,
    /// A withdrawn object that lent guards still use.
    retired: Option<Arc<T>>,
}

/// [`Lent::state`]: the object is published and may be lent.
const LIVE: usize = 1;
/// [`Lent::state`]: one lent guard.
const LENT: usize = 2;
/// Beyond this many lent guards (reachable only by leaking guards) gets take the slow path,
/// so the count cannot wrap.
const LENT_MAX: usize = usize::MAX / 4;

impl<T, L: LockBackend> Lent<T, L> {
    fn new() -> Self {
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
    fn lend(&self) -> Option<Loan<'_, T, L>> {
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
    fn unlend(&self) {
        // `Release`: this guard's uses of the object happen before whoever drops it.
        if self.state.fetch_sub(LENT, Ordering::Release) == LENT {
            self.release_retired();
        }
    }

    /// The word reached 0 (no guard, not `LIVE`): a retired object may be waiting for it.
    #[cold]
    fn release_retired(&self) {
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
    fn lend_slow(&self) -> Option<Loan<'_, T, L>> {
        let obj = self.slot.lock().obj.clone()?;
        Some(Loan {
            lent: self,
            ptr: NonNull::from(&*obj),
            owned: Some(obj),
        })
    }

    /// Under the lock, with `slot.retired` empty: lends `obj` from now on.
    fn set_live(&self, obj: &Arc<T>) {
        self.ptr
            .store(Arc::as_ptr(obj).cast_mut(), Ordering::Relaxed);
        self.state.fetch_or(LIVE, Ordering::Release);
    }

    /// Publishes `obj` (preserve, retrieve); returns the object it replaces (none when the core
    /// calls in order).
    fn publish(&self, obj: Arc<T>) -> Option<Arc<T>> {
        let mut slot = self.slot.lock();
        let old = self.withdraw_locked(&mut slot);
        if slot.retired.is_none() {
            self.set_live(&obj);
        }
        slot.obj = Some(obj);
        old
    }

    /// Withdraws the object (unpreserve, finish): later gets fail, guards alive keep it alive.
    fn withdraw(&self) -> Option<Arc<T>> {
        let mut slot = self.slot.lock();
        self.withdraw_locked(&mut slot)
    }

    fn withdraw_locked(&self, slot: &mut LentSlot<T>) -> Option<Arc<T>> {
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
struct Loan<'a, T, L: LockBackend> {
    lent: &'a Lent<T, L>,
    ptr: NonNull<T>,
    owned: Option<Arc<T>>,
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
    raw: S::Raw,
    flb: S,
    host: Arc<dyn LuoHost>,
    outgoing: Lent<S::Outgoing, S::Lock>,
    incoming: Lent<S::Incoming, S::Lock>,
    /// The task running `preserve`/`unpreserve`, and the one running `retrieve`/`finish`:
    /// one word per direction, because the core serializes each direction's callbacks but
    /// may run an outgoing one and an incoming one at once on two tasks.
    callback_out: AtomicUsize,
    callback_in: AtomicUsize,
    /// The handle of the outgoing handed-over struct while preserved (0 otherwise), for
    /// [`FlbCell::write_outgoing`] and [`FlbCell::outgoing_data`]. Behind a lock so that a
    /// rewrite never writes memory that `unpreserve` is freeing. Always 0 for an immediate
    /// FLB, which has no memory.
    out_data: Lock<u64, S::Lock>,
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
    fn no_callback_running(&self) -> bool {
        self.callback_out.load(Ordering::Relaxed) == 0
            && self.callback_in.load(Ordering::Relaxed) == 0
    }

    /// `EDEADLK` when this task is running one of this FLB's callbacks.
    fn check_reentry(&self) -> Result {
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
    fn get_outgoing_slow(&self) -> Result<FlbOutgoing<'_, S>> {
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
    fn get_incoming_slow(&self) -> Result<FlbIncoming<'_, S>> {
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

    fn ctx(&self) -> StateCtx<'_> {
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
    loan: Loan<'a, S::Outgoing, S::Lock>,
    _not_send: PhantomData<*mut ()>,
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
    loan: Loan<'a, S::Incoming, S::Lock>,
    _not_send: PhantomData<*mut ()>,
}

impl<S: FlbState> Deref for FlbIncoming<'_, S> {
    type Target = S::Incoming;
    #[inline]
    fn deref(&self) -> &S::Incoming {
        &self.loan
    }
}

// ---------------------------------------------------------------------------------------------
// Handler-scoped state (the seed)

/// The ABI side of handler-scoped state; implemented by `#[liveupdate_global_state(...)]`.
///
/// # Safety
///
/// Implemented only by the macro (or by [`NoState`]).
pub unsafe trait HandlerStateAbi: Sized + Send + Sync + 'static {
    /// The ABI struct handed over (`abi = ...`).
    type Ser: FromBytes + IntoBytes + Immutable + Copy + 'static;
    /// The lock backend of the cell (`lock = ...`).
    type Lock: LockBackend<State: Send + Sync>;
    /// Validates an incoming struct (reserved fields).
    fn decode(ser: Self::Ser) -> Result<Self::Ser>;
}

/// The callbacks of handler-scoped state (`struct liveupdate_fh_global_state_ops`); all three
/// are required. Implement it under `#[liveupdate_global_state]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not handler-scoped global state",
    label = "not declared with #[liveupdate_global_state]",
    note = "`state = ...` names a type with #[liveupdate_global_state(abi = ...)] and #[liveupdate_global_state] on its `impl HandlerState`; FLBs go in `flbs = [...]`"
)]
pub trait HandlerState: HandlerStateAbi {
    /// The live state in the old kernel.
    type Outgoing: Send + 'static;
    /// The live state in the new kernel.
    type Incoming: Send + 'static;

    /// Set by `#[liveupdate_global_state]` on the impl.
    const USE_LIVEUPDATE_GLOBAL_STATE_ATTR: ();

    /// First preserve of a file of the handler: create and serialize the state.
    fn create(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)> {
        let _ = cx;
        Err(Errno::EOPNOTSUPP)
    }

    /// In the new kernel, before first access: rebuild the state.
    fn restore(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming> {
        let _ = (cx, ser);
        Err(Errno::EOPNOTSUPP)
    }

    /// After the last file is unpreserved or finished.
    fn destroy(&self, cx: &StateCtx<'_>, obj: StateObj<Self::Outgoing, Self::Incoming>) {
        let _ = (cx, obj);
    }
}

/// Marks a [`HandlerState`] declared with `#[liveupdate_global_state]` (so [`NoState`] is
/// not).
///
/// # Safety
///
/// Implemented by `#[liveupdate_global_state]` only.
#[diagnostic::on_unimplemented(
    message = "this handler declared no handler-scoped global state",
    label = "the handler has no `state = ...`",
    note = "declare it: #[liveupdate_handler(..., state = MyState)] with MyState annotated #[liveupdate_global_state(abi = ...)]"
)]
pub unsafe trait DeclaredState: HandlerState {}

/// What `destroy` gets: the state of whichever side it was.
#[derive(Debug)]
pub enum StateObj<O, I> {
    /// Created in this kernel (`create`).
    Outgoing(O),
    /// Handed over by the previous kernel (`restore`).
    Incoming(I),
}

/// The `State` of a handler without handler-scoped state. Never instantiated.
pub enum NoState {}

/// The lock of [`NoState`], which is never instantiated.
pub enum NoLock {}

// SAFETY: `NoLock` is uninhabited and `NoState` never builds a cell, so no lock ever exists.
unsafe impl LockBackend for NoLock {
    type State = ();
    type GuardState = ();
    fn new_state() {}
    fn lock(_: &()) {
        unreachable!("NoState has no lock")
    }
    fn try_lock(_: &()) -> Option<()> {
        None
    }
    unsafe fn unlock(_: &(), _: &()) {}
}

// SAFETY: `NoState` is uninhabited; its ops table is never built.
unsafe impl HandlerStateAbi for NoState {
    type Ser = ();
    type Lock = NoLock;
    fn decode(ser: ()) -> Result<()> {
        Ok(ser)
    }
}

impl HandlerState for NoState {
    type Outgoing = core::convert::Infallible;
    type Incoming = core::convert::Infallible;
    const USE_LIVEUPDATE_GLOBAL_STATE_ATTR: () = ();
}

type StateSlotGuard<'a, S> = Guard<'a, StateSlot<S>, <S as HandlerStateAbi>::Lock>;

struct StateSlot<S: HandlerState> {
    outgoing: Option<S::Outgoing>,
    incoming: Option<S::Incoming>,
    phys: u64,
}

/// Handler-scoped state of one registered handler (the seed's
/// `global_state_create/restore/destroy`).
pub struct HandlerStateCell<S: HandlerState> {
    state: S,
    slot: Lock<StateSlot<S>, S::Lock>,
    callback: AtomicUsize,
    holder: AtomicUsize,
}

// SAFETY: the objects are `Send` and only reached through the lock, one holder at a time.
unsafe impl<S: HandlerState> Sync for HandlerStateCell<S> {}

impl<S: HandlerState> HandlerStateCell<S> {
    /// The state `state`; pass it in the handler's globals.
    pub fn new(state: S) -> Self {
        HandlerStateCell {
            state,
            slot: Lock::new(StateSlot {
                outgoing: None,
                incoming: None,
                phys: 0,
            }),
            callback: AtomicUsize::new(0),
            holder: AtomicUsize::new(0),
        }
    }

    /// The state value.
    pub fn state(&self) -> &S {
        &self.state
    }

    fn get<'a>(
        &'a self,
        host: &'a dyn LuoHost,
        fh: *mut c_void,
        present: fn(&StateSlot<S>) -> bool,
    ) -> Result<(StateSlotGuard<'a, S>, usize)> {
        let task = host.current_task();
        check_reentry(task, &self.callback, Some(&self.holder))?;
        host.fh_global_state_get(fh)?;
        let g = self.slot.lock();
        if !present(&g) {
            drop(g);
            host.fh_global_state_put(fh);
            return Err(Errno::ENODATA);
        }
        self.holder.store(task, Ordering::Relaxed);
        Ok((g, task))
    }

    pub(crate) fn get_outgoing<'a>(
        &'a self,
        host: &'a dyn LuoHost,
        fh: *mut c_void,
    ) -> Result<StateOutgoing<'a, S>> {
        let (guard, _) = self.get(host, fh, |s| s.outgoing.is_some())?;
        Ok(StateOutgoing {
            inner: StateGuardInner {
                guard: ManuallyDrop::new(guard),
                cell: self,
                host,
                fh,
            },
        })
    }

    pub(crate) fn get_incoming<'a>(
        &'a self,
        host: &'a dyn LuoHost,
        fh: *mut c_void,
    ) -> Result<StateIncoming<'a, S>> {
        let (guard, _) = self.get(host, fh, |s| s.incoming.is_some())?;
        Ok(StateIncoming {
            inner: StateGuardInner {
                guard: ManuallyDrop::new(guard),
                cell: self,
                host,
                fh,
            },
        })
    }
}

struct StateGuardInner<'a, S: HandlerState> {
    guard: ManuallyDrop<Guard<'a, StateSlot<S>, S::Lock>>,
    cell: &'a HandlerStateCell<S>,
    host: &'a dyn LuoHost,
    fh: *mut c_void,
}

impl<S: HandlerState> Drop for StateGuardInner<'_, S> {
    fn drop(&mut self) {
        self.cell.holder.store(0, Ordering::Relaxed);
        // SAFETY: dropped exactly once, here; the field is not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        self.host.fh_global_state_put(self.fh);
    }
}

/// The handler-scoped state in the old kernel; holds the handler-scoped lock until dropped
/// (`liveupdate_fh_global_state_get` … `_put`).
#[must_use = "the handler-scoped lock is released when the guard is dropped"]
pub struct StateOutgoing<'a, S: HandlerState> {
    inner: StateGuardInner<'a, S>,
}

impl<S: HandlerState> StateOutgoing<'_, S> {
    /// Rewrites the handed-over struct in place (the state "may be updated by later
    /// preserves").
    pub fn write_ser(&mut self, ser: &S::Ser) -> Result {
        let phys = self.inner.guard.phys;
        self.inner
            .host
            .kho()
            .write_obj(Phys::<S::Ser>::new(PhysAddr::new(phys)), ser)
    }
}

impl<S: HandlerState> Deref for StateOutgoing<'_, S> {
    type Target = S::Outgoing;
    fn deref(&self) -> &S::Outgoing {
        self.inner
            .guard
            .outgoing
            .as_ref()
            .unwrap_or_else(|| missing_object())
    }
}

impl<S: HandlerState> DerefMut for StateOutgoing<'_, S> {
    fn deref_mut(&mut self) -> &mut S::Outgoing {
        self.inner
            .guard
            .outgoing
            .as_mut()
            .unwrap_or_else(|| missing_object())
    }
}

/// The handler-scoped state in the new kernel; holds the handler-scoped lock until dropped.
#[must_use = "the handler-scoped lock is released when the guard is dropped"]
pub struct StateIncoming<'a, S: HandlerState> {
    inner: StateGuardInner<'a, S>,
}

impl<S: HandlerState> Deref for StateIncoming<'_, S> {
    type Target = S::Incoming;
    fn deref(&self) -> &S::Incoming {
        self.inner
            .guard
            .incoming
            .as_ref()
            .unwrap_or_else(|| missing_object())
    }
}

impl<S: HandlerState> DerefMut for StateIncoming<'_, S> {
    fn deref_mut(&mut self) -> &mut S::Incoming {
        self.inner
            .guard
            .incoming
            .as_mut()
            .unwrap_or_else(|| missing_object())
    }
}

// ---------------------------------------------------------------------------------------------
// Subsystems

/// The ABI side of a subsystem; implemented by `#[liveupdate_subsystem(...)]`.
///
/// # Safety
///
/// Implemented only by the macro: [`SubsystemAbi::raw`] is the generated
/// `liveupdate_subsystem` whose ops table calls [`rt`] for `Self`.
pub unsafe trait SubsystemAbi: Global + Sized {
    /// The ABI struct handed over (`abi = ...`).
    type Ser: FromBytes + IntoBytes + Immutable + Copy + 'static;
    /// The generated `liveupdate_subsystem`.
    type Raw: Copy + 'static;
    /// The lock backend of the cell (`lock = ...`).
    type Lock: LockBackend<State: Send + Sync>;
    /// The subsystem's unique name.
    const NAME: &'static str;
    /// The raw subsystem struct.
    fn raw() -> Self::Raw;
    /// Validates an incoming struct (reserved fields).
    fn decode(ser: Self::Ser) -> Result<Self::Ser>;
}

/// The callbacks of a subsystem (`struct liveupdate_subsystem_ops`). `prepare`, `cancel`,
/// `boot` and `finish` are required (they create and release the typed state); `freeze` is
/// optional. Implement it under `#[liveupdate_subsystem]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a subsystem",
    label = "not declared with #[liveupdate_subsystem]",
    note = "`subsystems = [...]` lists types with #[liveupdate_subsystem(name = \"...\", abi = ...)] and #[liveupdate_subsystem] on their `impl Subsystem`; FLBs go in `flbs = [...]`"
)]
pub trait Subsystem: SubsystemAbi {
    /// The live state in the old kernel (after `prepare`).
    type Outgoing: Send + 'static;
    /// The live state in the new kernel (after `boot`).
    type Incoming: Send + 'static;

    /// Set by `#[liveupdate_subsystem]` on the impl.
    const USE_LIVEUPDATE_SUBSYSTEM_ATTR: ();
    /// Whether the impl defines `freeze`.
    const HAS_FREEZE: bool = false;

    /// Start serializing while the workload still runs.
    fn prepare(&self, cx: &StateCtx<'_>) -> Result<(Self::Ser, Self::Outgoing)> {
        let _ = cx;
        Err(Errno::EOPNOTSUPP)
    }

    /// Final serialization on the reboot path, after the files; changes to `ser` are written
    /// back.
    fn freeze(&self, cx: &StateCtx<'_>, ser: &mut Self::Ser, obj: &mut Self::Outgoing) -> Result {
        let _ = (cx, ser, obj);
        Ok(())
    }

    /// The live update was cancelled after `prepare`.
    fn cancel(&self, cx: &StateCtx<'_>, obj: Self::Outgoing) {
        let _ = (cx, obj);
    }

    /// In the new kernel, at registration: restore the state eagerly.
    fn boot(&self, cx: &StateCtx<'_>, ser: Self::Ser) -> Result<Self::Incoming> {
        let _ = (cx, ser);
        Err(Errno::EOPNOTSUPP)
    }

    /// After the last incoming session finished.
    fn finish(&self, cx: &StateCtx<'_>, obj: Self::Incoming) {
        let _ = (cx, obj);
    }
}

type SubSlotGuard<'a, S> = Guard<'a, SubSlot<S>, <S as SubsystemAbi>::Lock>;

struct SubSlot<S: Subsystem> {
    outgoing: Option<S::Outgoing>,
    incoming: Option<core::result::Result<S::Incoming, Errno>>,
}

/// One registered subsystem: the raw `struct liveupdate_subsystem` first, then the value, its
/// host and its objects behind the subsystem's lock. Shared by `Arc`.
#[repr(C)]
pub struct SubsystemCell<S: Subsystem> {
    raw: S::Raw,
    sub: S,
    host: Arc<dyn LuoHost>,
    slot: Lock<SubSlot<S>, S::Lock>,
    callback: AtomicUsize,
    holder: AtomicUsize,
}

// SAFETY: `raw` is immutable and points to `'static` data; the objects are `Send` and only
// reached through the lock.
unsafe impl<S: Subsystem> Send for SubsystemCell<S> {}
// SAFETY: as above.
unsafe impl<S: Subsystem> Sync for SubsystemCell<S> {}

impl<S: Subsystem> SubsystemCell<S> {
    /// The subsystem `sub`, run by `host`.
    pub fn new(sub: S, host: Arc<dyn LuoHost>) -> Arc<Self> {
        Arc::new(SubsystemCell {
            raw: S::raw(),
            sub,
            host,
            slot: Lock::new(SubSlot {
                outgoing: None,
                incoming: None,
            }),
            callback: AtomicUsize::new(0),
            holder: AtomicUsize::new(0),
        })
    }

    /// The `struct liveupdate_subsystem *` to register (`liveupdate_register_subsystem`).
    pub fn raw(&self) -> *mut c_void {
        &self.raw as *const S::Raw as *mut c_void
    }

    /// The subsystem value.
    pub fn subsystem(&self) -> &S {
        &self.sub
    }

    fn lock_for_get(&self) -> Result<(SubSlotGuard<'_, S>, usize)> {
        let task = self.host.current_task();
        check_reentry(task, &self.callback, Some(&self.holder))?;
        Ok((self.slot.lock(), task))
    }

    /// The outgoing state (after `prepare`), holding the subsystem's lock; `-ENODATA` before
    /// `prepare` or after `cancel`, `-EDEADLK` from its own callbacks or while this task holds
    /// a guard.
    pub fn get_outgoing(&self) -> Result<SubsystemOutgoing<'_, S>> {
        let (g, task) = self.lock_for_get()?;
        if g.outgoing.is_none() {
            return Err(Errno::ENODATA);
        }
        self.holder.store(task, Ordering::Relaxed);
        Ok(SubsystemOutgoing {
            inner: SubGuardInner {
                guard: ManuallyDrop::new(g),
                cell: self,
            },
        })
    }

    /// The incoming state (restored by `boot`), holding the subsystem's lock; `-ENODATA`
    /// without incoming state or once finished, `boot`'s error if it failed.
    pub fn get_incoming(&self) -> Result<SubsystemIncoming<'_, S>> {
        let (g, task) = self.lock_for_get()?;
        match &g.incoming {
            None => return Err(Errno::ENODATA),
            Some(Err(e)) => return Err(*e),
            Some(Ok(_)) => {}
        }
        self.holder.store(task, Ordering::Relaxed);
        Ok(SubsystemIncoming {
            inner: SubGuardInner {
                guard: ManuallyDrop::new(g),
                cell: self,
            },
        })
    }

    fn ctx(&self) -> StateCtx<'_> {
        StateCtx::new(&*self.host)
    }
}

struct SubGuardInner<'a, S: Subsystem> {
    guard: ManuallyDrop<Guard<'a, SubSlot<S>, S::Lock>>,
    cell: &'a SubsystemCell<S>,
}

impl<S: Subsystem> Drop for SubGuardInner<'_, S> {
    fn drop(&mut self) {
        self.cell.holder.store(0, Ordering::Relaxed);
        // SAFETY: dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
    }
}

/// A subsystem's outgoing state, holding its lock until dropped.
#[must_use = "the subsystem's lock is released when the guard is dropped"]
pub struct SubsystemOutgoing<'a, S: Subsystem> {
    inner: SubGuardInner<'a, S>,
}

impl<S: Subsystem> Deref for SubsystemOutgoing<'_, S> {
    type Target = S::Outgoing;
    fn deref(&self) -> &S::Outgoing {
        self.inner
            .guard
            .outgoing
            .as_ref()
            .unwrap_or_else(|| missing_object())
    }
}

impl<S: Subsystem> DerefMut for SubsystemOutgoing<'_, S> {
    fn deref_mut(&mut self) -> &mut S::Outgoing {
        self.inner
            .guard
            .outgoing
            .as_mut()
            .unwrap_or_else(|| missing_object())
    }
}

/// A subsystem's incoming state, holding its lock until dropped.
#[must_use = "the subsystem's lock is released when the guard is dropped"]
pub struct SubsystemIncoming<'a, S: Subsystem> {
    inner: SubGuardInner<'a, S>,
}

impl<S: Subsystem> Deref for SubsystemIncoming<'_, S> {
    type Target = S::Incoming;
    fn deref(&self) -> &S::Incoming {
        match &self.inner.guard.incoming {
            Some(Ok(v)) => v,
            _ => missing_object(),
        }
    }
}

impl<S: Subsystem> DerefMut for SubsystemIncoming<'_, S> {
    fn deref_mut(&mut self) -> &mut S::Incoming {
        match &mut self.inner.guard.incoming {
            Some(Ok(v)) => v,
            _ => missing_object(),
        }
    }
}

/// The runtime behind the trampolines of the global-state ops tables. Never unwinds; errors
/// become `-errno`, panics `-EIO` (see [`crate::ffi`]).
///
/// # Safety (all functions)
///
/// The raw object pointer comes from the cell (or registration) of the type named, which is
/// alive; out-pointers are valid for writes.
// The module docs carry the `# Safety` section shared by every function.
#[allow(clippy::missing_safety_doc)]
pub mod rt {
    use super::*;
    use crate::handler::rt::shared;

    const EIO: i32 = Errno::EIO.to_neg();

    unsafe fn flb_cell<'a, S: FlbState>(flb: *mut c_void) -> &'a FlbCell<S> {
        // SAFETY: module contract: `flb` points to the `raw` field, at offset 0 of the
        // `#[repr(C)]` `FlbCell<S>`.
        unsafe { &*flb.cast::<FlbCell<S>>() }
    }

    /// `liveupdate_flb_ops.preserve`.
    pub unsafe fn flb_preserve<S: FlbState>(
        flb: *mut c_void,
        data: *mut u64,
        obj: *mut *mut c_void,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let cell = unsafe { flb_cell::<S>(flb) };
            let _scope = CallbackScope::enter(&cell.callback_out, cell.host.current_task());
            let cx = cell.ctx();
            let (ser, out) = match cell.flb.preserve(&cx) {
                Ok(v) => v,
                Err(e) => return e.to_neg(),
            };
            let out = Arc::new(out);
            let handle = if S::IMMEDIATE {
                word_of(&ser)
            } else {
                preserve_ser_with_trailer(cx.kho(), &ser, cx.trailer.get())
            };
            match handle {
                Ok(handle) => {
                    // Before publishing: whoever gets the object may rewrite the data.
                    if !S::IMMEDIATE {
                        *cell.out_data.lock() = handle;
                    }
                    // A replaced object (only if the core called preserve twice) is dropped
                    // after its guards.
                    drop(cell.outgoing.publish(out));
                    // SAFETY: module contract.
                    unsafe {
                        *data = handle;
                        *obj = flb;
                    }
                    0
                }
                Err(e) => {
                    cell.flb.unpreserve(&cx, ser, out);
                    e.to_neg()
                }
            }
        })
    }

    /// `liveupdate_flb_ops.unpreserve`.
    pub unsafe fn flb_unpreserve<S: FlbState>(flb: *mut c_void, data: u64) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let cell = unsafe { flb_cell::<S>(flb) };
            // No rewrite from now on: the struct is about to be freed.
            *cell.out_data.lock() = 0;
            let _scope = CallbackScope::enter(&cell.callback_out, cell.host.current_task());
            let cx = StateCtx::with_data(&*cell.host, data);
            let out = cell.outgoing.withdraw();
            let ser = if S::IMMEDIATE {
                ser_of_word::<S::Ser>(data)
            } else {
                read_ser::<S::Ser>(cx.kho(), data)
            };
            if let (Some(out), Ok(ser)) = (out, ser) {
                cell.flb.unpreserve(&cx, ser, out);
            }
            if data != 0 && !S::IMMEDIATE {
                let _ = cx.kho().unpreserve_free(PhysAddr::new(data));
            }
        })
    }

    /// `liveupdate_flb_ops.retrieve`.
    pub unsafe fn flb_retrieve<S: FlbState>(
        flb: *mut c_void,
        data: u64,
        obj: *mut *mut c_void,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let cell = unsafe { flb_cell::<S>(flb) };
            let _scope = CallbackScope::enter(&cell.callback_in, cell.host.current_task());
            let cx = StateCtx::with_data(&*cell.host, data);
            // A record is claimed before it is read and released once retrieve has run,
            // whatever the outcome, as a file's record (see `Claimed`); the callback may read
            // past the struct (a trailer) while it is claimed.
            let _record = if S::IMMEDIATE {
                None
            } else {
                match Claimed::new(cx.kho(), data, size_of::<S::Ser>()) {
                    Ok(c) => {
                        cx.record_len.set(c.bytes());
                        Some(c)
                    }
                    Err(e) => return e.to_neg(),
                }
            };
            let ser = if S::IMMEDIATE {
                ser_of_word::<S::Ser>(data)
            } else {
                read_ser::<S::Ser>(cx.kho(), data)
            };
            let r = ser
                .and_then(S::decode)
                .and_then(|ser| cell.flb.retrieve(&cx, ser));
            match r {
                Ok(inc) => {
                    drop(cell.incoming.publish(Arc::new(inc)));
                    // SAFETY: module contract.
                    unsafe { *obj = flb };
                    0
                }
                Err(e) => e.to_neg(),
            }
        })
    }

    /// `liveupdate_flb_ops.finish`.
    pub unsafe fn flb_finish<S: FlbState>(flb: *mut c_void) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let cell = unsafe { flb_cell::<S>(flb) };
            let _scope = CallbackScope::enter(&cell.callback_in, cell.host.current_task());
            let inc = cell.incoming.withdraw();
            if let Some(inc) = inc {
                cell.flb.finish(&cell.ctx(), inc);
            }
        })
    }

    unsafe fn state_cell<'a, H: HandlerAbi>(
        fh: *mut c_void,
    ) -> Option<(&'a HandlerStateCell<H::State>, &'a dyn LuoHost)> {
        // SAFETY: module contract: `fh` is a raw handler of a live registration of `H`.
        let s = unsafe { shared::<H>(fh) };
        H::state(&s.globals).map(|c| (c, s.host()))
    }

    /// `liveupdate_fh_global_state_ops.global_state_create` of handler `H`'s state.
    pub unsafe fn state_create<H: HandlerAbi>(
        fh: *mut c_void,
        obj: *mut *mut c_void,
        data: *mut u64,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let Some((cell, host)) = (unsafe { state_cell::<H>(fh) }) else {
                return Errno::EINVAL.to_neg();
            };
            let _scope = CallbackScope::enter(&cell.callback, host.current_task());
            let cx = StateCtx::new(host);
            let (ser, out) = match cell.state.create(&cx) {
                Ok(v) => v,
                Err(e) => return e.to_neg(),
            };
            match preserve_ser(cx.kho(), &ser) {
                Ok(handle) => {
                    let mut slot = cell.slot.lock();
                    slot.outgoing = Some(out);
                    slot.phys = handle;
                    // SAFETY: module contract.
                    unsafe {
                        *data = handle;
                        *obj = cell as *const HandlerStateCell<H::State> as *mut c_void;
                    }
                    0
                }
                Err(e) => {
                    cell.state.destroy(&cx, StateObj::Outgoing(out));
                    e.to_neg()
                }
            }
        })
    }

    /// `liveupdate_fh_global_state_ops.global_state_restore` of handler `H`'s state.
    pub unsafe fn state_restore<H: HandlerAbi>(
        fh: *mut c_void,
        data: u64,
        obj: *mut *mut c_void,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let Some((cell, host)) = (unsafe { state_cell::<H>(fh) }) else {
                return Errno::EINVAL.to_neg();
            };
            let _scope = CallbackScope::enter(&cell.callback, host.current_task());
            let cx = StateCtx::new(host);
            let r = read_ser::<<H::State as HandlerStateAbi>::Ser>(cx.kho(), data)
                .and_then(<H::State as HandlerStateAbi>::decode)
                .and_then(|ser| cell.state.restore(&cx, ser));
            match r {
                Ok(inc) => {
                    cell.slot.lock().incoming = Some(inc);
                    let _ = cx.kho().restore_free(PhysAddr::new(data));
                    // SAFETY: module contract.
                    unsafe { *obj = cell as *const HandlerStateCell<H::State> as *mut c_void };
                    0
                }
                Err(e) => e.to_neg(),
            }
        })
    }

    /// `liveupdate_fh_global_state_ops.global_state_destroy` of handler `H`'s state.
    pub unsafe fn state_destroy<H: HandlerAbi>(fh: *mut c_void, obj: *mut c_void) {
        let _ = obj;
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let Some((cell, host)) = (unsafe { state_cell::<H>(fh) }) else {
                return;
            };
            let _scope = CallbackScope::enter(&cell.callback, host.current_task());
            let cx = StateCtx::new(host);
            let (out, inc, phys) = {
                let mut slot = cell.slot.lock();
                let phys = core::mem::take(&mut slot.phys);
                (slot.outgoing.take(), slot.incoming.take(), phys)
            };
            if let Some(o) = out {
                cell.state.destroy(&cx, StateObj::Outgoing(o));
                if phys != 0 {
                    let _ = cx.kho().unpreserve_free(PhysAddr::new(phys));
                }
            }
            if let Some(i) = inc {
                cell.state.destroy(&cx, StateObj::Incoming(i));
            }
        })
    }

    unsafe fn sub_cell<'a, S: Subsystem>(h: *mut c_void) -> &'a SubsystemCell<S> {
        // SAFETY: module contract: `h` points to the `raw` field at offset 0 of the
        // `#[repr(C)]` `SubsystemCell<S>`.
        unsafe { &*h.cast::<SubsystemCell<S>>() }
    }

    /// `liveupdate_subsystem_ops.prepare`.
    pub unsafe fn sub_prepare<S: Subsystem>(h: *mut c_void, data: *mut u64) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let cell = unsafe { sub_cell::<S>(h) };
            let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
            let cx = cell.ctx();
            let (ser, out) = match cell.sub.prepare(&cx) {
                Ok(v) => v,
                Err(e) => return e.to_neg(),
            };
            match preserve_ser(cx.kho(), &ser) {
                Ok(handle) => {
                    cell.slot.lock().outgoing = Some(out);
                    // SAFETY: module contract.
                    unsafe { *data = handle };
                    0
                }
                Err(e) => {
                    cell.sub.cancel(&cx, out);
                    e.to_neg()
                }
            }
        })
    }

    /// `liveupdate_subsystem_ops.freeze`.
    pub unsafe fn sub_freeze<S: Subsystem>(h: *mut c_void, data: *mut u64) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let cell = unsafe { sub_cell::<S>(h) };
            let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
            let cx = cell.ctx();
            // SAFETY: module contract.
            let handle = unsafe { *data };
            let r = (|| {
                let mut ser = read_ser::<S::Ser>(cx.kho(), handle)?;
                let mut slot = cell.slot.lock();
                let out = slot.outgoing.as_mut().ok_or(Errno::ENODATA)?;
                cell.sub.freeze(&cx, &mut ser, out)?;
                drop(slot);
                cx.kho()
                    .write_obj(Phys::<S::Ser>::new(PhysAddr::new(handle)), &ser)
            })();
            crate::errno::to_neg(r)
        })
    }

    /// `liveupdate_subsystem_ops.cancel`.
    pub unsafe fn sub_cancel<S: Subsystem>(h: *mut c_void, data: u64) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let cell = unsafe { sub_cell::<S>(h) };
            let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
            let cx = cell.ctx();
            let out = cell.slot.lock().outgoing.take();
            if let Some(out) = out {
                cell.sub.cancel(&cx, out);
            }
            if data != 0 {
                let _ = cx.kho().unpreserve_free(PhysAddr::new(data));
            }
        })
    }

    /// `liveupdate_subsystem_ops.boot`: a failure is kept and returned by `get_incoming`.
    pub unsafe fn sub_boot<S: Subsystem>(h: *mut c_void, data: u64) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let cell = unsafe { sub_cell::<S>(h) };
            let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
            let cx = cell.ctx();
            let r = read_ser::<S::Ser>(cx.kho(), data)
                .and_then(S::decode)
                .and_then(|ser| cell.sub.boot(&cx, ser));
            if r.is_ok() {
                let _ = cx.kho().restore_free(PhysAddr::new(data));
            }
            cell.slot.lock().incoming = Some(r);
        })
    }

    /// `liveupdate_subsystem_ops.finish`.
    pub unsafe fn sub_finish<S: Subsystem>(h: *mut c_void, data: u64) {
        let _ = data;
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let cell = unsafe { sub_cell::<S>(h) };
            let _scope = CallbackScope::enter(&cell.callback, cell.host.current_task());
            let inc = cell.slot.lock().incoming.take();
            if let Some(Ok(inc)) = inc {
                cell.sub.finish(&cell.ctx(), inc);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn markers() {
        assert_eq!(Incoming::DIRECTION, Direction::Incoming);
        assert_eq!(Outgoing::DIRECTION, Direction::Outgoing);
        assert_eq!(Direction::Incoming.to_string(), "incoming");
    }

    use crate::lock::tests::StdBackend;
    use std::sync::atomic::AtomicBool;
    use std::vec::Vec;

    /// An FLB object that records its drop: `dropped[id]` set once, `twice` counts repeats.
    struct Obj {
        id: usize,
        dropped: Arc<Vec<AtomicBool>>,
        twice: Arc<AtomicUsize>,
    }

    impl Drop for Obj {
        fn drop(&mut self) {
            if self.dropped[self.id].swap(true, Ordering::SeqCst) {
                self.twice.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    struct Objs {
        dropped: Arc<Vec<AtomicBool>>,
        twice: Arc<AtomicUsize>,
    }

    impl Objs {
        fn new(n: usize) -> Objs {
            Objs {
                dropped: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
                twice: Arc::new(AtomicUsize::new(0)),
            }
        }
        fn make(&self, id: usize) -> Arc<Obj> {
            Arc::new(Obj {
                id,
                dropped: Arc::clone(&self.dropped),
                twice: Arc::clone(&self.twice),
            })
        }
        fn dropped(&self, id: usize) -> bool {
            self.dropped[id].load(Ordering::SeqCst)
        }
    }

    /// A withdrawn object outlives its lent guards, whatever the callback does with its `Arc`;
    /// an object published meanwhile is lent only after the older one is released.
    #[test]
    fn lent_object_outlives_withdraw() {
        let objs = Objs::new(2);
        let lent: Lent<Obj, StdBackend> = Lent::new();
        assert!(lent.lend().is_none(), "nothing published");
        assert!(lent.lend_slow().is_none());
        assert!(lent.publish(objs.make(0)).is_none());
        let g = lent.lend().expect("live");
        assert!(g.owned.is_none(), "fast path: counted, no Arc");
        drop(lent.withdraw().expect("published"));
        assert!(!objs.dropped(0), "a guard still uses it");
        assert_eq!(g.id, 0);
        assert!(lent.lend().is_none(), "withdrawn");
        assert!(lent.publish(objs.make(1)).is_none());
        assert!(lent.lend().is_none(), "not lent while object 0 is retired");
        let slow = lent.lend_slow().expect("published");
        assert_eq!((slow.id, slow.owned.is_some()), (1, true));
        drop(g);
        assert!(objs.dropped(0), "released by its last guard");
        let g = lent.lend().expect("object 1 is lent now");
        assert_eq!(g.id, 1);
        drop((g, slow));
        drop(lent.withdraw());
        assert!(
            objs.dropped(1),
            "no guard left: dropped with the callback's Arc"
        );
        assert!(lent.withdraw().is_none());
        assert_eq!(objs.twice.load(Ordering::SeqCst), 0);
    }

    /// Guards in several threads while the object is published and withdrawn again and again
    /// (preserve / unpreserve cycles): no guard sees a dropped object, and every object is
    /// dropped exactly once.
    #[test]
    fn lent_objects_dropped_once_under_threads() {
        // Miri (`cargo +nightly miri test -p luo-abi`) checks the same for UB, more slowly.
        const GENERATIONS: usize = if cfg!(miri) { 30 } else { 400 };
        const THREADS: usize = 3;
        let objs = Objs::new(GENERATIONS);
        let lent: Lent<Obj, StdBackend> = Lent::new();
        let stop = AtomicBool::new(false);
        let seen = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let g = lent.lend().or_else(|| lent.lend_slow());
                        if let Some(g) = g {
                            let id = g.id;
                            std::thread::yield_now();
                            assert!(!objs.dropped(id), "object {id} dropped under a guard");
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            for id in 0..GENERATIONS {
                drop(lent.publish(objs.make(id)));
                std::thread::yield_now();
                drop(lent.withdraw());
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(seen.load(Ordering::Relaxed) > 0);
        assert_eq!(objs.twice.load(Ordering::SeqCst), 0, "dropped twice");
        for id in 0..GENERATIONS {
            assert!(objs.dropped(id), "object {id} never dropped");
        }
        assert_eq!(lent.state.load(Ordering::SeqCst), 0);
    }
}
