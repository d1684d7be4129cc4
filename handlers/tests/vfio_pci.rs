// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `vfio-pci-v2` handler, the PCI FLB `"pci"` (version 2, devices in a KHO block chain)
//! and the IOMMU FLB through the core: the order memfd → iommufd → vfio cdev with upstream's
//! errors, PCI refcounts up to the root port (EBUSY, VFs, after shutdown, entries reused, the
//! chain growing past a block), the record's `reset_works` and iommufd token and a
//! `vfio-pci-v1` record read back, freeze refused with interrupts on, kexec with the
//! refcounts and IOMMU device entries checked from the handed-over bytes, retrieve, finish
//! (refcounts down the path), unpreserve on session close, never-retrieved devices both ways,
//! the FLBs created once for several files across handlers and sessions and finished once
//! after the last, FLB get/put from 8 threads, a domain kept by a device after its iommufd is
//! gone, leak checks (every handed-over page claimed), and one live update per corrupted byte
//! of the device state.

use std::collections::BTreeMap;
use std::sync::Arc;

use luo_abi::Errno;
use luo_abi::file::{File, FileRef};
use luo_abi::kho::KhoService;
use luo_core::{BootOptions, Handover, Kernel, KernelVersion};
use luo_handlers::iommu::{self, FlbCalls, HwUnit, Kho};
use luo_handlers::iommufd::{self, Iommufd, REQUIRED_SEALS};
use luo_handlers::pci::{self, PciAddr, PciKind};
use luo_handlers::vfio_pci::{self, CanFinish, Devices, Stats, VfioDevice};

const PAGE: u64 = 4096;
const HW: HwUnit = HwUnit { token: 0xfed9_0000 };
const HW2: HwUnit = HwUnit { token: 0xfed9_1000 };
const RP1: u16 = 0x0008;
const SW: u16 = 0x0100;
const EP_A: u16 = 0x0200;
const VF: u16 = 0x0201;
const EP_B: u16 = 0x0208;
const RP2: u16 = 0x0010;
const EP_C: u16 = 0x0300;

/// A booted kernel and its device handlers.
#[derive(Clone)]
struct K {
    k: Kernel,
    d: Devices,
}

impl std::ops::Deref for K {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        &self.k
    }
}

/// Boots and enumerates: RP1 → switch → {A, A's VF, B}; RP2 → C.
fn boot(h: Option<Handover>, mode: CanFinish) -> K {
    let opts = BootOptions {
        version: KernelVersion::Next,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, h).unwrap();
    k.make_current();
    let d = vfio_pci::boot_devices(
        &k,
        mode,
        &[
            (0, RP1, None, PciKind::Bridge),
            (0, SW, Some(RP1), PciKind::Bridge),
            (0, EP_A, Some(SW), PciKind::Endpoint),
            (0, VF, Some(SW), PciKind::Vf),
            (0, EP_B, Some(SW), PciKind::Endpoint),
            (0, RP2, None, PciKind::Bridge),
            (0, EP_C, Some(RP2), PciKind::Endpoint),
        ],
    )
    .unwrap();
    K { k, d }
}

fn kho(k: &Kernel) -> Kho {
    Arc::clone(k.kho()) as Arc<dyn KhoService + Send + Sync>
}

fn file(k: &Kernel, fd: i32) -> FileRef {
    k.file(fd).unwrap()
}

fn sealed_memfd(k: &Kernel) -> i32 {
    let fd = k.memfd_create("ram").unwrap();
    k.ftruncate(fd, 4 * PAGE).unwrap();
    let f = k.file(fd).unwrap();
    File::as_shmem(&*f)
        .unwrap()
        .add_seals(REQUIRED_SEALS)
        .unwrap();
    fd
}

/// An iommufd mapping a sealed memfd, with one HWPT marked `token`: (memfd, iommufd fd,
/// handle, hwpt id). Nothing preserved.
fn iommufd_setup(k: &K, token: u64) -> (i32, i32, Iommufd, u32) {
    let m = sealed_memfd(k);
    let ifd = iommufd::open(&k.d.iommu, |kind, name, p| k.open_synthetic(kind, name, p)).unwrap();
    let fd = k.file(ifd).unwrap().synthetic::<Iommufd>().unwrap().clone();
    fd.ioas_map(file(k, m), 0, 4 * PAGE).unwrap();
    let h = fd.hwpt_alloc(HW).unwrap();
    fd.hwpt_mark_preserve(h, token).unwrap();
    (m, ifd, fd, h)
}

/// A vfio device file, attached to `attach` if given.
fn vfio(k: &Kernel, bdf: u16, hw: HwUnit, attach: Option<(&Iommufd, u32)>) -> i32 {
    let d = VfioDevice::new(0, bdf, hw);
    if let Some((fd, h)) = attach {
        d.attach(fd, h).unwrap();
    }
    vfio_pci::open(d, |kind, name, p| k.open_synthetic(kind, name, p)).unwrap()
}

