// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The typed context a handler callback gets ([`Ctx`]): KHO, the host, the session, the
//! handler's declared global state, its record and its features.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ffi::c_void;
use core::marker::PhantomData;

use zerocopy::{FromBytes, IntoBytes};

use crate::errno::{Errno, Result};
use crate::features::Feature;
use crate::file::{File, FileRef};
use crate::global::{Global, HandlerState, HandlerStateCell};
use crate::host::{LuoHost, RawSession};
use crate::kho::KhoService;
use crate::phys::PhysAddr;

use super::*;

/// The typed context of a handler callback: KHO, the host, the global state the handler
/// declared, and (for a feature-negotiated ABI) the features used.
///
/// Not `Send`, and borrowed for the duration of the callback only, so guards obtained through
/// it cannot leave the callback or its thread.
pub struct Ctx<'a, H: HandlerAbi> {
    pub(super) shared: &'a Shared<H>,
    pub(super) raw: *mut c_void,
    pub(super) session: RawSession,
    /// `serialized_data` of the file this callback runs for (0 in `preserve`).
    pub(super) handle: u64,
    pub(super) active: Cell<u64>,
    /// Bytes written after the ABI struct ([`Ctx::set_trailer`]).
    pub(super) trailer: Cell<Vec<u8>>,
    /// The handed-over record this callback may read ([`Ctx::read_record`]).
    pub(super) record: Cell<Record>,
    pub(super) _not_send: PhantomData<*mut ()>,
}

/// A handed-over record as [`Ctx::read_record`] sees it: `len` readable bytes at `at`, of
/// which the first `header` are the ABI struct. `len == 0`: no record.
#[derive(Clone, Copy, Default)]
pub(super) struct Record {
    pub(super) at: u64,
    pub(super) len: usize,
    pub(super) header: usize,
}

impl<'a, H: HandlerAbi> Ctx<'a, H> {
    pub(super) fn new(
        shared: &'a Shared<H>,
        raw: *mut c_void,
        session: RawSession,
        handle: u64,
        active: u64,
    ) -> Self {
        Ctx {
            shared,
            raw,
            session,
            handle,
            active: Cell::new(active),
            trailer: Cell::new(Vec::new()),
            record: Cell::new(Record::default()),
            _not_send: PhantomData,
        }
    }

    /// From `preserve`: bytes the runtime writes right after the ABI struct, in the same
    /// allocation, for a variable-length record (a header followed by entries, such as
    /// `struct iommufd_ser` and its `iommufd_hwpt_ser` array). The new kernel reads them with
    /// [`Ctx::record_entries`]. Ignored by the other callbacks.
    pub fn set_trailer(&self, bytes: Vec<u8>) {
        self.trailer.set(bytes);
    }

    /// Reads `buf.len()` bytes at `offset` into this callback's handed-over record (the ABI
    /// struct first, then what follows it): in `retrieve` and in `finish` of a file never
    /// retrieved, within the folio the runtime claimed; in `can_finish` of a file never
    /// retrieved, within the record's first page when KHO reports it handed over and still
    /// unclaimed ([`KhoService::is_incoming`]), read without claiming it (the record is
    /// claimed once, by `finish`; upstream's `can_finish` reads `serialized_data` the same
    /// way). `-EINVAL` outside those bounds or in other callbacks.
    pub fn read_record(&self, offset: usize, buf: &mut [u8]) -> Result {
        let r = self.record.get();
        let end = offset.checked_add(buf.len()).ok_or(Errno::EINVAL)?;
        if r.len == 0 || end > r.len {
            return Err(Errno::EINVAL);
        }
        let at = PhysAddr::new(r.at)
            .checked_add(offset as u64)
            .ok_or(Errno::EINVAL)?;
        self.kho().read(at, buf)
    }

    /// The `n` entries of `E` that follow the ABI struct in this callback's record (see
    /// [`Ctx::read_record`] for where a record can be read); `-EINVAL` if they do not fit.
    pub fn record_entries<E: FromBytes + IntoBytes>(&self, n: usize) -> Result<Vec<E>> {
        let header = self.record.get().header;
        let size = size_of::<E>();
        let len = n.checked_mul(size).ok_or(Errno::EINVAL)?;
        if header
            .checked_add(len)
            .is_none_or(|end| end > self.record.get().len)
        {
            return Err(Errno::EINVAL);
        }
        let mut buf = alloc::vec![0u8; len];
        self.read_record(header, &mut buf)?;
        buf.chunks_exact(size.max(1))
            .take(n)
            .map(|c| E::read_from_bytes(c).map_err(|_| Errno::EINVAL))
            .collect()
    }

    pub(super) fn set_record(&self, at: u64, len: usize, header: usize) {
        self.record.set(Record { at, len, header });
    }

