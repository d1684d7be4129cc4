// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `iommufd-v1` handler and the IOMMU FLB through the core: preserve (sealed memfds
//! preserved in the same session, marked HWPTs), kexec, the handed-over bytes (HWPT tokens,
//! domains, page tables), retrieve and the RFC's HWPT restore, finish (can_finish until every
//! HWPT is reclaimed), unpreserve on session close (DELETED slots), never-retrieved files,
//! every ordering error, and the FLB's callbacks counted.

use std::sync::Arc;

use luo_abi::Errno;
use luo_abi::file::{File, FileRef, seals};
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Phys, PhysAddr};
use luo_core::{BootOptions, Handover, Kernel, KernelVersion};
use luo_generated::iommu::iommu_domain_ser;
use luo_handlers::iommu::{self, FlbCalls, HwUnit, Iommu, Kho};
use luo_handlers::iommufd::{self, Iommufd, PreservedHwpt, REQUIRED_SEALS};

const HW: HwUnit = HwUnit { token: 0xfed9_0000 };
const PAGE: u64 = 4096;

/// A booted kernel and the IOMMU core its iommufd handler registered.
#[derive(Clone)]
struct K {
    k: Kernel,
    iommu: Iommu,
}

impl std::ops::Deref for K {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        &self.k
    }
}

fn boot(h: Option<Handover>) -> K {
    let opts = BootOptions {
        version: KernelVersion::Next,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, h).unwrap();
    k.make_current();
    let iommu = iommufd::register(&k).unwrap();
    K { k, iommu }
}

fn kho(k: &Kernel) -> Kho {
    Arc::clone(k.kho()) as Arc<dyn KhoService + Send + Sync>
}

fn file(k: &Kernel, fd: i32) -> FileRef {
    k.file(fd).unwrap()
}

/// A memfd of `pages` pages with `add` seals.
fn memfd(k: &Kernel, pages: u64, add: u32) -> i32 {
    let fd = k.memfd_create("guest-ram").unwrap();
    k.ftruncate(fd, pages * PAGE).unwrap();
    k.pwrite(fd, 0, b"guest ram").unwrap();
    let f = k.file(fd).unwrap();
    File::as_shmem(&*f).unwrap().add_seals(add).unwrap();
    fd
}

/// An iommufd file and a handle on its object.
fn open_iommufd(k: &K) -> (i32, Iommufd) {
    let fd = iommufd::open(&k.iommu, |kind, name, p| k.open_synthetic(kind, name, p)).unwrap();
    let h = k.file(fd).unwrap().synthetic::<Iommufd>().unwrap().clone();
    (fd, h)
}

fn retrieved_iommufd(k: &Kernel, fd: i32) -> Iommufd {
    k.file(fd).unwrap().synthetic::<Iommufd>().unwrap().clone()
}

fn calls(k: &K) -> FlbCalls {
    k.iommu.flb_calls()
}

/// The data of `token` in the incoming session `name`, as the core deserialized it.
fn incoming_data(k: &Kernel, name: &str, token: u64) -> u64 {
    k.luo()
        .incoming()
        .iter()
        .find(|s| s.name() == name.as_bytes())
        .and_then(|s| s.file_data(token))
        .unwrap()
}

