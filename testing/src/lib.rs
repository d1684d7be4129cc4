// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Test support: a test file handler and a test FLB on luo-core, for tests and benchmarks.
//!
//! Where it sits: beside the machine layer, outside the core. A test boots a luo-core
//! [`Kernel`] with [`register`] among its initcalls and drives it through the typed uAPI; the
//! handler is written with the same macros as every shipped handler.
//!
//! The handler (`"luo-test-v1"`) preserves the synthetic files of [`Kernel::test_file`]: each
//! file's value goes into a `kho_alloc_preserve`d page whose address is the handed-over data.
//! Every callback is logged, and freeze (or preserve, or can_finish) can be made to fail for a
//! chosen value, per thread, so rollback orders can be checked. Its FLB (`"luo-test-flb-v1"`)
//! stores `0xFEEDF00DCAFEBEE0` as upstream's in-kernel test does.
//!
//! A second handler (`"luo-test-dep-v1"`) preserves files that depend on other files of their
//! session: its record names them by token, through the core's dependency API.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{FlbState, StateCtx};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration, RetrieveStatus};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_derive::{Abi, liveupdate_flb, liveupdate_handler};
use luo_generated::liveupdate::{liveupdate_file_handler, liveupdate_flb};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use luo_core::Kernel;
use luo_core::file::{CoreFile, FileObj};

/// The FLB's magic data value.
pub const FLB_MAGIC: u64 = 0xFEED_F00D_CAFE_BEE0;

/// One logged callback: `(op, value)`; FLB ops log the FLB data as value.
pub type Call = (&'static str, u64);

/// A test's panic while holding a dependency list must not hide the list from the next test.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    static LOG: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
    static FAIL_FREEZE: Cell<Option<(u64, Errno)>> = const { Cell::new(None) };
    static FAIL_PRESERVE: Cell<Option<(u64, Errno)>> = const { Cell::new(None) };
    static FAIL_RETRIEVE: Cell<Option<(u64, Errno)>> = const { Cell::new(None) };
    static REFUSE_FINISH: Cell<Option<u64>> = const { Cell::new(None) };
    static FAIL_FLB_PRESERVE: Cell<Option<Errno>> = const { Cell::new(None) };
    static IGNORE_DEP_ERRORS: Cell<bool> = const { Cell::new(false) };
    /// Values of files whose retrieve failed (their record is released): handle → value.
    static FAILED: RefCell<std::collections::HashMap<u64, u64>> = RefCell::default();
}

/// Takes this thread's call log.
pub fn take_log() -> Vec<Call> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

fn log(op: &'static str, v: u64) {
    LOG.with(|l| l.borrow_mut().push((op, v)));
}

/// Makes `freeze` of the file with `value` fail with `e` (on this thread).
pub fn fail_freeze(value: Option<(u64, Errno)>) {
    FAIL_FREEZE.with(|c| c.set(value));
}

/// Makes `preserve` of the file with `value` fail with `e` (on this thread).
pub fn fail_preserve(value: Option<(u64, Errno)>) {
    FAIL_PRESERVE.with(|c| c.set(value));
}

/// Makes `retrieve` of the file with `value` fail with `e` (on this thread).
pub fn fail_retrieve(value: Option<(u64, Errno)>) {
    FAIL_RETRIEVE.with(|c| c.set(value));
}

/// Makes `can_finish` of the file with `value` say no (on this thread).
pub fn refuse_finish(value: Option<u64>) {
    REFUSE_FINISH.with(|c| c.set(value));
}

/// Makes the FLB's `preserve` fail with `e` (on this thread).
pub fn fail_flb_preserve(e: Option<Errno>) {
    FAIL_FLB_PRESERVE.with(|c| c.set(e));
}

/// The test file handler: a file's value is its handed-over record.
#[liveupdate_handler(compatible = "luo-test-v1", abi = u64)]
pub struct TestHandler;

/// The test FLB: stores [`FLB_MAGIC`] in a preserved page, as upstream's in-kernel test does.
#[liveupdate_flb(compatible = "luo-test-flb-v1", abi = u64)]
pub struct TestFlb;

