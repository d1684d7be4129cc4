// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! File handlers in Rust: the trait a handler implements, the typed context its callbacks get,
//! the registration the core links, and the runtime behind the generated trampolines.
//!
//! A handler is a struct annotated with `#[liveupdate_handler(compatible = "...", abi = ...)]`
//! plus an `impl FileHandler for ...` annotated with `#[liveupdate_handler]`:
//!
//! ```ignore
//! #[liveupdate_handler(compatible = "memfd-v2", abi = luo_generated::memfd::v2::memfd_luo_ser,
//!                      reads = ["memfd-v1"])]
//! pub struct Memfd;
//!
//! #[liveupdate_handler]
//! impl FileHandler for Memfd {
//!     fn can_preserve(&self, file: &dyn File) -> bool { .. }
//!     fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(memfd_luo_ser, ())> { .. }
//!     // unpreserve, retrieve, finish (required); freeze, unfreeze, can_finish, get_id (optional)
//! }
//! ```
//!
//! The struct attribute implements [`HandlerAbi`] (compatible string, ABI type, versions read,
//! linked global state) and builds the **generated** `liveupdate_file_ops` table, one per
//! version, with `Some(trampoline)` for each callback the impl defines and `None` (NULL) for
//! the optional ones it does not. The impl attribute sets the `HAS_*` constants, as the
//! kernel's `#[vtable]` does, and rejects an impl that lacks a required callback.
//!
//! # What the runtime does around a callback
//!
//! | C op | runtime |
//! |---|---|
//! | `preserve` | calls [`FileHandler::preserve`]; writes the returned ABI struct (followed by the bytes of [`Ctx::set_trailer`], if any: a variable-length record) into memory from [`KhoService::alloc_preserve`] and hands its physical address to the core as `serialized_data`; boxes the private data into `private_data` |
//! | `unpreserve` | reads the struct back, calls the handler with it and the private data, frees the preserved memory |
//! | `freeze` / `unfreeze` | read the struct; `freeze` may change it and the runtime writes it back in place |
//! | `retrieve` | reads the struct (for a version read, reads the old type and runs the handler's [`Migrate`]), validates it (reserved fields, feature negotiation) and passes it typed; the returned file goes to the core through [`LuoHost::file_into_raw`] |
//! | `retrieve` (record) | claims the record before reading it and releases it after the callback; [`Ctx::record_entries`] / [`Ctx::read_record`] read what follows the struct, within the claimed folio |
//! | `can_finish` | gets no record; for a file never retrieved, [`Ctx::read_record`] may read its first page without claiming it, if KHO reports the page handed over and unclaimed |
//! | `finish` | for a file never retrieved, claims the record, validates it, passes it ([`Finish::NotRetrieved`]) and releases it afterwards |
//!
//! Errors become `-errno`; a panic becomes `-EIO` / `false` / nothing (see [`crate::ffi`]).

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::features::{Feature, FeatureDecl};
use crate::file::{File, FileHead, FileId, FileRef};
use crate::global::{Global, HandlerState, HandlerStateCell, NoState};
use crate::host::{LuoHost, RawFlb, RawSession};
use crate::kho::{KhoExt, KhoService};
use crate::phys::{Phys, PhysAddr};

/// What the previous kernel's retrieve attempt gave, as `retrieve_status` tells
/// `can_finish` and `finish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrieveStatus {
    /// The file was never retrieved (`0`); its state must still be released.
    NotRetrieved,
    /// `retrieve` succeeded (`> 0`).
    Retrieved,
    /// `retrieve` failed with this error (`< 0`).
    Failed(Errno),
}

impl RetrieveStatus {
    /// Decodes `retrieve_status`.
    pub const fn from_raw(status: i32) -> RetrieveStatus {
        if status == 0 {
            RetrieveStatus::NotRetrieved
        } else if status > 0 {
            RetrieveStatus::Retrieved
        } else {
            match Errno::from_neg(status) {
                Some(e) => RetrieveStatus::Failed(e),
                None => RetrieveStatus::Failed(Errno::EINVAL),
            }
        }
    }
}

