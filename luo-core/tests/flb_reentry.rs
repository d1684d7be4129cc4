// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Regression (found by review): an FLB's outgoing and incoming callbacks can run at the same
//! time on two threads (each direction has its own lock). The core remembered only the last
//! thread to enter a callback, so when the other one left first, a `get_incoming` from inside
//! `retrieve` was no longer seen as a re-entry and locked the FLB's incoming state its own
//! thread held. It must be `EDEADLK`.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Barrier, OnceLock};

use luo_abi::Errno;
use luo_core::{BootOptions, Kernel, StaticFlb, StaticFlbOps};
use luo_generated::liveupdate::{liveupdate_flb_op_args, liveupdate_flb_ops};
use luo_testing as testing;

/// Set in the new kernel: the callbacks then meet at the barriers.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Two parties: `retrieve` (thread A) and `preserve` (thread B).
static MEET: OnceLock<(Barrier, Barrier)> = OnceLock::new();
/// What the re-entrant get from inside `retrieve` returned (0 or -errno).
static REENTRY: AtomicI32 = AtomicI32::new(1);
static KERNEL: OnceLock<std::sync::Mutex<Option<Kernel>>> = OnceLock::new();

fn meet() -> &'static (Barrier, Barrier) {
    MEET.get_or_init(|| (Barrier::new(2), Barrier::new(2)))
}

unsafe extern "C" fn preserve(a: *mut liveupdate_flb_op_args) -> c_int {
    if ARMED.load(Ordering::SeqCst) {
        // Enter while thread A is inside `retrieve`, and leave before it goes on.
        meet().0.wait();
    }
    // SAFETY: LUO passes a valid argument block for the call.
    unsafe { (*a).data = 0x5eed };
    0
}

unsafe extern "C" fn unpreserve(_a: *mut liveupdate_flb_op_args) {}

unsafe extern "C" fn retrieve(_a: *mut liveupdate_flb_op_args) -> c_int {
    meet().0.wait();
    // Thread B's `preserve` has now returned.
    meet().1.wait();
    let k = KERNEL.get().unwrap().lock().unwrap().clone().unwrap();
    let r = k.luo().flb_get_incoming(FLB.as_ptr());
    REENTRY.store(r.map_or_else(Errno::to_neg, |_| 0), Ordering::SeqCst);
    0
}

unsafe extern "C" fn finish(_a: *mut liveupdate_flb_op_args) {}

static OPS: StaticFlbOps = StaticFlbOps(liveupdate_flb_ops {
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    retrieve: Some(retrieve),
    finish: Some(finish),
    owner: std::ptr::null_mut(),
});
static FLB: StaticFlb = StaticFlb::new(&OPS, "luo-test-reentry-flb-v1");

fn boot(h: Option<luo_core::Handover>) -> Kernel {
    let k = Kernel::boot(&BootOptions::default(), h).unwrap();
    testing::register(&k, false).unwrap();
    let _g = k.enter();
    // SAFETY: both descriptors are immutable statics.
    let fh = testing::handler_ptr(&k).unwrap();
    // SAFETY: a registered handler of `k` and a static FLB.
    unsafe { k.luo().register_flb(fh, FLB.as_ptr()) }.unwrap();
    k
}

#[test]
fn concurrent_outgoing_callback_hid_a_reentrant_get_incoming() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "old").unwrap();
    let f = k.test_file(1).unwrap();
    k.preserve_fd(s, f, 1).unwrap();
    let k = boot(Some(k.kexec().unwrap()));
    KERNEL
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .replace(k.clone());
    ARMED.store(true, Ordering::SeqCst);

    let k = Arc::new(k);
    let b = {
        let k = Arc::clone(&k);
        std::thread::spawn(move || {
            let _g = k.enter();
            let dev = k.open_dev().unwrap();
            let s = k.create_session(dev, "new").unwrap();
            let f = k.test_file(2).unwrap();
            // The FLB's first outgoing file: `preserve` runs, meeting thread A.
            k.preserve_fd(s, f, 1).unwrap();
            meet().1.wait();
            s
        })
    };
    // Thread A: the lazy retrieve of the incoming FLB.
    let a = {
        let k = Arc::clone(&k);
        std::thread::spawn(move || {
            let _g = k.enter();
            k.luo().flb_get_incoming(FLB.as_ptr()).map(|_| ())
        })
    };
    b.join().unwrap();
    assert_eq!(a.join().unwrap(), Ok(()));
    assert_eq!(
        REENTRY.load(Ordering::SeqCst),
        Errno::EDEADLK.to_neg(),
        "get_incoming from inside retrieve"
    );
}
