// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A handler written with the macros, run by luo-core across a kexec between two processes.
//!
//! `#[liveupdate_handler]` handler `counter-v1` links the FLB `counter-table-v1`
//! (`#[liveupdate_flb]`) and uses the subsystem `counter-pool` (`#[liveupdate_subsystem]`).
//! Stage 1 (a child process) registers them with a kernel, preserves three files in a session
//! and kexecs by `execve` of this test binary; stage 2 boots from the inherited memory,
//! registers the same handler, retrieves every file with the FLB's and the subsystem's
//! incoming state, finishes the session, and checks that no preserved page is left.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{FlbState, StateCtx, Subsystem};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_core::{BackingKind, BootOptions, Handover, Kernel};
use luo_derive::{Abi, liveupdate_flb, liveupdate_handler, liveupdate_subsystem};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const STAGE_ENV: &str = "LUO_MACRO_HANDLER_STAGE";
const TEST: &str = "macro_handler_across_processes";
const POOL_PAGES: u64 = 512;
const TABLE_GENERATION: u64 = 0x7a61_6c65;
const FILES: [(u64, u64); 3] = [(0, 11), (7, 22), (u64::MAX, 33)];

/// What a preserved counter file hands over.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct counter_ser {
    /// The counter's value.
    pub value: u64,
    /// The FLB generation the file was preserved under.
    pub generation: u64,
}

/// What the FLB hands over once for every counter file.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct counter_table_ser {
    /// A value the new kernel checks.
    pub generation: u64,
}

/// What the subsystem hands over.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct counter_pool_ser {
    /// The pool's size.
    pub pages: u64,
}

/// The object behind a counter file.
pub struct Counter(u64);

/// The FLB every counter file depends on.
#[liveupdate_flb(compatible = "counter-table-v1", abi = counter_table_ser, lock = luo_abi::sync::StdBackend)]
pub struct Table;

static FLB_FINISHED: AtomicUsize = AtomicUsize::new(0);

#[liveupdate_flb]
impl FlbState for Table {
    type Outgoing = AtomicU64;
    type Incoming = u64;
    fn preserve(&self, _: &StateCtx<'_>) -> Result<(counter_table_ser, AtomicU64)> {
        let ser = counter_table_ser {
            generation: TABLE_GENERATION,
        };
        Ok((ser, AtomicU64::new(0)))
    }
    fn unpreserve(&self, _: &StateCtx<'_>, _: counter_table_ser, _: Arc<AtomicU64>) {}
    fn retrieve(&self, _: &StateCtx<'_>, ser: counter_table_ser) -> Result<u64> {
        Ok(ser.generation)
    }
    fn finish(&self, _: &StateCtx<'_>, _: Arc<u64>) {
        FLB_FINISHED.fetch_add(1, Ordering::SeqCst);
    }
}

/// A subsystem with its own lifecycle, used by the handler at retrieve.
#[liveupdate_subsystem(name = "counter-pool", abi = counter_pool_ser)]
pub struct Pool {
    pages: u64,
}

static SUBSYSTEM_FINISHED: AtomicUsize = AtomicUsize::new(0);

#[liveupdate_subsystem]
impl Subsystem for Pool {
    type Outgoing = ();
    type Incoming = u64;
    fn prepare(&self, _: &StateCtx<'_>) -> Result<(counter_pool_ser, ())> {
        Ok((counter_pool_ser { pages: self.pages }, ()))
    }
    fn cancel(&self, _: &StateCtx<'_>, _: ()) {}
    fn boot(&self, _: &StateCtx<'_>, ser: counter_pool_ser) -> Result<u64> {
        Ok(ser.pages)
    }
    fn finish(&self, _: &StateCtx<'_>, _: u64) {
        SUBSYSTEM_FINISHED.fetch_add(1, Ordering::SeqCst);
    }
}

/// The file handler.
#[liveupdate_handler(
    compatible = "counter-v1",
    abi = counter_ser,
    flbs = [Table],
    subsystems = [Pool],
)]
pub struct CounterHandler;