/// The ABI side of a handler; implemented by `#[liveupdate_handler(...)]` on the struct.
///
/// # Safety
///
/// Implemented only by the macro: [`HandlerAbi::entries`] must be the generated
/// `liveupdate_file_handler` structs whose ops tables call this crate's runtime for `Self`.
pub unsafe trait HandlerAbi: Sized + Send + Sync + 'static {
    /// The ABI struct this handler writes (`abi = ...`).
    type Ser: FromBytes + IntoBytes + Immutable + Copy + 'static;
    /// What `retrieve`, `can_finish` and `finish` receive: `Self::Ser`, or
    /// [`crate::features::Negotiated`] for a feature-negotiated ABI.
    type Read;
    /// The handler-scoped global state (`state = ...`), or [`NoState`].
    type State: HandlerState;
    /// The FLBs and subsystems the handler declared (`flbs = [...]`, `subsystems = [...]`), as
    /// a tuple of their cells, in declaration order.
    type Globals: Send + Sync + 'static;
    /// The generated `liveupdate_file_handler`.
    type Raw: Copy + 'static;

    /// The compatible string written (or the versionless name of a feature-negotiated ABI).
    const COMPATIBLE: &'static str;
    /// The compatible strings of the older versions read (`reads = [...]`).
    const READS: &'static [&'static str];
    /// The declared features of a feature-negotiated ABI.
    const FEATURES: Option<FeatureDecl>;

    /// The raw handler structs: the writer first, then one per version read.
    fn entries() -> &'static [Self::Raw];

    /// The generated `liveupdate_fh_global_state_ops` of the handler-scoped state, or NULL.
    fn state_ops() -> *const c_void;

    /// Validates a struct of the current version and turns it into what the handler reads.
    fn decode(ser: Self::Ser) -> Result<Self::Read>;

    /// Finishes a struct about to be written: the feature header, inactive fields zeroed.
    fn encode(ser: &mut Self::Ser, active: u64);

    /// The features active in a struct this handler wrote (0 without features).
    fn active_of(ser: &Self::Ser) -> u64;

    /// The handler-scoped state cell inside the globals, if the handler declared one.
    fn state(globals: &Self::Globals) -> Option<&HandlerStateCell<Self::State>>;

    /// The raw FLBs to link with this handler (`liveupdate_register_flb`).
    fn flbs(globals: &Self::Globals) -> Vec<RawFlb>;
}

/// The callbacks of a file handler (`struct liveupdate_file_ops`).
///
/// Required: `can_preserve`, `preserve`, `unpreserve`, `retrieve`, `finish`. Optional: `freeze`,
/// `unfreeze`, `can_finish`, `get_id`. Implement it under `#[liveupdate_handler]`, which sets
/// the `HAS_*` constants; the default bodies are never called (the table holds NULL instead).
pub trait FileHandler: HandlerAbi {
    /// Runtime data kept with a preserved file and not handed over (`private_data`); `()` if
    /// the impl does not say.
    type Private: Send + 'static;

    /// Set by `#[liveupdate_handler]` on the impl; an impl without the attribute fails to
    /// compile for lack of it.
    const USE_LIVEUPDATE_HANDLER_ATTR: ();

    /// Whether the impl defines `can_preserve`.
    const HAS_CAN_PRESERVE: bool = false;
    /// Whether the impl defines `preserve`.
    const HAS_PRESERVE: bool = false;
    /// Whether the impl defines `unpreserve`.
    const HAS_UNPRESERVE: bool = false;
    /// Whether the impl defines `freeze`.
    const HAS_FREEZE: bool = false;
    /// Whether the impl defines `unfreeze`.
    const HAS_UNFREEZE: bool = false;
    /// Whether the impl defines `retrieve`.
    const HAS_RETRIEVE: bool = false;
    /// Whether the impl defines `can_finish`.
    const HAS_CAN_FINISH: bool = false;
    /// Whether the impl defines `finish`.
    const HAS_FINISH: bool = false;
    /// Whether the impl defines `get_id`.
    const HAS_GET_ID: bool = false;

    /// Whether this handler can preserve `file` (cheap; the first handler saying yes wins).
    fn can_preserve(&self, file: &dyn File) -> bool {
        let _ = file;
        false
    }

    /// Serializes `file`: returns the ABI struct to hand over and the private data to keep.
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(Self::Ser, Self::Private)> {
        let _ = (cx, file);
        Err(Errno::EOPNOTSUPP)
    }

