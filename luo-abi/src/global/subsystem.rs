// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! v4-style subsystems: state independent of files, frozen on the reboot path after the
//! files, restored eagerly at boot and finished after the last incoming session.

use alloc::sync::Arc;
use core::ffi::c_void;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::host::LuoHost;
use crate::lock::{Guard, Lock, LockBackend};

use super::*;

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

pub(super) type SubSlotGuard<'a, S> = Guard<'a, SubSlot<S>, <S as SubsystemAbi>::Lock>;

pub(super) struct SubSlot<S: Subsystem> {
    pub(super) outgoing: Option<S::Outgoing>,
    pub(super) incoming: Option<core::result::Result<S::Incoming, Errno>>,
}

/// One registered subsystem: the raw `struct liveupdate_subsystem` first, then the value, its
/// host and its objects behind the subsystem's lock. Shared by `Arc`.
#[repr(C)]
pub struct SubsystemCell<S: Subsystem> {
    pub(super) raw: S::Raw,
    pub(super) sub: S,
    pub(super) host: Arc<dyn LuoHost>,
    pub(super) slot: Lock<SubSlot<S>, S::Lock>,
    pub(super) callback: AtomicUsize,
    pub(super) holder: AtomicUsize,
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

    pub(super) fn lock_for_get(&self) -> Result<(SubSlotGuard<'_, S>, usize)> {
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

    pub(super) fn ctx(&self) -> StateCtx<'_> {
        StateCtx::new(&*self.host)
    }
}

pub(super) struct SubGuardInner<'a, S: Subsystem> {
    pub(super) guard: ManuallyDrop<Guard<'a, SubSlot<S>, S::Lock>>,
    pub(super) cell: &'a SubsystemCell<S>,
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
    pub(super) inner: SubGuardInner<'a, S>,
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
    pub(super) inner: SubGuardInner<'a, S>,
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