fn device(k: &Kernel, fd: i32) -> Arc<luo_core::file::CoreFile> {
    let f = k.file(fd).unwrap();
    assert!(f.synthetic::<VfioDevice>().is_some());
    f
}

fn refs(v: &[(u16, u16)]) -> BTreeMap<PciAddr, u16> {
    v.iter().map(|(b, r)| ((0, *b), *r)).collect()
}

fn pci_calls(k: &K) -> FlbCalls {
    k.d.pci.flb_calls()
}

#[test]
fn order_memfd_then_iommufd_then_vfio() {
    let k = boot(None, CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let (m, ifd, fd, h) = iommufd_setup(&k, 1);
    let unmarked = fd.hwpt_alloc(HW).unwrap();
    let a = vfio(&k, EP_A, HW, Some((&fd, h)));
    // vfio first: no outgoing IOMMU FLB (no iommufd preserved).
    assert_eq!(k.preserve_fd(s, a, 3), Err(Errno::EINVAL));
    // iommufd before its memfd: the memfd is not preserved in the session.
    assert_eq!(k.preserve_fd(s, ifd, 2), Err(Errno::ENOENT));
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, ifd, 2).unwrap();
    // A device on an unmarked HWPT: its domain is not preserved.
    let b = vfio(&k, EP_B, HW, Some((&fd, unmarked)));
    assert_eq!(k.preserve_fd(s, b, 4), Err(Errno::EINVAL));
    // A device on another iommufd that is not preserved: same.
    let (_, _, fd2, h2) = iommufd_setup(&k, 1);
    let c = vfio(&k, EP_C, HW2, Some((&fd2, h2)));
    assert_eq!(k.preserve_fd(s, c, 5), Err(Errno::EINVAL));
    // Every refused vfio preserve rolled the PCI FLB back and left no PCI entry.
    assert_eq!(pci_calls(&k).preserve, pci_calls(&k).unpreserve);
    assert_eq!(k.d.pci.outgoing_data(), None);
    // In order: preserved, and the IOMMU FLB has the device behind its unit.
    k.preserve_fd(s, a, 3).unwrap();
    assert_eq!(
        device(&k, a)
            .synthetic::<VfioDevice>()
            .unwrap()
            .attach(&fd, h),
        Err(Errno::EBUSY),
        "attachment is fixed while preserved"
    );
    let out = iommu::decode(&*kho(&k), k.d.iommu.outgoing_data().unwrap()).unwrap();
    assert_eq!(out.devices.len(), 1);
    assert_eq!(out.devices[0].devid, u32::from(EP_A));
    assert_eq!(out.devices[0].domain_phys, out.domains[0].phys);
    assert_eq!(out.domains[0].ref_count, 2, "the HWPT and the device");
    assert_eq!(k.d.pci.outgoing(), refs(&[(RP1, 1), (SW, 1), (EP_A, 1)]));
}

#[test]
fn pci_refcounts_and_errors() {
    let k = boot(None, CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let s2 = k.create_session(dev, "s2").unwrap();
    // Devices without an IOMMU attachment: PCI only.
    let a = vfio(&k, EP_A, HW, None);
    let b = vfio(&k, EP_B, HW, None);
    let c = vfio(&k, EP_C, HW, None);
    k.preserve_fd(s, a, 1).unwrap();
    k.preserve_fd(s2, b, 1).unwrap();
    k.preserve_fd(s, c, 2).unwrap();
    let want = refs(&[(RP1, 2), (SW, 2), (EP_A, 1), (EP_B, 1), (RP2, 1), (EP_C, 1)]);
    assert_eq!(k.d.pci.outgoing(), want);
    // The same from the FLB's bytes: version 2, the entries in the chain.
    let data = k.d.pci.outgoing_data().unwrap();
    assert_eq!(pci::decode(&*kho(&k), data).unwrap(), want);
    let mut head = [0u8; 16];
    kho(&k)
        .read(luo_abi::PhysAddr::new(data), &mut head)
        .unwrap();
    let word = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().unwrap());
    assert_eq!((word(0), word(4)), (2, 6), "version 2, six entries in use");
    assert_eq!(
        pci_calls(&k).preserve,
        1,
        "one PCI FLB object for three devices"
    );
    // The endpoint twice (another file on the same device).
    let a2 = vfio(&k, EP_A, HW, None);
    assert_eq!(k.preserve_fd(s, a2, 3), Err(Errno::EBUSY));
    // A VF, and a function not on the bus.
    let vf = vfio(&k, VF, HW, None);
    assert_eq!(k.preserve_fd(s, vf, 3), Err(Errno::EINVAL));
    let ghost = vfio(&k, 0x0500, HW, None);
    assert_eq!(k.preserve_fd(s, ghost, 3), Err(Errno::ENODEV));
    // Hot-added after the FLB was preserved: the chain grows for it.
    k.d.pci
        .add_device(0, 0x0018, Some(RP2), PciKind::Endpoint)
        .unwrap();
    let d = vfio(&k, 0x0018, HW, None);
    k.preserve_fd(s, d, 4).unwrap();
    // Unpreserve on session close: B's path goes down by one, its entry is freed.
    k.close(s2).unwrap();
    let mut now = want.clone();
    now.insert((0, RP1), 1);
    now.insert((0, SW), 1);
    now.remove(&(0, EP_B));
    now.insert((0, RP2), 2);
    now.insert((0, 0x0018), 1);
    assert_eq!(k.d.pci.outgoing(), now);
    assert_eq!(pci::decode(&*kho(&k), data).unwrap(), now);
    // B can be preserved again (into the freed entry).
    let s3 = k.create_session(dev, "s3").unwrap();
    k.preserve_fd(s3, b, 1).unwrap();
    assert_eq!(k.d.pci.outgoing()[&(0, EP_B)], 1);
    // After the kexec's device shutdown the PCI core refuses.
    k.close(s3).unwrap();
    k.d.pci.device_shutdown();
    assert_eq!(k.preserve_fd(s, b, 9), Err(Errno::EBUSY));
}

