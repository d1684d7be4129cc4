//! The upstream in-kernel test's FLBs (`lib/tests/liveupdate.c`, `CONFIG_LIVEUPDATE_TEST`):
//! three FLBs, `"liveupdate-test-flb-v0/1/2"`, linked to every handler as it registers.
//! Preserve stores `0xFEEDF00DCAFEBEE0 + i`; retrieve checks it and sets `obj`; finish checks
//! `obj`. Linking the same FLB twice gives `EEXIST`. At link time `get_incoming` is called on
//! all three, tolerating `ENODATA` and `ENOENT`.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::Errno;
use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_flb, liveupdate_flb_op_args, liveupdate_flb_ops,
};

pub use crate::host::StaticFlb;
use crate::host::{FlbOps, host};

/// The magic base: FLB `i` stores `TEST_FLB_MAGIC_BASE + i`.
pub const TEST_FLB_MAGIC_BASE: u64 = 0xFEED_F00D_CAFE_BEE0;

/// Number of test FLBs.
pub const TEST_FLB_COUNT: usize = 3;

static OPS: FlbOps = FlbOps(liveupdate_flb_ops {
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    retrieve: Some(retrieve),
    finish: Some(finish),
    owner: std::ptr::null_mut(),
});

/// The three test FLBs.
pub static TEST_FLBS: [StaticFlb; TEST_FLB_COUNT] = [
    StaticFlb::new(&OPS, "liveupdate-test-flb-v0"),
    StaticFlb::new(&OPS, "liveupdate-test-flb-v1"),
    StaticFlb::new(&OPS, "liveupdate-test-flb-v2"),
];

/// What the test FLBs saw (process-wide).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Preserve calls.
    pub preserved: u64,
    /// Retrieves whose data was `TEST_FLB_MAGIC_BASE + i`.
    pub retrieved_ok: u64,
    /// Finishes whose object was right.
    pub finished_ok: u64,
    /// Retrieves or finishes with a wrong value (upstream: `pr_err`).
    pub mismatches: u64,
}

static PRESERVED: AtomicU64 = AtomicU64::new(0);
static RETRIEVED_OK: AtomicU64 = AtomicU64::new(0);
static FINISHED_OK: AtomicU64 = AtomicU64::new(0);
static MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// The test FLBs' counters.
pub fn stats() -> Stats {
    Stats {
        preserved: PRESERVED.load(Ordering::Relaxed),
        retrieved_ok: RETRIEVED_OK.load(Ordering::Relaxed),
        finished_ok: FINISHED_OK.load(Ordering::Relaxed),
        mismatches: MISMATCHES.load(Ordering::Relaxed),
    }
}

fn index_of(flb: *mut liveupdate_flb) -> Option<u64> {
    TEST_FLBS
        .iter()
        .position(|f| std::ptr::eq(&f.0, flb.cast_const()))
        .map(|i| i as u64)
}

unsafe extern "C" fn preserve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    let Some(i) = index_of(a.flb) else {
        return Errno::EINVAL.to_neg();
    };
    a.data = TEST_FLB_MAGIC_BASE + i;
    a.obj = std::ptr::null_mut();
    PRESERVED.fetch_add(1, Ordering::Relaxed);
    0
}

unsafe extern "C" fn unpreserve(_a: *mut liveupdate_flb_op_args) {}

unsafe extern "C" fn retrieve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    let Some(i) = index_of(a.flb) else {
        return Errno::EINVAL.to_neg();
    };
    if a.data != TEST_FLB_MAGIC_BASE + i {
        MISMATCHES.fetch_add(1, Ordering::Relaxed);
        return Errno::EINVAL.to_neg();
    }
    a.obj = a.data as usize as *mut c_void;
    RETRIEVED_OK.fetch_add(1, Ordering::Relaxed);
    0
}

unsafe extern "C" fn finish(a: *mut liveupdate_flb_op_args) {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    match index_of(a.flb) {
        Some(i) if a.obj as usize as u64 == TEST_FLB_MAGIC_BASE + i => {
            FINISHED_OK.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Links the three test FLBs to `fh` (upstream: at every handler registration), checks that
/// linking one again gives `EEXIST`, then calls `get_incoming` on each, tolerating `ENODATA`
/// (no incoming FLB data) and `ENOENT` (not handed over).
///
/// # Safety
///
/// `fh` is a registered `'static` handler.
pub unsafe fn link(fh: *mut liveupdate_file_handler) -> Result<(), Errno> {
    let h = host()?;
    for f in &TEST_FLBS {
        // SAFETY: `'static` descriptors; the caller guarantees `fh`.
        unsafe { h.register_flb(fh, f.as_ptr()) }?;
    }
    // SAFETY: as above.
    match unsafe { h.register_flb(fh, TEST_FLBS[0].as_ptr()) } {
        Err(Errno::EEXIST) => {}
        Ok(()) => return Err(Errno::EINVAL),
        Err(e) => return Err(e),
    }
    for f in &TEST_FLBS {
        match h.flb_get_incoming(f.as_ptr()) {
            Ok(_) => h.flb_put_incoming(f.as_ptr()),
            Err(Errno::ENODATA | Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
