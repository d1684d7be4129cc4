//! Handlers written with the macros, driven through the generated C ops tables by the
//! miniature core, across a simulated kexec: typed state round trips, versions read with a
//! migration, feature negotiation, errno mapping, panics, and the three forms of global state
//! with their typed guards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use luo_abi::features::Negotiated;
use luo_abi::file::{File, FileId, FileKind, FileRef};
use luo_abi::global::{
    FlbCell, FlbState, HandlerState, HandlerStateCell, StateCtx, StateObj, Subsystem, SubsystemCell,
};
use luo_abi::handler::{Ctx, FileHandler, HandlerAbi, Migrate, Registration, RetrieveStatus};
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
        _data: &v2::memfd_luo_ser,
        status: RetrieveStatus,
    ) -> bool {
        status != RetrieveStatus::NotRetrieved || self.log.lock().unwrap().len() < 100
    }

    fn finish(
        &self,
        _cx: &Ctx<'_, Self>,
        file: Option<&dyn File>,
        data: v2::memfd_luo_ser,
        status: RetrieveStatus,
    ) {
        let size = data.size;
        self.log(format!(
            "finish retrieved={} status={status:?} size={size}",
            file.is_some()
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
    fn finish(
        &self,
        _: &Ctx<'_, Self>,
        _: Option<&dyn File>,
        _: v1::memfd_luo_ser,
        _: RetrieveStatus,
    ) {
    }
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
            "migrate v1", // retrieve
            "retrieve",
            "migrate v1", // can_finish
            "migrate v1", // finish
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
    assert_eq!(core.retrieve(2).err(), Some(Errno::EFAULT));
    // The error is cached.
    assert_eq!(core.retrieve(2).err(), Some(Errno::EFAULT));
    core.finish().unwrap();
}