#[test]
fn freeze_refused_with_interrupts_enabled() {
    let k = boot(None, CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "s").unwrap();
    let a = vfio(&k, EP_A, HW, None);
    k.preserve_fd(s, a, 1).unwrap();
    device(&k, a)
        .synthetic::<VfioDevice>()
        .unwrap()
        .set_irqs(true);
    assert_eq!(k.kexec().err(), Some(Errno::EINVAL));
    // The reboot failed; this kernel carries on with the device preserved.
    assert_eq!(k.d.pci.outgoing(), refs(&[(RP1, 1), (SW, 1), (EP_A, 1)]));
    device(&k, a)
        .synthetic::<VfioDevice>()
        .unwrap()
        .set_irqs(false);
    let new = boot(Some(k.kexec().unwrap()), CanFinish::Upstream);
    assert_eq!(
        new.d.pci.get_incoming().unwrap(),
        refs(&[(RP1, 1), (SW, 1), (EP_A, 1)])
    );
}

/// Old kernel: session "vm1" = memfd + iommufd 1 (HWPT token 7) + A on it; session "vm2" =
/// memfd + iommufd 2 (HWPT token 8), B on iommufd 1's HWPT (across sessions), C on iommufd
/// 2's, behind HW2. Returns the new kernel and what the marked HWPTs mapped.
fn vm_across(mode: CanFinish) -> (K, BTreeMap<u64, Vec<(u64, u64)>>) {
    let k = boot(None, mode);
    let dev = k.open_dev().unwrap();
    let s1 = k.create_session(dev, "vm1").unwrap();
    let s2 = k.create_session(dev, "vm2").unwrap();
    let (m1, ifd1, fd1, h1) = iommufd_setup(&k, 7);
    k.preserve_fd(s1, m1, 1).unwrap();
    k.preserve_fd(s1, ifd1, 2).unwrap();
    let a = vfio(&k, EP_A, HW, Some((&fd1, h1)));
    k.preserve_fd(s1, a, 3).unwrap();
    let (m2, ifd2, fd2, h2) = iommufd_setup(&k, 8);
    k.preserve_fd(s2, m2, 1).unwrap();
    k.preserve_fd(s2, ifd2, 2).unwrap();
    let b = vfio(&k, EP_B, HW, Some((&fd1, h1)));
    let c = vfio(&k, EP_C, HW2, Some((&fd2, h2)));
    k.preserve_fd(s2, b, 3).unwrap();
    k.preserve_fd(s2, c, 4).unwrap();
    assert_eq!(
        (k.d.iommu.flb_calls().preserve, pci_calls(&k).preserve),
        (1, 1),
        "each FLB preserved once for all its files, across handlers and sessions"
    );
    let mut ranges = fd1.marked_ranges().unwrap();
    ranges.extend(fd2.marked_ranges().unwrap());
    (boot(Some(k.kexec().unwrap()), mode), ranges)
}

/// Retrieves every file of incoming session `name` (tokens 1..=n) and rebuilds the HWPTs
/// of its iommufd; returns what they map.
fn retrieve_all(k: &Kernel, s: i32, n: u64) -> BTreeMap<u64, Vec<(u64, u64)>> {
    let mut got = BTreeMap::new();
    for t in 1..=n {
        let fd = k.retrieve_fd(s, t).unwrap();
        if let Some(i) = k.file(fd).unwrap().synthetic::<Iommufd>() {
            got.extend(i.restore_all(HW).unwrap());
        }
    }
    got
}