#[test]
fn preserve_kexec_restore_finish() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let ram = memfd(&k, 4, REQUIRED_SEALS);
    let ram2 = memfd(&k, 2, REQUIRED_SEALS | seals::F_SEAL_WRITE);
    let (ifd, iommufd) = open_iommufd(&k);
    iommufd
        .ioas_map(file(&k, ram), 0x10_0000, 4 * PAGE)
        .unwrap();
    let h1 = iommufd.hwpt_alloc(HW).unwrap();
    let h2 = iommufd.hwpt_alloc(HW).unwrap();
    let h3 = iommufd.hwpt_alloc(HW).unwrap();
    // Mapped after the HWPTs exist: every page table gets it.
    iommufd
        .ioas_map(file(&k, ram2), 0x40_0000, 2 * PAGE)
        .unwrap();
    iommufd.hwpt_mark_preserve(h1, 100).unwrap();
    iommufd.hwpt_mark_preserve(h2, 200).unwrap();
    let want = iommufd.marked_ranges().unwrap();
    assert_eq!(want.len(), 2, "h3 is not marked");
    assert_eq!(
        want[&100],
        vec![(0x10_0000, 4 * PAGE), (0x40_0000, 2 * PAGE)]
    );
    let tables = iommufd.hwpts();
    let top = |id: u32| tables[&id].domain.top_table;

    k.preserve_fd(s, ram, 1).unwrap();
    k.preserve_fd(s, ram2, 2).unwrap();
    assert_eq!(
        calls(&k),
        FlbCalls::default(),
        "memfds do not touch the IOMMU FLB"
    );
    k.preserve_fd(s, ifd, 3).unwrap();
    assert_eq!(calls(&k).preserve, 1);
    // Preserved: the IOAS is frozen.
    assert_eq!(
        iommufd.ioas_map(file(&k, ram), 0x80_0000, PAGE),
        Err(Errno::EBUSY)
    );
    assert_eq!(iommufd.hwpt_mark_preserve(h3, 300), Err(Errno::EBUSY));
    // The outgoing FLB as written: two domains, live, naming h1's and h2's tables.
    let out = iommu::decode(&*kho(&k), k.iommu.outgoing_data().unwrap()).unwrap();
    assert_eq!(out.domains.len(), 2);
    assert!(
        out.domains
            .iter()
            .all(|d| d.ref_count == 1 && !d.deleted && !d.incoming)
    );
    assert_eq!(out.domains[0].top_table_phys, top(h1));
    assert_eq!(out.domains[1].top_table_phys, top(h2));

    let k = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    // The handed-over bytes, before anything is retrieved.
    let data = incoming_data(&k, "vm", 3);
    let hwpts = iommufd::decode(&*kho(&k), data).unwrap();
    assert_eq!(
        hwpts
            .iter()
            .map(|h| (h.token, h.reclaimed))
            .collect::<Vec<_>>(),
        vec![(100, false), (200, false)]
    );
    for (h, id) in hwpts.iter().zip([h1, h2]) {
        let d: iommu_domain_ser = kho(&k)
            .read_obj(Phys::new(PhysAddr::new(h.domain_data)))
            .unwrap();
        assert_eq!({ d.top_table_phys }, top(id));
        assert_eq!(
            { d.reserved_restored_domain },
            0,
            "no kernel pointer handed over"
        );
        assert_eq!({ d.hdr.ref_count }, 1);
    }
    assert_eq!(calls(&k), FlbCalls::default(), "retrieved on demand only");

    let s = k.retrieve_session(dev, "vm").unwrap();
    let ram = k.retrieve_fd(s, 1).unwrap();
    k.retrieve_fd(s, 2).unwrap();
    let ifd = k.retrieve_fd(s, 3).unwrap();
    let mut buf = [0u8; 9];
    k.pread(ram, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"guest ram");
    let fd2 = retrieved_iommufd(&k, ifd);
    assert!(
        fd2.hwpts().is_empty(),
        "a new iommufd: HWPTs come back by token"
    );
    assert_eq!(k.finish_session(s), Err(Errno::EBUSY), "nothing reclaimed");

    let id = fd2.hwpt_restore(100, HW).unwrap();
    assert_eq!(calls(&k).retrieve, 1);
    assert_eq!(fd2.hwpt_ranges(id).unwrap(), want[&100]);
    assert_eq!(fd2.hwpt_restore(100, HW), Err(Errno::EBUSY));
    assert_eq!(fd2.hwpt_restore(999, HW), Err(Errno::ENOENT));
    assert_eq!(k.finish_session(s), Err(Errno::EBUSY), "200 not reclaimed");
    assert_eq!(
        fd2.restore_all(HW).unwrap(),
        [(200, want[&200].clone())].into()
    );
    // Reclaimed and INCOMING in the handed-over bytes.
    assert!(fd2.preserved_hwpts().unwrap().iter().all(|h| h.reclaimed));
    let inc = k.iommu.get_incoming().unwrap();
    assert!(inc.domains.iter().all(|d| d.restored && d.incoming));
    k.finish_session(s).unwrap();
    assert_eq!(
        calls(&k),
        FlbCalls {
            preserve: 0,
            unpreserve: 0,
            retrieve: 1,
            finish: 1
        }
    );
    assert_eq!(
        k.stats().kho.incoming_pages,
        0,
        "every handed-over page claimed"
    );
}

