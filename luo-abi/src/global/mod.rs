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
use core::sync::atomic::{AtomicUsize, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::host::LuoHost;
use crate::kho::{KhoExt, KhoService};
use crate::lock::{Guard, Lock, LockBackend};
use crate::phys::{Phys, PhysAddr};
use crate::record::{read_ser, Claimed};

mod flb;
mod subsystem;
#[cfg(test)]
mod tests;

pub use flb::*;
pub use subsystem::*;

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

#[inline]
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

// ---------------------------------------------------------------------------------------------
// Handler-scoped state (LUO v4's global_state API)

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

/// What the handler-scoped state trampolines ([`rt::state_create`] and its siblings) need of
/// the handler whose state it is: the state's cell and the handler's host. Every handler
/// implements it (`crate::handler` does, for each `HandlerAbi` type), so this module needs
/// nothing of the handler runtime.
///
/// # Safety
///
/// [`StateOwner::state_cell`] returns the cell of the registration `fh` belongs to.
pub unsafe trait StateOwner: 'static {
    /// The handler's state.
    type State: HandlerState;

    /// The state's cell and the host of the registration whose raw handler is `fh`.
    ///
    /// # Safety
    ///
    /// `fh` is a raw handler of a live registration of `Self`.
    unsafe fn state_cell<'a>(
        fh: *mut c_void,
    ) -> Option<(&'a HandlerStateCell<Self::State>, &'a dyn LuoHost)>;
}

/// Handler-scoped state of one registered handler (LUO v4's
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

    #[inline]
    fn get<'a>(
        &'a self,
        host: &'a dyn LuoHost,
        fh: *mut c_void,
        present: impl Fn(&StateSlot<S>) -> bool,
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

// The module docs carry the `# Safety` section shared by every function.
#[allow(clippy::missing_safety_doc)]
pub mod rt;
