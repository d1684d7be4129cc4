// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Concurrency stress: 8 threads × 10,000 operations on one
//! kernel — sessions created, files preserved into them, sessions closed
//! (which unpreserves their files), FLB `get_outgoing` in between — then a
//! kexec in which exactly the files of the sessions still open cross, each
//! retrievable with its value, and nothing leaks afterwards.

use std::collections::BTreeMap;
use std::sync::Mutex;

use luo_core::{BootOptions, Kernel};
use luo_testing as testing;

const THREADS: u64 = 8;
const OPS: u64 = 10_000;

/// A small deterministic generator per thread (no dependency needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn eight_threads_ten_thousand_operations_each() {
    let k = Kernel::boot(&BootOptions::default(), None).expect("boot");
    testing::register(&k, true).expect("register");
    let dev = k.open_dev().expect("open");
    // Session name -> tokens still preserved in it, as the threads left them.
    let survivors: Mutex<BTreeMap<String, Vec<u64>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (k, survivors) = (k.clone(), &survivors);
            sc.spawn(move || {
                let mut rng = Lcg(t + 1);
                let mut open: Vec<(String, i32, Vec<u64>)> = Vec::new();
                for n in 0..OPS {
                    match rng.next(10) {
                        0 | 1 => {
                            let name = format!("t{t}-s{n}");
                            let s = k.create_session(dev, &name).expect("create");
                            open.push((name, s, Vec::new()));
                        }
                        2..=6 if !open.is_empty() => {
                            let i = rng.next(open.len() as u64) as usize;
                            let token = (t << 32) | n;
                            let f = k.test_file(token).expect("file");
                            k.preserve_fd(open[i].1, f, token).expect("preserve");
                            k.close(f).expect("close file");
                            open[i].2.push(token);
                        }
                        7 if !open.is_empty() => {
                            // Last close of an outgoing session unpreserves its files.
                            let i = rng.next(open.len() as u64) as usize;
                            let (_, s, _) = open.swap_remove(i);
                            k.close(s).expect("close session");
                        }
                        _ => {
                            // Global state in between: the FLB's outgoing object
                            // (NULL while no dependent file is preserved).
                            if let Some(flb) = testing::flb_ptr(&k) {
                                let _ = k.luo().flb_get_outgoing(flb);
                            }
                        }
                    }
                }
                let mut map = survivors.lock().expect("no poisoned lock");
                for (name, _s, tokens) in open {
                    // The session fd stays open across the kexec, as an agent keeps it.
                    map.insert(name, tokens);
                }
            });
        }
    });
    let survivors = survivors.into_inner().expect("lock");
    let files: usize = survivors.values().map(Vec::len).sum();
    assert!(
        survivors.len() > 100 && files > 1000,
        "{} sessions, {files} files",
        survivors.len()
    );

    let k2 =
        Kernel::boot(&BootOptions::default(), Some(k.kexec().expect("kexec"))).expect("boot 2");
    testing::register(&k2, true).expect("register 2");
    let dev = k2.open_dev().expect("open 2");
    for (name, tokens) in &survivors {
        let s = k2.retrieve_session(dev, name).expect("retrieve session");
        for &token in tokens {
            let fd = k2.retrieve_fd(s, token).expect("retrieve fd");
            assert_eq!(k2.file(fd).expect("file").test_value(), Some(token));
            k2.close(fd).expect("close");
        }
        k2.close(s).expect("finish by close");
    }
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
}

unsafe extern "C" fn gs_create(
    _: *mut luo_generated::liveupdate::liveupdate_file_handler,
    obj: *mut *mut std::ffi::c_void,
    data: *mut u64,
) -> std::ffi::c_int {
    // SAFETY: the core passes valid out-pointers.
    unsafe {
        *obj = std::ptr::null_mut();
        *data = 0;
    }
    0
}

unsafe extern "C" fn gs_restore(
    _: *mut luo_generated::liveupdate::liveupdate_file_handler,
    _: u64,
    obj: *mut *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: as above.
    unsafe { *obj = std::ptr::null_mut() };
    0
}

unsafe extern "C" fn gs_destroy(
    _: *mut luo_generated::liveupdate::liveupdate_file_handler,
    _: *mut std::ffi::c_void,
) {
}

struct SyncGsOps(luo_generated::liveupdate::liveupdate_fh_global_state_ops);
// SAFETY: immutable after construction.
unsafe impl Sync for SyncGsOps {}
static GS_OPS: SyncGsOps = SyncGsOps(luo_generated::liveupdate::liveupdate_fh_global_state_ops {
    global_state_create: Some(gs_create),
    global_state_restore: Some(gs_restore),
    global_state_destroy: Some(gs_destroy),
});

/// Regression for the lock-order check's finding: registering a handler's
/// global state while incoming sessions exist counted their files (taking
/// the session lists) under the handler's global-state lock, the reverse of
/// reboot's order. In a debug build the check panics if it comes back;
/// here a reboot also runs on another thread at the same time.
#[test]
fn global_state_register_took_the_session_lists_under_its_lock() {
    let k = Kernel::boot(&BootOptions::default(), None).expect("boot");
    testing::register(&k, false).expect("register");
    let dev = k.open_dev().expect("open");
    let s = k.create_session(dev, "s").expect("create");
    let fd = k.test_file(1).expect("file");
    k.preserve_fd(s, fd, 1).expect("preserve");
    let k2 = k.kexec_into(&BootOptions::default()).expect("kexec");
    testing::register(&k2, false).expect("register 2");
    // The first open deserializes: the incoming file is counted at registration.
    let dev2 = k2.open_dev().expect("open 2");
    let s2 = k2.create_session(dev2, "out").expect("create 2");
    let f2 = k2.test_file(2).expect("file 2");
    k2.preserve_fd(s2, f2, 2).expect("preserve 2");
    std::thread::scope(|t| {
        let kr = k2.clone();
        let reboot = t.spawn(move || kr.kexec().map(drop));
        let _g = k2.enter();
        // SAFETY: a registered static handler and static ops.
        let r = unsafe {
            k2.luo()
                .global_state_register(testing::handler_ptr(&k2).expect("registered"), &GS_OPS.0)
        };
        assert!(matches!(r, Ok(()) | Err(luo_abi::Errno::EBUSY)), "{r:?}");
        reboot.join().expect("reboot thread").expect("reboot");
    });
}