#[test]
fn mappings_must_be_sealed_memfds_preserved_in_the_session() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let baseline = k.stats().preserved_beyond_root();
    let s = k.create_session(dev, "a").unwrap();
    let other = k.create_session(dev, "b").unwrap();
    let preserve_with = |f: FileRef, tok: u64| {
        let (ifd, fd) = open_iommufd(&k);
        fd.ioas_map(f, 0, PAGE).unwrap();
        let h = fd.hwpt_alloc(HW).unwrap();
        fd.hwpt_mark_preserve(h, 1).unwrap();
        k.preserve_fd(s, ifd, tok)
    };
    // Not sealed, or missing one of the three seals: EINVAL.
    for add in [
        0,
        seals::F_SEAL_GROW | seals::F_SEAL_SHRINK,
        seals::F_SEAL_SEAL | seals::F_SEAL_GROW,
    ] {
        let m = memfd(&k, 1, add);
        k.preserve_fd(s, m, 50 + u64::from(add)).unwrap();
        assert_eq!(
            preserve_with(file(&k, m), 10),
            Err(Errno::EINVAL),
            "seals {add:#x}"
        );
    }
    // Not a memfd.
    let t = k.test_file(7).unwrap();
    assert_eq!(preserve_with(file(&k, t), 10), Err(Errno::EINVAL));
    // Sealed, but not preserved: ENOENT from the core's liveupdate_get_token_outgoing.
    let m = memfd(&k, 1, REQUIRED_SEALS);
    assert_eq!(preserve_with(file(&k, m), 10), Err(Errno::ENOENT));
    // Preserved in another session: still ENOENT.
    k.preserve_fd(other, m, 1).unwrap();
    assert_eq!(preserve_with(file(&k, m), 10), Err(Errno::ENOENT));
    // Every failure rolled the FLB back.
    let c = calls(&k);
    assert_eq!(c.preserve, c.unpreserve);
    assert_eq!(k.iommu.outgoing_data(), None);
    // In the session: preserved.
    let m2 = memfd(&k, 1, REQUIRED_SEALS);
    k.preserve_fd(s, m2, 2).unwrap();
    preserve_with(file(&k, m2), 10).unwrap();
    assert!(k.iommu.outgoing_live());
    // Closing both sessions unpreserves everything, the FLB included.
    k.close(s).unwrap();
    k.close(other).unwrap();
    assert!(!k.iommu.outgoing_live());
    assert_eq!(k.stats().preserved_beyond_root(), baseline);
}

#[test]
fn mark_preserve_errors() {
    let k = boot(None);
    let (_, fd) = open_iommufd(&k);
    let a = fd.hwpt_alloc(HW).unwrap();
    let b = fd.hwpt_alloc(HW).unwrap();
    fd.hwpt_mark_preserve(a, 5).unwrap();
    assert_eq!(fd.hwpt_mark_preserve(b, 5), Err(Errno::EADDRINUSE));
    assert_eq!(fd.hwpt_mark_preserve(a, 5), Err(Errno::EADDRINUSE));
    assert_eq!(fd.hwpt_mark_preserve(77, 6), Err(Errno::ENOENT));
    fd.hwpt_mark_preserve(b, 6).unwrap();
    // The same token in another iommufd is fine.
    let (_, other) = open_iommufd(&k);
    let c = other.hwpt_alloc(HW).unwrap();
    other.hwpt_mark_preserve(c, 5).unwrap();
    // Overlapping IOVA ranges and empty ranges.
    let m = memfd(&k, 2, REQUIRED_SEALS);
    fd.ioas_map(file(&k, m), 0, 2 * PAGE).unwrap();
    assert_eq!(fd.ioas_map(file(&k, m), PAGE, PAGE), Err(Errno::EEXIST));
    assert_eq!(fd.ioas_map(file(&k, m), 8 * PAGE, 0), Err(Errno::EINVAL));
    assert_eq!(fd.ioas_map(file(&k, m), u64::MAX, 2), Err(Errno::EINVAL));
    // A retrieved-only operation on an outgoing iommufd.
    assert_eq!(fd.hwpt_restore(5, HW), Err(Errno::EINVAL));
}