/// Registers the test handler, with the test FLB linked to it when `flb`.
pub fn register(k: &Kernel, flb: bool) -> Result {
    if flb {
        let reg = Registration::new(TestHandler, k.host(), ()).link_flb(k.new_flb(TestFlb));
        k.register_handler(reg)
    } else {
        k.register_handler(Registration::new(TestHandler, k.host(), ()))
    }
}

/// Links a new test FLB to the test handler already registered in `k`, through the core's
/// `liveupdate_register_flb` (as a C caller would, after the registration); `k` keeps it.
pub fn link_flb(k: &Kernel) -> Result {
    let fh = handler_ptr(k).ok_or(Errno::ENOENT)?;
    let cell = k.new_flb(TestFlb);
    let _g = k.enter();
    // SAFETY: a registered handler of `k`, and an FLB cell `k` keeps alive below.
    unsafe { k.luo().register_flb(fh, cell.raw().cast()) }?;
    k.keep(Box::new(cell));
    Ok(())
}

/// The test handler's `struct liveupdate_file_handler *` in `k` (for tests of the core's C
/// API), if registered.
pub fn handler_ptr(k: &Kernel) -> Option<*mut liveupdate_file_handler> {
    k.luo().handler_ptr("luo-test-v1")
}

/// The test FLB's `struct liveupdate_flb *` in `k`, if linked.
pub fn flb_ptr(k: &Kernel) -> Option<*mut liveupdate_flb> {
    k.luo().flb_ptr("luo-test-flb-v1")
}

/// The value of a test file ([`Kernel::test_file`]).
fn value_of(f: &dyn File) -> Option<u64> {
    f.payload()?
        .downcast_ref::<AtomicU64>()
        .map(|v| v.load(Ordering::Relaxed))
}

#[liveupdate_handler]
impl FileHandler for TestHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        value_of(file).is_some()
    }

    fn preserve(&self, _: &Ctx<'_, Self>, file: &dyn File) -> Result<(u64, ())> {
        let v = value_of(file).ok_or(Errno::EINVAL)?;
        log("preserve", v);
        match FAIL_PRESERVE.with(Cell::get) {
            Some((fv, e)) if fv == v => Err(e),
            _ => Ok((v, ())),
        }
    }

    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, v: u64, _: ()) {
        log("unpreserve", v);
    }

    fn freeze(&self, _: &Ctx<'_, Self>, _: &dyn File, v: &mut u64, _: &mut ()) -> Result {
        log("freeze", *v);
        match FAIL_FREEZE.with(Cell::get) {
            Some((fv, e)) if fv == *v => Err(e),
            _ => Ok(()),
        }
    }

    fn unfreeze(&self, _: &Ctx<'_, Self>, _: &dyn File, v: &u64, _: &mut ()) {
        log("unfreeze", *v);
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, v: u64) -> Result<FileRef> {
        log("retrieve", v);
        if let Some((fv, e)) = FAIL_RETRIEVE.with(Cell::get)
            && fv == v
        {
            // The runtime released the record: remember the value for can_finish/finish.
            FAILED.with(|f| f.borrow_mut().insert(cx.handle(), v));
            return Err(e);
        }
        // A test file again, as `Kernel::test_file` makes them.
        Ok(CoreFile::new("test", FileObj::Test(AtomicU64::new(v))) as FileRef)
    }

    fn can_finish(
        &self,
        cx: &Ctx<'_, Self>,
        file: Option<&dyn File>,
        status: RetrieveStatus,
    ) -> bool {
        let v = match status {
            RetrieveStatus::Retrieved => file.and_then(value_of).unwrap_or(0),
            // The failed retrieve released the record: never read it again.
            RetrieveStatus::Failed(_) => {
                FAILED.with(|f| f.borrow().get(&cx.handle()).copied().unwrap_or(0))
            }
            RetrieveStatus::NotRetrieved => {
                let mut b = [0u8; 8];
                cx.read_record(0, &mut b)
                    .map_or(0, |()| u64::from_ne_bytes(b))
            }
        };
        log("can_finish", v);
        REFUSE_FINISH.with(Cell::get) != Some(v)
    }

    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, u64>) {
        let v = match how {
            Finish::Retrieved(f) => value_of(f).unwrap_or(0),
            Finish::Failed(_) => FAILED
                .with(|f| f.borrow_mut().remove(&cx.handle()))
                .unwrap_or(0),
            Finish::NotRetrieved(v) => v,
        };
        log("finish", v);
    }
}

