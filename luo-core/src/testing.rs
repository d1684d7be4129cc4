//! A test file handler and a test FLB, for tests and `luo simulate`.
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
use std::ffi::{c_int, c_ulong};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use luo_abi::file::FileKind;
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, Phys, PhysAddr};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
    liveupdate_flb_op_args, liveupdate_flb_ops,
};

use crate::file::{CoreFile, FileObj};
use crate::kernel::Kernel;
use crate::mem::lock;
use crate::{DependsOn, StaticFlb, StaticFlbOps, StaticHandler, StaticOps};
use zerocopy::IntoBytes;

/// The FLB's magic data value.
pub const FLB_MAGIC: u64 = 0xFEED_F00D_CAFE_BEE0;

/// One logged callback: `(op, value)`; FLB ops log the FLB data as value.
pub type Call = (&'static str, u64);

thread_local! {
    static LOG: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
    static FAIL_FREEZE: Cell<Option<(u64, Errno)>> = const { Cell::new(None) };
    static FAIL_PRESERVE: Cell<Option<(u64, Errno)>> = const { Cell::new(None) };
    static FAIL_RETRIEVE: Cell<Option<(u64, Errno)>> = const { Cell::new(None) };
    static REFUSE_FINISH: Cell<Option<u64>> = const { Cell::new(None) };
    static FAIL_FLB_PRESERVE: Cell<Option<Errno>> = const { Cell::new(None) };
    static IGNORE_DEP_ERRORS: Cell<bool> = const { Cell::new(false) };
    /// Values of files whose retrieve failed (their page is released): serialized_data → value.
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

static OPS: StaticOps = StaticOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: Some(freeze),
    unfreeze: Some(unfreeze),
    retrieve: Some(retrieve),
    can_finish: Some(can_finish),
    finish: Some(finish),
    get_id: Some(get_id),
    owner: std::ptr::null_mut(),
});

/// The test file handler.
pub static TEST_HANDLER: StaticHandler = StaticHandler::new(&OPS, "luo-test-v1");

static FLB_OPS: StaticFlbOps = StaticFlbOps(liveupdate_flb_ops {
    preserve: Some(flb_preserve),
    unpreserve: Some(flb_unpreserve),
    retrieve: Some(flb_retrieve),
    finish: Some(flb_finish),
    owner: std::ptr::null_mut(),
});

/// The test FLB.
pub static TEST_FLB: StaticFlb = StaticFlb::new(&FLB_OPS, "luo-test-flb-v1");

/// Registers the test handler, and links the test FLB to it when `flb`.
pub fn register(k: &Kernel, flb: bool) -> Result<(), Errno> {
    k.register_file_handler(&TEST_HANDLER)?;
    if flb {
        let _g = k.enter();
        // SAFETY: both descriptors are immutable statics.
        unsafe {
            k.luo()
                .register_flb(TEST_HANDLER.as_ptr(), TEST_FLB.as_ptr())
        }?;
    }
    Ok(())
}

fn kernel() -> Result<Kernel, Errno> {
    Kernel::current().ok_or(Errno::EOPNOTSUPP)
}

fn value_of(p: *mut CFile) -> Option<u64> {
    // SAFETY: LUO passes files it holds a reference to for the whole callback.
    unsafe { CoreFile::from_c(p) }.and_then(CoreFile::test_value)
}

fn args<'a>(a: *mut liveupdate_file_op_args) -> &'a mut liveupdate_file_op_args {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    unsafe { &mut *a }
}

fn stored(data: u64) -> Result<u64, Errno> {
    kernel()?
        .kho()
        .read_obj(Phys::<u64>::new(PhysAddr::new(data)))
}

/// [`stored`] for data handed over by the previous kernel: refused (`EINVAL`) unless it lies
/// in preserved memory, so a corrupt `serialized_data` is never dereferenced (the bit-flip
/// sweep in tests/bitflip.rs checks every read).
fn stored_incoming(data: u64) -> Result<u64, Errno> {
    crate::blocks::read_obj(&**kernel()?.kho(), data, "test handler data")
        .map_err(|_| Errno::EINVAL)
}

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    value_of(f).is_some()
}

unsafe extern "C" fn get_id(f: *mut CFile) -> c_ulong {
    f as c_ulong
}