    /// Undoes `preserve` (the outgoing session was closed before the live update).
    fn unpreserve(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        ser: Self::Ser,
        private: Self::Private,
    ) {
        let _ = (cx, file, ser, private);
    }

    /// Last update on the reboot path; changes to `ser` are written back.
    fn freeze(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        ser: &mut Self::Ser,
        private: &mut Self::Private,
    ) -> Result {
        let _ = (cx, file, ser, private);
        Ok(())
    }

    /// Undoes `freeze` when a later freeze fails.
    fn unfreeze(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        ser: &Self::Ser,
        private: &mut Self::Private,
    ) {
        let _ = (cx, file, ser, private);
    }

    /// In the new kernel, rebuilds the file from the validated handed-over state.
    fn retrieve(&self, cx: &Ctx<'_, Self>, data: Self::Read) -> Result<FileRef> {
        let _ = (cx, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// Whether FINISH may proceed for this file (asked for every file of the session before
    /// any `finish`). `file` is the retrieved file, if any. Gets no record: a record not yet
    /// retrieved is claimed only once, by `finish`.
    fn can_finish(
        &self,
        cx: &Ctx<'_, Self>,
        file: Option<&dyn File>,
        status: RetrieveStatus,
    ) -> bool {
        let _ = (cx, file, status);
        true
    }

    /// Releases what is left of the handed-over state once the session finishes; `how` says
    /// whether the file was retrieved, never retrieved (then it carries the record), or
    /// failed to retrieve.
    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, Self::Read>) {
        let _ = (cx, how);
    }

    /// The identity of the object behind `file` (double-preservation key). No `self`: the C
    /// op gets only the file.
    fn get_id(file: &dyn File) -> FileId {
        file.id()
    }
}

/// How a handed-over file ends, as [`FileHandler::finish`] sees it.
///
/// The runtime claims a file's record from KHO exactly once: at `retrieve` (and releases it
/// there, whatever the outcome) or, for a file never retrieved, at `finish`. So only
/// [`Finish::NotRetrieved`] carries the record, claimed and validated; the runtime releases
/// it after `finish` returns.
pub enum Finish<'a, R> {
    /// `retrieve` succeeded: the file it built owns the state now.
    Retrieved(&'a dyn File),
    /// The file was never retrieved: release what the record names (upstream's memfd frees
    /// its folios here).
    NotRetrieved(R),
    /// `retrieve` failed with this error; its record was released then.
    Failed(Errno),
}

impl<R> Finish<'_, R> {
    /// The [`RetrieveStatus`] this outcome corresponds to.
    pub fn status(&self) -> RetrieveStatus {
        match self {
            Finish::Retrieved(_) => RetrieveStatus::Retrieved,
            Finish::NotRetrieved(_) => RetrieveStatus::NotRetrieved,
            Finish::Failed(e) => RetrieveStatus::Failed(*e),
        }
    }
}

/// A migration from an older version's ABI struct to the one this handler reads, for each
/// `reads = [...]` entry.
#[diagnostic::on_unimplemented(
    message = "handler `{Self}` reads an older version (`{Old}`) but has no migration from it",
    label = "this version needs a migration",
    note = "implement `luo_abi::handler::Migrate<{Old}>` for `{Self}`: `fn migrate(&self, old: {Old}) -> luo_abi::Result<Self::Ser>`"
)]
pub trait Migrate<Old>: HandlerAbi {
    /// Converts an older struct into the current one (fill new fields with what the old
    /// kernel implied).
    fn migrate(&self, old: Old) -> Result<Self::Ser>;
}

/// How one registered version reads its handed-over data (the writer's own version is
/// [`Current`]; `#[liveupdate_handler]` generates one type per version read).
pub trait ReadAs<H: HandlerAbi> {
    /// The size of the struct this version hands over.
    const SIZE: usize;
    /// Reads, validates and (for an older version) migrates the struct at `data`.
    fn read(handler: &H, kho: &dyn KhoService, data: u64) -> Result<H::Read>;
}

/// Reads the handler's own version.
pub struct Current;

impl<H: HandlerAbi> ReadAs<H> for Current {
    const SIZE: usize = size_of::<H::Ser>();
    fn read(_: &H, kho: &dyn KhoService, data: u64) -> Result<H::Read> {
        let ser = read_ser::<H::Ser>(kho, data)?;
        H::decode(ser)
    }
}

