// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `global_get_put`: an uncontended get + put (guard dropped) of each of the three forms of
//! global state, through luo-abi's runtime, against `std::sync::Mutex` lock + unlock.
//!
//! For each form (FLB, handler-scoped state, subsystem) and direction (outgoing, incoming)
//! the object is created the way the core would (the form's `preserve`/`create`/`prepare`
//! and `retrieve`/`restore`/`boot` ops called through the generated tables), then measured
//! with the cell's lock backend being either the default ([`luo_abi::sync::StdBackend`], a
//! flag under a std mutex plus a condvar) or [`MutexBackend`] (one std mutex, named with
//! `lock = ...` in the attributes).
//!
//! The host ([`GlobalHost`]) is the cheapest correct one: its `flb_get_*` and
//! `fh_global_state_get/put` return at once (the objects were created before the first get).
//! The real core's side of those calls (upstream takes the FLB's or the handler's mutex)
//! belongs to luo-core and is not measured here. An FLB get does not call the host at all
//! once its object is live (the cell lends it, see `luo_abi::global::FlbCell`), so the FLB
//! rows cost the same through the real core; handler-scoped state still calls
//! `fh_global_state_get/put` on every get + put.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::hint::black_box;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{
    FlbCell, FlbState, HandlerState, HandlerStateCell, StateCtx, StateObj, Subsystem, SubsystemCell,
};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::host::{LuoHost, RawFileHandler, RawFlb};
use luo_abi::kho::KhoService;
use luo_abi::lock::LockBackend;
use luo_abi::{Errno, Result};
use luo_derive::{
    Abi, liveupdate_flb, liveupdate_global_state, liveupdate_handler, liveupdate_subsystem,
};
use luo_generated::liveupdate::{
    liveupdate_fh_global_state_ops, liveupdate_file_handler, liveupdate_flb,
    liveupdate_flb_op_args, liveupdate_subsystem,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::RingKho;

/// A lock backend over exactly one `std::sync::Mutex` (what the baseline locks), so that the
/// runtime's own cost shows apart from the default backend's.
pub struct MutexBackend;

/// State of [`MutexBackend`]: the mutex and, while locked, its guard.
pub struct MutexState {
    // Declared first so it drops first: a guard still held (a leaked `Guard`) is released
    // before the mutex it borrows.
    held: UnsafeCell<Option<MutexGuard<'static, ()>>>,
    mutex: Mutex<()>,
}

// SAFETY: `held` is only touched by the holder of `mutex` (set right after locking, taken in
// `unlock`, which the `LockBackend` contract lets only the holder call); the `Lock` guard that
// holds it is `!Send`, so the guard is released on the thread that locked.
unsafe impl Send for MutexState {}
// SAFETY: as above.
unsafe impl Sync for MutexState {}

// SAFETY: `lock` returns with `mutex` held; `unlock` releases it by dropping its guard.
unsafe impl LockBackend for MutexBackend {
    type State = MutexState;
    type GuardState = ();

    fn new_state() -> MutexState {
        MutexState {
            held: UnsafeCell::new(None),
            mutex: Mutex::new(()),
        }
    }

    #[inline]
    fn lock(s: &MutexState) {
        let g = s.mutex.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the state does not move while locked (the `Lock` that owns it is borrowed by
        // the guard), and the guard is dropped in `unlock` before the state can be dropped or
        // moved, so the borrow outlives every use.
        let g: MutexGuard<'static, ()> = unsafe { std::mem::transmute(g) };
        // SAFETY: we hold the mutex, so no one else touches `held`.
        unsafe { *s.held.get() = Some(g) };
    }

    fn try_lock(s: &MutexState) -> Option<()> {
        let g = s.mutex.try_lock().ok()?;
        // SAFETY: as in `lock`.
        let g: MutexGuard<'static, ()> = unsafe { std::mem::transmute(g) };
        // SAFETY: as in `lock`.
        unsafe { *s.held.get() = Some(g) };
        Some(())
    }

    #[inline]
    unsafe fn unlock(s: &MutexState, _: &()) {
        // SAFETY: the caller holds the lock, so we own `held`.
        drop(unsafe { (*s.held.get()).take() });
    }
}

/// The handed-over struct of every global state here.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
pub struct bench_global_ser {
    /// The value.
    pub value: u64,
}

/// The host: KHO for the ops, and get/put calls that return at once.
pub struct GlobalHost {
    kho: RingKho,
}

impl LuoHost for GlobalHost {
    /// No file handler runs on this host: it measures the global-state cells alone.
    fn file_into_raw(&self, _: luo_abi::file::FileRef) -> luo_abi::Result<*mut core::ffi::c_void> {
        Err(luo_abi::Errno::EOPNOTSUPP)
    }

    fn kho(&self) -> &dyn KhoService {
        &self.kho
    }
    fn flb_get_incoming(&self, _: RawFlb) -> Result<*mut c_void> {
        Ok(ptr::null_mut())
    }
    fn flb_put_incoming(&self, _: RawFlb) {}
    fn flb_get_outgoing(&self, _: RawFlb) -> Result<*mut c_void> {
        Ok(ptr::null_mut())
    }
    fn fh_global_state_get(&self, _: RawFileHandler) -> Result<*mut c_void> {
        Ok(ptr::null_mut())
    }
    fn fh_global_state_put(&self, _: RawFileHandler) {}
}

macro_rules! forms {
    ($m:ident, $flb:ident, $flbc:literal, $st:ident, $h:ident, $hc:literal, $sub:ident, $subn:literal, [$($lock:tt)*]) => {
        /// The global states of one lock backend.
        pub mod $m {
            use super::*;

            /// An FLB.
            #[liveupdate_flb(compatible = $flbc, abi = bench_global_ser $($lock)*)]
            pub struct $flb;

            #[liveupdate_flb]
            impl FlbState for $flb {
                type Outgoing = u64;
                type Incoming = u64;
                fn preserve(&self, _: &StateCtx<'_>) -> Result<(bench_global_ser, u64)> {
                    Ok((bench_global_ser { value: 7 }, 7))
                }
                fn unpreserve(&self, _: &StateCtx<'_>, _: bench_global_ser, _: Arc<u64>) {}
                fn retrieve(&self, _: &StateCtx<'_>, ser: bench_global_ser) -> Result<u64> {
                    Ok(ser.value)
                }
                fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {}
            }

            /// Handler-scoped state.
            #[liveupdate_global_state(abi = bench_global_ser $($lock)*)]
            pub struct $st;

            #[liveupdate_global_state]
            impl HandlerState for $st {
                type Outgoing = u64;
                type Incoming = u64;
                fn create(&self, _: &StateCtx<'_>) -> Result<(bench_global_ser, u64)> {
                    Ok((bench_global_ser { value: 7 }, 7))
                }
                fn restore(&self, _: &StateCtx<'_>, ser: bench_global_ser) -> Result<u64> {
                    Ok(ser.value)
                }
                fn destroy(&self, _: &StateCtx<'_>, _: StateObj<u64, u64>) {}
            }

            /// The handler owning the handler-scoped state.
            #[liveupdate_handler(compatible = $hc, abi = bench_global_ser, state = $st)]
            pub struct $h;

            #[liveupdate_handler]
            impl FileHandler for $h {
                fn can_preserve(&self, file: &dyn File) -> bool {
                    file.kind() == FileKind::Memfd
                }
                fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(bench_global_ser, ())> {
                    Err(Errno::EOPNOTSUPP)
                }
                fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: bench_global_ser, _: ()) {}
                fn retrieve(&self, _: &Ctx<'_, Self>, _: bench_global_ser) -> Result<FileRef> {
                    Err(Errno::EOPNOTSUPP)
                }
                fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, bench_global_ser>) {}
            }

            /// A subsystem.
            #[liveupdate_subsystem(name = $subn, abi = bench_global_ser $($lock)*)]
            pub struct $sub;

            #[liveupdate_subsystem]
            impl Subsystem for $sub {
                type Outgoing = u64;
                type Incoming = u64;
                fn prepare(&self, _: &StateCtx<'_>) -> Result<(bench_global_ser, u64)> {
                    Ok((bench_global_ser { value: 7 }, 7))
                }
                fn cancel(&self, _: &StateCtx<'_>, _: u64) {}
                fn boot(&self, _: &StateCtx<'_>, ser: bench_global_ser) -> Result<u64> {
                    Ok(ser.value)
                }
                fn finish(&self, _: &StateCtx<'_>, _: u64) {}
            }

            /// The three forms, each with its outgoing and incoming object present.
            pub struct Fixture {
                /// The FLB.
                pub flb: Arc<FlbCell<$flb>>,
                /// The handler with handler-scoped state.
                pub reg: Registration<$h>,
                /// The subsystem.
                pub sub: Arc<SubsystemCell<$sub>>,
            }

            impl Fixture {
                /// Creates every object through the generated ops tables, as the core would.
                pub fn new() -> Fixture {
                    let host: Arc<dyn LuoHost> = Arc::new(GlobalHost { kho: RingKho::new() });
                    let flb = FlbCell::new($flb, host.clone());
                    let reg = Registration::new($h, host.clone(), (HandlerStateCell::new($st),));
                    let sub = SubsystemCell::new($sub, host);
                    // SAFETY: the raw structs of live cells and their `'static` tables, called
                    // as the core calls them.
                    unsafe {
                        let raw = flb.raw().cast::<liveupdate_flb>();
                        let ops = &*(*raw).ops;
                        let mut a = liveupdate_flb_op_args { flb: raw, data: 0, obj: ptr::null_mut() };
                        assert_eq!(ops.preserve.expect("required")(&mut a), 0);
                        // Retrieve what was just preserved: the incoming object, in the same cell.
                        let mut b = liveupdate_flb_op_args { flb: raw, data: a.data, obj: ptr::null_mut() };
                        assert_eq!(ops.retrieve.expect("required")(&mut b), 0);

                        let fh: *mut liveupdate_file_handler = reg.raw();
                        let so = &*reg.state_ops().expect("declared").cast::<liveupdate_fh_global_state_ops>();
                        let (mut obj, mut data) = (ptr::null_mut(), 0u64);
                        assert_eq!(so.global_state_create.expect("required")(fh, &mut obj, &mut data), 0);
                        assert_eq!(so.global_state_restore.expect("required")(fh, data, &mut obj), 0);

                        let raw = sub.raw().cast::<liveupdate_subsystem>();
                        let ops = &*(*raw).ops;
                        let mut data = 0u64;
                        assert_eq!(ops.prepare.expect("required")(raw, &mut data), 0);
                        ops.boot.expect("required")(raw, data);
                    }
                    Fixture { flb, reg, sub }
                }
            }

            impl Default for Fixture {
                fn default() -> Self {
                    Fixture::new()
                }
            }

            impl GetPut for Fixture {
                #[inline(never)]
                fn get_put(&self, op: Op, n: u64) -> u64 {
                    let mut sum = 0u64;
                    match op {
                        Op::FlbOutgoing => for _ in 0..n {
                            let g = black_box(&self.flb).get_outgoing().expect("present");
                            sum = sum.wrapping_add(*g);
                        },
                        Op::FlbIncoming => for _ in 0..n {
                            let g = black_box(&self.flb).get_incoming().expect("present");
                            sum = sum.wrapping_add(*g);
                        },
                        Op::StateOutgoing => for _ in 0..n {
                            let g = black_box(&self.reg).state().get_outgoing().expect("present");
                            sum = sum.wrapping_add(*g);
                        },
                        Op::StateIncoming => for _ in 0..n {
                            let g = black_box(&self.reg).state().get_incoming().expect("present");
                            sum = sum.wrapping_add(*g);
                        },
                        Op::SubOutgoing => for _ in 0..n {
                            let g = black_box(&self.sub).get_outgoing().expect("present");
                            sum = sum.wrapping_add(*g);
                        },
                        Op::SubIncoming => for _ in 0..n {
                            let g = black_box(&self.sub).get_incoming().expect("present");
                            sum = sum.wrapping_add(*g);
                        },
                    }
                    sum
                }
            }
        }
    };
}

forms!(
    std_lock,
    StdFlb,
    "bench-flb-std-v1",
    StdState,
    StdHandler,
    "bench-state-std-v1",
    StdSub,
    "bench-sub-std",
    []
);
forms!(
    mutex_lock,
    MutexFlb,
    "bench-flb-mutex-v1",
    MutexStateT,
    MutexHandler,
    "bench-state-mutex-v1",
    MutexSub,
    "bench-sub-mutex",
    [, lock = crate::global::MutexBackend]
);

/// One get + put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `FlbCell::get_outgoing`.
    FlbOutgoing,
    /// `FlbCell::get_incoming`.
    FlbIncoming,
    /// `StateAccess::get_outgoing` (handler-scoped).
    StateOutgoing,
    /// `StateAccess::get_incoming` (handler-scoped).
    StateIncoming,
    /// `SubsystemCell::get_outgoing`.
    SubOutgoing,
    /// `SubsystemCell::get_incoming`.
    SubIncoming,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 6] = [
        Op::FlbOutgoing,
        Op::FlbIncoming,
        Op::StateOutgoing,
        Op::StateIncoming,
        Op::SubOutgoing,
        Op::SubIncoming,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Op::FlbOutgoing => "flb_outgoing",
            Op::FlbIncoming => "flb_incoming",
            Op::StateOutgoing => "state_outgoing",
            Op::StateIncoming => "state_incoming",
            Op::SubOutgoing => "subsystem_outgoing",
            Op::SubIncoming => "subsystem_incoming",
        }
    }

    /// Parses [`Op::name`].
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// `n` get + put of one operation; the sum of the values read.
pub trait GetPut {
    /// Runs `n` iterations of `op`.
    fn get_put(&self, op: Op, n: u64) -> u64;
}

/// The baseline: `n` lock + unlock of a `std::sync::Mutex<u64>`, reading the value.
#[inline(never)]
pub fn mutex_lock_unlock(m: &Mutex<u64>, n: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..n {
        let g = black_box(m).lock().unwrap_or_else(PoisonError::into_inner);
        sum = sum.wrapping_add(*g);
    }
    sum
}

/// Which lock backend the cells use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The default, `luo_abi::sync::StdBackend`.
    Std,
    /// [`MutexBackend`].
    Mutex,
}

impl Backend {
    /// Both.
    pub const ALL: [Backend; 2] = [Backend::Std, Backend::Mutex];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Std => "std_backend",
            Backend::Mutex => "mutex_backend",
        }
    }

    /// Parses [`Backend::name`].
    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }

    /// A fixture of this backend.
    pub fn fixture(self) -> Box<dyn GetPut> {
        match self {
            Backend::Std => Box::new(std_lock::Fixture::new()),
            Backend::Mutex => Box::new(mutex_lock::Fixture::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::ffi::c_int;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn every_form_gets_its_objects() {
        for b in Backend::ALL {
            let f = b.fixture();
            for op in Op::ALL {
                assert_eq!(f.get_put(op, 3), 21, "{b:?} {op:?}");
                assert_eq!(Op::parse(op.name()), Some(op));
            }
            assert_eq!(Backend::parse(b.name()), Some(b));
        }
        assert_eq!(mutex_lock_unlock(&Mutex::new(7), 3), 21);
    }

    /// An FLB object that records its drop.
    pub struct Tracked {
        id: usize,
        drops: Arc<Vec<AtomicUsize>>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.drops[self.id].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An FLB whose objects are [`Tracked`]: numbered by preserve and retrieve, logged by
    /// unpreserve and finish.
    #[liveupdate_flb(compatible = "bench-flb-tracked-v1", abi = bench_global_ser)]
    pub struct TrackedFlb {
        next: AtomicUsize,
        drops: Arc<Vec<AtomicUsize>>,
        callbacks: AtomicUsize,
    }

    impl TrackedFlb {
        fn make(&self) -> Tracked {
            Tracked {
                id: self.next.fetch_add(1, Ordering::SeqCst),
                drops: Arc::clone(&self.drops),
            }
        }
    }

    #[liveupdate_flb]
    impl FlbState for TrackedFlb {
        type Outgoing = Tracked;
        type Incoming = Tracked;
        fn preserve(&self, _: &StateCtx<'_>) -> Result<(bench_global_ser, Tracked)> {
            Ok((bench_global_ser { value: 7 }, self.make()))
        }
        fn unpreserve(&self, _: &StateCtx<'_>, _: bench_global_ser, _: Arc<Tracked>) {
            self.callbacks.fetch_add(1, Ordering::SeqCst);
        }
        fn retrieve(&self, _: &StateCtx<'_>, _: bench_global_ser) -> Result<Tracked> {
            Ok(self.make())
        }
        fn finish(&self, _: &StateCtx<'_>, _: Arc<Tracked>) {
            self.callbacks.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Through the generated table and the cell, as the core and handlers use them: guards in
    /// three threads while the core preserves and unpreserves (then retrieves and finishes)
    /// again and again. No guard sees its object dropped, every object is dropped exactly
    /// once, after its unpreserve or finish, and a get after either is `-ENODATA`.
    #[test]
    fn flb_objects_outlive_guards_and_drop_once() {
        const ROUNDS: usize = 200;
        let drops: Arc<Vec<AtomicUsize>> =
            Arc::new((0..3 * ROUNDS).map(|_| AtomicUsize::new(0)).collect());
        let host: Arc<dyn LuoHost> = Arc::new(GlobalHost {
            kho: RingKho::new(),
        });
        let cell = FlbCell::new(
            TrackedFlb {
                next: AtomicUsize::new(0),
                drops: Arc::clone(&drops),
                callbacks: AtomicUsize::new(0),
            },
            host,
        );
        let raw = cell.raw().cast::<liveupdate_flb>();
        // SAFETY: the raw struct of a live cell and its `'static` table.
        let ops = unsafe { &*(*raw).ops };
        let call = |op: unsafe extern "C" fn(*mut liveupdate_flb_op_args) -> c_int, data: u64| {
            let mut a = liveupdate_flb_op_args {
                flb: raw,
                data,
                obj: ptr::null_mut(),
            };
            // SAFETY: as the core calls it, with the handle `preserve` returned.
            assert_eq!(unsafe { op(&mut a) }, 0);
            a.data
        };
        let call_void = |op: unsafe extern "C" fn(*mut liveupdate_flb_op_args), data: u64| {
            let mut a = liveupdate_flb_op_args {
                flb: raw,
                data,
                obj: ptr::null_mut(),
            };
            // SAFETY: as above.
            unsafe { op(&mut a) };
        };
        let (preserve, unpreserve) = (
            ops.preserve.expect("required"),
            ops.unpreserve.expect("required"),
        );
        let (retrieve, finish) = (
            ops.retrieve.expect("required"),
            ops.finish.expect("required"),
        );
        let stop = AtomicBool::new(false);
        let (seen, bad) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for incoming in [false, false, true] {
                let (cell, drops, stop, seen, bad) = (&cell, &drops, &stop, &seen, &bad);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Holds the guard across a yield, then checks its object is not
                        // dropped yet.
                        let use_it = |o: &Tracked| {
                            std::thread::yield_now();
                            seen.fetch_add(1, Ordering::Relaxed);
                            if drops[o.id].load(Ordering::SeqCst) != 0 {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        };
                        if incoming {
                            if let Ok(g) = cell.get_incoming() {
                                use_it(&g);
                            }
                        } else if let Ok(g) = cell.get_outgoing() {
                            use_it(&g);
                        }
                    }
                });
            }
            for _ in 0..ROUNDS {
                let data = call(preserve, 0);
                std::thread::yield_now();
                call_void(unpreserve, data);
                let data = call(preserve, 0);
                call(retrieve, data);
                std::thread::yield_now();
                call_void(finish, 0);
                call_void(unpreserve, data);
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(seen.load(Ordering::Relaxed) > 0);
        assert_eq!(
            bad.load(Ordering::Relaxed),
            0,
            "objects dropped under a guard"
        );
        let n = cell.flb().next.load(Ordering::SeqCst);
        assert_eq!(n, 3 * ROUNDS, "objects made");
        assert_eq!(cell.flb().callbacks.load(Ordering::SeqCst), 3 * ROUNDS);
        assert_eq!(cell.get_outgoing().err(), Some(Errno::ENODATA));
        assert_eq!(cell.get_incoming().err(), Some(Errno::ENODATA));
        for (id, d) in drops.iter().enumerate().take(n) {
            assert_eq!(d.load(Ordering::SeqCst), 1, "object {id}");
        }
    }

    #[test]
    fn mutex_backend_excludes() {
        let l: luo_abi::lock::Lock<u32, MutexBackend> = luo_abi::lock::Lock::new(1);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        drop(g);
        *l.try_lock().expect("free") += 1;
        assert_eq!(*l.lock(), 2);
    }
}