    /// The handle of this file's handed-over record (`serialized_data`; 0 in `preserve`): the
    /// file's identity across its callbacks, also after the record was released (a failed
    /// retrieve). Only an identity: the record is reached through the typed arguments and
    /// [`Ctx::read_record`], never through this address.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// The session this callback runs for: the outgoing one in `preserve`, `unpreserve`,
    /// `freeze` and `unfreeze`, the incoming one in `retrieve`, `can_finish` and `finish`.
    pub fn session(&self) -> Session<'a> {
        Session {
            host: &*self.shared.host,
            raw: self.session,
            _not_send: PhantomData,
        }
    }

    /// `memfd_alloc_file(name, flags)` in the kernel running this handler.
    pub fn memfd_alloc_file(&self, name: &str, flags: u32) -> Result<FileRef> {
        self.shared.host.memfd_alloc_file(name, flags)
    }

    /// A new synthetic file of `kind` around `payload` (what a `retrieve` of a file without a
    /// host counterpart returns); the payload comes back through [`File::payload`].
    pub fn open_synthetic(
        &self,
        kind: crate::file::FileKind,
        name: &str,
        payload: Box<dyn core::any::Any + Send + Sync>,
    ) -> Result<FileRef> {
        self.shared.host.open_synthetic(kind, name, payload)
    }

    /// The KHO service.
    pub fn kho(&self) -> &'a dyn KhoService {
        self.shared.host.kho()
    }

    /// The core.
    pub fn host(&self) -> &'a dyn LuoHost {
        &*self.shared.host
    }

    /// The cell of an FLB or subsystem this handler declared (`flbs = [...]`,
    /// `subsystems = [...]`); get guards from it.
    pub fn global<S: Global>(&self) -> &'a S::Cell
    where
        H: Uses<S>,
    {
        H::global(&self.shared.globals)
    }

    /// The handler-scoped global state this handler declared (`state = ...`).
    pub fn state(&self) -> StateAccess<'a, H::State>
    where
        H::State: crate::global::DeclaredState,
    {
        let cell = match H::state(&self.shared.globals) {
            Some(c) => c,
            // The macro returns the cell for every declared state; `NoState` is not
            // `DeclaredState`, so this arm is unreachable in practice.
            None => unreachable_state(),
        };
        StateAccess {
            cell,
            host: &*self.shared.host,
            fh: self.raw,
        }
    }

    /// Marks `feature` as used (or not) in the struct this callback writes.
    pub fn set_feature(&self, feature: Feature, used: bool) {
        let m = feature.mask();
        let a = self.active.get();
        self.active.set(if used { a | m } else { a & !m });
    }

    /// The features marked as used so far.
    pub fn features(&self) -> u64 {
        self.active.get()
    }
}

/// The session of a file callback ([`Ctx::session`]): file-to-file dependencies.
///
/// A handler that declares `depends_on = [...]` names, at preserve or freeze, the files its
/// file depends on by their tokens in the same session, and gets them back at retrieve; the
/// core records the dependencies and retrieves dependencies first.
#[derive(Clone, Copy)]
pub struct Session<'a> {
    pub(super) host: &'a dyn LuoHost,
    pub(super) raw: RawSession,
    pub(super) _not_send: PhantomData<*mut ()>,
}

impl<'a> Session<'a> {
    /// `liveupdate_get_token_outgoing`: the token of `file` in this outgoing session (see
    /// [`LuoHost::get_token_outgoing`] for the errors).
    pub fn get_token_outgoing(&self, file: &dyn File) -> Result<u64> {
        self.host.get_token_outgoing(self.raw, file)
    }

    /// `liveupdate_get_file_incoming`: the file preserved under `token` in this incoming
    /// session, retrieved first if needed (see [`LuoHost::get_file_incoming`] for the errors).
    pub fn get_file_incoming(&self, token: u64) -> Result<FileRef> {
        self.host.get_file_incoming(self.raw, token)
    }
}

#[cold]
pub(super) fn unreachable_state() -> ! {
    unreachable!("a handler with declared state always has its cell")
}

/// Access to a handler's handler-scoped state, from [`Ctx::state`].
pub struct StateAccess<'a, S: HandlerState> {
    pub(super) cell: &'a HandlerStateCell<S>,
    pub(super) host: &'a dyn LuoHost,
    pub(super) fh: *mut c_void,
}

impl<'a, S: HandlerState> StateAccess<'a, S> {
    /// The outgoing state, holding the handler-scoped lock until the guard drops
    /// (`liveupdate_fh_global_state_get` … `_put`). The core creates the state on the first
    /// preserve or the first get, whichever comes first (one no preserved file counts in is
    /// destroyed on the reboot path, not handed over); the host's error otherwise, and
    /// `-EDEADLK` from the state's own callbacks or while this task holds a guard of it.
    pub fn get_outgoing(&self) -> Result<crate::global::StateOutgoing<'a, S>> {
        self.cell.get_outgoing(self.host, self.fh)
    }

    /// The incoming state (restored before first access), holding the handler-scoped lock
    /// until the guard drops; `-ENODATA` without handed-over state, `-EDEADLK` as for
    /// [`StateAccess::get_outgoing`].
    pub fn get_incoming(&self) -> Result<crate::global::StateIncoming<'a, S>> {
        self.cell.get_incoming(self.host, self.fh)
    }
}