#[test]
fn kexec_retrieve_finish() {
    let (k, ranges) = vm_across(CanFinish::Upstream);
    // From the handed-over bytes: PCI refcounts up to each root port.
    assert_eq!(
        k.d.pci.get_incoming().unwrap(),
        refs(&[(RP1, 2), (SW, 2), (EP_A, 1), (EP_B, 1), (RP2, 1), (EP_C, 1)])
    );
    // IOMMU: two units, HW written once with A and B behind it; two domains.
    let inc = k.d.iommu.get_incoming().unwrap();
    assert_eq!(inc.hws.len(), 2);
    assert_eq!((inc.hws[0].token, inc.hws[0].ref_count), (HW.token, 2));
    assert_eq!((inc.hws[1].token, inc.hws[1].ref_count), (HW2.token, 1));
    // VT-d context tables: bus 2 (A and B, devfn < 0x80) and bus 3 (C).
    assert_eq!(inc.hws[0].context_tables_bitmap[0], 1 << 4);
    assert_eq!(inc.hws[1].context_tables_bitmap[0], 1 << 6);
    assert_eq!(inc.domains.len(), 2);
    assert_eq!(inc.domains[0].ref_count, 3, "HWPT 7, A and B");
    assert_eq!(inc.domains[1].ref_count, 2, "HWPT 8 and C");
    let devs: Vec<_> = inc
        .devices
        .iter()
        .map(|d| (d.devid, d.iommu_phys, d.domain_phys))
        .collect();
    let (d0, d1) = (inc.domains[0].phys, inc.domains[1].phys);
    let (h0, h1) = (inc.hws[0].phys, inc.hws[1].phys);
    assert_eq!(
        devs,
        vec![
            (u32::from(EP_A), h0, d0),
            (u32::from(EP_B), h0, d0),
            (u32::from(EP_C), h1, d1)
        ]
    );

    // A preserved device cannot be opened the normal way; an unpreserved one can.
    assert!(matches!(
        VfioDevice::open(&k.d.pci, 0, EP_A, HW),
        Err(Errno::EBUSY)
    ));
    VfioDevice::open(&k.d.pci, 0, VF, HW).unwrap();
    let dev = k.open_dev().unwrap();
    let s1 = k.retrieve_session(dev, "vm1").unwrap();
    let s2 = k.retrieve_session(dev, "vm2").unwrap();
    let a = k.retrieve_fd(s1, 3).unwrap();
    let a = device(&k, a);
    let a = a.synthetic::<VfioDevice>().unwrap();
    assert!(a.is_retrieved());
    assert_eq!((a.domain, a.bdf), (0, EP_A));
    let got = retrieve_all(&k, s1, 3);
    assert_eq!(got, [(7, ranges[&7].clone())].into());
    k.finish_session(s1).unwrap();
    // vm1 finished: A's path goes down by one; both FLBs stay for vm2's files.
    assert_eq!(
        k.d.pci.get_incoming().unwrap(),
        refs(&[(RP1, 1), (SW, 1), (EP_B, 1), (RP2, 1), (EP_C, 1)])
    );
    assert_eq!((pci_calls(&k).finish, k.d.iommu.flb_calls().finish), (0, 0));
    VfioDevice::open(&k.d.pci, 0, EP_A, HW).unwrap();
    assert!(matches!(
        VfioDevice::open(&k.d.pci, 0, EP_B, HW),
        Err(Errno::EBUSY)
    ));
    // vm2: B never retrieved: upstream's can_finish refuses FINISH.
    k.retrieve_fd(s2, 4).unwrap();
    let fd2 = k.retrieve_fd(s2, 2).unwrap();
    let fd2 = k.file(fd2).unwrap().synthetic::<Iommufd>().unwrap().clone();
    assert_eq!(
        fd2.restore_all(HW2).unwrap(),
        [(8, ranges[&8].clone())].into()
    );
    assert_eq!(k.finish_session(s2), Err(Errno::EBUSY));
    k.retrieve_fd(s2, 3).unwrap();
    k.finish_session(s2).unwrap();
    for calls in [pci_calls(&k), k.d.iommu.flb_calls()] {
        assert_eq!(
            calls,
            FlbCalls {
                retrieve: 1,
                finish: 1,
                ..FlbCalls::default()
            }
        );
    }
    assert_eq!(
        k.d.pci.get_incoming().err(),
        Some(Errno::ENODATA),
        "finished"
    );
    assert_eq!(
        k.stats().kho.incoming_pages,
        0,
        "every handed-over page claimed"
    );
    VfioDevice::open(&k.d.pci, 0, EP_B, HW).unwrap();
    assert_eq!(
        k.d.stats(),
        Stats {
            finished: 3,
            dropped: 0
        }
    );
}

