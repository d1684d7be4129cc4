// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Stage 2 of the VM scenario: every file of the VM retrieved and checked against what stage 1
//! wrote (memory contents, HugeTLB pools, IOMMU mappings, PCI refcounts, device state).

use std::collections::BTreeMap;
use std::sync::Arc;

use luo_abi::Errno;
use luo_abi::file::File;
use luo_core::Kernel;
use luo_core::file::CoreFile;
use luo_generated::kvm::GUEST_MEMFD_LUO_FLAG_MMAP;
use luo_handlers::guest_memfd::gmem_of;
use luo_handlers::hugetlb::{Form, HugeMemfd, Pool};
use luo_handlers::iommufd::{Iommufd, REQUIRED_SEALS};
use luo_handlers::kvm::{KVM_X86_SW_PROTECTED_VM, vm_of};
use luo_handlers::pages::Pages;
use luo_handlers::vfio_pci::VfioDevice;

use super::*;
use super::{Plan, Reporter, SimError, hugetlb_form_name, op, timed};

/// The retrieved files of stage 2.
pub(super) struct Got {
    pub(super) s: i32,
    pub(super) fds: BTreeMap<u64, i32>,
    pub(super) hwpts: BTreeMap<u64, Vec<(u64, u64)>>,
}

pub(super) fn retrieve(
    k: &Kernel,
    got: &mut Got,
    what: &str,
    tokens: &[u64],
    rep: &mut Reporter<'_>,
    detail: impl FnOnce(&Kernel, &Got) -> Result<String, SimError>,
) -> Result<(), SimError> {
    let ((), t) = timed(|| {
        for &token in tokens {
            let fd = op(
                || format!("retrieve {what} (token {token})"),
                k.retrieve_fd(got.s, token),
            )?;
            got.fds.insert(token, fd);
        }
        Ok(())
    })?;
    let d = detail(k, got)?;
    Ok(rep.phase(&format!("retrieve {what}"), t, &d)?)
}

/// Whether the incoming session has a file retrieved under `token`.
pub(super) fn retrieved(k: &Kernel, token: u64) -> bool {
    k.luo()
        .incoming()
        .iter()
        .find(|s| s.name() == SESSION.as_bytes())
        .is_some_and(|s| k.luo().file_of(s, token).is_some())
}

pub(super) fn fd_of(got: &Got, token: u64) -> Result<i32, SimError> {
    got.fds
        .get(&token)
        .copied()
        .ok_or_else(|| SimError::Check(format!("file {token} was not retrieved")))
}

pub(super) fn file(k: &Kernel, got: &Got, token: u64) -> Result<Arc<CoreFile>, SimError> {
    let fd = fd_of(got, token)?;
    op(|| format!("file {token}"), k.file(fd))
}

pub(super) fn gmem_check(
    k: &Kernel,
    got: &Got,
    token: u64,
    seed: u64,
    vm: &Arc<CoreFile>,
) -> Result<u64, SimError> {
    let f = file(k, got, token)?;
    let g = gmem_of(&*f)
        .ok_or_else(|| SimError::Check(format!("token {token} is not a guest_memfd")))?;
    check_that(g.flags() & GUEST_MEMFD_LUO_FLAG_MMAP != 0, || {
        format!("guest_memfd {token}: flags {:#x}", g.flags())
    })?;
    let vm_ptr = Arc::as_ptr(vm) as *const u8;
    check_that(
        std::ptr::eq(Arc::as_ptr(g.vm()) as *const u8, vm_ptr),
        || format!("guest_memfd {token}: its VM is not the retrieved VM file"),
    )?;
    let pages: &Pages = g.pages();
    let want_folios = if token == GMEM {
        (0..GMEM_PAGES).filter(|&i| gmem_written(i)).count() as u64
    } else {
        HUGE_PAGES
    };
    check_that(pages.folios().len() as u64 == want_folios, || {
        format!(
            "guest_memfd {token}: {} folios, expected {want_folios}",
            pages.folios().len()
        )
    })?;
    check_that(!pages.is_frozen(), || {
        format!("guest_memfd {token}: still frozen after retrieve")
    })?;
    verify_bytes(
        seed,
        &format!("guest_memfd {token}"),
        token,
        pages.size(),
        |off, b| pages.read(off, b),
    )
}

