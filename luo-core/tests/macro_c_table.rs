// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! C code compiled by gcc against the generated `<linux/liveupdate.h>` (`tests/c/check_table.c`,
//! built into a shared object when the tests start and loaded with `dlopen`) reads the ops
//! tables the macros built for luo-core: NULL exactly where an optional callback is not
//! implemented, the compatible strings, and calls through the table on the core's own files.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{FlbState, HandlerState, HandlerStateCell, StateCtx, StateObj, Subsystem};
use luo_abi::handler::{Ctx, FileHandler, Finish, HandlerAbi, Registration, RetrieveStatus};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_core::file::CoreFile;
use luo_core::{BootOptions, Kernel};
use luo_derive::{
    Abi, liveupdate_flb, liveupdate_global_state, liveupdate_handler, liveupdate_subsystem,
};
use luo_generated::liveupdate::{
    file, liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_flb,
    liveupdate_subsystem,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------------
// The C checker: tests/c/check_table.c as a shared object.

unsafe extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}

const RTLD_NOW: c_int = 2;

/// The functions of `check_table.c`.
struct C {
    /// Bit i set when the i-th callback of the handler's `liveupdate_file_ops` is non-NULL.
    file_ops_mask: unsafe extern "C" fn(*const liveupdate_file_handler) -> u32,
    /// 0 when the handler's compatible is exactly `expect`, NUL-padded.
    check_compatible: unsafe extern "C" fn(*const liveupdate_file_handler, *const c_char) -> i32,
    /// Calls `can_preserve` through the table.
    call_can_preserve: unsafe extern "C" fn(*mut liveupdate_file_handler, *mut file) -> i32,
    /// Calls `preserve` then `unpreserve` through the table.
    preserve_unpreserve:
        unsafe extern "C" fn(*mut liveupdate_file_handler, *mut file, *mut u64) -> i32,
    /// Bit i set when the i-th op of the FLB's table is non-NULL.
    flb_ops_mask: unsafe extern "C" fn(*const liveupdate_flb) -> u32,
    /// Bit i set when the i-th op of the subsystem's table is non-NULL.
    subsystem_ops_mask: unsafe extern "C" fn(*const liveupdate_subsystem) -> u32,
    /// 0 when the subsystem's name is `expect`.
    subsystem_name: unsafe extern "C" fn(*const liveupdate_subsystem, *const c_char) -> i32,
    /// Bit i set when the i-th op of the state's table is non-NULL.
    state_ops_mask: unsafe extern "C" fn(*const liveupdate_fh_global_state_ops) -> u32,
}

