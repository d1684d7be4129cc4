//! Handlers written with the macros, driven through the generated C ops tables by the
//! miniature core, across a simulated kexec: typed state round trips, versions read with a
//! migration, feature negotiation, errno mapping, panics, and the three forms of global state
//! with their typed guards.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use luo_abi::features::Negotiated;
use luo_abi::file::{File, FileId, FileKind, FileRef};
use luo_abi::global::{
    FlbCell, FlbState, HandlerState, HandlerStateCell, StateCtx, StateObj, Subsystem, SubsystemCell,
};
use luo_abi::handler::{
    Ctx, FileHandler, Finish, HandlerAbi, Migrate, Registration, RetrieveStatus,
};
use luo_abi::host::LuoHost;
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, Phys, PhysAddr, Result};
use luo_derive::{
    Abi, liveupdate_flb, liveupdate_global_state, liveupdate_handler, liveupdate_subsystem,
};
use luo_generated::kho::kho_vmalloc;
use luo_generated::memfd::{next, v1, v2};
use luo_ui_tests::core::{Handover, MiniCore};
use luo_ui_tests::file::TestFile;
use luo_ui_tests::kho::VecKho;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

fn host(core: &Arc<MiniCore>) -> Arc<dyn LuoHost> {
    core.clone()
}

fn test_file(f: &dyn File) -> Result<&TestFile> {
    (f as &dyn File)
        .downcast_ref::<TestFile>()
        .ok_or(Errno::EINVAL)
}

// ---------------------------------------------------------------------------------------------
// A memfd-like handler with every callback, writing memfd-v2 and reading memfd-v1.

#[derive(Default)]
#[liveupdate_handler(
    compatible = "memfd-v2",
    abi = luo_generated::memfd::v2::memfd_luo_ser,
    reads = ["memfd-v1"]
)]
struct Memfd {
    log: Mutex<Vec<String>>,
    fail_freeze: std::sync::atomic::AtomicBool,
}

impl Memfd {
    fn log(&self, s: impl Into<String>) {
        self.log.lock().unwrap().push(s.into());
    }
}

#[liveupdate_handler]
impl FileHandler for Memfd {
    type Private = u32;

    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }

    fn preserve(&self, _cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(v2::memfd_luo_ser, u32)> {
        let (pos, size, seals) = test_file(file)?.state();
        if seals & !0x3f != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.log(format!("preserve {}", file.id().0));
        Ok((
            v2::memfd_luo_ser {
                pos,
                size,
                seals,
                flags: 0,
                nr_folios: 0,
                folios: kho_vmalloc::new_zeroed(),
            },
            41,
        ))
    }

    fn unpreserve(&self, _cx: &Ctx<'_, Self>, file: &dyn File, ser: v2::memfd_luo_ser, p: u32) {
        let size = ser.size;
        self.log(format!(
            "unpreserve {} size={size} private={p}",
            file.id().0
        ));
    }

    fn freeze(
        &self,
        _cx: &Ctx<'_, Self>,
        file: &dyn File,
        ser: &mut v2::memfd_luo_ser,
        p: &mut u32,
    ) -> Result {
        if self.fail_freeze.load(Ordering::SeqCst) {
            return Err(Errno::EAGAIN);
        }
        // freeze refreshes the position, as memfd's does.
        ser.pos = test_file(file)?.pos.load(Ordering::SeqCst);
        *p += 1;
        self.log(format!("freeze {} private={p}", file.id().0));
        Ok(())
    }

    fn unfreeze(
        &self,
        _cx: &Ctx<'_, Self>,
        file: &dyn File,
        _ser: &v2::memfd_luo_ser,
        p: &mut u32,
    ) {
        self.log(format!("unfreeze {} private={p}", file.id().0));
    }

    fn retrieve(&self, _cx: &Ctx<'_, Self>, data: v2::memfd_luo_ser) -> Result<FileRef> {
        if data.flags != 0 {
            return Err(Errno::EINVAL);
        }
        self.log("retrieve");
        Ok(TestFile::memfd(99, data.pos, data.size, data.seals))
    }

    fn can_finish(
        &self,
        _cx: &Ctx<'_, Self>,
        _file: Option<&dyn File>,
        status: RetrieveStatus,
    ) -> bool {
        status != RetrieveStatus::NotRetrieved || self.log.lock().unwrap().len() < 100
    }

    fn finish(&self, _cx: &Ctx<'_, Self>, how: Finish<'_, v2::memfd_luo_ser>) {
        let status = how.status();
        // A retrieved file carries its size; a file never retrieved, its record.
        let (retrieved, size) = match how {
            Finish::Retrieved(f) => (
                true,
                f.downcast_ref::<TestFile>().map_or(0, |t| t.state().1),
            ),
            Finish::NotRetrieved(data) => (false, data.size),
            Finish::Failed(_) => (false, 0),
        };
        self.log(format!(
            "finish retrieved={retrieved} status={status:?} size={size}"
        ));
    }

    fn get_id(file: &dyn File) -> FileId {
        FileId(file.id().0 + 1000)
    }
}

