// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The memfd handler (every version) through the core: preserve, freeze, kexec, retrieve,
//! finish, unpreserve on session close, never-retrieved files, seals, empty and sparse files,
//! data checked byte for byte, folios not copied; memfd-v1 migration (not-uptodate folios
//! zeroed); 7.3 → next and the refused reverse; the upstream test FLBs.

use luo_abi::Errno;
use luo_abi::PhysAddr;
use luo_abi::file::{File, seals};
use luo_abi::kho::KhoService;
use luo_core::{BootOptions, ImageError, Kernel, KernelVersion, KexecError};
use luo_generated::memfd::{MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser, v1};
use luo_handlers::memfd::{self, Version};
use luo_handlers::test_flb;
use zerocopy::{FromBytes, IntoBytes};

const PAGE: usize = 4096;

fn opts(v: KernelVersion) -> BootOptions {
    BootOptions {
        version: v,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn pfns(k: &Kernel, fd: i32) -> Pages {
    let f = k.file(fd).unwrap();
    let shm = File::as_shmem(&*f).unwrap();
    let folios = shm.pin_folios().unwrap();
    shm.unpin_folios(&folios);
    folios.iter().map(|f| (f.index, f.phys)).collect()
}

fn read_all(k: &Kernel, fd: i32, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = k.pread(fd, 0, &mut buf).unwrap();
    assert_eq!(n, len);
    buf
}

/// Folio index and physical address of a file's pages.
type Pages = Vec<(u64, PhysAddr)>;

/// What stage 1 made: (token, expected contents, pages before).
struct Made {
    files: Vec<(u64, Vec<u8>, Pages)>,
}

fn stage1(k: &Kernel, name: &str) -> Made {
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, name).unwrap();
    let mut files = Vec::new();
    // A dense file of 5 pages and a bit.
    let dense = pattern(5 * PAGE + 123, 7);
    let m = k.memfd_create("dense").unwrap();
    k.pwrite(m, 0, &dense).unwrap();
    // A sparse file: page 0 and page 20 written, a hole in between.
    let m2 = k.memfd_create("sparse").unwrap();
    let mut sparse = vec![0u8; 21 * PAGE];
    sparse[..PAGE].copy_from_slice(&pattern(PAGE, 1));
    sparse[20 * PAGE..].copy_from_slice(&pattern(PAGE, 2));
    k.pwrite(m2, 0, &sparse[..PAGE]).unwrap();
    k.pwrite(m2, 20 * PAGE as u64, &sparse[20 * PAGE..])
        .unwrap();
    // An empty file.
    let m3 = k.memfd_create("empty").unwrap();
    for (tok, fd, data) in [(1, m, dense), (2, m2, sparse), (3, m3, Vec::new())] {
        k.preserve_fd(s, fd, tok).unwrap();
        let before = pfns(k, fd);
        files.push((tok, data, before));
    }
    Made { files }
}

fn check_stage2(k: &Kernel, name: &str, made: &Made) {
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, name).unwrap();
    for (tok, data, before) in &made.files {
        let fd = k.retrieve_fd(s, *tok).unwrap();
        assert_eq!(
            read_all(k, fd, data.len()),
            *data,
            "token {tok} byte for byte"
        );
        assert_eq!(
            &pfns(k, fd)[..before.len()],
            &before[..],
            "same pages, token {tok}"
        );
    }
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    k.close(dev).unwrap();
    assert_eq!(k.stats().kho.incoming_pages, 0, "{:?}", k.stats());
}

#[test]
fn memfd_v2_crosses_without_copy() {
    let k = Kernel::boot(&opts(KernelVersion::V7_3), None).unwrap();
    let made = stage1(&k, "vm");
    let k = k.kexec_into(&opts(KernelVersion::V7_3)).unwrap();
    check_stage2(&k, "vm", &made);
    assert_eq!(memfd::stats().folios_copied, 0);
}

#[test]
fn live_update_7_3_to_next_and_next_to_next() {
    let k = Kernel::boot(&opts(KernelVersion::V7_3), None).unwrap();
    let made = stage1(&k, "vm");
    let k = k.kexec_into(&opts(KernelVersion::Next)).unwrap();
    assert_eq!(k.liveupdate_num(), 1);
    check_stage2(&k, "vm", &made);
    // next → next (memfd with feature negotiation).
    let made = stage1(&k, "vm2");
    let k = k.kexec_into(&opts(KernelVersion::Next)).unwrap();
    assert_eq!(k.liveupdate_num(), 2);
    check_stage2(&k, "vm2", &made);
    assert_eq!(memfd::stats().folios_copied, 0);
}