#[test]
fn unpreserve_on_close_marks_deleted_slots() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let mut sessions = Vec::new();
    for name in ["a", "b"] {
        let s = k.create_session(dev, name).unwrap();
        let m = memfd(&k, 1, REQUIRED_SEALS);
        let (ifd, fd) = open_iommufd(&k);
        fd.ioas_map(file(&k, m), 0, PAGE).unwrap();
        let h = fd.hwpt_alloc(HW).unwrap();
        fd.hwpt_mark_preserve(h, 1).unwrap();
        k.preserve_fd(s, m, 1).unwrap();
        k.preserve_fd(s, ifd, 2).unwrap();
        sessions.push(s);
    }
    assert_eq!(calls(&k).preserve, 1, "one FLB object for both iommufds");
    let data = k.iommu.outgoing_data().unwrap();
    k.close(sessions[0]).unwrap();
    assert_eq!(calls(&k).unpreserve, 0, "b still depends on it");
    let out = iommu::decode(&*kho(&k), data).unwrap();
    assert_eq!(out.domains.len(), 2, "slots are never reused");
    assert!(out.domains[0].deleted && !out.domains[0].incoming);
    assert_eq!(out.domains[0].ref_count, 0);
    assert!(!out.domains[1].deleted);

    // Across the kexec the deleted domain stays deleted; b's iommufd restores its own.
    let k = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "b").unwrap();
    let ifd = k.retrieve_fd(s, 2).unwrap();
    let fd = retrieved_iommufd(&k, ifd);
    let got = fd.restore_all(HW).unwrap();
    assert_eq!(got[&1], vec![(0, PAGE)]);
    let inc = k.iommu.get_incoming().unwrap();
    assert_eq!(inc.domains.len(), 2);
    assert!(inc.domains[0].deleted && !inc.domains[0].incoming);
    assert!(inc.domains[1].restored);
    assert_eq!(
        k.iommu.restore_domain(inc.domains[0].phys),
        Err(Errno::ENOENT)
    );
    k.finish_session(s).unwrap();
    assert_eq!(calls(&k).finish, 1);
}

#[test]
fn unpreserve_on_close_frees_everything() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let baseline = k.stats().preserved_beyond_root();
    let s = k.create_session(dev, "s").unwrap();
    let m = memfd(&k, 3, REQUIRED_SEALS);
    let (ifd, fd) = open_iommufd(&k);
    fd.ioas_map(file(&k, m), 0, 3 * PAGE).unwrap();
    for t in 0..3 {
        let h = fd.hwpt_alloc(HW).unwrap();
        fd.hwpt_mark_preserve(h, t).unwrap();
    }
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, ifd, 2).unwrap();
    assert!(k.stats().preserved_beyond_root() > baseline);
    k.close(s).unwrap();
    assert_eq!(
        calls(&k),
        FlbCalls {
            preserve: 1,
            unpreserve: 1,
            ..FlbCalls::default()
        }
    );
    assert_eq!(k.stats().preserved_beyond_root(), baseline);
    // Unpreserved: the IOAS can change again, and the iommufd can be preserved again.
    let m2 = memfd(&k, 1, REQUIRED_SEALS);
    fd.ioas_map(file(&k, m2), 16 * PAGE, PAGE).unwrap();
    let s = k.create_session(dev, "s2").unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, m2, 2).unwrap();
    k.preserve_fd(s, ifd, 3).unwrap();
    assert_eq!(calls(&k).preserve, 2);
}

#[test]
fn never_retrieved_iommufds() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    // "marked": one marked HWPT; "plain": none.
    for (name, mark) in [("marked", true), ("plain", false)] {
        let s = k.create_session(dev, name).unwrap();
        let m = memfd(&k, 1, REQUIRED_SEALS);
        let (ifd, fd) = open_iommufd(&k);
        fd.ioas_map(file(&k, m), 0, PAGE).unwrap();
        let h = fd.hwpt_alloc(HW).unwrap();
        if mark {
            fd.hwpt_mark_preserve(h, 9).unwrap();
        }
        k.preserve_fd(s, m, 1).unwrap();
        k.preserve_fd(s, ifd, 2).unwrap();
    }
    let k = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    let plain = incoming_data(&k, "plain", 2);
    assert_eq!(
        iommufd::decode(&*kho(&k), plain).unwrap(),
        Vec::<PreservedHwpt>::new()
    );
    // No HWPT to reclaim: FINISH drops it without a retrieve.
    let s = k.retrieve_session(dev, "plain").unwrap();
    k.finish_session(s).unwrap();
    assert_eq!(
        calls(&k).finish,
        0,
        "the marked iommufd still holds the FLB"
    );
    // A preserved HWPT nobody rebuilt: FINISH refused (RFC-era can_finish).
    let s = k.retrieve_session(dev, "marked").unwrap();
    assert_eq!(k.finish_session(s), Err(Errno::EBUSY));
    let ifd = k.retrieve_fd(s, 2).unwrap();
    assert_eq!(k.finish_session(s), Err(Errno::EBUSY));
    retrieved_iommufd(&k, ifd).restore_all(HW).unwrap();
    k.finish_session(s).unwrap();
    assert_eq!((calls(&k).retrieve, calls(&k).finish), (1, 1));
    assert_eq!(k.stats().kho.incoming_pages, 0);
}

