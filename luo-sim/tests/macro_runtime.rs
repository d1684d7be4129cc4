// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Handlers written with the macros, run by luo-core through the generated C ops tables across
//! an in-process kexec: typed state round trips, versions read with a migration, feature
//! negotiation, errno mapping, panics, corrupt handles, and the three forms of global state
//! with their typed guards.
//!
//! Every handler here is registered with a [`Kernel`] through [`Registry`] (or, where a test
//! must keep the registration, through the core's raw registration calls), its files live in
//! `/dev/liveupdate` sessions, and what crosses the kexec is read back with `luo inspect`'s
//! decoder ([`inspect`]) and patched in the handover's memory ([`Handover::write_phys`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use luo_abi::features::Negotiated;
use luo_abi::file::{File, FileId, FileKind, FileRef};
use luo_abi::global::{
    FlbCell, FlbState, HandlerState, HandlerStateCell, StateCtx, StateObj, Subsystem, SubsystemCell,
};
use luo_abi::handler::{
    Ctx, FileHandler, Finish, HandlerAbi, Migrate, Registration, RetrieveStatus,
};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Phys, Result};
use luo_core::image::Image;
use luo_core::{BootOptions, Handover, Kernel};
use luo_derive::{
    Abi, liveupdate_flb, liveupdate_global_state, liveupdate_handler, liveupdate_subsystem,
};
use luo_generated::block::kho_block_header_ser;
use luo_generated::kho::kho_vmalloc;
use luo_generated::liveupdate::{liveupdate_fh_global_state_ops, liveupdate_file_handler};
use luo_generated::luo::luo_file_ser;
use luo_generated::luo::v5::{luo_ser, luo_session_ser};
use luo_generated::memfd::{next, v1, v2};
use luo_sim::inspect::{Report, inspect};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------------
// The machine: a luo-core kernel without the built-in memfd handler, files, sessions, and what
// crosses the kexec.

fn opts() -> BootOptions {
    BootOptions {
        ..BootOptions::default()
    }
}

/// A fresh kernel.
fn kernel() -> Kernel {
    Kernel::boot(&opts(), None).unwrap()
}

/// The next kernel, booted from `h`.
fn boot(h: Handover) -> Kernel {
    Kernel::boot(&opts(), Some(h)).unwrap()
}

/// A kernel with `/dev/liveupdate` open and one outgoing session per name.
fn sessions<const N: usize>(k: &Kernel, names: [&str; N]) -> [i32; N] {
    let dev = k.open_dev().unwrap();
    names.map(|n| k.create_session(dev, n).unwrap())
}

/// Opens `/dev/liveupdate` of a kernel booted from a handover and retrieves session `name`.
fn retrieve_session(k: &Kernel, name: &str) -> i32 {
    let dev = k.open_dev().unwrap();
    k.retrieve_session(dev, name).unwrap()
}

/// The object behind a memfd-like synthetic file: an identity, a position, a size and seals,
/// which the toy memfd handlers hand over.
struct FakeMemfd {
    id: u64,
    pos: AtomicU64,
    size: AtomicU64,
    seals: AtomicU32,
}

impl FakeMemfd {
    fn boxed(id: u64, pos: u64, size: u64, seals: u32) -> Box<FakeMemfd> {
        Box::new(FakeMemfd {
            id,
            pos: AtomicU64::new(pos),
            size: AtomicU64::new(size),
            seals: AtomicU32::new(seals),
        })
    }

    /// (pos, size, seals).
    fn state(&self) -> (u64, u64, u32) {
        (
            self.pos.load(Ordering::SeqCst),
            self.size.load(Ordering::SeqCst),
            self.seals.load(Ordering::SeqCst),
        )
    }
}

/// The fake memfd behind a file.
fn test_file(f: &dyn File) -> Result<&FakeMemfd> {
    f.payload()
        .and_then(|p| p.downcast_ref::<FakeMemfd>())
        .ok_or(Errno::EINVAL)
}

/// Opens a memfd-kind file.
fn memfd(k: &Kernel, id: u64, pos: u64, size: u64, seals: u32) -> i32 {
    k.open_synthetic(
        FileKind::Memfd,
        "memfd:test",
        FakeMemfd::boxed(id, pos, size, seals),
    )
    .unwrap()
}

/// Opens a file no memfd handler accepts.
fn other(k: &Kernel, id: u64) -> i32 {
    k.open_synthetic(FileKind::Other, "other", FakeMemfd::boxed(id, 0, 0, 0))
        .unwrap()
}

/// What a handler's retrieve made of a file: the (pos, size, seals) of its fake memfd.
fn state(k: &Kernel, fd: i32) -> (u64, u64, u32) {
    let f = k.file(fd).unwrap();
    f.synthetic::<FakeMemfd>().unwrap().state()
}

/// A retrieve handlers make: a new fake memfd through the core.
fn new_memfd<H: HandlerAbi>(
    cx: &Ctx<'_, H>,
    id: u64,
    pos: u64,
    size: u64,
    seals: u32,
) -> Result<FileRef> {
    cx.open_synthetic(
        FileKind::Memfd,
        "memfd:retrieved",
        FakeMemfd::boxed(id, pos, size, seals),
    )
}

/// Pages this kernel preserves beyond LUO's root (records, blocks, global state).
fn pages(k: &Kernel) -> u64 {
    k.stats().preserved_beyond_root()
}

/// Incoming pages nobody claimed yet.
fn incoming(k: &Kernel) -> u64 {
    k.stats().kho.incoming_pages
}

/// What crosses the kexec, decoded as `luo inspect` decodes it.
fn report(h: &Handover) -> Report {
    inspect(&Image::from_handover(h).unwrap()).unwrap()
}

