//! C code compiled by gcc against the generated `<linux/liveupdate.h>` (`c/check_table.c`,
//! built by `build.rs`) reads the ops tables the macros built: NULL exactly where an optional
//! callback is not implemented, the compatible strings, and calls through the table.

use std::ffi::CString;
use std::sync::Arc;

use luo_abi::file::FileCell;
use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{
    FlbCell, FlbState, HandlerState, HandlerStateCell, StateCtx, StateObj, Subsystem, SubsystemCell,
};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration, RetrieveStatus};
use luo_abi::host::LuoHost;
use luo_abi::{Errno, Result};
use luo_derive::{
    Abi, liveupdate_flb, liveupdate_global_state, liveupdate_handler, liveupdate_subsystem,
};
use luo_generated::liveupdate::file;
use luo_ui_tests::c;
use luo_ui_tests::core::MiniCore;
use luo_ui_tests::file::TestFile;
use luo_ui_tests::kho::VecKho;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct one_ser {
    v: u64,
}

// Bits of luo_c_file_ops_mask.
const CAN_PRESERVE: u32 = 1 << 0;
const PRESERVE: u32 = 1 << 1;
const UNPRESERVE: u32 = 1 << 2;
const FREEZE: u32 = 1 << 3;
const UNFREEZE: u32 = 1 << 4;
const RETRIEVE: u32 = 1 << 5;
const CAN_FINISH: u32 = 1 << 6;
const FINISH: u32 = 1 << 7;
const GET_ID: u32 = 1 << 8;
const REQUIRED: u32 = CAN_PRESERVE | PRESERVE | UNPRESERVE | RETRIEVE | FINISH;

#[liveupdate_handler(compatible = "required-only-v1", abi = one_ser)]
struct RequiredOnly;