#[test]
fn next_to_7_3_is_refused_at_boot() {
    let k = Kernel::boot(&opts(KernelVersion::Next), None).unwrap();
    stage1(&k, "vm");
    let err = match k.kexec_into(&opts(KernelVersion::V7_3)) {
        Err(KexecError::Boot(e)) => e,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("7.3 must refuse a next image"),
    };
    assert!(matches!(err, ImageError::UnsupportedFormat { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("next") && msg.contains("7.3"), "{msg}");
}

#[test]
fn seals_pos_freeze_and_unpreserve_on_close() {
    for v in [KernelVersion::V7_3, KernelVersion::Next] {
        let k = Kernel::boot(&opts(v), None).unwrap();
        let base = k.stats();
        let dev = k.open_dev().unwrap();
        let s = k.create_session(dev, "m").unwrap();
        let m = k.memfd_create("sealed").unwrap();
        k.pwrite(m, 0, b"sealed contents").unwrap();
        let f = k.file(m).unwrap();
        let shm = File::as_shmem(&*f).unwrap();
        shm.add_seals(seals::F_SEAL_GROW | seals::F_SEAL_SHRINK)
            .unwrap();
        k.preserve_fd(s, m, 1).unwrap();
        assert!(shm.is_frozen());
        // Frozen at PRESERVE_FD: growing and shrinking are refused, writes within the size work.
        assert_eq!(k.ftruncate(m, 100), Err(Errno::EPERM));
        assert_eq!(k.ftruncate(m, 1), Err(Errno::EPERM));
        k.pwrite(m, 0, b"S").unwrap();
        // Closing the session unpreserves: everything released, the inode unfrozen.
        k.close(s).unwrap();
        assert!(!shm.is_frozen());
        let st = k.stats();
        assert_eq!(
            st.kho.preserved_pages, base.kho.preserved_pages,
            "{v}: {st:?}"
        );
        // Now across a kexec: seals and pos kept.
        let s = k.create_session(dev, "m").unwrap();
        k.preserve_fd(s, m, 1).unwrap();
        shm.set_pos(9);
        let k2 = k.kexec_into(&opts(v)).unwrap();
        let dev = k2.open_dev().unwrap();
        let s = k2.retrieve_session(dev, "m").unwrap();
        let fd = k2.retrieve_fd(s, 1).unwrap();
        let f = k2.file(fd).unwrap();
        let shm = File::as_shmem(&*f).unwrap();
        assert_eq!(shm.pos(), 9, "{v}");
        assert_eq!(
            shm.seals(),
            seals::F_SEAL_GROW | seals::F_SEAL_SHRINK,
            "{v}"
        );
        assert_eq!(read_all(&k2, fd, 15), b"Sealed contents");
        assert_eq!(k2.pwrite(fd, 15, b"!"), Err(Errno::EPERM), "GROW seal kept");
        k2.finish_session(s).unwrap();
    }
}

#[test]
fn never_retrieved_file_is_released_at_finish() {
    let k = Kernel::boot(&opts(KernelVersion::V7_3), None).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "n").unwrap();
    let m = k.memfd_create("kept").unwrap();
    k.pwrite(m, 0, &pattern(3 * PAGE, 3)).unwrap();
    let m2 = k.memfd_create("dropped").unwrap();
    k.pwrite(m2, 0, &pattern(8 * PAGE, 4)).unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, m2, 2).unwrap();
    let discarded = memfd::stats().folios_discarded;
    let k = k.kexec_into(&opts(KernelVersion::V7_3)).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "n").unwrap();
    let fd = k.retrieve_fd(s, 1).unwrap();
    assert_eq!(read_all(&k, fd, 3 * PAGE), pattern(3 * PAGE, 3));
    assert!(
        k.stats().kho.incoming_pages >= 8,
        "token 2's pages still incoming"
    );
    k.finish_session(s).unwrap();
    assert_eq!(k.stats().kho.incoming_pages, 0, "{:?}", k.stats());
    assert!(memfd::stats().folios_discarded > discarded);
}