/// Reads a `T` from preserved memory at the handle `data` (`EINVAL` for a NULL handle).
pub fn read_ser<T: FromBytes + IntoBytes>(kho: &dyn KhoService, data: u64) -> Result<T> {
    if data == 0 {
        return Err(Errno::EINVAL);
    }
    kho.read_obj(Phys::<T>::new(PhysAddr::new(data)))
}

/// The typed context of a handler callback: KHO, the host, the global state the handler
/// declared, and (for a feature-negotiated ABI) the features used.
///
/// Not `Send`, and borrowed for the duration of the callback only, so guards obtained through
/// it cannot leave the callback or its thread.
pub struct Ctx<'a, H: HandlerAbi> {
    shared: &'a Shared<H>,
    raw: *mut c_void,
    session: RawSession,
    /// `serialized_data` of the file this callback runs for (0 in `preserve`).
    handle: u64,
    active: Cell<u64>,
    /// Bytes written after the ABI struct ([`Ctx::set_trailer`]).
    trailer: Cell<Vec<u8>>,
    /// The handed-over record this callback may read ([`Ctx::read_record`]).
    record: Cell<Record>,
    _not_send: PhantomData<*mut ()>,
}

/// A handed-over record as [`Ctx::read_record`] sees it: `len` readable bytes at `at`, of
/// which the first `header` are the ABI struct. `len == 0`: no record.
#[derive(Clone, Copy, Default)]
struct Record {
    at: u64,
    len: usize,
    header: usize,
}

impl<'a, H: HandlerAbi> Ctx<'a, H> {
    fn new(
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

    fn set_record(&self, at: u64, len: usize, header: usize) {
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
    host: &'a dyn LuoHost,
    raw: RawSession,
    _not_send: PhantomData<*mut ()>,
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
fn unreachable_state() -> ! {
    unreachable!("a handler with declared state always has its cell")
}

/// Access to a handler's handler-scoped state, from [`Ctx::state`].
pub struct StateAccess<'a, S: HandlerState> {
    cell: &'a HandlerStateCell<S>,
    host: &'a dyn LuoHost,
    fh: *mut c_void,
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

/// A handler declared global state `S` (`flbs = [...]` or `subsystems = [...]`).
///
/// # Safety
///
/// Implemented by `#[liveupdate_handler]` only.
#[diagnostic::on_unimplemented(
    message = "handler `{Self}` did not declare the global state `{S}`",
    label = "not declared by this handler",
    note = "a handler gets only the global state it declares: add `{S}` to `flbs = [...]` or `subsystems = [...]` in its #[liveupdate_handler(...)]"
)]
pub unsafe trait Uses<S: Global>: HandlerAbi {
    /// The cell of `S` inside the globals.
    fn global(globals: &Self::Globals) -> &S::Cell;
}

/// Everything a trampoline reaches from a `struct liveupdate_file_handler *`.
pub(crate) struct Shared<H: HandlerAbi> {
    handler: H,
    host: Arc<dyn LuoHost>,
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
    raw: R,
    shared: *const c_void,
}

impl<R> HandlerEntry<R> {
    /// The `struct liveupdate_file_handler *` of this entry. Made from the whole entry, not
    /// from its `raw` field: the runtime reads past `raw` (`container_of`), which a pointer
    /// derived from the field alone would not allow.
    fn as_raw(&self) -> *mut R {
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
    entries: NonNull<[HandlerEntry<H::Raw>]>,
    shared: NonNull<Shared<H>>,
    /// FLBs linked at run time ([`Registration::link_flb`]), kept alive with the registration.
    linked: Vec<LinkedFlb>,
}

/// An FLB linked to a registration at run time: its raw struct and the cell that owns it.
struct LinkedFlb {
    raw: RawFlb,
    _cell: Arc<dyn core::any::Any + Send + Sync>,
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

    fn entries(&self) -> &[HandlerEntry<H::Raw>] {
        // SAFETY: leaked in `new`, freed only in `drop`; never written after construction.
        unsafe { self.entries.as_ref() }
    }