#[liveupdate_handler]
impl FileHandler for RequiredOnly {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, _: &Ctx<'_, Self>, file: &dyn File) -> Result<(one_ser, ())> {
        Ok((one_ser { v: file.id().0 }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: one_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, d: one_ser) -> Result<FileRef> {
        Ok(TestFile::memfd(d.v, 0, 0, 0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, one_ser>) {}
}

/// Versions of a hand-written ABI, laid out as the generated crate lays them out
/// (`<component>::vN::<type>`), so `reads` finds the older type next to the newer one.
mod some {
    pub mod v2 {
        pub(crate) use crate::one_ser;
    }
    pub mod v3 {
        pub(crate) use crate::one_ser;
    }
}

#[liveupdate_handler(compatible = "some-optional-v3", abi = some::v3::one_ser, reads = ["some-optional-v2"])]
struct SomeOptional;

#[liveupdate_handler]
impl FileHandler for SomeOptional {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(one_ser, ())> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: one_ser, _: ()) {}
    fn unfreeze(&self, _: &Ctx<'_, Self>, _: &dyn File, _: &one_ser, _: &mut ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: one_ser) -> Result<FileRef> {
        Err(Errno::EINVAL)
    }
    fn can_finish(&self, _: &Ctx<'_, Self>, _: Option<&dyn File>, _: RetrieveStatus) -> bool {
        true
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, one_ser>) {}
}

impl luo_abi::handler::Migrate<one_ser> for SomeOptional {
    fn migrate(&self, old: one_ser) -> Result<one_ser> {
        Ok(old)
    }
}

#[liveupdate_flb(compatible = "c-flb-v1", abi = one_ser)]
struct CFlb;

#[liveupdate_flb]
impl FlbState for CFlb {
    type Outgoing = ();
    type Incoming = ();
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(one_ser, ())> {
        Ok((one_ser { v: 1 }, ()))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: one_ser, _: Arc<()>) {}
    fn retrieve(&self, _: &StateCtx<'_>, _: one_ser) -> Result<()> {
        Ok(())
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<()>) {}
}

#[liveupdate_subsystem(name = "c-sub", abi = one_ser)]
struct CSub;

#[liveupdate_subsystem]
impl Subsystem for CSub {
    type Outgoing = ();
    type Incoming = ();
    fn prepare(&self, _: &StateCtx<'_>) -> Result<(one_ser, ())> {
        Ok((one_ser { v: 0 }, ()))
    }
    fn cancel(&self, _: &StateCtx<'_>, _: ()) {}
    fn boot(&self, _: &StateCtx<'_>, _: one_ser) -> Result<()> {
        Ok(())
    }
    fn finish(&self, _: &StateCtx<'_>, _: ()) {}
}

fn host() -> (Arc<VecKho>, Arc<dyn LuoHost>) {
    let kho = Arc::new(VecKho::new());
    let core: Arc<dyn LuoHost> = MiniCore::new(kho.clone());
    (kho, core)
}

fn mask<
    H: luo_abi::handler::HandlerAbi<Raw = luo_generated::liveupdate::liveupdate_file_handler>,
>(
    reg: &Registration<H>,
    i: usize,
) -> u32 {
    // SAFETY: a live registration's handler.
    unsafe { c::luo_c_file_ops_mask(reg.raw_handlers()[i]) }
}

fn compat_ok(h: *const luo_generated::liveupdate::liveupdate_file_handler, s: &str) -> bool {
    let s = CString::new(s).unwrap();
    // SAFETY: a live handler, a NUL-terminated string.
    unsafe { c::luo_c_check_compatible(h, s.as_ptr()) == 0 }
}

#[test]
fn c_sees_null_exactly_where_optional_callbacks_are_missing() {
    let (_, host) = host();
    let req = Registration::new(RequiredOnly, host.clone(), ());
    assert_eq!(mask(&req, 0), REQUIRED);
    assert!(compat_ok(req.raw(), "required-only-v1"));
    assert!(!compat_ok(req.raw(), "required-only-v2"));

    let some = Registration::new(SomeOptional, host.clone(), ());
    assert_eq!(mask(&some, 0), REQUIRED | UNFREEZE | CAN_FINISH);
    // The reader of some-optional-v2: required ones (stubs that refuse to preserve), the
    // handler's can_finish, never freeze/unfreeze/get_id.
    assert_eq!(mask(&some, 1), REQUIRED | CAN_FINISH);
    assert!(compat_ok(some.raw_handlers()[1], "some-optional-v2"));
    assert_eq!(REQUIRED | FREEZE | UNFREEZE | CAN_FINISH | GET_ID, 0x1ff);
}

#[liveupdate_global_state(abi = one_ser)]
struct CState;

#[liveupdate_global_state]
impl HandlerState for CState {
    type Outgoing = ();
    type Incoming = ();
    fn create(&self, _: &StateCtx<'_>) -> Result<(one_ser, ())> {
        Ok((one_ser { v: 0 }, ()))
    }
    fn restore(&self, _: &StateCtx<'_>, _: one_ser) -> Result<()> {
        Ok(())
    }
    fn destroy(&self, _: &StateCtx<'_>, _: StateObj<(), ()>) {}
}

#[liveupdate_handler(compatible = "all-callbacks-v1", abi = one_ser, state = CState)]
struct All;

#[liveupdate_handler]
impl FileHandler for All {
    fn can_preserve(&self, _: &dyn File) -> bool {
        false
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(one_ser, ())> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: one_ser, _: ()) {}
    fn freeze(&self, _: &Ctx<'_, Self>, _: &dyn File, _: &mut one_ser, _: &mut ()) -> Result {
        Ok(())
    }
    fn unfreeze(&self, _: &Ctx<'_, Self>, _: &dyn File, _: &one_ser, _: &mut ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: one_ser) -> Result<FileRef> {
        Err(Errno::EINVAL)
    }
    fn can_finish(&self, _: &Ctx<'_, Self>, _: Option<&dyn File>, _: RetrieveStatus) -> bool {
        true
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, one_ser>) {}
    fn get_id(file: &dyn File) -> luo_abi::file::FileId {
        file.id()
    }
}

#[test]
fn c_sees_every_callback_of_a_full_handler() {
    let (_, host) = host();
    let all = Registration::new(All, host, (HandlerStateCell::new(CState),));
    assert_eq!(mask(&all, 0), 0x1ff);
    let ops = all.state_ops().unwrap();
    // SAFETY: the registration's `'static` state table.
    assert_eq!(unsafe { c::luo_c_state_ops_mask(ops.cast()) }, 0b111);
    let req = Registration::new(RequiredOnly, host_only(), ());
    assert!(req.state_ops().is_none());
}

fn host_only() -> Arc<dyn LuoHost> {
    host().1
}

#[test]
fn c_sees_the_global_state_tables() {
    let (_, host) = host();
    let flb = FlbCell::new(CFlb, host.clone());
    // SAFETY: the cell's raw FLB.
    assert_eq!(unsafe { c::luo_c_flb_ops_mask(flb.raw().cast()) }, 0b1111);
    let sub = SubsystemCell::new(CSub, host.clone());
    let raw = sub
        .raw()
        .cast::<luo_generated::liveupdate::liveupdate_subsystem>();
    // prepare, cancel, boot, finish; no freeze.
    // SAFETY: the cell's raw subsystem.
    assert_eq!(unsafe { c::luo_c_subsystem_ops_mask(raw) }, 0b11101);
    let name = CString::new("c-sub").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { c::luo_c_subsystem_name(raw, name.as_ptr()) }, 0);
}

#[test]
fn c_calls_through_the_table() {
    let (kho, host) = host();
    let reg = Registration::new(RequiredOnly, host, ());
    let memfd = FileCell::into_raw(TestFile::memfd(42, 0, 0, 0));
    let other = FileCell::into_raw(TestFile::other(43));
    // SAFETY: a live handler and live file cells.
    unsafe {
        assert_eq!(
            c::luo_c_call_can_preserve(reg.raw(), memfd.cast::<file>()),
            1
        );
        assert_eq!(
            c::luo_c_call_can_preserve(reg.raw(), other.cast::<file>()),
            0
        );
        let mut handle = 0u64;
        assert_eq!(
            c::luo_c_preserve_unpreserve(reg.raw(), memfd.cast::<file>(), &mut handle),
            0
        );
        assert_ne!(handle, 0);
        FileCell::drop_raw(memfd);
        FileCell::drop_raw(other);
    }
    // preserve wrote one block, unpreserve freed it.
    assert_eq!(kho.outgoing_blocks(), 0);
}