impl Migrate<v1::memfd_luo_ser> for Memfd {
    fn migrate(&self, old: v1::memfd_luo_ser) -> Result<v2::memfd_luo_ser> {
        self.log("migrate v1");
        Ok(v2::memfd_luo_ser {
            pos: old.pos,
            size: old.size,
            // memfd-v1 did not preserve seals.
            seals: 0,
            flags: 0,
            nr_folios: old.nr_folios,
            folios: old.folios,
        })
    }
}

// The 6.19 handler: memfd-v1, required callbacks only.
#[liveupdate_handler(compatible = "memfd-v1", abi = luo_generated::memfd::v1::memfd_luo_ser)]
struct MemfdV1;

#[liveupdate_handler]
impl FileHandler for MemfdV1 {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, _cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(v1::memfd_luo_ser, ())> {
        let (pos, size, _) = test_file(file)?.state();
        Ok((
            v1::memfd_luo_ser {
                pos,
                size,
                nr_folios: 3,
                folios: kho_vmalloc::new_zeroed(),
            },
            (),
        ))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: v1::memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, d: v1::memfd_luo_ser) -> Result<FileRef> {
        Ok(TestFile::memfd(1, d.pos, d.size, 0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, v1::memfd_luo_ser>) {}
}

fn boot(kho: &Arc<VecKho>, h: Handover) -> Arc<MiniCore> {
    MiniCore::boot(kho.clone(), h)
}

#[test]
fn state_round_trips_through_the_generated_table() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(Memfd::default(), host(&core), ());
    core.register(&reg).unwrap();

    core.preserve(1, TestFile::memfd(10, 5, 8192, 0x5)).unwrap();
    core.preserve(2, TestFile::memfd(11, 0, 0, 0)).unwrap();
    // A file no handler accepts: -ENOENT, as upstream.
    assert_eq!(core.preserve(3, TestFile::other(12)), Err(Errno::ENOENT));
    // The handler's own error comes back as its errno.
    assert_eq!(
        core.preserve(4, TestFile::memfd(13, 0, 0, 0x40)),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(kho.outgoing_blocks(), 2);

    let h = core.kexec().unwrap();
    assert_eq!(h.files.len(), 2);
    assert!(h.files.iter().all(|(_, c, d)| c == "memfd-v2" && *d != 0));
    assert_eq!(
        *reg.handler().log.lock().unwrap(),
        [
            "preserve 10",
            "preserve 11",
            "freeze 10 private=42",
            "freeze 11 private=42"
        ]
    );
    drop(core);
    drop(reg);

    // The new kernel.
    let core = boot(&kho, h);
    let reg = Registration::new(Memfd::default(), host(&core), ());
    core.register(&reg).unwrap();
    let f = core.retrieve(1).unwrap();
    let tf = f.downcast_ref::<TestFile>().unwrap();
    assert_eq!(tf.state(), (5, 8192, 0x5));
    // A second retrieve gives the same file.
    assert!(Arc::ptr_eq(&core.retrieve(1).unwrap(), &f));
    core.finish().unwrap();
    assert_eq!(
        *reg.handler().log.lock().unwrap(),
        [
            "retrieve",
            "finish retrieved=false status=NotRetrieved size=0",
            "finish retrieved=true status=Retrieved size=8192",
        ]
    );
    // Every preserved block was released by finish.
    assert_eq!(kho.incoming_blocks(), 0);
    assert_eq!(kho.outgoing_blocks(), 0);
}

#[test]
fn unpreserve_releases_memory_and_private_data() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(Memfd::default(), host(&core), ());
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(10, 1, 2, 0)).unwrap();
    assert_eq!(kho.outgoing_blocks(), 1);
    core.unpreserve(1).unwrap();
    assert_eq!(kho.outgoing_blocks(), 0);
    assert_eq!(
        *reg.handler().log.lock().unwrap(),
        ["preserve 10", "unpreserve 10 size=2 private=41"]
    );
}

#[test]
fn failed_freeze_unfreezes_the_earlier_files() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(Memfd::default(), host(&core), ());
    let v1 = Registration::new(MemfdV1, host(&core), ());
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(10, 1, 2, 0)).unwrap();
    reg.handler().fail_freeze.store(false, Ordering::SeqCst);
    let _ = v1;
    // Freeze succeeds once, then fails on the next kexec attempt of a new file set.
    let h = core.kexec().unwrap();
    assert_eq!(h.files.len(), 1);

    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(Memfd::default(), host(&core), ());
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(10, 1, 2, 0)).unwrap();
    core.preserve(2, TestFile::memfd(11, 1, 2, 0)).unwrap();
    reg.handler().fail_freeze.store(true, Ordering::SeqCst);
    assert_eq!(core.kexec().err(), Some(Errno::EAGAIN));
    assert_eq!(core.outgoing_files(), 2);
}