/// (token, compatible, data) of every preserved file, sessions in order.
fn files(h: &Handover) -> Vec<(u64, String, u64)> {
    report(h)
        .sessions
        .iter()
        .flat_map(|s| &s.files)
        .map(|f| (f.token, f.compatible.clone(), f.data))
        .collect()
}

fn read<T: FromBytes>(h: &Handover, phys: u64) -> T {
    let mut b = vec![0u8; size_of::<T>()];
    h.read_phys(phys, &mut b).unwrap();
    T::read_from_bytes(&b).unwrap()
}

fn write<T: IntoBytes + Immutable>(h: &Handover, phys: u64, v: &T) {
    h.write_phys(phys, v.as_bytes()).unwrap();
}

/// The address of the `luo_file_ser` of `token` in the first session of a `luo-v5` handover:
/// `luo_ser.sessions_pa` → session block → `file_set_ser.files` → file block.
fn file_entry(h: &Handover, token: u64) -> u64 {
    let root: luo_ser = read(h, h.subtrees().unwrap()["LUO"].0);
    let header = size_of::<kho_block_header_ser>() as u64;
    let session: luo_session_ser = read(h, root.sessions_pa.addr().as_u64() + header);
    let set = session.file_set_ser;
    let first = set.files.addr().as_u64() + header;
    (0..set.count)
        .map(|i| first + i * size_of::<luo_file_ser>() as u64)
        .find(|&e| read::<luo_file_ser>(h, e).token == token)
        .expect("the token is preserved")
}

/// Rewrites the data handle LUO hands over for `token`.
fn set_handle(h: &Handover, token: u64, data: u64) {
    let e = file_entry(h, token);
    let mut f: luo_file_ser = read(h, e);
    f.data = data;
    write(h, e, &f);
}

/// A kernel and a registration the test keeps, to reach [`Registration::state`] or to
/// register only some of its entries. The kernel is declared first, so it is dropped first:
/// the core keeps raw pointers into the registration while it lives.
struct Kept<H: HandlerAbi> {
    k: Kernel,
    reg: Registration<H>,
}

impl<H: HandlerAbi<Raw = liveupdate_file_handler>> Kept<H> {
    fn new(k: Kernel, make: impl FnOnce(&Kernel) -> Registration<H>) -> Self {
        let reg = make(&k);
        Kept { k, reg }
    }

    /// Registers the entries `which` of the registration (0: the writer, then one per
    /// version read), each with the handler-scoped state and the FLBs it declared, as
    /// [`Registry::register_handler`] does.
    fn register(&self, which: &[usize]) -> Result {
        let raws = self.reg.raw_handlers();
        let _g = self.k.enter();
        for &i in which {
            let fh = raws[i];
            // SAFETY: the handler struct lives in `self.reg`, which outlives `self.k`.
            unsafe { self.k.register_raw_handler(fh) }?;
            if let Some(ops) = self.reg.state_ops() {
                // SAFETY: the generated `'static` state table.
                unsafe {
                    self.k
                        .luo()
                        .global_state_register(fh, ops.cast::<liveupdate_fh_global_state_ops>())
                }?;
            }
            for flb in self.reg.flbs() {
                // SAFETY: the FLB cell is kept alive by the registration's globals.
                unsafe { self.k.luo().register_flb(fh, flb.cast()) }?;
            }
        }
        Ok(())
    }
}

/// A log shared by a handler (or a state) and the test.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
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
    log: Log,
    fail_freeze: Arc<AtomicBool>,
}

#[liveupdate_handler]
impl FileHandler for Memfd {
    type Private = u32;

    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }

    fn preserve(&self, _cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(v2::memfd_luo_ser, u32)> {
        let t = test_file(file)?;
        let (pos, size, seals) = t.state();
        if seals & !0x3f != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.log.push(format!("preserve {}", t.id));
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
        let id = test_file(file).map_or(0, |t| t.id);
        self.log
            .push(format!("unpreserve {id} size={size} private={p}"));
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
        let t = test_file(file)?;
        ser.pos = t.pos.load(Ordering::SeqCst);
        *p += 1;
        self.log.push(format!("freeze {} private={p}", t.id));
        Ok(())
    }

    fn unfreeze(
        &self,
        _cx: &Ctx<'_, Self>,
        file: &dyn File,
        _ser: &v2::memfd_luo_ser,
        p: &mut u32,
    ) {
        let id = test_file(file).map_or(0, |t| t.id);
        self.log.push(format!("unfreeze {id} private={p}"));
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, data: v2::memfd_luo_ser) -> Result<FileRef> {
        if data.flags != 0 {
            return Err(Errno::EINVAL);
        }
        self.log.push("retrieve");
        new_memfd(cx, 99, data.pos, data.size, data.seals)
    }

    fn can_finish(
        &self,
        _cx: &Ctx<'_, Self>,
        _file: Option<&dyn File>,
        status: RetrieveStatus,
    ) -> bool {
        status != RetrieveStatus::NotRetrieved || self.log.len() < 100
    }

    fn finish(&self, _cx: &Ctx<'_, Self>, how: Finish<'_, v2::memfd_luo_ser>) {
        let status = how.status();
        // A retrieved file carries its size; a file never retrieved, its record.
        let (retrieved, size) = match how {
            Finish::Retrieved(f) => (true, test_file(f).map_or(0, |t| t.state().1)),
            Finish::NotRetrieved(data) => (false, data.size),
            Finish::Failed(_) => (false, 0),
        };
        self.log.push(format!(
            "finish retrieved={retrieved} status={status:?} size={size}"
        ));
    }

    fn get_id(file: &dyn File) -> FileId {
        // The identity of the object behind the file (as memfd's inode), so two files over
        // one object cannot both be preserved.
        FileId(test_file(file).map_or(file.id().0, |t| t.id + 1000))
    }
}