#[test]
fn corrupt_handover_is_refused_not_a_panic() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let m = memfd(&k, 1, REQUIRED_SEALS);
    let (ifd, fd) = open_iommufd(&k);
    fd.ioas_map(file(&k, m), 0, PAGE).unwrap();
    let h = fd.hwpt_alloc(HW).unwrap();
    fd.hwpt_mark_preserve(h, 1).unwrap();
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, ifd, 2).unwrap();
    let data = k.iommu.outgoing_data().unwrap();
    let out = iommu::decode(&*kho(&k), data).unwrap();
    // The domain chain's page claims more slots than a page holds.
    let dom_page = out.domains[0].phys & !(PAGE - 1);
    kho(&k)
        .write(PhysAddr::new(dom_page + 8), &u64::MAX.to_le_bytes())
        .unwrap();
    // And the iommufd data claims 2^40 HWPTs.
    let k = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    let data = incoming_data(&k, "s", 2);
    assert_eq!(k.iommu.get_incoming().err(), Some(Errno::EINVAL));
    kho(&k)
        .write(PhysAddr::new(data), &(1u64 << 40).to_le_bytes())
        .unwrap();
    let s = k.retrieve_session(dev, "s").unwrap();
    assert_eq!(k.retrieve_fd(s, 2), Err(Errno::EINVAL));
}

#[test]
fn full_pages_chain_and_units_are_written_once() {
    use luo_handlers::iommu::IommuDevice;
    const HWPTS: u32 = 120; // domains: 110 a page
    const UNITS: u64 = 40; // units: 36 a page
    const DEVICES: u16 = 70; // devices: 63 a page
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "big").unwrap();
    let m = memfd(&k, 1, REQUIRED_SEALS);
    let (ifd, fd) = open_iommufd(&k);
    fd.ioas_map(file(&k, m), 0, PAGE).unwrap();
    let ids: Vec<u32> = (0..HWPTS).map(|_| fd.hwpt_alloc(HW).unwrap()).collect();
    for (t, id) in ids.iter().enumerate() {
        fd.hwpt_mark_preserve(*id, t as u64).unwrap();
    }
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, ifd, 2).unwrap();
    // A domain is preserved once.
    let d0 = fd.hwpts()[&ids[0]].domain;
    assert_eq!(k.iommu.preserve_domain(&d0), Err(Errno::EBUSY));
    // 70 devices behind 40 units, all on the first HWPT (iommufd_device_preserve).
    for i in 0..DEVICES {
        let d = IommuDevice {
            pci_domain: 0,
            devid: 0x100 + i,
            hw: HwUnit {
                token: 0x1000 * (u64::from(i) % UNITS + 1),
            },
        };
        fd.device_preserve(ids[0], &d).unwrap();
        assert_eq!(fd.device_preserve(ids[0], &d), Err(Errno::EBUSY));
    }
    let out = iommu::decode(&*kho(&k), k.iommu.outgoing_data().unwrap()).unwrap();
    assert_eq!(
        (out.hws.len(), out.domains.len(), out.devices.len()),
        (UNITS as usize, HWPTS as usize, DEVICES as usize)
    );
    // Units 1..=30 have two devices each, 31..=40 one.
    assert!(out.hws[..30].iter().all(|h| h.ref_count == 2));
    assert!(out.hws[30..].iter().all(|h| h.ref_count == 1));
    assert_eq!(out.domains[0].ref_count, 1 + u32::from(DEVICES));

    let k = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "big").unwrap();
    let ifd = k.retrieve_fd(s, 2).unwrap();
    let got = retrieved_iommufd(&k, ifd).restore_all(HW).unwrap();
    assert_eq!(got.len(), HWPTS as usize);
    assert!(got.values().all(|r| r == &vec![(0, PAGE)]));
    let inc = k.iommu.get_incoming().unwrap();
    assert_eq!(inc, {
        let mut want = out.clone();
        for d in &mut want.domains {
            d.incoming = true;
            d.restored = true;
        }
        want
    });
    k.finish_session(s).unwrap();
    assert_eq!((calls(&k).retrieve, calls(&k).finish), (1, 1));
    assert_eq!(k.stats().kho.incoming_pages, 0);
}

