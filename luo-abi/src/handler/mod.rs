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
use alloc::vec::Vec;
use core::ffi::c_void;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::errno::{Errno, Result};
use crate::features::FeatureDecl;
use crate::file::{File, FileHead, FileId, FileRef};
use crate::global::{Global, HandlerState, HandlerStateCell, NoState, StateOwner};
use crate::host::{LuoHost, RawFlb, RawSession};
use crate::kho::{KhoExt, KhoService};
use crate::phys::{Phys, PhysAddr};
use crate::record::{read_ser, Claimed};

mod ctx;
mod registration;

pub use ctx::*;
pub use registration::*;

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

// SAFETY: `state_cell` returns the cell of `fh`'s own registration (`rt::shared`).
unsafe impl<H: HandlerAbi> StateOwner for H {
    type State = H::State;

    unsafe fn state_cell<'a>(
        fh: *mut c_void,
    ) -> Option<(&'a HandlerStateCell<H::State>, &'a dyn LuoHost)> {
        // SAFETY: the caller's contract: `fh` is a raw handler of a live registration of `H`.
        let s = unsafe { rt::shared::<H>(fh) };
        H::state(&s.globals).map(|c| (c, s.host()))
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

/// [`NoState`] is the `State` of a handler without handler-scoped state.
pub type NoHandlerState = NoState;

// The module docs carry the `# Safety` section shared by every function.
#[allow(clippy::missing_safety_doc)]
pub mod rt;