/// Stage 2 of the vm scenario on `k` (booted from the handover): register, retrieve, verify
/// every file, FINISH, and check that nothing is left preserved.
pub(in crate::simulate) fn retrieve_and_verify(
    k: &Kernel,
    p: &Plan,
    rep: &mut Reporter<'_>,
) -> Result<crate::simulate::Report, SimError> {
    let _current = k.enter();
    let seed = p.seed;
    let ((h, devs), t) = timed(|| register(k, p.hugetlb_form))?;
    // Only the preserved pages cross (`hugetlb_ser`); nr_hugepages of this kernel counts them.
    let crossed = pool(&h);
    let want = Pool {
        total: 2 * HUGE_PAGES,
        free: 0,
        held_incoming: 2 * HUGE_PAGES,
    };
    check_that(crossed == want, || {
        format!("HugeTLB pool at registration {crossed:?}, expected {want:?}")
    })?;
    op(|| "nr_hugepages".into(), h.configure(ORDER, POOL))?;
    let booted = pool(&h);
    let want = Pool {
        total: POOL,
        free: POOL - 2 * HUGE_PAGES,
        ..crossed
    };
    check_that(booted == want, || {
        format!("HugeTLB pool after nr_hugepages {booted:?}, expected {want:?}")
    })?;
    rep.phase(
        "register",
        t,
        &format!(
            "HugeTLB as {}: {} preserved pages counted in before any retrieve; with \
             nr_hugepages {} pages, {} free, {} held for incoming files",
            hugetlb_form_name(p.hugetlb_form),
            crossed.held_incoming,
            booted.total,
            booted.free,
            booted.held_incoming
        ),
    )?;

    let ((dev, s), t) = timed(|| {
        let dev = op(|| "open /dev/liveupdate".into(), k.open_dev())?;
        let s = op(
            || format!("retrieve session {SESSION}"),
            k.retrieve_session(dev, SESSION),
        )?;
        Ok((dev, s))
    })?;
    let inc = k.luo().incoming();
    let tokens = inc
        .iter()
        .find(|x| x.name() == SESSION.as_bytes())
        .map(|x| x.tokens())
        .unwrap_or_default();
    rep.phase(
        "retrieve session",
        t,
        &format!("{SESSION}: {} files (tokens {tokens:?})", tokens.len()),
    )?;
    drop(inc);
    let mut got = Got {
        s,
        fds: BTreeMap::new(),
        hwpts: BTreeMap::new(),
    };

    // The guest_memfds before their VM: the core retrieves the VM for the first one.
    check_that(!retrieved(k, VM), || {
        "the VM was retrieved too early".into()
    })?;
    retrieve(
        k,
        &mut got,
        "guest_memfd",
        &[GMEM, GMEM_HUGE],
        rep,
        |k, _| {
            check_that(retrieved(k, VM), || {
                "the core did not retrieve the guest_memfd's VM".into()
            })?;
            Ok(format!(
                "tokens {GMEM}, {GMEM_HUGE}; their VM (token {VM}) retrieved first by the core"
            ))
        },
    )?;
    retrieve(k, &mut got, "kvm", &[VM], rep, |_, _| {
        Ok(format!("token {VM}: the file the core retrieved"))
    })?;
    // The devices before their iommufd: the PCI FLB is all a device's retrieve needs.
    let dev_tokens: Vec<u64> = DEVICES.iter().map(|(t, _)| *t).collect();
    retrieve(k, &mut got, "vfio-pci", &dev_tokens, rep, |_, _| {
        Ok(format!(
            "{}: new device files, unattached",
            DEVICES.map(|(_, b)| bdf(b)).join(", ")
        ))
    })?;
    retrieve(k, &mut got, "iommufd", &[IOMMUFD], rep, |_, _| {
        Ok(format!("token {IOMMUFD}: a new iommufd, no HWPT yet"))
    })?;
    // The HWPT restore ioctl is part of getting the iommufd back: timed on its own line.
    let ((), t) = timed(|| {
        let fd = with_payload(k, fd_of(&got, IOMMUFD)?, "iommufd", |fd: &Iommufd| {
            Ok(fd.clone())
        })?;
        got.hwpts = op(|| "restore HWPTs".into(), fd.restore_all(HW))?;
        Ok(())
    })?;
    rep.phase(
        "restore hwpts",
        t,
        &format!(
            "{} HWPT(s) rebuilt by token from the IOMMU FLB",
            got.hwpts.len()
        ),
    )?;
    retrieve(k, &mut got, "huge-memfd", &[HUGE], rep, |_, _| {
        Ok(format!("token {HUGE}"))
    })?;
    retrieve(k, &mut got, "memfd", &[RAM], rep, |_, _| {
        Ok(format!("token {RAM}"))
    })?;

    // ---- verify, file type by file type ----
    let (memfd_bytes, t) = timed(|| {
        let f = file(k, &got, RAM)?;
        let sh = f
            .as_shmem()
            .ok_or_else(|| SimError::Check("guest RAM is not a memfd".into()))?;
        check_that(sh.size() == p.size, || {
            format!("guest RAM size {}, expected {}", sh.size(), p.size)
        })?;
        check_that(sh.seals() & REQUIRED_SEALS == REQUIRED_SEALS, || {
            format!(
                "guest RAM seals {:#x}, expected {REQUIRED_SEALS:#x}",
                sh.seals()
            )
        })?;
        let fd = fd_of(&got, RAM)?;
        verify_bytes(seed, "guest RAM", RAM, p.size, |off, b| {
            let n = k.pread(fd, off, b)?;
            if n == b.len() {
                Ok(())
            } else {
                Err(Errno::EIO)
            }
        })
    })?;
    rep.phase(
        "verify memfd",
        t,
        &format!("{memfd_bytes} bytes, every one checked; seals F_SEAL_SEAL|GROW|SHRINK kept"),
    )?;

    let (huge_bytes, t) = timed(|| {
        with_payload(k, fd_of(&got, HUGE)?, "huge-memfd", |m: &HugeMemfd| {
            let pages = m.pages();
            check_that(
                pages.order() == ORDER && pages.folios().len() as u64 == HUGE_PAGES,
                || {
                    format!(
                        "huge-memfd: {} folios of order {}",
                        pages.folios().len(),
                        pages.order()
                    )
                },
            )?;
            verify_bytes(seed, "huge-memfd", HUGE, pages.size(), |off, b| {
                pages.read(off, b)
            })
        })
    })?;
    rep.phase(
        "verify huge-memfd",
        t,
        &format!("{huge_bytes} bytes in {HUGE_PAGES} order-{ORDER} folios, every one checked"),
    )?;

    let (vm_type, t) = timed(|| {
        let f = file(k, &got, VM)?;
        let v = vm_of(&*f).ok_or_else(|| SimError::Check("token 3 is not a VM".into()))?;
        check_that(
            v.vm_type() == KVM_X86_SW_PROTECTED_VM && v.is_restored(),
            || format!("VM: type {}, restored {}", v.vm_type(), v.is_restored()),
        )?;
        Ok(v.vm_type())
    })?;
    rep.phase(
        "verify kvm",
        t,
        &format!("a new VM of type {vm_type} (KVM_X86_SW_PROTECTED_VM)"),
    )?;

    let (gmem_bytes, t) = timed(|| {
        let vm = file(k, &got, VM)?;
        Ok(gmem_check(k, &got, GMEM, seed, &vm)? + gmem_check(k, &got, GMEM_HUGE, seed, &vm)?)
    })?;
    rep.phase(
        "verify guest_memfd",
        t,
        &format!(
            "{gmem_bytes} bytes (holes still holes); both name the retrieved VM file (token {VM})"
        ),
    )?;

    let (devices_in_flb, t) = timed(|| {
        check_that(got.hwpts == expected_ranges(p.size), || {
            format!(
                "HWPTs rebuilt: {:?}, expected {:?}",
                got.hwpts,
                expected_ranges(p.size)
            )
        })?;
        let inc = op(|| "IOMMU FLB".into(), devs.iommu.get_incoming())?;
        let devids: Vec<u32> = inc.devices.iter().map(|d| d.devid).collect();
        check_that(
            inc.domains.len() == 1
                && inc.domains[0].ref_count == 3
                && devids == [u32::from(EP_A), u32::from(EP_B)]
                && inc
                    .devices
                    .iter()
                    .all(|d| d.domain_phys == inc.domains[0].phys),
            || {
                format!(
                    "IOMMU FLB: domains {:?}, devices {:?}",
                    inc.domains, inc.devices
                )
            },
        )?;
        Ok(devids.len())
    })?;
    rep.phase(
        "verify iommufd",
        t,
        &format!(
            "HWPT {HWPT_TOKEN:#x} maps [(0, {0}), ({ALIAS_IOVA:#x}, {0})] as before, read from \
             the handed-over page table; unmarked HWPT gone; IOMMU FLB: 1 domain, {devices_in_flb} \
             devices on it",
            p.size
        ),
    )?;

    let (pci_refs, t) = timed(|| {
        for (token, b) in DEVICES {
            with_payload(k, fd_of(&got, token)?, &bdf(b), |d: &VfioDevice| {
                check_that(d.is_retrieved() && (d.domain, d.bdf) == (0, b), || {
                    format!(
                        "vfio-pci {}: retrieved {}, {:04x}:{}",
                        bdf(b),
                        d.is_retrieved(),
                        d.domain,
                        bdf(d.bdf)
                    )
                })
            })?;
            // Still held by the previous kernel's preservation until FINISH.
            check_that(
                matches!(VfioDevice::open(&devs.pci, 0, b, HW), Err(Errno::EBUSY)),
                || format!("{} could be opened before FINISH", bdf(b)),
            )?;
        }
        let refs = op(|| "PCI FLB".into(), devs.pci.get_incoming())?;
        check_that(refs == expected_pci(), || {
            format!("PCI refcounts {refs:?}, expected {:?}", expected_pci())
        })?;
        Ok(refs)
    })?;
    let pci_refcounts: BTreeMap<String, u16> =
        pci_refs.iter().map(|((_, b), r)| (bdf(*b), *r)).collect();
    rep.phase(
        "verify vfio-pci",
        t,
        &format!(
            "same domain/bdf; PCI refcounts {}; busy until FINISH",
            pci_refcounts
                .iter()
                .map(|(b, r)| format!("{b}={r}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )?;

    let (after, t) = timed(|| {
        let now = pool(&h);
        let want = Pool {
            held_incoming: 0,
            ..booted
        };
        check_that(now == want, || {
            format!("HugeTLB pool after the retrieves {now:?}, expected {want:?}")
        })?;
        Ok(now)
    })?;
    rep.phase(
        "verify hugetlb",
        t,
        &format!(
            "{} pages, {} free, {} held: the retrieved files took theirs",
            after.total, after.free, after.held_incoming
        ),
    )?;

    // ---- finish ----
    let ((), t) = timed(|| {
        op(|| format!("finish session {SESSION}"), k.finish_session(s))?;
        for (_, fd) in std::mem::take(&mut got.fds) {
            op(|| "close".into(), k.close(fd))?;
        }
        op(|| "close session".into(), k.close(s))?;
        op(|| "close /dev/liveupdate".into(), k.close(dev))?;
        Ok(())
    })?;
    let st = k.stats();
    let left = st.preserved_beyond_root() + st.kho.incoming_pages;
    let vfio = devs.stats();
    let hs = h.state();
    let iommu_finished = devs.iommu.flb_calls().finish;
    let pci_finished = devs.pci.flb_calls().finish;
    let hugetlb_finished = match p.hugetlb_form {
        Form::Subsystem => hs.sub_finished,
        Form::Flb => hs.flb_finished,
    };
    rep.phase(
        "finish",
        t,
        &format!(
            "{left} preserved pages left; {} devices finished; IOMMU, PCI, HugeTLB state \
             finished {iommu_finished}, {pci_finished}, {hugetlb_finished} time(s)",
            vfio.finished
        ),
    )?;
    if left != 0 {
        return Err(SimError::Leak(left));
    }
    check_that(
        vfio.finished == DEVICES.len() as u64
            && vfio.dropped == 0
            && (iommu_finished, pci_finished, hugetlb_finished) == (1, 1, 1),
        || {
            format!(
                "after FINISH: vfio {vfio:?}, FLBs finished IOMMU {iommu_finished} PCI \
                 {pci_finished} HugeTLB {hugetlb_finished}"
            )
        },
    )?;
    check_that(VfioDevice::open(&devs.pci, 0, EP_A, HW).is_ok(), || {
        format!("{} still busy after FINISH", bdf(EP_A))
    })?;
    let verified = memfd_bytes + huge_bytes + gmem_bytes;
    Ok(crate::simulate::Report {
        liveupdate_num: k.liveupdate_num(),
        sessions: 1,
        files: tokens.len() as u32,
        verified_bytes: verified,
        preserved_pages_left: left,
        vm: Some(VmReport {
            hugetlb_form: hugetlb_form_name(p.hugetlb_form),
            memfd_bytes,
            huge_memfd_bytes: huge_bytes,
            guest_memfd_bytes: gmem_bytes,
            vm_type,
            hwpts: got.hwpts,
            devices: DEVICES.map(|(_, b)| bdf(b)).to_vec(),
            pci_refcounts,
            hugetlb_pages: after.total,
            hugetlb_free: after.free,
        }),
    })
}
