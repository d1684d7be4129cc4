// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A handler's registration: the raw `liveupdate_file_handler`s and ops tables the core
//! links, what a trampoline reaches from them, and the FLBs linked at run time.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::NonNull;

use crate::errno::{Errno, Result};
use crate::host::{LuoHost, RawFlb};

use super::*;

/// Everything a trampoline reaches from a `struct liveupdate_file_handler *`.
pub(crate) struct Shared<H: HandlerAbi> {
    pub(super) handler: H,
    pub(super) host: Arc<dyn LuoHost>,
    pub(crate) globals: H::Globals,
}

impl<H: HandlerAbi> Shared<H> {
    pub(crate) fn host(&self) -> &dyn LuoHost {
        &*self.host
    }
}

/// One registered `struct liveupdate_file_handler`, followed by the way back to its handler.
/// `#[repr(C)]` with the raw struct first, so the pointer the core gets is also a pointer to
/// the entry (`container_of`).
#[repr(C)]
pub struct HandlerEntry<R> {
    pub(super) raw: R,
    pub(super) shared: *const c_void,
}

impl<R> HandlerEntry<R> {
    /// The `struct liveupdate_file_handler *` of this entry. Made from the whole entry, not
    /// from its `raw` field: the runtime reads past `raw` (`container_of`), which a pointer
    /// derived from the field alone would not allow.
    pub(super) fn as_raw(&self) -> *mut R {
        core::ptr::from_ref(self).cast_mut().cast::<R>()
    }
}

/// A Rust handler ready to be registered: its raw handler structs (one per version) with
/// stable addresses, the handler value, the host, and its global state.
///
/// The core keeps pointers into both allocations for as long as the handler is registered,
/// while the registration itself moves (into the kernel that owns it). So they are held as raw
/// pointers from `Box::into_raw`, not as `Box`es: moving a `Box` asserts unique access to its
/// allocation, which would invalidate the pointers the core holds.
pub struct Registration<H: HandlerAbi> {
    pub(super) entries: NonNull<[HandlerEntry<H::Raw>]>,
    pub(super) shared: NonNull<Shared<H>>,
    /// FLBs linked at run time ([`Registration::link_flb`]), kept alive with the registration.
    pub(super) linked: Vec<LinkedFlb>,
}

/// An FLB linked to a registration at run time: its raw struct and the cell that owns it.
pub(super) struct LinkedFlb {
    pub(super) raw: RawFlb,
    pub(super) _cell: Arc<dyn core::any::Any + Send + Sync>,
}

// SAFETY: the entries are immutable after construction; their raw pointers point to `'static`
// ops tables and into `shared`, which is `Send + Sync` when `H` and its globals are.
unsafe impl<H: HandlerAbi> Send for Registration<H> {}
// SAFETY: as above; nothing is mutated through `&Registration`.
unsafe impl<H: HandlerAbi> Sync for Registration<H> {}

impl<H: HandlerAbi> Drop for Registration<H> {
    fn drop(&mut self) {
        // SAFETY: both were leaked from `Box`es in `new` and are freed only here; the kernel
        // that owned the registration no longer calls through them.
        unsafe {
            drop(Box::from_raw(self.entries.as_ptr()));
            drop(Box::from_raw(self.shared.as_ptr()));
        }
    }
}

impl<H: HandlerAbi> Registration<H> {
    /// Builds the registration of `handler`, run by `host`, with its declared global state
    /// (`()` if none; else a tuple in declaration order: the handler-scoped state's
    /// [`HandlerStateCell`] first, then each FLB's and subsystem's `Arc` cell).
    pub fn new(handler: H, host: Arc<dyn LuoHost>, globals: H::Globals) -> Self {
        let shared = NonNull::from(Box::leak(Box::new(Shared {
            handler,
            host,
            globals,
        })));
        let sp = shared.as_ptr() as *const c_void;
        let entries = H::entries()
            .iter()
            .map(|&raw| HandlerEntry { raw, shared: sp })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Registration {
            entries: NonNull::from(Box::leak(entries)),
            shared,
            linked: Vec::new(),
        }
    }