#[test]
fn never_retrieved_device_dropped() {
    let (k, ranges) = vm_across(CanFinish::DropUnretrieved);
    let dev = k.open_dev().unwrap();
    let s1 = k.retrieve_session(dev, "vm1").unwrap();
    let s2 = k.retrieve_session(dev, "vm2").unwrap();
    // Only the iommufds (and what they need) are retrieved; A, B and C never are: their
    // state is dropped at FINISH.
    let mut got = BTreeMap::new();
    for s in [s1, s2] {
        let ifd = k.retrieve_fd(s, 2).unwrap();
        let fd = k.file(ifd).unwrap().synthetic::<Iommufd>().unwrap().clone();
        got.extend(fd.restore_all(HW).unwrap());
    }
    assert_eq!(got, ranges);
    k.finish_session(s1).unwrap();
    k.finish_session(s2).unwrap();
    assert_eq!(
        k.d.stats(),
        Stats {
            finished: 0,
            dropped: 3
        }
    );
    assert_eq!((pci_calls(&k).retrieve, pci_calls(&k).finish), (1, 1));
    assert_eq!(k.d.iommu.flb_calls().finish, 1);
    assert_eq!(k.stats().kho.incoming_pages, 0, "dropped state freed too");
}

#[test]
fn unpreserve_on_close_releases_iommu_and_pci_entries() {
    let k = boot(None, CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let baseline = k.stats().preserved_beyond_root();
    let s1 = k.create_session(dev, "vm1").unwrap();
    let s2 = k.create_session(dev, "vm2").unwrap();
    let (m, ifd, fd, h) = iommufd_setup(&k, 7);
    k.preserve_fd(s1, m, 1).unwrap();
    k.preserve_fd(s1, ifd, 2).unwrap();
    let a = vfio(&k, EP_A, HW, Some((&fd, h)));
    k.preserve_fd(s1, a, 3).unwrap();
    let b = vfio(&k, EP_B, HW, Some((&fd, h)));
    k.preserve_fd(s2, b, 1).unwrap();
    let data = k.d.iommu.outgoing_data().unwrap();
    k.close(s2).unwrap();
    let out = iommu::decode(&*kho(&k), data).unwrap();
    assert_eq!(out.devices.len(), 2, "slots are never reused");
    assert!(out.devices[1].deleted);
    assert_eq!(out.hws[0].ref_count, 1, "B's reference on the unit dropped");
    assert_eq!(out.domains[0].ref_count, 2);
    assert_eq!(k.d.pci.outgoing()[&(0, SW)], 1);
    assert_eq!(pci_calls(&k).unpreserve, 0, "A still holds the PCI FLB");
    // Closing vm1 unpreserves A, the iommufd, the memfd, and both FLBs.
    k.close(s1).unwrap();
    assert_eq!(
        (pci_calls(&k).unpreserve, k.d.iommu.flb_calls().unpreserve),
        (1, 1)
    );
    assert_eq!(k.stats().preserved_beyond_root(), baseline);
}

#[test]
fn flb_get_put_from_eight_threads() {
    let (k, _) = vm_across(CanFinish::Upstream);
    let want = refs(&[(RP1, 2), (SW, 2), (EP_A, 1), (EP_B, 1), (RP2, 1), (EP_C, 1)]);
    std::thread::scope(|t| {
        for _ in 0..8 {
            let (k, want) = (k.clone(), &want);
            t.spawn(move || {
                k.make_current();
                for _ in 0..200 {
                    let inc = k.d.iommu.get_incoming().unwrap();
                    assert_eq!(inc.devices.len(), 3);
                    let p = k.d.pci.get_incoming().unwrap();
                    assert_eq!(&p, want);
                }
            });
        }
    });
    k.make_current();
    // Retrieved exactly once each; the files still hold both FLBs.
    assert_eq!(
        (k.d.iommu.flb_calls(), pci_calls(&k)),
        (
            FlbCalls {
                retrieve: 1,
                ..FlbCalls::default()
            },
            FlbCalls {
                retrieve: 1,
                ..FlbCalls::default()
            }
        )
    );
    let dev = k.open_dev().unwrap();
    for (name, n) in [("vm1", 3), ("vm2", 4)] {
        let s = k.retrieve_session(dev, name).unwrap();
        retrieve_all(&k, s, n);
        k.finish_session(s).unwrap();
    }
    assert_eq!((k.d.iommu.flb_calls().finish, pci_calls(&k).finish), (1, 1));
}

#[test]
fn a_domain_outlives_its_iommufd_while_a_device_uses_it() {
    let k = boot(None, CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s1 = k.create_session(dev, "iommufd1").unwrap();
    let s2 = k.create_session(dev, "iommufd2").unwrap();
    let s3 = k.create_session(dev, "device").unwrap();
    let (m1, ifd1, fd1, h1) = iommufd_setup(&k, 1);
    k.preserve_fd(s1, m1, 1).unwrap();
    k.preserve_fd(s1, ifd1, 2).unwrap();
    let (m2, ifd2, _, _) = iommufd_setup(&k, 2);
    k.preserve_fd(s2, m2, 1).unwrap();
    k.preserve_fd(s2, ifd2, 2).unwrap();
    let b = vfio(&k, EP_B, HW, Some((&fd1, h1)));
    k.preserve_fd(s3, b, 1).unwrap();
    let data = k.d.iommu.outgoing_data().unwrap();
    let flags = |i: usize| {
        let d = &iommu::decode(&*kho(&k), data).unwrap().domains[i];
        (d.ref_count, d.deleted)
    };
    assert_eq!(flags(0), (2, false));
    // iommufd 1 unpreserved: its HWPT's reference goes, B's keeps the domain.
    k.close(s1).unwrap();
    assert_eq!(flags(0), (1, false));
    // B unpreserved: the domain is gone (iommufd 2 keeps the FLB alive).
    k.close(s3).unwrap();
    assert_eq!(flags(0), (0, true));
    assert_eq!(flags(1), (1, false));
    // Across the kexec nothing of it is left behind: once iommufd 2 is finished, every
    // page the old kernel preserved has been claimed.
    let k = boot(Some(k.kexec().unwrap()), CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "iommufd2").unwrap();
    retrieve_all(&k, s, 2);
    k.finish_session(s).unwrap();
    assert_eq!(k.d.iommu.flb_calls().finish, 1);
    assert_eq!(k.stats().kho.incoming_pages, 0);
}

/// Where the old kernel's device state is, to corrupt it: (what, address, length).
fn device_state_bytes(k: &K, ifd_data: u64) -> Vec<(&'static str, u64, u64)> {
    let iommu = k.d.iommu.outgoing_data().unwrap();
    let out = iommu::decode(&*kho(k), iommu).unwrap();
    let mut v = vec![
        ("pci_ser", k.d.pci.outgoing_data().unwrap(), 16),
        ("iommufd_ser", ifd_data, 8 + 24),
        ("iommu_flb_ser", iommu, 24),
    ];
    let page = |p: u64| p & !(PAGE - 1);
    v.push(("hw page", page(out.hws[0].phys), 16 + 112));
    v.push(("domain page", page(out.domains[0].phys), 16 + 37));
    v
}

#[test]
fn corrupt_device_state_gives_errors_never_a_panic() {
    // One live update per corrupted byte (every byte of the PCI data, the iommufd data, the
    // IOMMU FLB's root and the first slot of its unit and domain chains): the new kernel
    // retrieves and finishes what it can; a refusal is an errno, never a panic.
    let mut cases = 0u64;
    let mut refused = 0u64;
    let mut per = BTreeMap::new();
    let plan = {
        let k = boot(None, CanFinish::DropUnretrieved);
        let dev = k.open_dev().unwrap();
        let s = k.create_session(dev, "vm").unwrap();
        let (m, ifd, fd, h) = iommufd_setup(&k, 7);
        k.preserve_fd(s, m, 1).unwrap();
        k.preserve_fd(s, ifd, 2).unwrap();
        let a = vfio(&k, EP_A, HW, Some((&fd, h)));
        k.preserve_fd(s, a, 3).unwrap();
        let data = k.luo().outgoing()[0].file_data(2).unwrap();
        device_state_bytes(&k, data)
            .into_iter()
            .map(|(what, at, len)| (what, at.wrapping_sub(data), len))
            .collect::<Vec<_>>()
    };
    for (what, rel, len) in plan {
        for i in 0..len {
            let k = boot(None, CanFinish::DropUnretrieved);
            let dev = k.open_dev().unwrap();
            let s = k.create_session(dev, "vm").unwrap();
            let (m, ifd, fd, h) = iommufd_setup(&k, 7);
            k.preserve_fd(s, m, 1).unwrap();
            k.preserve_fd(s, ifd, 2).unwrap();
            let a = vfio(&k, EP_A, HW, Some((&fd, h)));
            k.preserve_fd(s, a, 3).unwrap();
            // The same allocation order every time: the same addresses.
            let data = k.luo().outgoing()[0].file_data(2).unwrap();
            let at = data.wrapping_add(rel) + i;
            let mut b = [0u8];
            kho(&k).read(luo_abi::PhysAddr::new(at), &mut b).unwrap();
            kho(&k)
                .write(luo_abi::PhysAddr::new(at), &[b[0] ^ 0xa5])
                .unwrap();
            let k = boot(Some(k.kexec().unwrap()), CanFinish::DropUnretrieved);
            cases += 1;
            let ok = (|| -> Result<(), Errno> {
                let _ = k.d.pci.get_incoming();
                let _ = k.d.iommu.get_incoming();
                let dev = k.open_dev()?;
                let s = k.retrieve_session(dev, "vm")?;
                let _ = k.retrieve_fd(s, 3);
                let ifd = k.retrieve_fd(s, 2)?;
                let fd = k
                    .file(ifd)?
                    .synthetic::<Iommufd>()
                    .cloned()
                    .ok_or(Errno::EINVAL)?;
                fd.restore_all(HW)?;
                k.finish_session(s)
            })();
            if ok.is_err() {
                refused += 1;
                *per.entry(what).or_insert(0u64) += 1;
            }
        }
    }
    assert!(cases > 200, "{cases}");
    assert!(
        per.contains_key("pci_ser") && per.contains_key("iommu_flb_ser"),
        "{per:?}"
    );
    assert!(refused > 0, "some corruptions must be refused");
}

/// The PCI FLB's chain: more devices than one block holds (510 entries of 8 bytes in a 4 KiB
/// block) make a chain of two blocks, read back whole in the new kernel; a chain naming a
/// block the old kernel did not preserve, or data of another version, is refused with
/// `EINVAL` (upstream panics), and no memory outside what was handed over is read.
#[test]
fn pci_chain_spans_blocks_and_bad_chains_are_refused() {
    let per = pci_per_block();
    let many = |corrupt: &dyn Fn(&K, u64)| {
        let k = boot(None, CanFinish::DropUnretrieved);
        // One bus with `per` endpoints under RP2: with RP2 itself, `per + 1` entries.
        for i in 0..per as u16 {
            k.d.pci
                .add_device(1, 0x1000 + i, None, PciKind::Endpoint)
                .unwrap();
        }
        k.d.pci
            .add_device(1, 0x0800, None, PciKind::Endpoint)
            .unwrap();
        let dev = k.open_dev().unwrap();
        let s = k.create_session(dev, "vm").unwrap();
        for i in 0..=per as u16 {
            let bdf = if i == per as u16 { 0x0800 } else { 0x1000 + i };
            let d = VfioDevice::new(1, bdf, HW);
            let fd = vfio_pci::open(d, |kind, name, p| k.open_synthetic(kind, name, p)).unwrap();
            k.preserve_fd(s, fd, u64::from(i) + 1).unwrap();
        }
        let data = k.d.pci.outgoing_data().unwrap();
        assert_eq!(pci::decode(&*kho(&k), data).unwrap().len(), per + 1);
        corrupt(&k, data);
        boot(Some(k.kexec().unwrap()), CanFinish::DropUnretrieved)
    };
    let k = many(&|_, _| {});
    assert_eq!(k.d.pci.get_incoming().unwrap().len(), per + 1);
    let stray = |k: &K| {
        k.kho()
            .violations()
            .iter()
            .any(|v| matches!(v, luo_core::kho::KhoViolation::StrayRead { .. }))
    };
    assert!(!stray(&k), "{:?}", k.kho().violations());
    // The head names a page that was not handed over.
    let k = many(&|k, data| {
        let free = kho(k).alloc_folio(0).unwrap();
        kho(k)
            .write(
                luo_abi::PhysAddr::new(data + 8),
                &free.as_u64().to_ne_bytes(),
            )
            .unwrap();
    });
    assert_eq!(k.d.pci.get_incoming().err(), Some(Errno::EINVAL));
    assert!(!stray(&k), "{:?}", k.kho().violations());
    // Version 1 of "pci" (refcount as an in-use flag) is not this kernel's.
    let k = many(&|k, data| {
        kho(k)
            .write(luo_abi::PhysAddr::new(data), &1u32.to_ne_bytes())
            .unwrap();
    });
    assert_eq!(k.d.pci.get_incoming().err(), Some(Errno::EINVAL));
}

fn pci_per_block() -> usize {
    luo_handlers::kho_block::per_block::<luo_generated::pci::data_v2::pci_dev_ser>()
}

/// vfio-pci-v2's record: `reset_works` and the LUO token of the iommufd file the device is
/// bound to (written at freeze), both back on the retrieved device.
#[test]
fn vfio_record_carries_reset_works_and_the_iommufd_token() {
    let k = boot(None, CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let (m, ifd, _fd, h) = iommufd_setup(&k, 7);
    k.preserve_fd(s, m, 1).unwrap();
    k.preserve_fd(s, ifd, 42).unwrap();
    let d = VfioDevice::new(0, EP_A, HW);
    d.attach_file(file(&k, ifd), h).unwrap();
    assert_eq!(
        d.attach_file(file(&k, m), h),
        Err(Errno::EINVAL),
        "not an iommufd"
    );
    let a = vfio_pci::open(d, |kind, name, p| k.open_synthetic(kind, name, p)).unwrap();
    k.preserve_fd(s, a, 3).unwrap();
    let mut b = VfioDevice::new(0, EP_B, HW);
    b.reset_works = false;
    let b = vfio_pci::open(b, |kind, name, p| k.open_synthetic(kind, name, p)).unwrap();
    k.preserve_fd(s, b, 4).unwrap();
    let k = boot(Some(k.kexec().unwrap()), CanFinish::Upstream);
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "vm").unwrap();
    let a = k.retrieve_fd(s, 3).unwrap();
    let a = device(&k, a);
    let a = a.synthetic::<VfioDevice>().unwrap();
    assert!(a.reset_works);
    assert_eq!(a.incoming_iommufd_token(), 42);
    let b = k.retrieve_fd(s, 4).unwrap();
    let b = device(&k, b);
    let b = b.synthetic::<VfioDevice>().unwrap();
    assert!(!b.reset_works);
    assert_eq!(b.incoming_iommufd_token(), 0, "not bound through a file");
}

/// A `vfio-pci-v1` record (what this tree's `next` wrote before v2: `{domain, bdf}`), written
/// by a v1 handler in the old kernel, is read by the v2 handler's reader through its
/// migration: same device, no function reset assumed, no iommufd token.
#[test]
fn vfio_pci_v1_records_are_read() {
    use luo_abi::file::FileKind;
    use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
    use luo_abi::registry::Registry;
    use luo_derive::liveupdate_handler;
    use luo_generated::vfio_pci::v1::vfio_pci_core_device_ser;
    use luo_handlers::pci::{Pci, PciFlb};

    /// The v1 writer: enters the device in the PCI FLB and writes `{domain, bdf}`.
    #[liveupdate_handler(compatible = "vfio-pci-v1", abi = vfio_pci_core_device_ser, flbs = [PciFlb])]
    struct V1;

    #[liveupdate_handler]
    impl FileHandler for V1 {
        fn can_preserve(&self, file: &dyn luo_abi::file::File) -> bool {
            file.kind() == FileKind::VfioPci
        }
        fn preserve(
            &self,
            cx: &Ctx<'_, Self>,
            file: &dyn luo_abi::file::File,
        ) -> luo_abi::Result<(vfio_pci_core_device_ser, ())> {
            let d = file
                .payload()
                .and_then(|p| p.downcast_ref::<VfioDevice>())
                .ok_or(Errno::EINVAL)?;
            pci::pci_liveupdate_preserve(cx.global::<PciFlb>(), cx.kho(), d.domain, d.bdf)?;
            Ok((
                vfio_pci_core_device_ser {
                    domain: d.domain,
                    bdf: d.bdf,
                },
                (),
            ))
        }
        fn unpreserve(
            &self,
            _: &Ctx<'_, Self>,
            _: &dyn luo_abi::file::File,
            _: vfio_pci_core_device_ser,
            _: (),
        ) {
        }
        fn retrieve(
            &self,
            _: &Ctx<'_, Self>,
            _: vfio_pci_core_device_ser,
        ) -> luo_abi::Result<FileRef> {
            Err(Errno::EOPNOTSUPP)
        }
        fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, vfio_pci_core_device_ser>) {}
    }

    let opts = BootOptions {
        version: KernelVersion::Next,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    };
    let k = Kernel::boot(&opts, None).unwrap();
    k.make_current();
    let p = Pci::new(&k);
    p.add_device(0, RP1, None, PciKind::Bridge).unwrap();
    p.add_device(0, EP_A, Some(RP1), PciKind::Endpoint).unwrap();
    k.register_handler(Registration::new(V1, k.host(), (Arc::clone(p.flb()),)))
        .unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, "vm").unwrap();
    let mut d = VfioDevice::new(0, EP_A, HW);
    d.reset_works = true;
    let a = vfio_pci::open(d, |kind, name, pl| k.open_synthetic(kind, name, pl)).unwrap();
    k.preserve_fd(s, a, 3).unwrap();

    // The new kernel runs the v2 handler (with its v1 reader) and the same bus.
    let new = boot(Some(k.kexec().unwrap()), CanFinish::Upstream);
    let dev = new.open_dev().unwrap();
    let s = new.retrieve_session(dev, "vm").unwrap();
    let a = new.retrieve_fd(s, 3).unwrap();
    let f = device(&new, a);
    let got = f.synthetic::<VfioDevice>().unwrap();
    assert!(got.is_retrieved());
    assert_eq!((got.domain, got.bdf), (0, EP_A));
    assert!(!got.reset_works, "v1 says nothing about resets");
    assert_eq!(got.incoming_iommufd_token(), 0);
    new.finish_session(s).unwrap();
    assert_eq!(new.d.stats().finished, 1);
}