#[test]
fn a_newer_handler_reads_the_older_version_through_its_migration() {
    let kho = Arc::new(VecKho::new());
    // 6.19: memfd-v1.
    let core = MiniCore::new(kho.clone());
    let old = Registration::new(MemfdV1, host(&core), ());
    core.register(&old).unwrap();
    core.preserve(7, TestFile::memfd(1, 123, 4096, 0)).unwrap();
    let h = core.kexec().unwrap();
    assert_eq!(h.files[0].1, "memfd-v1");
    drop(core);
    drop(old);

    // 7.3: writes memfd-v2, registers a reader entry for memfd-v1.
    let core = boot(&kho, h);
    let reg = Registration::new(Memfd::default(), host(&core), ());
    assert_eq!(reg.raw_handlers().len(), 2);
    assert_eq!(<Memfd as HandlerAbi>::READS, ["memfd-v1"]);
    core.register(&reg).unwrap();
    let f = core.retrieve(7).unwrap();
    assert_eq!(
        f.downcast_ref::<TestFile>().unwrap().state(),
        (123, 4096, 0)
    );
    core.finish().unwrap();
    let log = reg.handler().log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            // The record is claimed and read once, at retrieve; can_finish and finish of a
            // retrieved file do not read it again.
            "migrate v1",
            "retrieve",
            "finish retrieved=true status=Retrieved size=4096"
        ]
    );
    assert_eq!(kho.incoming_blocks(), 0);
}

#[test]
fn the_reader_entry_never_preserves() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(Memfd::default(), host(&core), ());
    // Register only the memfd-v1 reader entry: it refuses every file.
    core.register_handler(reg.raw_handlers()[1]).unwrap();
    assert_eq!(
        core.preserve(1, TestFile::memfd(1, 0, 0, 0)),
        Err(Errno::ENOENT)
    );
}

#[test]
fn registration_rules() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho);
    let a = Registration::new(Memfd::default(), host(&core), ());
    let b = Registration::new(Memfd::default(), host(&core), ());
    core.register(&a).unwrap();
    // Same compatible twice: -EEXIST.
    assert_eq!(core.register_handler(b.raw()), Err(Errno::EEXIST));
}

#[test]
fn corrupt_handles_are_errors_not_panics() {
    let kho = Arc::new(VecKho::new());
    let h = Handover {
        files: vec![(1, "memfd-v2".into(), 0), (2, "memfd-v2".into(), 1 << 40)],
        ..Handover::default()
    };
    let core = boot(&kho, h);
    let reg = Registration::new(Memfd::default(), host(&core), ());
    core.register(&reg).unwrap();
    assert_eq!(core.retrieve(1).err(), Some(Errno::EINVAL));
    // An address KHO did not hand over is refused before anything is read there.
    assert_eq!(core.retrieve(2).err(), Some(Errno::EINVAL));
    // The error is cached.
    assert_eq!(core.retrieve(2).err(), Some(Errno::EINVAL));
    core.finish().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hand-written ABI types (#[derive(Abi)]).

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
#[abi(size = 16)]
struct pool_ser {
    pages: u64,
    generation: u32,
    #[abi(reserved)]
    _reserved: u32,
}

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C, packed)]
struct pooled_ser {
    token: u64,
    pages_seen: u64,
    state: Phys<pool_ser>,
    #[abi(reserved)]
    flags: u32,
}

// ---------------------------------------------------------------------------------------------
// FLB: a pool shared by every file of the handlers that link it.

#[derive(Default)]
#[liveupdate_flb(compatible = "test-pool-v1", abi = pool_ser)]
struct Pool {
    log: Mutex<Vec<String>>,
    /// The pool's own cell, reached "some other way" than a handler context, to show the
    /// run-time EDEADLK check.
    me: std::sync::OnceLock<std::sync::Weak<FlbCell<Pool>>>,
}

impl Pool {
    fn log(&self, s: impl Into<String>) {
        self.log.lock().unwrap().push(s.into());
    }
    fn reenter(&self) -> Option<Errno> {
        let cell = self.me.get()?.upgrade()?;
        cell.get_incoming().err()
    }
}

#[liveupdate_flb]
impl FlbState for Pool {
    type Outgoing = Mutex<u64>;
    type Incoming = u64;

    fn preserve(&self, _cx: &StateCtx<'_>) -> Result<(pool_ser, Mutex<u64>)> {
        self.log("preserve");
        Ok((
            pool_ser {
                pages: 16,
                generation: 1,
                _reserved: 0,
            },
            Mutex::new(16),
        ))
    }

    fn unpreserve(&self, _cx: &StateCtx<'_>, ser: pool_ser, obj: Arc<Mutex<u64>>) {
        self.log(format!(
            "unpreserve pages={} now={}",
            ser.pages,
            obj.lock().unwrap()
        ));
    }

    fn retrieve(&self, _cx: &StateCtx<'_>, ser: pool_ser) -> Result<u64> {
        self.log(format!(
            "retrieve pages={} reenter={:?}",
            ser.pages,
            self.reenter()
        ));
        Ok(ser.pages)
    }

    fn finish(&self, _cx: &StateCtx<'_>, obj: Arc<u64>) {
        self.log(format!("finish {obj}"));
    }
}

#[liveupdate_handler(compatible = "pooled-v1", abi = pooled_ser, flbs = [Pool])]
struct Pooled;