    pub(super) fn entries(&self) -> &[HandlerEntry<H::Raw>] {
        // SAFETY: leaked in `new`, freed only in `drop`; never written after construction.
        unsafe { self.entries.as_ref() }
    }

    pub(super) fn shared(&self) -> &Shared<H> {
        // SAFETY: as for `entries`; `Shared` is only ever read through shared references.
        unsafe { self.shared.as_ref() }
    }

    /// The raw handlers to pass to `liveupdate_register_file_handler`: the writer first, then
    /// one per version read.
    pub fn raw_handlers(&self) -> Vec<*mut H::Raw> {
        self.entries().iter().map(HandlerEntry::as_raw).collect()
    }

    /// The raw handlers of a kernel that reads only the versions in `reads` of those the
    /// handler can read: the writer, then the readers chosen, in declaration order.
    /// `-EINVAL` if `reads` names a version the handler does not read.
    pub fn raw_handlers_reading(&self, reads: &[&str]) -> Result<Vec<*mut H::Raw>> {
        if let Some(_unknown) = reads.iter().find(|r| !H::READS.contains(r)) {
            return Err(Errno::EINVAL);
        }
        Ok(self
            .entries()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || H::READS.get(i - 1).is_some_and(|r| reads.contains(r)))
            .map(|(_, e)| e.as_raw())
            .collect())
    }

    /// The writer's raw handler.
    pub fn raw(&self) -> *mut H::Raw {
        self.entries()[0].as_raw()
    }

    /// The `liveupdate_fh_global_state_ops` to register (`liveupdate_fh_global_state_register`)
    /// for **every** raw handler, if the handler declared handler-scoped state. All entries
    /// share one state cell, so state handed over by an older version (registered under that
    /// version's compatible string) is restored through the reader entry of that version.
    pub fn state_ops(&self) -> Option<*const c_void> {
        let p = H::state_ops();
        (!p.is_null()).then_some(p)
    }

    /// The raw FLBs to link with every raw handler (`liveupdate_register_flb`): the declared
    /// ones (`flbs = [...]`), then those linked with [`Registration::link_flb`].
    pub fn flbs(&self) -> Vec<RawFlb> {
        let mut flbs = H::flbs(&self.shared().globals);
        flbs.extend(self.linked.iter().map(|l| l.raw));
        flbs
    }

    /// The handler value.
    pub fn handler(&self) -> &H {
        &self.shared().handler
    }

    /// The declared global state.
    pub fn globals(&self) -> &H::Globals {
        &self.shared().globals
    }

    /// The handler-scoped state, outside any callback (e.g. at init); a `get` while this task
    /// runs one of the state's callbacks or holds its guard gives `-EDEADLK`.
    pub fn state(&self) -> StateAccess<'_, H::State>
    where
        H::State: crate::global::DeclaredState,
    {
        let cell = match H::state(&self.shared().globals) {
            Some(c) => c,
            None => unreachable_state(),
        };
        StateAccess {
            cell,
            host: &*self.shared().host,
            fh: self.raw().cast(),
        }
    }
}

impl<H: HandlerAbi> Registration<H> {
    /// Links `flb` with every raw handler of this registration as well, for an FLB chosen at
    /// run time rather than declared in `flbs = [...]`: the kernel configuration decides
    /// whether HugeTLB's pools cross as an FLB or as a subsystem, so its handlers link the
    /// FLB only in the first case.
    ///
    /// The core then treats it exactly as a declared FLB (preserved with the first dependent
    /// file, finished with the last); the registration keeps the cell alive. [`Ctx::global`]
    /// reaches declared state only: the handler keeps its own `Arc` of a linked cell (it chose
    /// it) and takes guards from that. Linking an FLB twice, or one the handler also declares,
    /// makes the registration fail (`-EEXIST` from the core).
    #[must_use = "the registration must still be registered"]
    pub fn link_flb<S: crate::global::FlbState>(
        mut self,
        flb: Arc<crate::global::FlbCell<S>>,
    ) -> Self {
        let raw = flb.raw();
        self.linked.push(LinkedFlb { raw, _cell: flb });
        self
    }
}