unsafe extern "C" fn preserve(a: *mut liveupdate_file_op_args) -> c_int {
    let a = args(a);
    let Some(v) = value_of(a.file) else {
        return Errno::EINVAL.to_neg();
    };
    log("preserve", v);
    if let Some((fv, e)) = FAIL_PRESERVE.with(Cell::get)
        && fv == v
    {
        return e.to_neg();
    }
    match kernel().and_then(|k| k.kho().alloc_preserve_obj(&v)) {
        Ok(p) => {
            a.serialized_data = p.addr().as_u64();
            0
        }
        Err(e) => e.to_neg(),
    }
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    let a = args(a);
    log("unpreserve", stored(a.serialized_data).unwrap_or(0));
    if let Ok(k) = kernel() {
        let _ = k.kho().unpreserve_free(PhysAddr::new(a.serialized_data));
    }
}

unsafe extern "C" fn freeze(a: *mut liveupdate_file_op_args) -> c_int {
    let a = args(a);
    let v = stored(a.serialized_data).unwrap_or(0);
    log("freeze", v);
    match FAIL_FREEZE.with(Cell::get) {
        Some((fv, e)) if fv == v => e.to_neg(),
        _ => 0,
    }
}

unsafe extern "C" fn unfreeze(a: *mut liveupdate_file_op_args) {
    let a = args(a);
    log("unfreeze", stored(a.serialized_data).unwrap_or(0));
}

unsafe extern "C" fn retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    let a = args(a);
    let r = (|| {
        let k = kernel()?;
        let v = stored_incoming(a.serialized_data)?;
        log("retrieve", v);
        if let Some((fv, e)) = FAIL_RETRIEVE.with(Cell::get)
            && fv == v
        {
            // A failed retrieve releases what it was handed, as upstream's
            // memfd does: finish() skips files whose retrieve failed, so the
            // page would otherwise stay until the next kexec (the fault
            // sweep in tests/fault_sweep.rs caught this).
            let _ = k.kho().restore_free(PhysAddr::new(a.serialized_data));
            FAILED.with(|f| f.borrow_mut().insert(a.serialized_data, v));
            return Err(e);
        }
        k.kho().restore_free(PhysAddr::new(a.serialized_data))?;
        Ok::<_, Errno>(CoreFile::new("test", FileObj::Test(AtomicU64::new(v))))
    })();
    match r {
        Ok(f) => {
            a.file = CoreFile::into_c(f);
            0
        }
        Err(e) => e.to_neg(),
    }
}

unsafe extern "C" fn can_finish(a: *mut liveupdate_file_op_args) -> bool {
    let a = args(a);
    let v = if a.retrieve_status > 0 {
        value_of(a.file).unwrap_or(0)
    } else if a.retrieve_status < 0 {
        // The failed retrieve released the page: never read it again.
        FAILED.with(|f| f.borrow().get(&a.serialized_data).copied().unwrap_or(0))
    } else {
        stored_incoming(a.serialized_data).unwrap_or(0)
    };
    log("can_finish", v);
    REFUSE_FINISH.with(Cell::get) != Some(v)
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    let a = args(a);
    if a.retrieve_status > 0 {
        log("finish", value_of(a.file).unwrap_or(0));
        return;
    }
    if a.retrieve_status < 0 {
        let v = FAILED.with(|f| f.borrow_mut().remove(&a.serialized_data));
        log("finish", v.unwrap_or(0));
        return;
    }
    log("finish", stored_incoming(a.serialized_data).unwrap_or(0));
    if a.retrieve_status == 0
        && let Ok(k) = kernel()
    {
        let _ = k.kho().restore_free(PhysAddr::new(a.serialized_data));
    }
}

fn flb_args<'a>(a: *mut liveupdate_flb_op_args) -> &'a mut liveupdate_flb_op_args {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    unsafe { &mut *a }
}

unsafe extern "C" fn flb_preserve(a: *mut liveupdate_flb_op_args) -> c_int {
    let a = flb_args(a);
    log("flb_preserve", 0);
    if let Some(e) = FAIL_FLB_PRESERVE.with(Cell::get) {
        return e.to_neg();
    }
    match kernel().and_then(|k| k.kho().alloc_preserve_obj(&FLB_MAGIC)) {
        Ok(p) => {
            a.data = p.addr().as_u64();
            a.obj = Box::into_raw(Box::new(FLB_MAGIC)).cast();
            0
        }
        Err(e) => e.to_neg(),
    }
}