#[liveupdate_flb]
impl FlbState for TestFlb {
    type Outgoing = u64;
    type Incoming = u64;

    fn preserve(&self, _: &StateCtx<'_>) -> Result<(u64, u64)> {
        log("flb_preserve", 0);
        match FAIL_FLB_PRESERVE.with(Cell::get) {
            Some(e) => Err(e),
            None => Ok((FLB_MAGIC, FLB_MAGIC)),
        }
    }

    fn unpreserve(&self, cx: &StateCtx<'_>, _: u64, _: Arc<u64>) {
        log("flb_unpreserve", cx.data().map_or(0, |d| d.as_u64()));
    }

    fn retrieve(&self, _: &StateCtx<'_>, v: u64) -> Result<u64> {
        if v != FLB_MAGIC {
            return Err(Errno::EINVAL);
        }
        log("flb_retrieve", v);
        Ok(v)
    }

    fn finish(&self, _: &StateCtx<'_>, obj: Arc<u64>) {
        log("flb_finish", *obj);
    }
}

// ---- a dependent test handler ---------------------------------------------------------------

/// Compatible of the dependent test handler, whose files depend on other files of their
/// session (test files or its own), named by token (`luo_core::depend`).
pub const DEP_COMPATIBLE: &str = "luo-test-dep-v1";

/// Most dependencies a dependent test file hands over (its record is one page).
pub const DEP_MAX: usize = 64;

/// The payload of a dependent test file: a value, the files it depends on, and tokens it
/// names as they are (to name a token the session does not have).
pub struct DepFile {
    /// The value handed over.
    pub value: u64,
    /// The files it depends on; resolved to tokens at preserve and again at freeze.
    pub deps: Mutex<Vec<Arc<CoreFile>>>,
    /// Tokens handed over without resolution.
    pub raw_tokens: Mutex<Vec<u64>>,
}

/// Makes the dependent test handler skip dependencies it cannot name or get back and succeed
/// anyway (on this thread), as a careless handler would; the core fails it regardless.
pub fn ignore_dep_errors(on: bool) {
    IGNORE_DEP_ERRORS.with(|c| c.set(on));
}

/// Opens a dependent test file with `value`, depending on the files behind `deps`.
pub fn dep_file(k: &Kernel, value: u64, deps: &[i32]) -> Result<i32> {
    let deps = deps
        .iter()
        .map(|&fd| k.file(fd))
        .collect::<Result<_, _>>()?;
    k.open_synthetic(
        FileKind::Other,
        "luo-test-dep",
        Box::new(DepFile {
            value,
            deps: Mutex::new(deps),
            raw_tokens: Mutex::new(Vec::new()),
        }),
    )
}

/// Replaces what the dependent test file behind `fd` depends on (seen at its next freeze).
pub fn set_deps(k: &Kernel, fd: i32, deps: &[i32], raw_tokens: &[u64]) -> Result<()> {
    let f = k.file(fd)?;
    let d = f.synthetic::<DepFile>().ok_or(Errno::EINVAL)?;
    let files = deps
        .iter()
        .map(|&fd| k.file(fd))
        .collect::<Result<_, _>>()?;
    *lock(&d.deps) = files;
    *lock(&d.raw_tokens) = raw_tokens.to_vec();
    Ok(())
}

/// The value and dependencies of a (retrieved) dependent test file.
pub fn dep_of(k: &Kernel, fd: i32) -> Result<(u64, Vec<Arc<CoreFile>>), Errno> {
    let f = k.file(fd)?;
    let d = f.synthetic::<DepFile>().ok_or(Errno::EINVAL)?;
    Ok((d.value, lock(&d.deps).clone()))
}

/// The record of a dependent test file: its value and the tokens of what it depends on.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct luo_test_dep_ser {
    /// The file's value.
    pub value: u64,
    /// Entries of `tokens` in use.
    pub nr_tokens: u64,
    /// Tokens of the files it depends on, in its session.
    pub tokens: [u64; DEP_MAX],
}