impl Migrate<v1::memfd_luo_ser> for Memfd {
    fn migrate(&self, old: v1::memfd_luo_ser) -> Result<v2::memfd_luo_ser> {
        self.log.push("migrate v1");
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
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: v1::memfd_luo_ser) -> Result<FileRef> {
        new_memfd(cx, 1, d.pos, d.size, 0)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, v1::memfd_luo_ser>) {}
}

#[test]
fn state_round_trips_through_the_generated_table() {
    let k = kernel();
    let log = Log::default();
    let h = Memfd {
        log: log.clone(),
        ..Memfd::default()
    };
    k.register_handler(Registration::new(h, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    let base = pages(&k);

    k.preserve_fd(s, memfd(&k, 10, 5, 8192, 0x5), 1).unwrap();
    let one = pages(&k);
    k.preserve_fd(s, memfd(&k, 11, 0, 0, 0), 2).unwrap();
    // A file no handler accepts: -ENOENT, as upstream.
    assert_eq!(k.preserve_fd(s, other(&k, 12), 3), Err(Errno::ENOENT));
    // The handler's own error comes back as its errno.
    assert_eq!(
        k.preserve_fd(s, memfd(&k, 13, 0, 0, 0x40), 4),
        Err(Errno::EOPNOTSUPP)
    );
    // get_id is called: a second file over the object of file 10 is refused.
    assert_eq!(
        k.preserve_fd(s, memfd(&k, 10, 0, 0, 0), 5),
        Err(Errno::EBUSY)
    );
    // One record page per preserved file (the first preserve also took the session's file
    // block); the refused files left nothing.
    assert_eq!(pages(&k) - one, 1);
    assert_eq!(one - base, 2);

    let h = k.kexec().unwrap();
    let fs = files(&h);
    assert_eq!(fs.len(), 2);
    assert!(fs.iter().all(|(_, c, d)| c == "memfd-v2" && *d != 0));
    assert_eq!(
        log.lines(),
        [
            "preserve 10",
            "preserve 11",
            "freeze 10 private=42",
            "freeze 11 private=42"
        ]
    );
    drop(k);

    // The new kernel.
    let k = boot(h);
    let log = Log::default();
    let h = Memfd {
        log: log.clone(),
        ..Memfd::default()
    };
    k.register_handler(Registration::new(h, k.host(), ()))
        .unwrap();
    let s = retrieve_session(&k, "s");
    let f = k.retrieve_fd(s, 1).unwrap();
    assert_eq!(state(&k, f), (5, 8192, 0x5));
    // A second retrieve gives the same file.
    let again = k.retrieve_fd(s, 1).unwrap();
    assert!(Arc::ptr_eq(&k.file(again).unwrap(), &k.file(f).unwrap()));
    k.finish_session(s).unwrap();
    assert_eq!(
        log.lines(),
        [
            "retrieve",
            "finish retrieved=false status=NotRetrieved size=0",
            "finish retrieved=true status=Retrieved size=8192",
        ]
    );
    // Every preserved page was released by finish.
    assert_eq!(incoming(&k), 0);
    assert_eq!(pages(&k), 0);
    assert!(
        k.kho().violations().is_empty(),
        "{:?}",
        k.kho().violations()
    );
}

#[test]
fn unpreserve_releases_memory_and_private_data() {
    let k = kernel();
    let log = Log::default();
    let h = Memfd {
        log: log.clone(),
        ..Memfd::default()
    };
    k.register_handler(Registration::new(h, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    let base = pages(&k);
    k.preserve_fd(s, memfd(&k, 10, 1, 2, 0), 1).unwrap();
    assert!(pages(&k) > base);
    // The last close of the session unpreserves its files.
    k.close(s).unwrap();
    assert_eq!(pages(&k), 0);
    assert_eq!(
        log.lines(),
        ["preserve 10", "unpreserve 10 size=2 private=41"]
    );
}

#[test]
fn failed_freeze_unfreezes_the_earlier_files() {
    let k = kernel();
    let fail = Arc::new(AtomicBool::new(false));
    let h = Memfd {
        fail_freeze: fail.clone(),
        ..Memfd::default()
    };
    k.register_handler(Registration::new(h, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 10, 1, 2, 0), 1).unwrap();
    // Freeze succeeds once, then fails on the next kexec attempt of a new file set.
    let h = k.kexec().unwrap();
    assert_eq!(files(&h).len(), 1);

    let k = kernel();
    let log = Log::default();
    let h = Memfd {
        log: log.clone(),
        fail_freeze: fail.clone(),
    };
    k.register_handler(Registration::new(h, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 10, 1, 2, 0), 1).unwrap();
    k.preserve_fd(s, memfd(&k, 11, 1, 2, 0), 2).unwrap();
    fail.store(true, Ordering::SeqCst);
    assert_eq!(k.kexec().err(), Some(Errno::EAGAIN));
    assert_eq!(k.luo().outgoing()[0].tokens(), [1, 2]);
    // The kernel carries on: the same files cross once freeze succeeds.
    fail.store(false, Ordering::SeqCst);
    let h = k.kexec().unwrap();
    assert_eq!(files(&h).len(), 2);
    assert_eq!(
        log.lines(),
        [
            "preserve 10",
            "preserve 11",
            "freeze 10 private=42",
            "freeze 11 private=42"
        ]
    );
}

#[test]
fn a_newer_handler_reads_the_older_version_through_its_migration() {
    // 6.19: memfd-v1.
    let k = kernel();
    k.register_handler(Registration::new(MemfdV1, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 1, 123, 4096, 0), 7).unwrap();
    let h = k.kexec().unwrap();
    assert_eq!(files(&h)[0].1, "memfd-v1");
    drop(k);

    // 7.3: writes memfd-v2, registers a reader entry for memfd-v1.
    let k = boot(h);
    let log = Log::default();
    let h = Memfd {
        log: log.clone(),
        ..Memfd::default()
    };
    let reg = Registration::new(h, k.host(), ());
    assert_eq!(reg.raw_handlers().len(), 2);
    assert_eq!(<Memfd as HandlerAbi>::READS, ["memfd-v1"]);
    k.register_handler(reg).unwrap();
    assert_eq!(k.luo().handlers(), ["memfd-v2", "memfd-v1"]);
    let s = retrieve_session(&k, "s");
    let f = k.retrieve_fd(s, 7).unwrap();
    assert_eq!(state(&k, f), (123, 4096, 0));
    k.finish_session(s).unwrap();
    assert_eq!(
        log.lines(),
        [
            // The record is claimed and read once, at retrieve; can_finish and finish of a
            // retrieved file do not read it again.
            "migrate v1",
            "retrieve",
            "finish retrieved=true status=Retrieved size=4096"
        ]
    );
    assert_eq!(incoming(&k), 0);
    assert!(
        k.kho().violations().is_empty(),
        "{:?}",
        k.kho().violations()
    );
}

#[test]
fn the_reader_entry_never_preserves() {
    let kept = Kept::new(kernel(), |k| {
        Registration::new(Memfd::default(), k.host(), ())
    });
    // Register only the memfd-v1 reader entry: it refuses every file.
    kept.register(&[1]).unwrap();
    let k = &kept.k;
    assert_eq!(k.luo().handlers(), ["memfd-v1"]);
    let [s] = sessions(k, ["s"]);
    assert_eq!(
        k.preserve_fd(s, memfd(k, 1, 0, 0, 0), 1),
        Err(Errno::ENOENT)
    );
}

#[test]
fn registration_rules() {
    let k = kernel();
    let a = Registration::new(Memfd::default(), k.host(), ());
    let b = Registration::new(Memfd::default(), k.host(), ());
    k.register_handler(a).unwrap();
    // Same compatible twice: -EEXIST.
    assert_eq!(k.register_handler(b), Err(Errno::EEXIST));
}

#[test]
fn corrupt_handles_are_errors_not_panics() {
    let k = kernel();
    k.register_handler(Registration::new(Memfd::default(), k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    k.preserve_fd(s, memfd(&k, 2, 0, 0, 0), 2).unwrap();
    let h = k.kexec().unwrap();
    drop(k);
    // The handles LUO hands over for the two memfd-v2 files: NULL, and an address KHO did
    // not hand over.
    set_handle(&h, 1, 0);
    set_handle(&h, 2, 1 << 40);
    assert_eq!(
        files(&h),
        [
            (1, "memfd-v2".to_string(), 0),
            (2, "memfd-v2".to_string(), 1 << 40)
        ]
    );

    let k = boot(h);
    k.register_handler(Registration::new(Memfd::default(), k.host(), ()))
        .unwrap();
    let s = retrieve_session(&k, "s");
    assert_eq!(k.retrieve_fd(s, 1).err(), Some(Errno::EINVAL));
    // An address KHO did not hand over is refused before anything is read there.
    assert_eq!(k.retrieve_fd(s, 2).err(), Some(Errno::EINVAL));
    // The error is cached.
    assert_eq!(k.retrieve_fd(s, 2).err(), Some(Errno::EINVAL));
    k.finish_session(s).unwrap();
    // Nothing was read outside the handover, and no page claimed twice.
    assert!(
        k.kho().violations().is_empty(),
        "{:?}",
        k.kho().violations()
    );
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
                token: test_file(file)?.id,
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
        new_memfd(cx, d.token, d.pages_seen, *pool, 0)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, pooled_ser>) {}
}

#[test]
fn flb_is_preserved_once_retrieved_lazily_and_finished_last() {
    let k = kernel();
    let pool = k.new_flb(Pool::default());
    assert_eq!(
        pool.get_outgoing().err(),
        Some(Errno::ENOENT),
        "not registered yet"
    );
    let reg = Registration::new(Pooled, k.host(), (pool.clone(),));
    assert_eq!(reg.flbs(), [pool.raw()]);
    k.register_handler(reg).unwrap();
    assert_eq!(
        pool.get_outgoing().err(),
        Some(Errno::ENODATA),
        "no file preserved yet"
    );

    // File 3 in a session of its own, so it can be unpreserved alone (a session's last close).
    let [a, b] = sessions(&k, ["a", "b"]);
    k.preserve_fd(a, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    k.preserve_fd(a, memfd(&k, 2, 0, 0, 0), 2).unwrap();
    k.preserve_fd(b, memfd(&k, 3, 0, 0, 0), 3).unwrap();
    assert_eq!(*pool.get_outgoing().unwrap().lock().unwrap(), 13);
    k.close(b).unwrap();
    let h = k.kexec().unwrap();
    let flbs = report(&h).flbs.unwrap();
    let flbs: Vec<_> = flbs
        .iter()
        .map(|f| (f.name.as_str(), f.data, f.count))
        .collect();
    assert_eq!(flbs, [("test-pool-v1", flbs[0].1, 2)]);
    assert_eq!(*pool.flb().log.lock().unwrap(), ["preserve"]);
    drop(k);

    let k = boot(h);
    let pool = k.new_flb(Pool::default());
    pool.flb().me.set(Arc::downgrade(&pool)).unwrap();
    k.register_handler(Registration::new(Pooled, k.host(), (pool.clone(),)))
        .unwrap();
    let a = retrieve_session(&k, "a");
    // Not retrieved until first use.
    assert!(pool.flb().log.lock().unwrap().is_empty());
    let f = k.retrieve_fd(a, 2).unwrap();
    // File 2 saw 14 pages left when preserved; the pool handed over 16.
    assert_eq!(state(&k, f), (14, 16, 0));
    assert_eq!(
        *pool.flb().log.lock().unwrap(),
        // Inside retrieve, a get of the same FLB is refused instead of deadlocking.
        ["retrieve pages=16 reenter=Some(Errno(EDEADLK = 35))"]
    );
    {
        let g = pool.get_incoming().unwrap();
        assert_eq!(*g, 16);
    }
    k.finish_session(a).unwrap();
    assert_eq!(
        pool.flb().log.lock().unwrap().last().map(String::as_str),
        Some("finish 16")
    );
    assert_eq!(pool.get_incoming().err(), Some(Errno::ENODATA), "finished");
    assert_eq!(incoming(&k), 0);
}

#[test]
fn flb_unpreserve_on_the_last_file() {
    let k = kernel();
    let pool = k.new_flb(Pool::default());
    k.register_handler(Registration::new(Pooled, k.host(), (pool.clone(),)))
        .unwrap();
    // One file per session: closing a session unpreserves its file.
    let [a, b] = sessions(&k, ["a", "b"]);
    k.preserve_fd(a, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    k.preserve_fd(b, memfd(&k, 2, 0, 0, 0), 2).unwrap();
    k.close(a).unwrap();
    assert_eq!(*pool.flb().log.lock().unwrap(), ["preserve"]);
    k.close(b).unwrap();
    assert_eq!(
        *pool.flb().log.lock().unwrap(),
        ["preserve", "unpreserve pages=16 now=14"]
    );
    assert_eq!(pages(&k), 0);
}

// ---------------------------------------------------------------------------------------------
// Handler-scoped state (LUO v4's global_state_create/restore/destroy).

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct counter_ser {
    count: u64,
}

#[derive(Default)]
#[liveupdate_global_state(abi = counter_ser)]
struct Counter {
    log: Log,
}

#[liveupdate_global_state]
impl HandlerState for Counter {
    type Outgoing = u64;
    type Incoming = u64;

    fn create(&self, _cx: &StateCtx<'_>) -> Result<(counter_ser, u64)> {
        self.log.push("create");
        Ok((counter_ser { count: 0 }, 0))
    }
    fn restore(&self, _cx: &StateCtx<'_>, ser: counter_ser) -> Result<u64> {
        self.log.push(format!("restore {}", ser.count));
        Ok(ser.count)
    }
    fn destroy(&self, _cx: &StateCtx<'_>, obj: StateObj<u64, u64>) {
        self.log.push(format!("destroy {obj:?}"));
    }
}

/// A counter state logging into `log`.
fn counter(log: &Log) -> (HandlerStateCell<Counter>,) {
    (HandlerStateCell::new(Counter { log: log.clone() }),)
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
        new_memfd(cx, 0, d.count, total, 0)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

#[test]
fn handler_scoped_state_lives_with_the_handlers_files() {
    let log = Log::default();
    let kept = Kept::new(kernel(), |k| {
        Registration::new(Counted, k.host(), counter(&log))
    });
    assert!(kept.reg.state_ops().is_some());
    kept.register(&[0]).unwrap();
    let (k, reg) = (&kept.k, &kept.reg);
    // luo-core's `liveupdate_fh_global_state_get` creates the state on first use, before any
    // preserve; the files preserved later count in it.
    assert_eq!(*reg.state().get_outgoing().unwrap(), 0);
    assert_eq!(log.lines(), ["create"]);
    // No state was handed over to a fresh kernel.
    assert_eq!(reg.state().get_incoming().err(), Some(Errno::ENODATA));
    let [s] = sessions(k, ["s"]);
    for t in 1..=3 {
        k.preserve_fd(s, memfd(k, t, 0, 0, 0), t).unwrap();
    }
    assert_eq!(*reg.state().get_outgoing().unwrap(), 3);
    let h = k.kexec().unwrap();
    assert_eq!(report(&h).global_states.len(), 1);
    assert_eq!(log.lines(), ["create"]);
    drop(kept);

    let log = Log::default();
    let k = boot(h);
    k.register_handler(Registration::new(Counted, k.host(), counter(&log)))
        .unwrap();
    let s = retrieve_session(&k, "s");
    let f = k.retrieve_fd(s, 2).unwrap();
    // File 2 was the second preserve; the state counted three.
    assert_eq!(state(&k, f), (2, 3, 0));
    assert_eq!(log.lines(), ["restore 3"]);
    k.finish_session(s).unwrap();
    assert_eq!(log.lines(), ["restore 3", "destroy Incoming(3)"]);
    assert_eq!(incoming(&k), 0);
}

#[test]
fn handler_scoped_state_no_file_counts_in_is_not_handed_over() {
    let log = Log::default();
    let kept = Kept::new(kernel(), |k| {
        Registration::new(Counted, k.host(), counter(&log))
    });
    kept.register(&[0]).unwrap();
    // Made by a get before any preserve; no file is preserved afterwards.
    assert_eq!(*kept.reg.state().get_outgoing().unwrap(), 0);
    assert!(pages(&kept.k) > 0, "the state's record is preserved");
    let h = kept.k.kexec().unwrap();
    // Destroyed on the reboot path: nothing counts in it, nothing is handed over.
    assert_eq!(log.lines(), ["create", "destroy Outgoing(0)"]);
    assert_eq!(report(&h).global_states.len(), 0);
    drop(kept);
    let k = boot(h);
    assert_eq!(incoming(&k), 0, "no preserved page crosses unclaimed");
}

#[test]
fn handler_scoped_state_is_destroyed_after_the_last_unpreserve() {
    let k = kernel();
    let log = Log::default();
    k.register_handler(Registration::new(Counted, k.host(), counter(&log)))
        .unwrap();
    // One file per session: closing a session unpreserves its file.
    let [a, b] = sessions(&k, ["a", "b"]);
    k.preserve_fd(a, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    k.preserve_fd(b, memfd(&k, 2, 0, 0, 0), 2).unwrap();
    k.close(a).unwrap();
    k.close(b).unwrap();
    assert_eq!(log.lines(), ["create", "destroy Outgoing(2)"]);
    assert_eq!(pages(&k), 0);
}

// ---------------------------------------------------------------------------------------------
// Subsystems: their own lifecycle, independent of files.

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Abi)]
#[repr(C)]
struct hstate_ser {
    nr_pages: [u64; 4],
}

/// A HugeTLB-like subsystem: files reserve pages from it; `prepare` (on the reboot path, after
/// the files) takes the counts as its outgoing state, `freeze` writes them into the
/// handed-over struct.
#[derive(Default)]
#[liveupdate_subsystem(name = "test-hugetlb", abi = hstate_ser)]
struct Huge {
    log: Mutex<Vec<String>>,
    reserved: AtomicU64,
}

#[liveupdate_subsystem]
impl Subsystem for Huge {
    type Outgoing = [u64; 4];
    type Incoming = [u64; 4];

    fn prepare(&self, _cx: &StateCtx<'_>) -> Result<(hstate_ser, [u64; 4])> {
        self.log.lock().unwrap().push("prepare".into());
        let obj = [self.reserved.load(Ordering::SeqCst), 0, 0, 0];
        Ok((hstate_ser { nr_pages: [0; 4] }, obj))
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

/// What [`Peek`] saw of [`Huge`]'s outgoing state: the count, and a second get while the
/// guard is held.
type Peeked = (u64, Option<Errno>);

/// A subsystem registered after [`Huge`]: its `prepare` runs on the reboot path once Huge's
/// outgoing state exists, and looks at it through Huge's cell; with `fail`, it then fails the
/// reboot.
#[derive(Default)]
#[liveupdate_subsystem(name = "test-peek", abi = counter_ser)]
struct Peek {
    huge: std::sync::OnceLock<Arc<SubsystemCell<Huge>>>,
    seen: Mutex<Vec<Peeked>>,
    fail: bool,
}

#[liveupdate_subsystem]
impl Subsystem for Peek {
    type Outgoing = ();
    type Incoming = ();

    fn prepare(&self, _cx: &StateCtx<'_>) -> Result<(counter_ser, ())> {
        if let Some(huge) = self.huge.get() {
            let g = huge.get_outgoing()?;
            // The guard holds the subsystem's lock: a second get on this task is refused.
            let again = huge.get_outgoing().err();
            self.seen.lock().unwrap().push((g[0], again));
        }
        if self.fail {
            return Err(Errno::EAGAIN);
        }
        Ok((counter_ser { count: 0 }, ()))
    }
    fn cancel(&self, _cx: &StateCtx<'_>, _obj: ()) {}
    fn boot(&self, _cx: &StateCtx<'_>, _ser: counter_ser) -> Result<()> {
        Ok(())
    }
    fn finish(&self, _cx: &StateCtx<'_>, _obj: ()) {}
}

#[liveupdate_handler(compatible = "huge-memfd-v1", abi = counter_ser, subsystems = [Huge])]
struct HugeMemfd;

#[liveupdate_handler]
impl FileHandler for HugeMemfd {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(counter_ser, ())> {
        // Before the reboot the subsystem has no outgoing state yet: the file reserves its
        // pages from the subsystem itself, which `prepare` snapshots.
        let huge = cx.global::<Huge>();
        if huge.get_outgoing().err() != Some(Errno::ENODATA) {
            return Err(Errno::EINVAL);
        }
        huge.subsystem().reserved.fetch_add(2, Ordering::SeqCst);
        Ok((
            counter_ser {
                count: test_file(file)?.id,
            },
            (),
        ))
    }
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: counter_ser, _: ()) {}
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: counter_ser) -> Result<FileRef> {
        let mut h = cx.global::<Huge>().get_incoming()?;
        h[0] -= 2;
        new_memfd(cx, d.count, h[0], 0, 0)
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, counter_ser>) {}
}

#[test]
fn subsystem_prepares_freezes_boots_and_finishes() {
    let k = kernel();
    let huge = k.new_subsystem(Huge::default());
    k.register_subsystem(&huge).unwrap();
    let peek = k.new_subsystem(Peek::default());
    assert!(peek.subsystem().huge.set(huge.clone()).is_ok());
    k.register_subsystem(&peek).unwrap();
    k.register_handler(Registration::new(HugeMemfd, k.host(), (huge.clone(),)))
        .unwrap();
    assert_eq!(huge.get_outgoing().err(), Some(Errno::ENODATA));
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    k.preserve_fd(s, memfd(&k, 2, 0, 0, 0), 2).unwrap();
    // prepare and freeze run on the reboot path, after the files; freeze writes the counts
    // into the handed-over struct.
    let h = k.kexec().unwrap();
    assert_eq!(
        *peek.subsystem().seen.lock().unwrap(),
        [(4, Some(Errno::EDEADLK))]
    );
    let subs = report(&h).subsystems;
    assert_eq!(subs.len(), 2);
    let data = subs.iter().find(|(n, _)| n == "test-hugetlb").unwrap().1;
    assert_eq!(read::<hstate_ser>(&h, data).nr_pages, [4, 0, 0, 0]);
    assert_eq!(*huge.subsystem().log.lock().unwrap(), ["prepare", "freeze"]);
    drop(k);

    let k = boot(h);
    let huge = k.new_subsystem(Huge::default());
    k.register_subsystem(&huge).unwrap();
    k.register_subsystem(&k.new_subsystem(Peek::default()))
        .unwrap();
    assert_eq!(
        *huge.get_incoming().unwrap(),
        [4, 0, 0, 0],
        "restored eagerly"
    );
    k.register_handler(Registration::new(HugeMemfd, k.host(), (huge.clone(),)))
        .unwrap();
    let s = retrieve_session(&k, "s");
    let f = k.retrieve_fd(s, 2).unwrap();
    assert_eq!(state(&k, f).0, 2);
    assert_eq!(*huge.subsystem().log.lock().unwrap(), ["boot"]);
    // The subsystem finishes after the last incoming session.
    k.finish_session(s).unwrap();
    assert_eq!(
        *huge.subsystem().log.lock().unwrap(),
        ["boot", "finish [2, 0, 0, 0]"]
    );
    assert_eq!(huge.get_incoming().err(), Some(Errno::ENODATA));
    // Both files finished and the subsystem's struct was released at boot.
    assert_eq!(incoming(&k), 0);
}

#[test]
fn subsystem_cancel_releases_the_prepared_state() {
    let k = kernel();
    let huge = k.new_subsystem(Huge::default());
    k.register_subsystem(&huge).unwrap();
    // A subsystem after it fails the reboot once Huge is prepared (and frozen).
    let peek = k.new_subsystem(Peek {
        fail: true,
        ..Peek::default()
    });
    assert!(peek.subsystem().huge.set(huge.clone()).is_ok());
    k.register_subsystem(&peek).unwrap();
    assert_eq!(k.kexec().err(), Some(Errno::EAGAIN));
    // Huge was prepared: its state existed when the failing subsystem ran.
    assert_eq!(
        *peek.subsystem().seen.lock().unwrap(),
        [(0, Some(Errno::EDEADLK))]
    );
    assert_eq!(pages(&k), 0);
    assert_eq!(
        *huge.subsystem().log.lock().unwrap(),
        ["prepare", "freeze", "cancel [0, 0, 0, 0]"]
    );
    assert_eq!(huge.get_outgoing().err(), Some(Errno::ENODATA));
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
    no_folios: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[liveupdate_handler]
impl FileHandler for MemfdNext {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(next::memfd_luo_ser, ())> {
        let (pos, size, seals) = test_file(file)?.state();
        if self.no_folios {
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
    fn retrieve(&self, cx: &Ctx<'_, Self>, d: Negotiated<next::memfd_luo_ser>) -> Result<FileRef> {
        let seals = d.get(Self::SEALS, |s| s.seals);
        let folios = d.get(Self::FOLIOS, |s| s.nr_folios);
        let raw_nr = d.ser().nr_folios;
        self.seen.lock().unwrap().push((seals, folios, raw_nr));
        new_memfd(cx, 0, d.ser().pos, d.ser().size, seals.unwrap_or(0))
    }
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, Negotiated<next::memfd_luo_ser>>) {}
}

fn preserve_next(no_folios: bool) -> Handover {
    let k = kernel();
    let h = MemfdNext {
        no_folios,
        ..MemfdNext::default()
    };
    k.register_handler(Registration::new(h, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 1, 9, 4096, 0x7), 1).unwrap();
    k.kexec().unwrap()
}

/// The address and contents of the handed-over record.
fn header(h: &Handover) -> (u64, next::memfd_luo_ser) {
    let p = files(h)[0].2;
    (p, read(h, p))
}

/// Retrieves the file in a new kernel: what retrieve made of it, and what the reader saw.
fn retrieve_next(h: Handover) -> (Result<(u64, u64, u32)>, Vec<Seen>) {
    let k = boot(h);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = MemfdNext {
        seen: seen.clone(),
        ..MemfdNext::default()
    };
    k.register_handler(Registration::new(handler, k.host(), ()))
        .unwrap();
    let s = retrieve_session(&k, "s");
    let r = k.retrieve_fd(s, 1).map(|fd| state(&k, fd));
    assert!(
        k.kho().violations().is_empty(),
        "{:?}",
        k.kho().violations()
    );
    let seen = seen.lock().unwrap().clone();
    (r, seen)
}

#[test]
fn features_written_from_what_the_handler_declares_and_uses() {
    let h = preserve_next(false);
    assert_eq!(files(&h)[0].1, "memfd", "the versionless name");
    let (_, ser) = header(&h);
    let (supp, req, active) = (ser.features.supp, ser.features.req, ser.features.active);
    assert_eq!((supp, req, active), (0b11, 0b01, 0b11));
    let (r, seen) = retrieve_next(h);
    assert_eq!(r.unwrap(), (9, 4096, 7));
    assert_eq!(seen, [(Some(7), Some(5), 5)]);

    // FOLIOS not used: not active, its fields zeroed by the writer, `None` for the reader.
    let h = preserve_next(true);
    let (_, ser) = header(&h);
    let (active, nr) = (ser.features.active, ser.nr_folios);
    assert_eq!((active, nr), (0b01, 0));
    let (_, seen) = retrieve_next(h);
    assert_eq!(seen, [(Some(7), None, 0)]);
}

#[test]
fn reader_zeroes_fields_of_inactive_features() {
    let h = preserve_next(true);
    let (p, mut ser) = header(&h);
    ser.nr_folios = 77; // stale data a writer left behind
    write(&h, p, &ser);
    let (_, seen) = retrieve_next(h);
    assert_eq!(seen, [(Some(7), None, 0)]);
}

#[test]
fn reader_refuses_unknown_required_bits_and_ignores_unknown_supported_ones() {
    // An unknown *supported* (and even active, optional) bit: read fine.
    let h = preserve_next(false);
    let (p, mut ser) = header(&h);
    ser.features.supp |= 1 << 7;
    ser.features.active |= 1 << 7;
    write(&h, p, &ser);
    let (r, seen) = retrieve_next(h);
    assert!(r.is_ok());
    assert_eq!(seen, [(Some(7), Some(5), 5)]);

    // An unknown *required* bit: refused with EOPNOTSUPP.
    let h = preserve_next(false);
    let (p, mut ser) = header(&h);
    ser.features.supp |= 1 << 5;
    ser.features.req |= 1 << 5;
    write(&h, p, &ser);
    let (r, seen) = retrieve_next(h);
    assert_eq!(r.err(), Some(Errno::EOPNOTSUPP));
    assert!(seen.is_empty());

    // Non-zero reserved words of the header: EINVAL.
    let h = preserve_next(false);
    let (p, mut ser) = header(&h);
    ser.features.reserved[3] = 1;
    write(&h, p, &ser);
    let (r, _) = retrieve_next(h);
    assert_eq!(r.err(), Some(Errno::EINVAL));
}

// ---------------------------------------------------------------------------------------------
// Reserved fields of #[derive(Abi)] types are checked on read.

#[test]
fn reserved_fields_must_be_zero_on_read() {
    let k = kernel();
    let pool = k.new_flb(Pool::default());
    k.register_handler(Registration::new(Pooled, k.host(), (pool.clone(),)))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    let h = k.kexec().unwrap();
    drop(k);
    let p = files(&h)[0].2;
    let mut ser: pooled_ser = read(&h, p);
    ser.flags = 1;
    write(&h, p, &ser);

    let k = boot(h);
    let pool = k.new_flb(Pool::default());
    k.register_handler(Registration::new(Pooled, k.host(), (pool.clone(),)))
        .unwrap();
    let s = retrieve_session(&k, "s");
    assert_eq!(k.retrieve_fd(s, 1).err(), Some(Errno::EINVAL));
}

// ---------------------------------------------------------------------------------------------
// Panics never unwind into C.

#[liveupdate_handler(compatible = "panicky-v1", abi = counter_ser)]
struct Panicky;

#[liveupdate_handler]
impl FileHandler for Panicky {
    fn can_preserve(&self, file: &dyn File) -> bool {
        if test_file(file).is_ok_and(|t| t.id == 666) {
            panic!("can_preserve panics");
        }
        file.kind() == FileKind::Memfd
    }
    fn preserve(&self, _: &Ctx<'_, Self>, file: &dyn File) -> Result<(counter_ser, ())> {
        if test_file(file)?.id == 13 {
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
    let k = kernel();
    k.register_handler(Registration::new(Panicky, k.host(), ()))
        .unwrap();
    // File 3 in a session of its own, unpreserved by the session's last close.
    let [a, b, c] = sessions(&k, ["a", "b", "c"]);
    let base = pages(&k);
    // int callback: -EIO.
    assert_eq!(k.preserve_fd(a, memfd(&k, 13, 0, 0, 0), 1), Err(Errno::EIO));
    // bool callback: false (so no handler takes the file).
    assert_eq!(
        k.preserve_fd(a, memfd(&k, 666, 0, 0, 0), 2),
        Err(Errno::ENOENT)
    );
    // void callback: the panic is swallowed; the runtime has already taken the private data
    // and still releases the preserved memory.
    k.preserve_fd(b, memfd(&k, 3, 0, 0, 0), 3).unwrap();
    assert!(pages(&k) > base);
    k.close(b).unwrap();
    assert_eq!(pages(&k), base);
    assert_eq!(luo_abi::ffi::panic_count() - before, 3);
    k.preserve_fd(c, memfd(&k, 4, 0, 0, 0), 4).unwrap();
    let h = k.kexec().unwrap();
    let k = boot(h);
    k.register_handler(Registration::new(Panicky, k.host(), ()))
        .unwrap();
    let c = retrieve_session(&k, "c");
    assert_eq!(k.retrieve_fd(c, 4).err(), Some(Errno::EIO));
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
    let k = kernel();
    k.register_handler(Registration::new(Panicky, k.host(), ()))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    let _ = k.preserve_fd(s, memfd(&k, 13, 0, 0, 0), 1);
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
        new_memfd(cx, 0, d.count, total, 0)
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
    let k = kernel();
    let log = Log::default();
    k.register_handler(Registration::new(CountedV1, k.host(), counter(&log)))
        .unwrap();
    let [s] = sessions(&k, ["s"]);
    k.preserve_fd(s, memfd(&k, 1, 0, 0, 0), 1).unwrap();
    k.preserve_fd(s, memfd(&k, 2, 0, 0, 0), 2).unwrap();
    let h = k.kexec().unwrap();
    assert_eq!(report(&h).global_states[0].0, "counted-v1");
    drop(k);

    let k = boot(h);
    let log = Log::default();
    k.register_handler(Registration::new(CountedV2, k.host(), counter(&log)))
        .unwrap();
    let s = retrieve_session(&k, "s");
    let f = k.retrieve_fd(s, 1).unwrap();
    // File 1 saw 10 (migrated to 11); the state counted 20.
    assert_eq!(state(&k, f), (11, 20, 0));
    k.finish_session(s).unwrap();
    assert_eq!(log.lines(), ["restore 20", "destroy Incoming(20)"]);
    assert_eq!(incoming(&k), 0);
}