unsafe extern "C" fn flb_unpreserve(a: *mut liveupdate_flb_op_args) {
    let a = flb_args(a);
    log("flb_unpreserve", a.data);
    if !a.obj.is_null() {
        // SAFETY: `obj` is the box flb_preserve leaked, handed back once.
        drop(unsafe { Box::from_raw(a.obj.cast::<u64>()) });
    }
    if let Ok(k) = kernel() {
        let _ = k.kho().unpreserve_free(PhysAddr::new(a.data));
    }
}

unsafe extern "C" fn flb_retrieve(a: *mut liveupdate_flb_op_args) -> c_int {
    let a = flb_args(a);
    match stored_incoming(a.data) {
        Ok(v) if v == FLB_MAGIC => {
            log("flb_retrieve", v);
            a.obj = Box::into_raw(Box::new(v)).cast();
            0
        }
        Ok(_) => Errno::EINVAL.to_neg(),
        Err(e) => e.to_neg(),
    }
}

unsafe extern "C" fn flb_finish(a: *mut liveupdate_flb_op_args) {
    let a = flb_args(a);
    let v = if a.obj.is_null() {
        0
    } else {
        // SAFETY: `obj` is the box flb_retrieve leaked, handed back once.
        *unsafe { Box::from_raw(a.obj.cast::<u64>()) }
    };
    log("flb_finish", v);
    if let Ok(k) = kernel() {
        let _ = k.kho().restore_free(PhysAddr::new(a.data));
    }
}

// ---- a dependent test handler ---------------------------------------------------------------

/// Compatible of the dependent test handler, whose files depend on other files of their
/// session (test files or its own), named by token ([`crate::depend`]).
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

static DEP_OPS: StaticOps = StaticOps(liveupdate_file_ops {
    can_preserve: Some(dep_can_preserve),
    preserve: Some(dep_preserve),
    unpreserve: Some(dep_unpreserve),
    freeze: Some(dep_freeze),
    unfreeze: None,
    retrieve: Some(dep_retrieve),
    can_finish: None,
    finish: Some(dep_finish),
    get_id: None,
    owner: std::ptr::null_mut(),
});

static DEP_ON: DependsOn = DependsOn(&[
    c"luo-test-v1".as_ptr().cast(),
    c"luo-test-dep-v1".as_ptr().cast(),
    std::ptr::null(),
]);

/// The dependent test handler: `depends_on` = `luo-test-v1` and itself.
pub static TEST_DEP_HANDLER: StaticHandler =
    StaticHandler::with_deps(&DEP_OPS, DEP_COMPATIBLE, &DEP_ON);

/// Registers the dependent test handler.
pub fn register_dep(k: &Kernel) -> Result<(), Errno> {
    k.register_file_handler(&TEST_DEP_HANDLER)
}

/// Makes the dependent test handler skip dependencies it cannot name or get back and succeed
/// anyway (on this thread), as a careless handler would; the core fails it regardless.
pub fn ignore_dep_errors(on: bool) {
    IGNORE_DEP_ERRORS.with(|c| c.set(on));
}