#[test]
fn closing_an_iommufd_frees_its_page_tables() {
    let k = boot(None);
    let before = k.stats().kho;
    let (ifd, fd) = open_iommufd(&k);
    for _ in 0..5 {
        fd.hwpt_alloc(HW).unwrap();
    }
    assert_ne!(k.stats().kho, before);
    drop(fd);
    k.close(ifd).unwrap();
    assert_eq!(k.stats().kho, before);
}

#[test]
fn eight_threads_one_flb_object_each_way() {
    // 8 threads each preserve a memfd and an iommufd in their own session: one FLB preserve.
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let want: Vec<_> = std::thread::scope(|t| {
        let hs: Vec<_> = (0..8u64)
            .map(|i| {
                let k = k.clone();
                t.spawn(move || {
                    k.make_current();
                    let s = k.create_session(dev, &format!("t{i}")).unwrap();
                    let m = memfd(&k, 1, REQUIRED_SEALS);
                    let (ifd, fd) = open_iommufd(&k);
                    fd.ioas_map(file(&k, m), i * PAGE, PAGE).unwrap();
                    let h = fd.hwpt_alloc(HW).unwrap();
                    fd.hwpt_mark_preserve(h, 100 + i).unwrap();
                    k.preserve_fd(s, m, 1).unwrap();
                    k.preserve_fd(s, ifd, 2).unwrap();
                    fd.marked_ranges().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    k.make_current();
    assert_eq!(calls(&k).preserve, 1);
    // 8 threads each retrieve and finish their session: one FLB retrieve, one finish, after
    // the last.
    let k = boot(Some(k.kexec().unwrap()));
    let dev = k.open_dev().unwrap();
    std::thread::scope(|t| {
        for (i, want) in want.iter().enumerate() {
            let k = k.clone();
            t.spawn(move || {
                k.make_current();
                let s = k.retrieve_session(dev, &format!("t{i}")).unwrap();
                let ifd = k.retrieve_fd(s, 2).unwrap();
                assert_eq!(&retrieved_iommufd(&k, ifd).restore_all(HW).unwrap(), want);
                k.finish_session(s).unwrap();
            });
        }
    });
    k.make_current();
    assert_eq!((calls(&k).retrieve, calls(&k).finish), (1, 1));
    assert_eq!(k.stats().kho.incoming_pages, 0);
}

/// `iommu_hdr_ser`'s state bits are `u32 deleted:1, incoming:1` over the bytes of the former
/// flags word (bit 0, bit 1); the rest of the unit is reserved, and a header with a reserved
/// bit set is refused.
#[test]
fn header_state_bits_and_reserved_bits() {
    let k = boot(None);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let ram = memfd(&k, 1, REQUIRED_SEALS);
    let (ifd, iommufd) = open_iommufd(&k);
    iommufd.ioas_map(file(&k, ram), 0, PAGE).unwrap();
    let h = iommufd.hwpt_alloc(HW).unwrap();
    iommufd.hwpt_mark_preserve(h, 1).unwrap();
    k.preserve_fd(s, ram, 1).unwrap();
    k.preserve_fd(s, ifd, 2).unwrap();
    let data = k.iommu.outgoing_data().unwrap();
    let slot = iommu::decode(&*kho(&k), data).unwrap().domains[0].phys;
    let word = |k: &Kernel| {
        let mut b = [0u8; 4];
        kho(k)
            .read(luo_abi::PhysAddr::new(slot + 4), &mut b)
            .unwrap();
        u32::from_ne_bytes(b)
    };
    assert_eq!(word(&k), 0);
    // Across the kexec, restoring the domain sets `incoming`: bit 1 of the word.
    let k = boot(Some(k.kexec().unwrap()));
    let s = k.retrieve_session(k.open_dev().unwrap(), "vm").unwrap();
    let ifd = k.retrieve_fd(s, 2).unwrap();
    retrieved_iommufd(&k, ifd).restore_all(HW).unwrap();
    assert_eq!(word(&k), 1 << 1);
    assert!(k.iommu.get_incoming().unwrap().domains[0].incoming);
    // A reserved bit: the header is refused.
    kho(&k)
        .write(luo_abi::PhysAddr::new(slot + 4), &(1u32 << 5).to_ne_bytes())
        .unwrap();
    assert_eq!(iommu::decode(&*kho(&k), data).err(), Some(Errno::EINVAL));
}