/// Compiles `tests/c/check_table.c` (gcc, `-Wall -Wextra -Werror -pedantic`, against
/// generated/include) into a shared object once per test process and loads it.
fn c() -> &'static C {
    static C_FNS: OnceLock<C> = OnceLock::new();
    C_FNS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let src = root.join("tests/c/check_table.c");
        let so = std::env::temp_dir().join(format!("luo-check-table-{}.so", std::process::id()));
        let gcc = Command::new("gcc")
            .args([
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-O1",
                "-fPIC",
                "-shared",
            ])
            .arg("-I")
            .arg(root.join("generated/include"))
            .arg(&src)
            .arg("-o")
            .arg(&so)
            .output()
            .expect("gcc is needed to build the C table checks");
        assert!(
            gcc.status.success(),
            "gcc failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&gcc.stderr)
        );
        let path = CString::new(so.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; the object has no constructors.
        let lib = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
        let _ = std::fs::remove_file(&so);
        if lib.is_null() {
            // SAFETY: dlerror returns NULL or a NUL-terminated message.
            let e = unsafe { dlerror() };
            let msg = if e.is_null() {
                String::new()
            } else {
                // SAFETY: as above.
                unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
            };
            panic!("dlopen {}: {msg}", so.display());
        }
        let sym = |name: &str| {
            let n = CString::new(name).unwrap();
            // SAFETY: a live handle from dlopen, a NUL-terminated name.
            let p = unsafe { dlsym(lib, n.as_ptr()) };
            assert!(!p.is_null(), "{name} not found in check_table.c");
            p
        };
        // SAFETY: each symbol is the function of check_table.c with the prototype written in
        // its field; the object stays loaded for the rest of the process.
        unsafe {
            C {
                file_ops_mask: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*const liveupdate_file_handler) -> u32,
                >(sym("luo_c_file_ops_mask")),
                check_compatible: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*const liveupdate_file_handler, *const c_char) -> i32,
                >(sym("luo_c_check_compatible")),
                call_can_preserve: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut liveupdate_file_handler, *mut file) -> i32,
                >(sym("luo_c_call_can_preserve")),
                preserve_unpreserve: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut liveupdate_file_handler, *mut file, *mut u64) -> i32,
                >(sym("luo_c_preserve_unpreserve")),
                flb_ops_mask: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*const liveupdate_flb) -> u32,
                >(sym("luo_c_flb_ops_mask")),
                subsystem_ops_mask: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*const liveupdate_subsystem) -> u32,
                >(sym("luo_c_subsystem_ops_mask")),
                subsystem_name: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*const liveupdate_subsystem, *const c_char) -> i32,
                >(sym("luo_c_subsystem_name")),
                state_ops_mask: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*const liveupdate_fh_global_state_ops) -> u32,
                >(sym("luo_c_state_ops_mask")),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers, an FLB, a subsystem and a handler-scoped state.

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
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: one_ser) -> Result<FileRef> {
        cx.open_synthetic(FileKind::Memfd, "memfd", Box::new(d.v))
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

// ---------------------------------------------------------------------------------------------

/// A luo-core kernel without the built-in memfd handler.
fn kernel() -> Kernel {
    let opts = BootOptions {
        ..BootOptions::default()
    };
    Kernel::boot(&opts, None).unwrap()
}

fn mask<H: HandlerAbi<Raw = liveupdate_file_handler>>(reg: &Registration<H>, i: usize) -> u32 {
    // SAFETY: a live registration's handler.
    unsafe { (c().file_ops_mask)(reg.raw_handlers()[i]) }
}

fn compat_ok(h: *const liveupdate_file_handler, s: &str) -> bool {
    let s = CString::new(s).unwrap();
    // SAFETY: a live handler, a NUL-terminated string.
    unsafe { (c().check_compatible)(h, s.as_ptr()) == 0 }
}

#[test]
fn c_sees_null_exactly_where_optional_callbacks_are_missing() {
    let k = kernel();
    let req = Registration::new(RequiredOnly, k.host(), ());
    assert_eq!(mask(&req, 0), REQUIRED);
    assert!(compat_ok(req.raw(), "required-only-v1"));
    assert!(!compat_ok(req.raw(), "required-only-v2"));

    let some = Registration::new(SomeOptional, k.host(), ());
    assert_eq!(mask(&some, 0), REQUIRED | UNFREEZE | CAN_FINISH);
    // The reader of some-optional-v2: required ones (stubs that refuse to preserve), the
    // handler's can_finish, never freeze/unfreeze/get_id.
    assert_eq!(mask(&some, 1), REQUIRED | CAN_FINISH);
    assert!(compat_ok(some.raw_handlers()[1], "some-optional-v2"));
    assert_eq!(REQUIRED | FREEZE | UNFREEZE | CAN_FINISH | GET_ID, 0x1ff);

    // luo-core accepts both tables: the writer and the reader of the older version.
    k.register_handler(some).unwrap();
    assert_eq!(k.luo().handlers(), ["some-optional-v3", "some-optional-v2"]);
}

#[test]
fn c_sees_every_callback_of_a_full_handler() {
    let k = kernel();
    let all = Registration::new(All, k.host(), (HandlerStateCell::new(CState),));
    assert_eq!(mask(&all, 0), 0x1ff);
    let ops = all.state_ops().unwrap();
    // SAFETY: the registration's `'static` state table.
    assert_eq!(unsafe { (c().state_ops_mask)(ops.cast()) }, 0b111);
    let req = Registration::new(RequiredOnly, kernel().host(), ());
    assert!(req.state_ops().is_none());
}

#[test]
fn c_sees_the_global_state_tables() {
    let k = kernel();
    let flb = k.new_flb(CFlb);
    // SAFETY: the cell's raw FLB.
    assert_eq!(unsafe { (c().flb_ops_mask)(flb.raw().cast()) }, 0b1111);
    let sub = k.new_subsystem(CSub);
    let raw = sub.raw().cast::<liveupdate_subsystem>();
    // prepare, cancel, boot, finish; no freeze.
    // SAFETY: the cell's raw subsystem.
    assert_eq!(unsafe { (c().subsystem_ops_mask)(raw) }, 0b11101);
    let name = CString::new("c-sub").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { (c().subsystem_name)(raw, name.as_ptr()) }, 0);
}

#[test]
fn c_calls_through_the_table() {
    let k = kernel();
    let reg = Registration::new(RequiredOnly, k.host(), ());
    let memfd = k
        .open_synthetic(FileKind::Memfd, "memfd", Box::new(42u64))
        .unwrap();
    let other = k.open_null().unwrap();
    // The `struct file *` the core hands its handlers: the address of its own file object.
    let (memfd, other) = (k.file(memfd).unwrap(), k.file(other).unwrap());
    let (memfd_c, other_c) = (CoreFile::as_c(&memfd), CoreFile::as_c(&other));
    // SAFETY: a live handler and live core files (held by `memfd` and `other`).
    unsafe {
        assert_eq!((c().call_can_preserve)(reg.raw(), memfd_c), 1);
        assert_eq!((c().call_can_preserve)(reg.raw(), other_c), 0);
        let mut handle = 0u64;
        assert_eq!(
            (c().preserve_unpreserve)(reg.raw(), memfd_c, &mut handle),
            0
        );
        assert_ne!(handle, 0);
    }
    // preserve wrote one page of the kernel's KHO, unpreserve freed it.
    assert_eq!(k.stats().preserved_beyond_root(), 0);
}
