// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The memfd handler's details (seals, pos, freezing, zero-size files, unpreserve) and the
//! subsystem and global-state lifecycles through the Rust side of the C API.

use std::ffi::c_int;

use luo_abi::Errno;
use luo_abi::file::seals;
use luo_core::Kernel;
use luo_generated::liveupdate::{liveupdate_subsystem, liveupdate_subsystem_ops};
use luo_testing as testing;

fn boot() -> Kernel {
    Kernel::boot(&luo_sim::machine::default_options(), None).unwrap()
}

#[test]
fn memfd_state_crosses() {
    let k = boot();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "m").unwrap();
    let m = k.memfd_create("sealed").unwrap();
    k.pwrite(m, 0, b"sealed contents").unwrap();
    let f = k.file(m).unwrap();
    let shm = luo_abi::file::File::as_shmem(&*f).unwrap();
    shm.set_pos(7);
    shm.add_seals(seals::F_SEAL_GROW | seals::F_SEAL_SHRINK)
        .unwrap();
    let empty = k.memfd_create("empty").unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, empty, 2).unwrap();
    // Frozen: growing and truncating fail, writing within the size works.
    assert_eq!(k.pwrite(m, 14, b"xx"), Err(Errno::EPERM));
    assert_eq!(k.ftruncate(empty, 10), Err(Errno::EPERM));
    k.pwrite(m, 0, b"S").unwrap();
    // pos is refreshed at freeze.
    shm.set_pos(9);
    let k2 = k.kexec_into(&luo_sim::machine::default_options()).unwrap();
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "m").unwrap();
    let fd = k2.retrieve_fd(s, 1).unwrap();
    let f = k2.file(fd).unwrap();
    let shm = luo_abi::file::File::as_shmem(&*f).unwrap();
    assert_eq!(shm.pos(), 9);
    assert_eq!(shm.size(), 15);
    assert_eq!(shm.seals(), seals::F_SEAL_GROW | seals::F_SEAL_SHRINK);
    let mut buf = [0u8; 15];
    k2.pread(fd, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"Sealed contents");
    assert_eq!(k2.pwrite(fd, 15, b"!"), Err(Errno::EPERM), "GROW seal kept");
    let e = k2.retrieve_fd(s, 2).unwrap();
    assert_eq!(k2.pread(e, 0, &mut buf), Ok(0));
    k2.close(s).unwrap();
    let st = k2.stats();
    assert_eq!(
        (st.kho.incoming_pages, st.preserved_beyond_root()),
        (0, 0),
        "{st:?}"
    );
    // Retrieved memfds are ordinary again: not frozen.
    k2.ftruncate(e, 4096).unwrap();
}

#[test]
fn memfd_unpreserve_releases_everything() {
    let k = boot();
    let base = k.stats();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "m").unwrap();
    let m = k.memfd_create("big").unwrap();
    k.pwrite(m, 0, &vec![1u8; 600 * 4096]).unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    // 600 data pages, the folio array (3 pages) and its chunk, the ser, the blocks.
    assert!(k.stats().kho.preserved_pages > 600);
    k.close(s).unwrap();
    let st = k.stats();
    assert_eq!(st.kho.preserved_pages, base.kho.preserved_pages, "{st:?}");
    assert_eq!(st.kho.arena_pages_in_use, base.kho.arena_pages_in_use);
    // No longer frozen.
    k.ftruncate(m, 0).unwrap();
}

static mut SUB_LOG: Vec<&str> = Vec::new();

fn sub_log(s: &'static str) {
    // SAFETY: only the single test below touches SUB_LOG, from one thread.
    unsafe { (*std::ptr::addr_of_mut!(SUB_LOG)).push(s) };
}

unsafe extern "C" fn sub_freeze(_: *mut liveupdate_subsystem, d: *mut u64) -> c_int {
    sub_log("freeze");
    // SAFETY: the core passes a valid pointer.
    unsafe { *d = 0xabc };
    Errno::EAGAIN.to_neg()
}

unsafe extern "C" fn sub_cancel(_: *mut liveupdate_subsystem, _: u64) {
    sub_log("cancel");
}

struct SyncSub(liveupdate_subsystem);
// SAFETY: immutable after construction.
unsafe impl Sync for SyncSub {}
struct SyncOps(liveupdate_subsystem_ops);
// SAFETY: immutable after construction.
unsafe impl Sync for SyncOps {}

static SUB_OPS: SyncOps = SyncOps(liveupdate_subsystem_ops {
    prepare: None,
    freeze: Some(sub_freeze),
    cancel: Some(sub_cancel),
    boot: None,
    finish: None,
    owner: std::ptr::null_mut(),
});
static SUB: SyncSub = SyncSub(liveupdate_subsystem {
    ops: &SUB_OPS.0,
    name: c"failing-subsystem".as_ptr().cast(),
});

#[test]
fn failing_subsystem_freeze_rolls_back_the_files() {
    let k = boot();
    testing::register(&k, false).unwrap();
    let sub = (&SUB.0 as *const liveupdate_subsystem).cast_mut();
    // SAFETY: a static subsystem with a NUL-terminated name.
    unsafe { k.luo().register_subsystem(sub) }.unwrap();
    // SAFETY: as above.
    let again = unsafe { k.luo().register_subsystem(sub) };
    assert_eq!(again, Err(Errno::EEXIST));
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let f = k.test_file(5).unwrap();
    k.preserve_fd(s, f, 5).unwrap();
    testing::take_log();
    assert_eq!(k.kexec().err(), Some(Errno::EAGAIN));
    assert_eq!(testing::take_log(), vec![("freeze", 5), ("unfreeze", 5)]);
    // SAFETY: only this test touches SUB_LOG, and the callbacks that write it have returned.
    let log = unsafe { (*std::ptr::addr_of!(SUB_LOG)).clone() };
    assert_eq!(log, vec!["freeze", "cancel"]);
    k.luo().unregister_subsystem(sub).unwrap();
    assert_eq!(k.luo().unregister_subsystem(sub), Err(Errno::ENOENT));
    let k2 = k.kexec_into(&luo_sim::machine::default_options()).unwrap();
    testing::register(&k2, false).unwrap();
    let dev = k2.open_dev().unwrap();
    let s = k2.retrieve_session(dev, "s").unwrap();
    let fd = k2.retrieve_fd(s, 5).unwrap();
    assert_eq!(k2.file(fd).unwrap().test_value(), Some(5));
}

#[test]
fn synthetic_files_and_memfd_service() {
    use luo_abi::file::FileKind;
    let k = boot();
    let fd = k
        .open_synthetic(FileKind::Iommufd, "/dev/iommu", Box::new(42u32))
        .unwrap();
    let f = k.file(fd).unwrap();
    assert_eq!(luo_abi::file::File::kind(&*f), FileKind::Iommufd);
    assert_eq!(f.synthetic::<u32>(), Some(&42));
    assert_eq!(f.synthetic::<u64>(), None);
    // No handler accepts it yet.
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    assert_eq!(k.preserve_fd(s, fd, 1), Err(Errno::ENOENT));
    let m = k
        .memfd_alloc_file("x", luo_abi::file::MFD_ALLOW_SEALING)
        .unwrap();
    assert_eq!(m.kind(), FileKind::Memfd);
    assert_eq!(m.as_shmem().unwrap().size(), 0);
    let core = luo_core::file::CoreFile::from_ref(m).unwrap();
    assert!(core.memfd().is_some());
}