    fn shared(&self) -> &Shared<H> {
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

/// A handed-over record claimed from KHO (`kho_restore_folio`), released (freed) on drop.
///
/// KHO refuses an address that is not an incoming preserved folio, so a corrupt
/// `serialized_data` is never read, and a record is claimed once: a second claim fails.
pub(crate) struct Claimed<'a> {
    kho: &'a dyn KhoService,
    at: PhysAddr,
    order: u32,
    /// The bytes of the claimed folio: what a callback may read of the record.
    bytes: usize,
}

impl<'a> Claimed<'a> {
    pub(crate) fn new(kho: &'a dyn KhoService, data: u64, size: usize) -> Result<Claimed<'a>> {
        if data == 0 {
            return Err(Errno::EINVAL);
        }
        let at = PhysAddr::new(data);
        let order = kho.restore_folio(at)?;
        let bytes = 1usize
            .checked_shl(order)
            .and_then(|n| n.checked_mul(crate::PAGE_SIZE))
            .unwrap_or(0);
        let c = Claimed {
            kho,
            at,
            order,
            bytes,
        };
        // A folio smaller than the record would make the read stray past it.
        if bytes < size {
            return Err(Errno::EINVAL);
        }
        Ok(c)
    }

    /// The bytes of the claimed folio.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        // Nothing to report from a release; KHO keeps its own accounting.
        let _ = self.kho.free_folio(self.at, self.order);
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

/// The runtime behind the trampolines `#[liveupdate_handler]` generates. Each function takes
/// the raw C arguments (as opaque pointers: this crate cannot name the generated structs),
/// never unwinds, and returns what the C op returns.
///
/// # Safety (all functions)
///
/// `handler` is a `struct liveupdate_file_handler *` from [`Registration::raw_handlers`] of a
/// live registration of `H`; `file` is NULL or a live file (a [`FileHead`]); `session` is the
/// callback's session (or NULL); out-pointers are valid for
/// writes.
// The module docs carry the `# Safety` section shared by every function.
#[allow(clippy::missing_safety_doc)]
pub mod rt {
    use super::*;

    pub(crate) unsafe fn shared<'a, H: HandlerAbi>(handler: *mut c_void) -> &'a Shared<H> {
        // SAFETY: per the module contract `handler` points to the `raw` field, at offset 0,
        // of a `HandlerEntry<H::Raw>` whose `shared` points to a live `Shared<H>`.
        unsafe {
            let entry = &*handler.cast::<HandlerEntry<H::Raw>>();
            &*entry.shared.cast::<Shared<H>>()
        }
    }

    fn status(r: Result) -> i32 {
        crate::errno::to_neg(r)
    }

    const EIO: i32 = Errno::EIO.to_neg();

    /// `can_preserve`.
    pub unsafe fn can_preserve<H: FileHandler>(handler: *mut c_void, file: *mut c_void) -> bool {
        crate::ffi::catch(false, || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract.
            match unsafe { FileHead::borrow(file) } {
                Some(f) => s.handler.can_preserve(f),
                None => false,
            }
        })
    }

    /// `preserve`: on success sets `*data` to the handle of the written struct and
    /// `*private` to the boxed private data.
    pub unsafe fn preserve<H: FileHandler>(
        handler: *mut c_void,
        session: RawSession,
        file: *mut c_void,
        data: *mut u64,
        private: *mut *mut c_void,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract.
            let Some(f) = (unsafe { FileHead::borrow(file) }) else {
                return Errno::EBADF.to_neg();
            };
            let default = H::FEATURES.map_or(0, |d| d.active);
            let cx = Ctx::new(s, handler, session, 0, default);
            let (mut ser, p) = match s.handler.preserve(&cx, f) {
                Ok(v) => v,
                Err(e) => return e.to_neg(),
            };
            H::encode(&mut ser, cx.features());
            match write_record(cx.kho(), &ser, &cx.trailer.take()) {
                Ok(at) => {
                    // SAFETY: module contract (valid out-pointers).
                    unsafe {
                        *data = at;
                        *private = Box::into_raw(Box::new(p)).cast();
                    }
                    0
                }
                Err(e) => {
                    // The core will not call unpreserve for a failed preserve: undo it here.
                    s.handler.unpreserve(&cx, f, ser, p);
                    e.to_neg()
                }
            }
        })
    }

