// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The upstream in-kernel test's FLBs (`lib/tests/liveupdate.c`, `CONFIG_LIVEUPDATE_TEST`):
//! three FLBs, `"liveupdate-test-flb-v0/1/2"`, linked to every handler as it registers.
//! Preserve stores `0xFEEDF00DCAFEBEE0 + i` in the FLB's data word itself (an `immediate`
//! FLB: no preserved memory); retrieve checks it and keeps it as the incoming object; finish
//! checks the object. At link time `get_incoming` is called on all three, tolerating `ENODATA`
//! and `ENOENT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::handler::{FileHandler, Registration};
use luo_abi::host::RawFlb;
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_flb;

/// The magic base: FLB `i` stores `TEST_FLB_MAGIC_BASE + i`.
pub const TEST_FLB_MAGIC_BASE: u64 = 0xFEED_F00D_CAFE_BEE0;

/// Number of test FLBs.
pub const TEST_FLB_COUNT: usize = 3;

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

fn preserve(i: u64) -> Result<(u64, ())> {
    PRESERVED.fetch_add(1, Ordering::Relaxed);
    Ok((TEST_FLB_MAGIC_BASE + i, ()))
}

fn retrieve(i: u64, data: u64) -> Result<u64> {
    if data != TEST_FLB_MAGIC_BASE + i {
        MISMATCHES.fetch_add(1, Ordering::Relaxed);
        return Err(Errno::EINVAL);
    }
    RETRIEVED_OK.fetch_add(1, Ordering::Relaxed);
    Ok(data)
}

fn finish(i: u64, obj: &u64) {
    if *obj == TEST_FLB_MAGIC_BASE + i {
        FINISHED_OK.fetch_add(1, Ordering::Relaxed);
    } else {
        MISMATCHES.fetch_add(1, Ordering::Relaxed);
    }
}

macro_rules! test_flb {
    ($name:ident, $compat:literal, $i:literal) => {
        #[doc = concat!("The test FLB `", $compat, "`.")]
        #[liveupdate_flb(compatible = $compat, abi = u64, immediate)]
        pub struct $name;

        #[liveupdate_flb]
        impl FlbState for $name {
            type Outgoing = ();
            type Incoming = u64;
            fn preserve(&self, _: &StateCtx<'_>) -> Result<(u64, ())> {
                preserve($i)
            }
            fn unpreserve(&self, _: &StateCtx<'_>, _: u64, _: Arc<()>) {}
            fn retrieve(&self, _: &StateCtx<'_>, data: u64) -> Result<u64> {
                retrieve($i, data)
            }
            fn finish(&self, _: &StateCtx<'_>, obj: Arc<u64>) {
                finish($i, &obj)
            }
        }
    };
}

test_flb!(TestFlb0, "liveupdate-test-flb-v0", 0);
test_flb!(TestFlb1, "liveupdate-test-flb-v1", 1);
test_flb!(TestFlb2, "liveupdate-test-flb-v2", 2);

/// The three test FLBs of one kernel.
pub struct TestFlbs {
    flb0: Arc<FlbCell<TestFlb0>>,
    flb1: Arc<FlbCell<TestFlb1>>,
    flb2: Arc<FlbCell<TestFlb2>>,
}

impl TestFlbs {
    /// The test FLBs, run by `k`.
    pub fn new(k: &impl Registry) -> TestFlbs {
        TestFlbs {
            flb0: k.new_flb(TestFlb0),
            flb1: k.new_flb(TestFlb1),
            flb2: k.new_flb(TestFlb2),
        }
    }

    /// Links the three FLBs to `reg`'s handlers (upstream: at every handler registration).
    pub fn link<H: FileHandler>(&self, reg: Registration<H>) -> Registration<H> {
        reg.link_flb(Arc::clone(&self.flb0))
            .link_flb(Arc::clone(&self.flb1))
            .link_flb(Arc::clone(&self.flb2))
    }

    /// What upstream's test does once its FLBs are linked: `get_incoming` on each, which
    /// retrieves handed-over data (and checks its value), tolerating `ENODATA` (nothing
    /// handed over yet) and `ENOENT` (not handed over by the previous kernel).
    pub fn check_incoming(&self) -> Result {
        fn one<S: FlbState>(cell: &FlbCell<S>) -> Result {
            match cell.get_incoming() {
                Ok(_guard) => Ok(()),
                Err(Errno::ENODATA | Errno::ENOENT) => Ok(()),
                Err(e) => Err(e),
            }
        }
        one(&self.flb0)?;
        one(&self.flb1)?;
        one(&self.flb2)
    }

    /// The raw `struct liveupdate_flb *` of FLB `i` (for tests of the core's link rules).
    pub fn raw(&self, i: usize) -> Option<RawFlb> {
        match i {
            0 => Some(self.flb0.raw()),
            1 => Some(self.flb1.raw()),
            2 => Some(self.flb2.raw()),
            _ => None,
        }
    }
}