/// The dependent test handler: `depends_on` = `luo-test-v1` and itself.
#[liveupdate_handler(
    compatible = "luo-test-dep-v1",
    abi = luo_test_dep_ser,
    depends_on = ["luo-test-v1", "luo-test-dep-v1"],
)]
pub struct TestDepHandler;

/// Registers the dependent test handler.
pub fn register_dep(k: &Kernel) -> Result {
    k.register_handler(Registration::new(TestDepHandler, k.host(), ()))
}

fn dep_payload(f: &dyn File) -> Option<&DepFile> {
    f.payload()?.downcast_ref::<DepFile>()
}

/// The file's record, naming each dependency through the core.
fn dep_record(cx: &Ctx<'_, TestDepHandler>, file: &dyn File) -> Result<luo_test_dep_ser> {
    let d = dep_payload(file).ok_or(Errno::EINVAL)?;
    let mut tokens = Vec::new();
    for f in lock(&d.deps).iter() {
        match cx.session().get_token_outgoing(&**f) {
            Ok(t) => tokens.push(t),
            Err(_) if IGNORE_DEP_ERRORS.with(Cell::get) => {}
            Err(e) => return Err(e),
        }
    }
    tokens.extend(lock(&d.raw_tokens).iter());
    if tokens.len() > DEP_MAX {
        return Err(Errno::E2BIG);
    }
    let mut rec = luo_test_dep_ser {
        value: d.value,
        nr_tokens: tokens.len() as u64,
        tokens: [0; DEP_MAX],
    };
    rec.tokens[..tokens.len()].copy_from_slice(&tokens);
    Ok(rec)
}

/// The tokens a record names; `EINVAL` for a count beyond [`DEP_MAX`].
fn dep_tokens(rec: &luo_test_dep_ser) -> Result<&[u64]> {
    let n = usize::try_from(rec.nr_tokens).map_err(|_| Errno::EINVAL)?;
    rec.tokens.get(..n).ok_or(Errno::EINVAL)
}

#[liveupdate_handler]
impl FileHandler for TestDepHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        dep_payload(file).is_some()
    }

    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(luo_test_dep_ser, ())> {
        let d = dep_payload(file).ok_or(Errno::EINVAL)?;
        log("dep_preserve", d.value);
        Ok((dep_record(cx, file)?, ()))
    }

    fn freeze(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        rec: &mut luo_test_dep_ser,
        _: &mut (),
    ) -> Result {
        if let Some(d) = dep_payload(file) {
            log("dep_freeze", d.value);
        }
        *rec = dep_record(cx, file)?;
        Ok(())
    }

    fn unpreserve(&self, _: &Ctx<'_, Self>, file: &dyn File, _: luo_test_dep_ser, _: ()) {
        log("dep_unpreserve", dep_payload(file).map_or(0, |d| d.value));
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, rec: luo_test_dep_ser) -> Result<FileRef> {
        let tokens = dep_tokens(&rec)?;
        log("dep_retrieve", rec.value);
        let mut deps = Vec::new();
        for &t in tokens {
            match cx.session().get_file_incoming(t) {
                Ok(f) => deps.push(CoreFile::from_ref(f).ok_or(Errno::EINVAL)?),
                Err(_) if IGNORE_DEP_ERRORS.with(Cell::get) => {}
                Err(e) => return Err(e),
            }
        }
        cx.open_synthetic(
            FileKind::Other,
            "luo-test-dep",
            Box::new(DepFile {
                value: rec.value,
                deps: Mutex::new(deps),
                raw_tokens: Mutex::new(Vec::new()),
            }),
        )
    }

    fn finish(&self, _: &Ctx<'_, Self>, how: Finish<'_, luo_test_dep_ser>) {
        match how {
            Finish::Retrieved(f) => log("dep_finish", dep_payload(f).map_or(0, |d| d.value)),
            Finish::NotRetrieved(rec) => log("dep_finish", rec.value),
            Finish::Failed(_) => log("dep_finish", 0),
        }
    }
}

/// Copies the directory tree `from` to `to` (for tests that run a command on a scratch copy of
/// the repository's spec). Panics on any error: a test fixture.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let p = e.expect("entry").path();
        let dest = to.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy");
        }
    }
}