    /// `unpreserve`: frees the preserved struct and the private data, even if the handler
    /// panics.
    pub unsafe fn unpreserve<H: FileHandler>(
        handler: *mut c_void,
        session: RawSession,
        file: *mut c_void,
        data: u64,
        private: *mut *mut c_void,
    ) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract; the private box was made by `preserve`.
            let p = unsafe { take_private::<H>(private) };
            // SAFETY: module contract.
            let f = unsafe { FileHead::borrow(file) };
            let cx = Ctx::new(s, handler, session, data, 0);
            // One `dyn` call for the KHO service, used for the read and the free.
            let kho = cx.kho();
            if let (Some(f), Some(p), Ok(ser)) = (f, p, read_ser::<H::Ser>(kho, data)) {
                crate::ffi::catch((), || s.handler.unpreserve(&cx, f, ser, p));
            }
            if data != 0 {
                // `void` op: a KHO error here can only be dropped.
                let _ = kho.unpreserve_free(PhysAddr::new(data));
            }
        })
    }

    unsafe fn take_private<H: FileHandler>(private: *mut *mut c_void) -> Option<H::Private> {
        // SAFETY: caller contract.
        let p = unsafe { core::mem::replace(&mut *private, core::ptr::null_mut()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-NULL `private_data` of this handler is a `Box<H::Private>` leaked by
        // `preserve`, taken exactly once here.
        Some(*unsafe { Box::from_raw(p.cast::<H::Private>()) })
    }

    unsafe fn private_mut<'a, H: FileHandler>(private: *mut c_void) -> Option<&'a mut H::Private> {
        // SAFETY: caller contract: NULL or the live box leaked by `preserve`.
        unsafe { private.cast::<H::Private>().as_mut() }
    }

    /// `freeze`: changes the handler makes to the struct are written back in place.
    pub unsafe fn freeze<H: FileHandler>(
        handler: *mut c_void,
        session: RawSession,
        file: *mut c_void,
        data: *mut u64,
        private: *mut c_void,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract.
            let (Some(f), Some(p)) = (unsafe { FileHead::borrow(file) }, unsafe {
                private_mut::<H>(private)
            }) else {
                return Errno::EINVAL.to_neg();
            };
            // SAFETY: module contract.
            let handle = unsafe { *data };
            let r = (|| {
                let mut ser = read_ser::<H::Ser>(s.host.kho(), handle)?;
                let cx = Ctx::new(s, handler, session, handle, H::active_of(&ser));
                s.handler.freeze(&cx, f, &mut ser, p)?;
                H::encode(&mut ser, cx.features());
                cx.kho()
                    .write_obj(Phys::<H::Ser>::new(PhysAddr::new(handle)), &ser)
            })();
            status(r)
        })
    }

    /// `unfreeze`.
    pub unsafe fn unfreeze<H: FileHandler>(
        handler: *mut c_void,
        session: RawSession,
        file: *mut c_void,
        data: u64,
        private: *mut c_void,
    ) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract.
            let (Some(f), Some(p)) = (unsafe { FileHead::borrow(file) }, unsafe {
                private_mut::<H>(private)
            }) else {
                return;
            };
            if let Ok(ser) = read_ser::<H::Ser>(s.host.kho(), data) {
                let cx = Ctx::new(s, handler, session, data, H::active_of(&ser));
                s.handler.unfreeze(&cx, f, &ser, p);
            }
        })
    }

    /// `retrieve` for the version `V` this entry reads; sets `*file_out`. The record is
    /// claimed before it is read and released afterwards, whatever the outcome.
    pub unsafe fn retrieve<H: FileHandler, V: ReadAs<H>>(
        handler: *mut c_void,
        session: RawSession,
        data: u64,
        file_out: *mut *mut c_void,
    ) -> i32 {
        crate::ffi::catch(EIO, || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            let r = (|| {
                let record = Claimed::new(s.host.kho(), data, V::SIZE)?;
                let read = V::read(&s.handler, s.host.kho(), data)?;
                let cx = Ctx::new(s, handler, session, data, 0);
                cx.set_record(data, record.bytes(), V::SIZE);
                s.handler.retrieve(&cx, read)
            })();
            match r.and_then(|file| s.host.file_into_raw(file)) {
                Ok(raw) => {
                    // SAFETY: module contract (valid out-pointer).
                    unsafe { *file_out = raw };
                    0
                }
                Err(e) => e.to_neg(),
            }
        })
    }

    /// `can_finish`.
    pub unsafe fn can_finish<H: FileHandler, V: ReadAs<H>>(
        handler: *mut c_void,
        session: RawSession,
        file: *mut c_void,
        data: u64,
        status: i32,
    ) -> bool {
        crate::ffi::catch(false, || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract.
            let f = unsafe { FileHead::borrow(file) };
            let cx = Ctx::new(s, handler, session, data, 0);
            let status = RetrieveStatus::from_raw(status);
            // A record not retrieved is still the previous kernel's, unclaimed: its first
            // page may be read. A retrieved one was released at retrieve.
            // Only a page KHO says was handed over and is still unclaimed: a corrupt
            // `serialized_data` leaves the record unreadable rather than read stray memory.
            if status == RetrieveStatus::NotRetrieved
                && data != 0
                && PhysAddr::new(data).is_page_aligned()
                && s.host.kho().is_incoming(PhysAddr::new(data))
            {
                cx.set_record(data, crate::PAGE_SIZE, V::SIZE);
            }
            s.handler.can_finish(&cx, f, status)
        })
    }

    /// `finish`: for a file never retrieved, claims the record, passes it to the handler and
    /// releases it afterwards, even if it did not validate or the handler panicked.
    pub unsafe fn finish<H: FileHandler, V: ReadAs<H>>(
        handler: *mut c_void,
        session: RawSession,
        file: *mut c_void,
        data: u64,
        status: i32,
    ) {
        crate::ffi::catch((), || {
            // SAFETY: module contract.
            let s = unsafe { shared::<H>(handler) };
            // SAFETY: module contract.
            let f = unsafe { FileHead::borrow(file) };
            let cx = Ctx::new(s, handler, session, data, 0);
            match RetrieveStatus::from_raw(status) {
                RetrieveStatus::Retrieved => {
                    if let Some(f) = f {
                        s.handler.finish(&cx, Finish::Retrieved(f));
                    }
                }
                RetrieveStatus::Failed(e) => s.handler.finish(&cx, Finish::Failed(e)),
                RetrieveStatus::NotRetrieved => {
                    let Ok(record) = Claimed::new(s.host.kho(), data, V::SIZE) else {
                        return;
                    };
                    cx.set_record(data, record.bytes(), V::SIZE);
                    if let Ok(read) = V::read(&s.handler, s.host.kho(), data) {
                        crate::ffi::catch((), || s.handler.finish(&cx, Finish::NotRetrieved(read)));
                    }
                }
            }
        })
    }

    /// Writes `ser`, then `trailer` right after it, to newly preserved memory; returns its
    /// address (the record's handle).
    fn write_record<T: IntoBytes + Immutable>(
        kho: &dyn KhoService,
        ser: &T,
        trailer: &[u8],
    ) -> Result<u64> {
        if trailer.is_empty() {
            return Ok(kho.alloc_preserve_obj(ser)?.addr().as_u64());
        }
        let size = size_of::<T>()
            .checked_add(trailer.len())
            .ok_or(Errno::ENOMEM)?;
        let at = kho.alloc_preserve(size)?;
        let w = kho.write_obj(Phys::<T>::new(at), ser).and_then(|()| {
            let tail = at.checked_add(size_of::<T>() as u64).ok_or(Errno::ENOMEM)?;
            kho.write(tail, trailer)
        });
        if let Err(e) = w {
            let _ = kho.unpreserve_free(at);
            return Err(e);
        }
        Ok(at.as_u64())
    }

    /// `get_id`; `0` for a NULL file or a panic.
    pub unsafe fn get_id<H: FileHandler>(file: *mut c_void) -> u64 {
        crate::ffi::catch(0, || {
            // SAFETY: module contract.
            match unsafe { FileHead::borrow(file) } {
                Some(f) => H::get_id(f).0,
                None => 0,
            }
        })
    }

    /// `can_preserve` of an entry that only reads an older version: never.
    pub fn reader_can_preserve() -> bool {
        false
    }

    /// `preserve` of an entry that only reads an older version: `-EOPNOTSUPP`.
    pub fn reader_preserve() -> i32 {
        Errno::EOPNOTSUPP.to_neg()
    }

    /// `unpreserve` of an entry that only reads an older version: nothing was preserved.
    pub fn reader_unpreserve() {}
}

/// [`NoState`] is the `State` of a handler without handler-scoped state.
pub type NoHandlerState = NoState;