/// Opens a dependent test file with `value`, depending on the files behind `deps`.
pub fn dep_file(k: &Kernel, value: u64, deps: &[i32]) -> Result<i32, Errno> {
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
pub fn set_deps(k: &Kernel, fd: i32, deps: &[i32], raw_tokens: &[u64]) -> Result<(), Errno> {
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

fn dep_payload<'a>(p: *mut CFile) -> Option<&'a DepFile> {
    // SAFETY: LUO passes files it holds a reference to for the whole callback.
    unsafe { CoreFile::from_c(p) }.and_then(|f| f.synthetic::<DepFile>())
}

unsafe extern "C" fn dep_can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    dep_payload(f).is_some()
}

/// Writes the file's record (value, count, tokens) into the page at `data`, naming each
/// dependency through the core.
fn dep_write(a: &liveupdate_file_op_args, data: u64) -> Result<(), Errno> {
    let k = kernel()?;
    let d = dep_payload(a.file).ok_or(Errno::EINVAL)?;
    let mut tokens = Vec::new();
    for f in lock(&d.deps).iter() {
        match k.luo().get_token_outgoing(a.session, Arc::as_ptr(f).cast()) {
            Ok(t) => tokens.push(t),
            Err(_) if IGNORE_DEP_ERRORS.with(Cell::get) => {}
            Err(e) => return Err(e),
        }
    }
    tokens.extend(lock(&d.raw_tokens).iter());
    if tokens.len() > DEP_MAX {
        return Err(Errno::E2BIG);
    }
    let mut rec = vec![d.value, tokens.len() as u64];
    rec.extend(tokens);
    k.kho().write(PhysAddr::new(data), rec.as_bytes())
}

fn dep_read(data: u64) -> Result<(u64, Vec<u64>), Errno> {
    let k = kernel()?;
    let head: [u64; 2] = k.kho().read_obj(Phys::new(PhysAddr::new(data)))?;
    let n = usize::try_from(head[1]).map_err(|_| Errno::EINVAL)?;
    if n > DEP_MAX {
        return Err(Errno::EINVAL);
    }
    let mut tokens = vec![0u64; n];
    k.kho()
        .read(PhysAddr::new(data + 16), tokens.as_mut_bytes())?;
    Ok((head[0], tokens))
}

unsafe extern "C" fn dep_preserve(a: *mut liveupdate_file_op_args) -> c_int {
    let a = args(a);
    let r = (|| {
        let d = dep_payload(a.file).ok_or(Errno::EINVAL)?;
        log("dep_preserve", d.value);
        let k = kernel()?;
        let page = k.kho().alloc_preserve((DEP_MAX + 2) * 8)?.as_u64();
        if let Err(e) = dep_write(a, page) {
            let _ = k.kho().unpreserve_free(PhysAddr::new(page));
            return Err(e);
        }
        a.serialized_data = page;
        Ok(())
    })();
    r.map_or_else(Errno::to_neg, |()| 0)
}

unsafe extern "C" fn dep_freeze(a: *mut liveupdate_file_op_args) -> c_int {
    let a = args(a);
    if let Some(d) = dep_payload(a.file) {
        log("dep_freeze", d.value);
    }
    dep_write(a, a.serialized_data).map_or_else(Errno::to_neg, |()| 0)
}

unsafe extern "C" fn dep_unpreserve(a: *mut liveupdate_file_op_args) {
    let a = args(a);
    log("dep_unpreserve", dep_payload(a.file).map_or(0, |d| d.value));
    if let Ok(k) = kernel() {
        let _ = k.kho().unpreserve_free(PhysAddr::new(a.serialized_data));
    }
}

unsafe extern "C" fn dep_retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    let a = args(a);
    let r = (|| {
        let k = kernel()?;
        let (value, tokens) = dep_read(a.serialized_data)?;
        log("dep_retrieve", value);
        let mut deps = Vec::new();
        for t in tokens {
            match k.luo().get_file_incoming(a.session, t) {
                Ok(f) => deps.push(f),
                Err(_) if IGNORE_DEP_ERRORS.with(Cell::get) => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<_, Errno>(CoreFile::new(
            "luo-test-dep",
            FileObj::Synthetic(
                FileKind::Other,
                Box::new(DepFile {
                    value,
                    deps: Mutex::new(deps),
                    raw_tokens: Mutex::new(Vec::new()),
                }),
            ),
        ))
    })();
    // Retrieved or not, the record page goes: finish skips files whose retrieve failed.
    if let Ok(k) = kernel() {
        let _ = k.kho().restore_free(PhysAddr::new(a.serialized_data));
    }
    match r {
        Ok(f) => {
            a.file = CoreFile::into_c(f);
            0
        }
        Err(e) => e.to_neg(),
    }
}

unsafe extern "C" fn dep_finish(a: *mut liveupdate_file_op_args) {
    let a = args(a);
    if a.retrieve_status > 0 {
        log("dep_finish", dep_payload(a.file).map_or(0, |d| d.value));
        return;
    }
    log(
        "dep_finish",
        dep_read(a.serialized_data).map_or(0, |(v, _)| v),
    );
    if a.retrieve_status == 0
        && let Ok(k) = kernel()
    {
        let _ = k.kho().restore_free(PhysAddr::new(a.serialized_data));
    }
}