#[liveupdate_handler]
impl FileHandler for CounterHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.payload().is_some_and(|p| p.is::<Counter>())
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(counter_ser, ())> {
        let c = file
            .payload()
            .and_then(|p| p.downcast_ref::<Counter>())
            .ok_or(Errno::EINVAL)?;
        let table = cx.global::<Table>().get_outgoing()?;
        table.fetch_add(1, Ordering::SeqCst);
        Ok((
            counter_ser {
                value: c.0,
                generation: TABLE_GENERATION,
            },
            (),
        ))
    }
    fn unpreserve(&self, cx: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {
        if let Ok(t) = cx.global::<Table>().get_outgoing() {
            t.fetch_sub(1, Ordering::SeqCst);
        }
    }
    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: counter_ser) -> Result<FileRef> {
        let generation = *cx.global::<Table>().get_incoming()?;
        let pages = *cx.global::<Pool>().get_incoming()?;
        if generation != ser.generation || pages != POOL_PAGES {
            return Err(Errno::EINVAL);
        }
        cx.open_synthetic(FileKind::Other, "counter", Box::new(Counter(ser.value)))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

/// Registers the subsystem, then the handler with its FLB, as a machine's boot would.
fn install(k: &Kernel) {
    let pool = k.new_subsystem(Pool { pages: POOL_PAGES });
    k.register_subsystem(&pool).unwrap();
    let table = k.new_flb(Table);
    k.register_handler(Registration::new(CounterHandler, k.host(), (table, pool)))
        .unwrap();
}

fn boot_options() -> BootOptions {
    BootOptions {
        backing: BackingKind::Memfd,
        ..BootOptions::default()
    }
}

fn stage1() -> ! {
    let k = Kernel::boot(&boot_options(), None).unwrap();
    install(&k);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "macro").unwrap();
    for (token, value) in FILES {
        let fd = k
            .open_synthetic(FileKind::Other, "counter", Box::new(Counter(value)))
            .unwrap();
        k.preserve_fd(s, fd, token).unwrap();
    }
    let handover = k.kexec().unwrap();
    let exe = std::env::current_exe().unwrap();
    let args = [TEST, "--exact", "--nocapture"].map(Into::into);
    let e = handover.exec(&exe, &args, &[(STAGE_ENV.into(), "2".into())]);
    panic!("execve {}: {e}", exe.display());
}

fn stage2() {
    let handover = Handover::from_env().unwrap().expect("a handover");
    let k = Kernel::boot(&boot_options(), Some(handover)).unwrap();
    assert_eq!(k.liveupdate_num(), 1);
    install(&k);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "macro").unwrap();
    for (token, value) in FILES {
        let fd = k.retrieve_fd(s, token).unwrap();
        let f = k.file(fd).unwrap();
        let c = f.payload().and_then(|p| p.downcast_ref::<Counter>());
        assert_eq!(c.map(|c| c.0), Some(value), "token {token}");
    }
    assert_eq!(FLB_FINISHED.load(Ordering::SeqCst), 0);
    k.finish_session(s).unwrap();
    assert_eq!(FLB_FINISHED.load(Ordering::SeqCst), 1);
    assert_eq!(SUBSYSTEM_FINISHED.load(Ordering::SeqCst), 1);
    k.close(s).unwrap();
    let st = k.stats();
    assert_eq!(st.kho.incoming_pages, 0, "{st:?}");
    assert_eq!(st.preserved_beyond_root(), 0, "{st:?}");
    println!(
        "stage 2: {} files retrieved and finished, no page left",
        FILES.len()
    );
}

#[test]
fn macro_handler_across_processes() {
    match std::env::var(STAGE_ENV).as_deref() {
        Ok("1") => stage1(),
        Ok("2") => return stage2(),
        _ => {}
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture"])
        .env(STAGE_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("stage 2: 3 files retrieved and finished, no page left"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