#[liveupdate_handler]
impl FileHandler for Pooled {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(pooled_ser, ())> {
        let pool = cx.global::<Pool>().get_outgoing()?;
        let mut pages = pool.lock().unwrap();
        *pages -= 1;
        Ok((
            pooled_ser {
                token: file.id().0,
                pages_seen: *pages,
                state: Phys::NULL,
                flags: 0,
            },
            (),
        ))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: pooled_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: pooled_ser) -> Result<FileRef> {
        let pool = cx.global::<Pool>().get_incoming()?;
        Ok(TestFile::memfd(d.token, d.pages_seen, *pool, 0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, pooled_ser>) {}
}

#[test]
fn flb_is_preserved_once_retrieved_lazily_and_finished_last() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let pool = FlbCell::new(Pool::default(), host(&core));
    assert_eq!(
        pool.get_outgoing().err(),
        Some(Errno::ENOENT),
        "not registered yet"
    );
    let reg = Registration::new(Pooled, host(&core), (pool.clone(),));
    assert_eq!(reg.flbs(), [pool.raw()]);
    core.register(&reg).unwrap();
    assert_eq!(
        pool.get_outgoing().err(),
        Some(Errno::ENODATA),
        "no file preserved yet"
    );

    core.preserve(1, TestFile::memfd(1, 0, 0, 0)).unwrap();
    core.preserve(2, TestFile::memfd(2, 0, 0, 0)).unwrap();
    core.preserve(3, TestFile::memfd(3, 0, 0, 0)).unwrap();
    assert_eq!(*pool.get_outgoing().unwrap().lock().unwrap(), 13);
    core.unpreserve(3).unwrap();
    let h = core.kexec().unwrap();
    assert_eq!(h.flbs, [("test-pool-v1".to_string(), h.flbs[0].1, 2)]);
    assert_eq!(*pool.flb().log.lock().unwrap(), ["preserve"]);
    drop(core);
    drop(reg);

    let core = boot(&kho, h);
    let pool = FlbCell::new(Pool::default(), host(&core));
    pool.flb().me.set(Arc::downgrade(&pool)).unwrap();
    let reg = Registration::new(Pooled, host(&core), (pool.clone(),));
    core.register(&reg).unwrap();
    // Not retrieved until first use.
    assert!(pool.flb().log.lock().unwrap().is_empty());
    let f = core.retrieve(2).unwrap();
    // File 2 saw 14 pages left when preserved; the pool handed over 16.
    assert_eq!(f.downcast_ref::<TestFile>().unwrap().state(), (14, 16, 0));
    assert_eq!(
        *pool.flb().log.lock().unwrap(),
        // Inside retrieve, a get of the same FLB is refused instead of deadlocking.
        ["retrieve pages=16 reenter=Some(Errno(EDEADLK = 35))"]
    );
    {
        let g = pool.get_incoming().unwrap();
        assert_eq!(*g, 16);
    }
    core.finish().unwrap();
    assert_eq!(
        pool.flb().log.lock().unwrap().last().map(String::as_str),
        Some("finish 16")
    );
    assert_eq!(pool.get_incoming().err(), Some(Errno::ENODATA), "finished");
    assert_eq!(kho.incoming_blocks(), 0);
}

#[test]
fn flb_unpreserve_on_the_last_file() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let pool = FlbCell::new(Pool::default(), host(&core));
    let reg = Registration::new(Pooled, host(&core), (pool.clone(),));
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(1, 0, 0, 0)).unwrap();
    core.preserve(2, TestFile::memfd(2, 0, 0, 0)).unwrap();
    core.unpreserve(1).unwrap();
    assert_eq!(*pool.flb().log.lock().unwrap(), ["preserve"]);
    core.unpreserve(2).unwrap();
    assert_eq!(
        *pool.flb().log.lock().unwrap(),
        ["preserve", "unpreserve pages=16 now=14"]
    );
    assert_eq!(kho.outgoing_blocks(), 0);
}

// ---------------------------------------------------------------------------------------------
// Handler-scoped state (the seed's global_state_create/restore/destroy).

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct counter_ser {
    count: u64,
}

#[derive(Default)]
#[liveupdate_global_state(abi = counter_ser)]
struct Counter {
    log: Mutex<Vec<String>>,
}

#[liveupdate_global_state]
impl HandlerState for Counter {
    type Outgoing = u64;
    type Incoming = u64;

    fn create(&self, _cx: &StateCtx<'_>) -> Result<(counter_ser, u64)> {
        self.log.lock().unwrap().push("create".into());
        Ok((counter_ser { count: 0 }, 0))
    }
    fn restore(&self, _cx: &StateCtx<'_>, ser: counter_ser) -> Result<u64> {
        self.log
            .lock()
            .unwrap()
            .push(format!("restore {}", ser.count));
        Ok(ser.count)
    }
    fn destroy(&self, _cx: &StateCtx<'_>, obj: StateObj<u64, u64>) {
        self.log.lock().unwrap().push(format!("destroy {obj:?}"));
    }
}

#[liveupdate_handler(compatible = "counted-v1", abi = counter_ser, state = Counter)]
struct Counted;