/// A 7.3 kernel whose memfd writes `memfd-v1` (as 6.19 does) with one folio recorded as not
/// up to date: the next 7.3 kernel reads it through the generated v1 → v2 migration and zeroes
/// that folio (as mm/memfd_luo.c).
#[test]
fn memfd_v1_is_migrated_and_not_uptodate_folios_zeroed() {
    let mut o = opts(KernelVersion::V7_3);
    o.initcalls.clear();
    let k = Kernel::boot(&o, None).unwrap();
    memfd::register(&k, Version::V1, &[Version::V1], None).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "old").unwrap();
    let m = k.memfd_create("v1").unwrap();
    let data = pattern(3 * PAGE, 9);
    k.pwrite(m, 0, &data).unwrap();
    k.preserve_fd(s, m, 5).unwrap();
    // Find the memfd-v1 struct: the one file of the session, and clear UPTODATE on folio 1.
    let kho = k.kho();
    let data_pa = k.luo().outgoing()[0].file_data(5).unwrap();
    let ser: v1::memfd_luo_ser =
        luo_abi::kho::KhoExt::read_obj(&**kho, luo_abi::Phys::new(PhysAddr::new(data_pa))).unwrap();
    assert_eq!({ ser.nr_folios }, 3);
    let first = { ser.folios }.first.addr();
    let mut chunk = [0u8; 16];
    kho.read(PhysAddr::new(first.as_u64() + 8), &mut chunk[..8])
        .unwrap();
    let array_page = u64::from_ne_bytes(chunk[..8].try_into().unwrap());
    let at = PhysAddr::new(array_page + 16);
    kho.read(at, &mut chunk).unwrap();
    let mut e = memfd_luo_folio_ser::read_from_bytes(&chunk[..]).unwrap();
    assert_ne!(e.flags() & MEMFD_LUO_FOLIO_UPTODATE, 0);
    e.set_flags(e.flags() & !MEMFD_LUO_FOLIO_UPTODATE);
    kho.write(at, e.as_bytes()).unwrap();
    let zeroed = memfd::stats().folios_zeroed;

    let k = k.kexec_into(&opts(KernelVersion::V7_3)).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "old").unwrap();
    let fd = k.retrieve_fd(s, 5).unwrap();
    let mut want = data.clone();
    want[PAGE..2 * PAGE].fill(0);
    assert_eq!(read_all(&k, fd, 3 * PAGE), want);
    assert!(memfd::stats().folios_zeroed > zeroed);
    k.finish_session(s).unwrap();
    assert_eq!(k.stats().kho.incoming_pages, 0);
}

#[test]
fn upstream_test_flbs() {
    let mut o = opts(KernelVersion::V7_3);
    o.test_flbs = true;
    let k = Kernel::boot(&o, None).unwrap();
    let flbs = test_flb::TestFlbs::new(&k);
    let before = test_flb::stats();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "flb").unwrap();
    let m = k.memfd_create("x").unwrap();
    k.pwrite(m, 0, b"flb").unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    assert!(test_flb::stats().preserved >= before.preserved + 3);
    // Registration checked EEXIST at boot; a second link of the same FLB is refused too.
    {
        let _g = k.enter();
        let fh = k.luo().handler_ptr("memfd-v2").unwrap();
        // SAFETY: a registered handler and an FLB cell alive for the call; the link is
        // refused, so nothing keeps either pointer.
        let r = unsafe { k.luo().register_flb(fh, flbs.raw(1).unwrap().cast()) };
        assert_eq!(r, Err(Errno::EEXIST));
    }
    let k = k.kexec_into(&o).unwrap();
    // Each FLB's data (0xFEEDF00DCAFEBEE0 + i) was checked at the new kernel's registration.
    let after = test_flb::stats();
    assert!(after.retrieved_ok >= before.retrieved_ok + 3, "{after:?}");
    assert_eq!(after.mismatches, 0);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "flb").unwrap();
    let fd = k.retrieve_fd(s, 1).unwrap();
    assert_eq!(read_all(&k, fd, 3), b"flb");
    k.finish_session(s).unwrap();
    assert!(test_flb::stats().finished_ok >= before.finished_ok + 3);
    assert_eq!(test_flb::stats().mismatches, 0);
}