#[liveupdate_handler]
impl FileHandler for Counted {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, _file: &dyn File) -> Result<(counter_ser, ())> {
        let mut g = cx.state().get_outgoing()?;
        // The handler-scoped lock is held by `g`: a second get would deadlock.
        assert_eq!(cx.state().get_outgoing().err(), Some(Errno::EDEADLK));
        *g += 1;
        let n = *g;
        g.write_ser(&counter_ser { count: n })?;
        Ok((counter_ser { count: n }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: counter_ser) -> Result<FileRef> {
        let total = *cx.state().get_incoming()?;
        Ok(TestFile::memfd(0, d.count, total, 0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

#[test]
fn handler_scoped_state_lives_with_the_handlers_files() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(
        Counted,
        host(&core),
        (HandlerStateCell::new(Counter::default()),),
    );
    assert!(reg.state_ops().is_some());
    core.register(&reg).unwrap();
    assert_eq!(reg.state().get_outgoing().err(), Some(Errno::ENODATA));
    for t in 1..=3 {
        core.preserve(t, TestFile::memfd(t, 0, 0, 0)).unwrap();
    }
    assert_eq!(*reg.state().get_outgoing().unwrap(), 3);
    let h = core.kexec().unwrap();
    assert_eq!(h.states.len(), 1);
    let log = |r: &Registration<Counted>| r.globals().0.state().log.lock().unwrap().clone();
    assert_eq!(log(&reg), ["create"]);
    drop(core);
    drop(reg);

    let core = boot(&kho, h);
    let reg = Registration::new(
        Counted,
        host(&core),
        (HandlerStateCell::new(Counter::default()),),
    );
    core.register(&reg).unwrap();
    let f = core.retrieve(2).unwrap();
    // File 2 was the second preserve; the state counted three.
    assert_eq!(f.downcast_ref::<TestFile>().unwrap().state(), (2, 3, 0));
    assert_eq!(log(&reg), ["restore 3"]);
    core.finish().unwrap();
    assert_eq!(log(&reg), ["restore 3", "destroy Incoming(3)"]);
    assert_eq!(kho.incoming_blocks(), 0);
}

#[test]
fn handler_scoped_state_is_destroyed_after_the_last_unpreserve() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(
        Counted,
        host(&core),
        (HandlerStateCell::new(Counter::default()),),
    );
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(1, 0, 0, 0)).unwrap();
    core.preserve(2, TestFile::memfd(2, 0, 0, 0)).unwrap();
    core.unpreserve(1).unwrap();
    core.unpreserve(2).unwrap();
    let log = reg.globals().0.state().log.lock().unwrap().clone();
    assert_eq!(log, ["create", "destroy Outgoing(2)"]);
    assert_eq!(kho.outgoing_blocks(), 0);
}

// ---------------------------------------------------------------------------------------------
// Subsystems: their own lifecycle, independent of files.

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct hstate_ser {
    nr_pages: [u64; 4],
}

#[derive(Default)]
#[liveupdate_subsystem(name = "test-hugetlb", abi = hstate_ser)]
struct Huge {
    log: Mutex<Vec<String>>,
}

#[liveupdate_subsystem]
impl Subsystem for Huge {
    type Outgoing = [u64; 4];
    type Incoming = [u64; 4];

    fn prepare(&self, _cx: &StateCtx<'_>) -> Result<(hstate_ser, [u64; 4])> {
        self.log.lock().unwrap().push("prepare".into());
        Ok((hstate_ser { nr_pages: [0; 4] }, [0; 4]))
    }
    fn freeze(&self, _cx: &StateCtx<'_>, ser: &mut hstate_ser, obj: &mut [u64; 4]) -> Result {
        self.log.lock().unwrap().push("freeze".into());
        ser.nr_pages = *obj;
        Ok(())
    }
    fn cancel(&self, _cx: &StateCtx<'_>, obj: [u64; 4]) {
        self.log.lock().unwrap().push(format!("cancel {obj:?}"));
    }
    fn boot(&self, _cx: &StateCtx<'_>, ser: hstate_ser) -> Result<[u64; 4]> {
        self.log.lock().unwrap().push("boot".into());
        Ok(ser.nr_pages)
    }
    fn finish(&self, _cx: &StateCtx<'_>, obj: [u64; 4]) {
        self.log.lock().unwrap().push(format!("finish {obj:?}"));
    }
}

#[liveupdate_handler(compatible = "huge-memfd-v1", abi = counter_ser, subsystems = [Huge])]
struct HugeMemfd;

#[liveupdate_handler]
impl FileHandler for HugeMemfd {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(counter_ser, ())> {
        let mut h = cx.global::<Huge>().get_outgoing()?;
        h[0] += 2;
        Ok((counter_ser { count: file.id().0 }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: counter_ser) -> Result<FileRef> {
        let mut h = cx.global::<Huge>().get_incoming()?;
        h[0] -= 2;
        Ok(TestFile::memfd(d.count, h[0], 0, 0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

#[test]
fn subsystem_prepares_freezes_boots_and_finishes() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let huge = SubsystemCell::new(Huge::default(), host(&core));
    core.register_subsystem(huge.raw()).unwrap();
    let reg = Registration::new(HugeMemfd, host(&core), (huge.clone(),));
    core.register(&reg).unwrap();
    assert_eq!(huge.get_outgoing().err(), Some(Errno::ENODATA));
    core.prepare_subsystems().unwrap();
    core.preserve(1, TestFile::memfd(1, 0, 0, 0)).unwrap();
    core.preserve(2, TestFile::memfd(2, 0, 0, 0)).unwrap();
    {
        let g = huge.get_outgoing().unwrap();
        assert_eq!(g[0], 4);
        // The guard holds the subsystem's lock: a second get on this task is refused.
        assert_eq!(huge.get_outgoing().err(), Some(Errno::EDEADLK));
    }
    // freeze runs on the reboot path (here by hand: the mini core has no reboot hook for
    // subsystems); it writes the counts into the handed-over struct.
    let raw = huge
        .raw()
        .cast::<luo_generated::liveupdate::liveupdate_subsystem>();
    let h = core.kexec().unwrap();
    let data = h.subsystems[0].1;
    let mut d = data;
    // SAFETY: the cell's raw subsystem and its table.
    let r = unsafe { ((*(*raw).ops).freeze.unwrap())(raw, &mut d) };
    assert_eq!(r, 0);
    assert_eq!(*huge.subsystem().log.lock().unwrap(), ["prepare", "freeze"]);
    drop(core);
    drop(reg);

    let core = boot(&kho, h);
    let huge = SubsystemCell::new(Huge::default(), host(&core));
    core.register_subsystem(huge.raw()).unwrap();
    assert_eq!(
        *huge.get_incoming().unwrap(),
        [4, 0, 0, 0],
        "restored eagerly"
    );
    let reg = Registration::new(HugeMemfd, host(&core), (huge.clone(),));
    core.register(&reg).unwrap();
    let f = core.retrieve(2).unwrap();
    assert_eq!(f.downcast_ref::<TestFile>().unwrap().state().0, 2);
    core.finish().unwrap();
    core.finish_subsystems();
    assert_eq!(
        *huge.subsystem().log.lock().unwrap(),
        ["boot", "finish [2, 0, 0, 0]"]
    );
    assert_eq!(huge.get_incoming().err(), Some(Errno::ENODATA));
    // Both files finished and the subsystem's struct was released at boot.
    assert_eq!(kho.incoming_blocks(), 0);
}

#[test]
fn subsystem_cancel_releases_the_prepared_state() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let huge = SubsystemCell::new(Huge::default(), host(&core));
    core.register_subsystem(huge.raw()).unwrap();
    core.prepare_subsystems().unwrap();
    assert_eq!(kho.outgoing_blocks(), 1);
    core.cancel_subsystems();
    assert_eq!(kho.outgoing_blocks(), 0);
    assert_eq!(
        *huge.subsystem().log.lock().unwrap(),
        ["prepare", "cancel [0, 0, 0, 0]"]
    );
}

// ---------------------------------------------------------------------------------------------
// Feature negotiation (memfd `next`).

/// What the feature-negotiated reader saw: (seals, nr_folios, raw nr_folios).
type Seen = (Option<u32>, Option<u64>, u64);

#[derive(Default)]
#[liveupdate_handler(
    name = "memfd",
    abi = luo_generated::memfd::next::memfd_luo_ser,
    features(
        SEALS(bit = 0, fields = [seals], required),
        FOLIOS(bit = 1, fields = [nr_folios, folios]),
    )
)]
struct MemfdNext {
    no_folios: std::sync::atomic::AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

#[liveupdate_handler]
impl FileHandler for MemfdNext {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(next::memfd_luo_ser, ())> {
        let (pos, size, seals) = test_file(file)?.state();
        if self.no_folios.load(Ordering::SeqCst) {
            cx.set_feature(Self::FOLIOS, false);
        }
        let mut ser = next::memfd_luo_ser::new_zeroed();
        ser.pos = pos;
        ser.size = size;
        ser.seals = seals;
        ser.nr_folios = 5;
        Ok((ser, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: next::memfd_luo_ser, _: ()) {}
    fn retrieve(&self, _cx: &Ctx<'_, Self>, d: Negotiated<next::memfd_luo_ser>) -> Result<FileRef> {
        let seals = d.get(Self::SEALS, |s| s.seals);
        let folios = d.get(Self::FOLIOS, |s| s.nr_folios);
        let raw_nr = d.ser().nr_folios;
        self.seen.lock().unwrap().push((seals, folios, raw_nr));
        Ok(TestFile::memfd(
            0,
            d.ser().pos,
            d.ser().size,
            seals.unwrap_or(0),
        ))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, Negotiated<next::memfd_luo_ser>>) {}
}

fn preserve_next(no_folios: bool) -> (Arc<VecKho>, Handover) {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(MemfdNext::default(), host(&core), ());
    reg.handler().no_folios.store(no_folios, Ordering::SeqCst);
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(1, 9, 4096, 0x7)).unwrap();
    let h = core.kexec().unwrap();
    (kho, h)
}

fn header(kho: &VecKho, h: &Handover) -> (Phys<next::memfd_luo_ser>, next::memfd_luo_ser) {
    let p = Phys::new(PhysAddr::new(h.files[0].2));
    let kho: &dyn KhoService = kho;
    (p, kho.read_obj(p).unwrap())
}

fn retrieve_next(kho: &Arc<VecKho>, h: Handover) -> (Result<FileRef>, Vec<Seen>) {
    let core = boot(kho, h);
    let reg = Registration::new(MemfdNext::default(), host(&core), ());
    core.register(&reg).unwrap();
    let r = core.retrieve(1);
    let seen = reg.handler().seen.lock().unwrap().clone();
    (r, seen)
}

#[test]
fn features_written_from_what_the_handler_declares_and_uses() {
    let (kho, h) = preserve_next(false);
    assert_eq!(h.files[0].1, "memfd", "the versionless name");
    let (_, ser) = header(&kho, &h);
    let (supp, req, active) = (ser.features.supp, ser.features.req, ser.features.active);
    assert_eq!((supp, req, active), (0b11, 0b01, 0b11));
    let (r, seen) = retrieve_next(&kho, h);
    assert_eq!(
        r.unwrap().downcast_ref::<TestFile>().unwrap().state(),
        (9, 4096, 7)
    );
    assert_eq!(seen, [(Some(7), Some(5), 5)]);

    // FOLIOS not used: not active, its fields zeroed by the writer, `None` for the reader.
    let (kho, h) = preserve_next(true);
    let (_, ser) = header(&kho, &h);
    let (active, nr) = (ser.features.active, ser.nr_folios);
    assert_eq!((active, nr), (0b01, 0));
    let (_, seen) = retrieve_next(&kho, h);
    assert_eq!(seen, [(Some(7), None, 0)]);
}

#[test]
fn reader_zeroes_fields_of_inactive_features() {
    let (kho, h) = preserve_next(true);
    let (p, mut ser) = header(&kho, &h);
    ser.nr_folios = 77; // stale data a writer left behind
    (&*kho as &dyn KhoService).write_obj(p, &ser).unwrap();
    let (_, seen) = retrieve_next(&kho, h);
    assert_eq!(seen, [(Some(7), None, 0)]);
}

#[test]
fn reader_refuses_unknown_required_bits_and_ignores_unknown_supported_ones() {
    // An unknown *supported* (and even active, optional) bit: read fine.
    let (kho, h) = preserve_next(false);
    let (p, mut ser) = header(&kho, &h);
    ser.features.supp |= 1 << 7;
    ser.features.active |= 1 << 7;
    (&*kho as &dyn KhoService).write_obj(p, &ser).unwrap();
    let (r, seen) = retrieve_next(&kho, h);
    assert!(r.is_ok());
    assert_eq!(seen, [(Some(7), Some(5), 5)]);

    // An unknown *required* bit: refused with EOPNOTSUPP.
    let (kho, h) = preserve_next(false);
    let (p, mut ser) = header(&kho, &h);
    ser.features.supp |= 1 << 5;
    ser.features.req |= 1 << 5;
    (&*kho as &dyn KhoService).write_obj(p, &ser).unwrap();
    let (r, seen) = retrieve_next(&kho, h);
    assert_eq!(r.err(), Some(Errno::EOPNOTSUPP));
    assert!(seen.is_empty());

    // Non-zero reserved words of the header: EINVAL.
    let (kho, h) = preserve_next(false);
    let (p, mut ser) = header(&kho, &h);
    ser.features.reserved[3] = 1;
    (&*kho as &dyn KhoService).write_obj(p, &ser).unwrap();
    let (r, _) = retrieve_next(&kho, h);
    assert_eq!(r.err(), Some(Errno::EINVAL));
}

// ---------------------------------------------------------------------------------------------
// Reserved fields of #[derive(Abi)] types are checked on read.

#[test]
fn reserved_fields_must_be_zero_on_read() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let pool = FlbCell::new(Pool::default(), host(&core));
    let reg = Registration::new(Pooled, host(&core), (pool.clone(),));
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(1, 0, 0, 0)).unwrap();
    let h = core.kexec().unwrap();
    let p = Phys::<pooled_ser>::new(PhysAddr::new(h.files[0].2));
    let k: &dyn KhoService = &*kho;
    let mut s = k.read_obj(p).unwrap();
    s.flags = 1;
    k.write_obj(p, &s).unwrap();
    drop(core);
    drop(reg);

    let core = boot(&kho, h);
    let pool = FlbCell::new(Pool::default(), host(&core));
    let reg = Registration::new(Pooled, host(&core), (pool.clone(),));
    core.register(&reg).unwrap();
    assert_eq!(core.retrieve(1).err(), Some(Errno::EINVAL));
}

// ---------------------------------------------------------------------------------------------
// Panics never unwind into C.

#[liveupdate_handler(compatible = "panicky-v1", abi = counter_ser)]
struct Panicky;

#[liveupdate_handler]
impl FileHandler for Panicky {
    fn can_preserve(&self, file: &dyn File) -> bool {
        if file.id().0 == 666 {
            panic!("can_preserve panics");
        }
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, _: &Ctx<'_, Self>, file: &dyn File) -> Result<(counter_ser, ())> {
        if file.id().0 == 13 {
            panic!("preserve panics");
        }
        Ok((counter_ser { count: 1 }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {
        panic!("unpreserve panics");
    }
    fn retrieve(&self, _: &Ctx<'_, Self>, _: counter_ser) -> Result<FileRef> {
        panic!("retrieve panics");
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

static PANIC_TESTS: Mutex<()> = Mutex::new(());

#[test]
fn a_panic_becomes_eio_false_or_nothing() {
    let _serial = PANIC_TESTS.lock().unwrap();
    let before = luo_abi::ffi::panic_count();
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(Panicky, host(&core), ());
    core.register(&reg).unwrap();
    // int callback: -EIO.
    assert_eq!(
        core.preserve(1, TestFile::memfd(13, 0, 0, 0)),
        Err(Errno::EIO)
    );
    // bool callback: false (so no handler takes the file).
    assert_eq!(
        core.preserve(2, TestFile::memfd(666, 0, 0, 0)),
        Err(Errno::ENOENT)
    );
    // void callback: the panic is swallowed; the runtime has already taken the private data
    // and still releases the preserved memory.
    core.preserve(3, TestFile::memfd(3, 0, 0, 0)).unwrap();
    core.unpreserve(3).unwrap();
    assert_eq!(kho.outgoing_blocks(), 0);
    assert_eq!(luo_abi::ffi::panic_count() - before, 3);
    let _ = core.preserve(4, TestFile::memfd(4, 0, 0, 0));
    let h = core.kexec().unwrap();
    let core = boot(&kho, h);
    let reg = Registration::new(Panicky, host(&core), ());
    core.register(&reg).unwrap();
    assert_eq!(core.retrieve(4).err(), Some(Errno::EIO));
}

/// Run in a child process by `abort_policy_aborts_the_process`: with the abort policy (what a
/// kernel build, or a build without the `std` feature, does) a panic reaches the
/// `extern "C"` boundary, where Rust aborts the process.
#[test]
fn abort_policy_child() {
    if std::env::var_os("LUO_ABORT_CHILD").is_none() {
        return;
    }
    let _serial = PANIC_TESTS.lock().unwrap();
    luo_abi::ffi::set_panic_policy(luo_abi::ffi::PanicPolicy::Abort);
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho);
    let reg = Registration::new(Panicky, host(&core), ());
    core.register(&reg).unwrap();
    let _ = core.preserve(1, TestFile::memfd(13, 0, 0, 0));
    // Not reached.
    std::process::exit(0);
}

#[test]
fn abort_policy_aborts_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "abort_policy_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LUO_ABORT_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(6),
        "SIGABRT expected; stderr:\n{stderr}"
    );
    assert!(stderr.contains("preserve panics"), "{stderr}");
    assert!(
        stderr.contains("panic in a function that cannot unwind"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Handler-scoped state handed over by an older version, read through the reader entry.

mod counted {
    pub mod v1 {
        pub(crate) use crate::counter_ser;
    }
    pub mod v2 {
        pub(crate) use crate::counter_ser;
    }
}

#[liveupdate_handler(compatible = "counted-v1", abi = counted::v1::counter_ser, state = Counter)]
struct CountedV1;

#[liveupdate_handler]
impl FileHandler for CountedV1 {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, _file: &dyn File) -> Result<(counter_ser, ())> {
        let mut g = cx.state().get_outgoing()?;
        *g += 10;
        let n = *g;
        g.write_ser(&counter_ser { count: n })?;
        Ok((counter_ser { count: n }, ()))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {}
    fn retrieve(&self, _: &Ctx<'_, Self>, _: counter_ser) -> Result<FileRef> {
        Err(Errno::EINVAL)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

#[liveupdate_handler(
    compatible = "counted-v2",
    abi = counted::v2::counter_ser,
    reads = ["counted-v1"],
    state = Counter
)]
struct CountedV2;

#[liveupdate_handler]
impl FileHandler for CountedV2 {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, _: &Ctx<'_, Self>, _: &dyn File) -> Result<(counter_ser, ())> {
        Err(Errno::EINVAL)
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: counter_ser) -> Result<FileRef> {
        let total = *cx.state().get_incoming()?;
        Ok(TestFile::memfd(0, d.count, total, 0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

impl Migrate<counter_ser> for CountedV2 {
    fn migrate(&self, old: counter_ser) -> Result<counter_ser> {
        Ok(counter_ser {
            count: old.count + 1,
        })
    }
}

#[test]
fn state_of_an_older_version_is_restored_through_its_reader_entry() {
    let kho = Arc::new(VecKho::new());
    let core = MiniCore::new(kho.clone());
    let reg = Registration::new(
        CountedV1,
        host(&core),
        (HandlerStateCell::new(Counter::default()),),
    );
    core.register(&reg).unwrap();
    core.preserve(1, TestFile::memfd(1, 0, 0, 0)).unwrap();
    core.preserve(2, TestFile::memfd(2, 0, 0, 0)).unwrap();
    let h = core.kexec().unwrap();
    assert_eq!(h.states[0].0, "counted-v1");
    drop(core);
    drop(reg);

    let core = boot(&kho, h);
    let reg = Registration::new(
        CountedV2,
        host(&core),
        (HandlerStateCell::new(Counter::default()),),
    );
    core.register(&reg).unwrap();
    let f = core.retrieve(1).unwrap();
    // File 1 saw 10 (migrated to 11); the state counted 20.
    assert_eq!(f.downcast_ref::<TestFile>().unwrap().state(), (11, 20, 0));
    core.finish().unwrap();
    let log = reg.globals().0.state().log.lock().unwrap().clone();
    assert_eq!(log, ["restore 20", "destroy Incoming(20)"]);
    assert_eq!(kho.incoming_blocks(), 0);
}
