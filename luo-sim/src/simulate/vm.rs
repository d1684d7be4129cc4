// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo simulate --scenario vm`: one virtual machine's files across a live update.
//!
//! Stage 1 (kernel `next`, the only one whose specs have these handlers) registers the
//! HugeTLB state (subsystem or FLB, `--hugetlb-form`), KVM, guest_memfd, iommufd + IOMMU FLB
//! and vfio-pci + PCI FLB, and builds a VM:
//!
//! * guest RAM: a memfd of `--size` bytes with a seeded pattern, sealed
//!   (`F_SEAL_SEAL | F_SEAL_GROW | F_SEAL_SHRINK`) and mapped twice in the iommufd's IOAS;
//! * a HugeTLB memfd of two 2 MiB pages (order 9) from a pool of eight, every byte written;
//! * a KVM VM (`KVM_X86_SW_PROTECTED_VM`), a 64-page guest_memfd of it with three pages in
//!   four written (the fourth left a hole) and a HugeTLB-backed guest_memfd of two 2 MiB pages;
//! * an iommufd with two HWPTs, one marked for preservation;
//! * two vfio-pci devices behind a switch (root port 00:01.0, switch 01:00.0, endpoints
//!   02:00.0 and 02:01.0; another root port's endpoint 03:00.0 stays out), attached to the
//!   marked HWPT, interrupts on as in a running VM.
//!
//! It preserves them in dependency order (memfd, huge-memfd, kvm, guest_memfd, iommufd,
//! vfio-pci), shows the freeze refused while a device's interrupts are on (`EINVAL`, as
//! upstream; the kernel carries on), turns them off, and reboots into stage 2, which registers
//! the same handlers, retrieves the guest_memfd first (the core retrieves its VM for it),
//! then the rest, and checks every file against what stage 1 made: bytes against the
//! pattern, folios and holes, seals, the VM's type and identity, the HWPT rebuilt by token
//! with the same ranges read from the handed-over page table, the IOMMU FLB's devices, the
//! PCI FLB's refcounts up to the root port, the HugeTLB pools; then FINISH and nothing left
//! preserved. Stage 2 knows what to expect from the plan alone (seed, size, form).

use std::collections::BTreeMap;
use std::sync::Arc;

use luo_abi::Errno;
use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::registry::Registry;
use luo_generated::kvm::GUEST_MEMFD_LUO_FLAG_MMAP;
use luo_handlers::guest_memfd::{GMEM_FILE_NAME, GuestMemfd, gmem_of};
use luo_handlers::hugetlb::{Form, HugeMemfd, Hugetlb, Pool};
use luo_handlers::iommu::HwUnit;
use luo_handlers::iommufd::{self, Iommufd, REQUIRED_SEALS};
use luo_handlers::kvm::{KVM_X86_SW_PROTECTED_VM, VM_FILE_NAME, Vm, vm_of};
use luo_handlers::pages::Pages;
use luo_handlers::pci::{PciAddr, PciKind};
use luo_handlers::vfio_pci::{self, CanFinish, Devices, VfioDevice};

use super::{Plan, Reporter, SimError, fill, hugetlb_form_name, op, timed};
use crate::size::Human;
use luo_core::file::CoreFile;
use luo_core::{Kernel, KernelVersion};

/// Width of the phase column: the longest name is `retrieve guest_memfd`.
pub(super) const PHASE_WIDTH: usize = 20;

const PAGE: u64 = 4096;
/// The session holding the VM.
const SESSION: &str = "sim-vm";
/// 2 MiB huge pages, x86's.
const ORDER: u32 = 9;
/// Huge pages in the pool (`nr_hugepages`).
const POOL: u64 = 8;
/// Huge pages of the HugeTLB memfd and of the HugeTLB guest_memfd.
const HUGE_PAGES: u64 = 2;
/// Pages of the plain guest_memfd; every fourth one is left a hole.
const GMEM_PAGES: u64 = 64;
/// Tokens of the files in the session.
const RAM: u64 = 1;
const HUGE: u64 = 2;
const VM: u64 = 3;
const GMEM: u64 = 4;
const GMEM_HUGE: u64 = 5;
const IOMMUFD: u64 = 6;
const DEV_A: u64 = 7;
const DEV_B: u64 = 8;
/// The marked HWPT's token (`IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE`).
const HWPT_TOKEN: u64 = 0x4877_7074;
/// IOVA of the guest RAM's second IOAS mapping (an alias above 4 GiB).
const ALIAS_IOVA: u64 = 1 << 32;
/// The VT-d unit the devices sit behind.
const HW: HwUnit = HwUnit { token: 0xfed9_0000 };
/// The PCI bus: root port → switch → two endpoints; another root port → an endpoint that
/// stays out of the live update.
const RP: u16 = 0x0008;
const SW: u16 = 0x0100;
const EP_A: u16 = 0x0200;
const EP_B: u16 = 0x0208;
const RP2: u16 = 0x0010;
const EP_C: u16 = 0x0300;
const BUS: [(u32, u16, Option<u16>, PciKind); 6] = [
    (0, RP, None, PciKind::Bridge),
    (0, SW, Some(RP), PciKind::Bridge),
    (0, EP_A, Some(SW), PciKind::Endpoint),
    (0, EP_B, Some(SW), PciKind::Endpoint),
    (0, RP2, None, PciKind::Bridge),
    (0, EP_C, Some(RP2), PciKind::Endpoint),
];
/// The devices preserved, with their tokens.
const DEVICES: [(u64, u16); 2] = [(DEV_A, EP_A), (DEV_B, EP_B)];

/// What stage 2 checked, in the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VmReport {
    /// How the HugeTLB pools crossed: `subsystem` or `flb`.
    pub hugetlb_form: &'static str,
    /// Bytes of guest RAM (memfd) checked.
    pub memfd_bytes: u64,
    /// Bytes of the HugeTLB memfd checked.
    pub huge_memfd_bytes: u64,
    /// Bytes of both guest_memfds checked (holes included).
    pub guest_memfd_bytes: u64,
    /// The retrieved VM's type.
    pub vm_type: u64,
    /// The HWPTs rebuilt by token and what their page tables map: token -> (iova, length).
    pub hwpts: BTreeMap<u64, Vec<(u64, u64)>>,
    /// The vfio-pci devices retrieved (`domain:bus:dev.fn`).
    pub devices: Vec<String>,
    /// The PCI FLB's refcounts as handed over, by function.
    pub pci_refcounts: BTreeMap<String, u16>,
    /// Pages in the pool of 2 MiB pages after the retrieves.
    pub hugetlb_pages: u64,
    /// Free pages in it.
    pub hugetlb_free: u64,
}

impl VmReport {
    /// The report for people, after the summary line.
    pub(super) fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let hwpts: Vec<String> = self
            .hwpts
            .iter()
            .map(|(token, maps)| {
                let maps: Vec<String> = maps
                    .iter()
                    .map(|(iova, len)| format!("{iova:#x}+{}", Human(*len)))
                    .collect();
                format!("token {token:#x}: {}", maps.join(", "))
            })
            .collect();
        let refs: Vec<String> = self
            .pci_refcounts
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        writeln!(
            out,
            "  guest RAM {} (memfd), huge-memfd {}, guest_memfds {} checked; VM type {}",
            Human(self.memfd_bytes),
            Human(self.huge_memfd_bytes),
            Human(self.guest_memfd_bytes),
            self.vm_type
        )?;
        writeln!(out, "  HWPTs rebuilt: {}", hwpts.join("; "))?;
        writeln!(
            out,
            "  vfio-pci devices: {}; PCI refcounts: {}",
            self.devices.join(", "),
            refs.join(", ")
        )?;
        writeln!(
            out,
            "  HugeTLB ({}): {} pages, {} free",
            self.hugetlb_form, self.hugetlb_pages, self.hugetlb_free
        )
    }
}

/// What the vm scenario cannot run: another kernel than `next`, several hops, or a guest RAM
/// size that is not a whole number of pages.
pub(super) fn check(p: &Plan) -> Result<(), SimError> {
    let others: Vec<&str> = p
        .kernels
        .iter()
        .filter(|k| **k != KernelVersion::Next)
        .map(|k| k.name())
        .collect();
    if !others.is_empty() || p.kernels.is_empty() {
        return Err(SimError::Usage(format!(
            "the vm scenario plays kernel next on both sides: its handlers (huge-memfd, kvm, \
             guest_memfd, iommufd, vfio-pci) are written by next only (spec/kernels/next.toml); \
             got {}",
            if others.is_empty() {
                "no kernel".to_string()
            } else {
                others.join(", ")
            }
        )));
    }
    if p.hops != 1 {
        return Err(SimError::Usage(format!(
            "the vm scenario does one live update (--hops 1), not {}",
            p.hops
        )));
    }
    if p.size == 0 || !p.size.is_multiple_of(PAGE) {
        return Err(SimError::Usage(format!(
            "the vm scenario's guest RAM (--size) must be a nonzero multiple of {PAGE} bytes, \
             not {}",
            p.size
        )));
    }
    Ok(())
}

/// `domain:bus:dev.fn`.
fn bdf(b: u16) -> String {
    format!("0000:{:02x}:{:02x}.{}", b >> 8, (b >> 3) & 0x1f, b & 7)
}

fn check_that(ok: bool, what: impl FnOnce() -> String) -> Result<(), SimError> {
    if ok {
        Ok(())
    } else {
        Err(SimError::Check(what()))
    }
}

/// Whether page `i` of the plain guest_memfd is written (the rest are holes).
fn gmem_written(i: u64) -> bool {
    i % 4 != 3
}

/// The bytes file `token` holds at `off..off + buf.len()`: the pattern, or zeroes in the
/// plain guest_memfd's holes.
fn expected(seed: u64, token: u64, off: u64, buf: &mut [u8]) {
    fill(seed, 0, token as u32, off, buf);
    if token == GMEM {
        for (i, b) in buf.iter_mut().enumerate() {
            if !gmem_written((off + i as u64) / PAGE) {
                *b = 0;
            }
        }
    }
}

/// Writes the pattern of file `token` over `len` bytes through `write(off, data)`.
fn write_pattern(
    seed: u64,
    token: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), Errno>,
) -> Result<(), SimError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill(seed, 0, token as u32, off, &mut buf[..n]);
        op(
            || format!("write file {token} at {off}"),
            write(off, &buf[..n]),
        )?;
        off += n as u64;
    }
    Ok(())
}

/// Reads `len` bytes of file `what` (token `token`) through `read(off, buf)` and checks every
/// one against [`expected`]. Returns the bytes checked.
fn verify_bytes(
    seed: u64,
    what: &str,
    token: u64,
    len: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), Errno>,
) -> Result<u64, SimError> {
    let (mut buf, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        op(|| format!("read {what} at {off}"), read(off, &mut buf[..n]))?;
        expected(seed, token, off, &mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(SimError::Check(format!(
                "{what}: byte {} is {:#04x}, expected {:#04x}",
                off + i as u64,
                buf[i],
                want[i]
            )));
        }
        off += n as u64;
    }
    Ok(len)
}

/// The IOAS mappings of the guest RAM: token of the marked HWPT -> what its page table maps.
fn expected_ranges(size: u64) -> BTreeMap<u64, Vec<(u64, u64)>> {
    [(HWPT_TOKEN, vec![(0, size), (ALIAS_IOVA, size)])].into()
}

/// The PCI FLB's refcounts with both endpoints preserved: each bridge counts the preserved
/// devices at or below it.
fn expected_pci() -> BTreeMap<PciAddr, u16> {
    [((0, RP), 2), ((0, SW), 2), ((0, EP_A), 1), ((0, EP_B), 1)].into()
}

/// Runs `f` on the payload of the synthetic file at `fd`, a `T` (else [`SimError::Check`]).
fn with_payload<T: 'static, R>(
    k: &Kernel,
    fd: i32,
    what: &str,
    f: impl FnOnce(&T) -> Result<R, SimError>,
) -> Result<R, SimError> {
    let file = op(|| format!("{what}: fd {fd}"), k.file(fd))?;
    let payload = file
        .synthetic::<T>()
        .ok_or_else(|| SimError::Check(format!("{what}: fd {fd} is a {:?} file", file.kind())))?;
    f(payload)
}

fn pool(h: &Hugetlb) -> Pool {
    h.state().pools.get(&ORDER).copied().unwrap_or_default()
}

/// Registers what both kernels need beyond the memfd handler (registered at boot): HugeTLB
/// in `form` with huge-memfd, kvm and guest_memfd; iommufd with the IOMMU FLB, the PCI bus
/// and vfio-pci with the PCI FLB. Returns the kernel's HugeTLB pools and device handlers.
fn register(k: &Kernel, form: Form) -> Result<(Hugetlb, Devices), SimError> {
    let h = op(
        || "register HugeTLB, kvm, guest_memfd".into(),
        luo_handlers::vm::register(k, form),
    )?;
    let devs = op(
        || "register iommufd, PCI bus, vfio-pci".into(),
        vfio_pci::boot_devices(k, CanFinish::Upstream, &BUS),
    )?;
    Ok((h, devs))
}

/// The VM's files in stage 1, before anything is preserved.
struct Made {
    ram: i32,
    huge: i32,
    vm: i32,
    gmem: i32,
    gmem_huge: i32,
    iommufd: i32,
    devices: Vec<(u64, u16, i32)>,
}

fn make(k: &Kernel, h: &Hugetlb, p: &Plan, devs: &Devices) -> Result<Made, SimError> {
    let seed = p.seed;
    let open = |kind, name: &str, payload: Box<dyn std::any::Any + Send + Sync>| {
        op(
            || format!("open {name}"),
            k.open_synthetic(kind, name, payload),
        )
    };
    // Guest RAM: sized, filled, then sealed so it can be mapped for DMA and preserved.
    let ram = op(|| "memfd_create".into(), k.memfd_create("guest-ram"))?;
    op(|| "ftruncate guest RAM".into(), k.ftruncate(ram, p.size))?;
    write_pattern(seed, RAM, p.size, |off, d| k.pwrite(ram, off, d))?;
    let ram_file: FileRef = op(|| "guest RAM".into(), k.file(ram))?;
    let shmem = ram_file
        .as_shmem()
        .ok_or_else(|| SimError::Check("guest RAM is not shmem".into()))?;
    op(|| "F_ADD_SEALS".into(), shmem.add_seals(REQUIRED_SEALS))?;

    op(|| "nr_hugepages".into(), h.configure(ORDER, POOL))?;
    let m = op(
        || "memfd_create(MFD_HUGETLB)".into(),
        HugeMemfd::new(h, ORDER, HUGE_PAGES),
    )?;
    let len = m.pages().size();
    write_pattern(seed, HUGE, len, |off, d| m.pages().write(off, d))?;
    let huge = open(FileKind::HugeMemfd, "memfd:guest-huge", Box::new(m))?;

    let vm = open(
        FileKind::KvmVm,
        VM_FILE_NAME,
        Box::new(op(
            || "KVM_CREATE_VM".into(),
            Vm::new(KVM_X86_SW_PROTECTED_VM),
        )?),
    )?;
    let vm_file: FileRef = op(|| "VM".into(), k.file(vm))?;
    let g = op(
        || "KVM_CREATE_GUEST_MEMFD".into(),
        GuestMemfd::new(
            k.host(),
            vm_file.clone(),
            GMEM_PAGES * PAGE,
            GUEST_MEMFD_LUO_FLAG_MMAP,
        ),
    )?;
    let mut page = vec![0u8; PAGE as usize];
    for i in (0..GMEM_PAGES).filter(|&i| gmem_written(i)) {
        fill(seed, 0, GMEM as u32, i * PAGE, &mut page);
        op(
            || format!("write guest_memfd page {i}"),
            g.pages().write(i * PAGE, &page),
        )?;
    }
    let gmem = open(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(g))?;
    let gh = op(
        || "KVM_CREATE_GUEST_MEMFD (HugeTLB)".into(),
        GuestMemfd::new_hugetlb(h, vm_file, ORDER, HUGE_PAGES, GUEST_MEMFD_LUO_FLAG_MMAP),
    )?;
    let len = gh.pages().size();
    write_pattern(seed, GMEM_HUGE, len, |off, d| gh.pages().write(off, d))?;
    let gmem_huge = open(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(gh))?;

    // The iommufd: the RAM at IOVA 0 and again above 4 GiB; a HWPT marked, one not.
    let ifd = op(
        || "open /dev/iommu".into(),
        iommufd::open(&devs.iommu, |kind, name, pl| {
            k.open_synthetic(kind, name, pl)
        }),
    )?;
    let fd = with_payload(k, ifd, "iommufd", |fd: &Iommufd| Ok(fd.clone()))?;
    op(
        || "IOMMU_IOAS_MAP_FILE".into(),
        fd.ioas_map(ram_file.clone(), 0, p.size),
    )?;
    op(
        || "IOMMU_IOAS_MAP_FILE (alias)".into(),
        fd.ioas_map(ram_file, ALIAS_IOVA, p.size),
    )?;
    let hwpt = op(|| "IOMMU_HWPT_ALLOC".into(), fd.hwpt_alloc(HW))?;
    op(|| "IOMMU_HWPT_ALLOC (unmarked)".into(), fd.hwpt_alloc(HW))?;
    op(
        || "IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE".into(),
        fd.hwpt_mark_preserve(hwpt, HWPT_TOKEN),
    )?;
    let marked = op(|| "HWPT ranges".into(), fd.marked_ranges())?;
    check_that(marked == expected_ranges(p.size), || {
        format!("before the live update the marked HWPT maps {marked:?}")
    })?;

    // The devices: bound to the iommufd, attached to the marked HWPT, interrupts on.
    let mut devices = Vec::new();
    for (token, b) in DEVICES {
        let d = VfioDevice::new(0, b, HW);
        op(
            || format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT {}", bdf(b)),
            d.attach(&fd, hwpt),
        )?;
        d.set_irqs(true);
        let dfd = op(
            || format!("open vfio cdev {}", bdf(b)),
            vfio_pci::open(d, |kind, name, pl| k.open_synthetic(kind, name, pl)),
        )?;
        devices.push((token, b, dfd));
    }
    Ok(Made {
        ram,
        huge,
        vm,
        gmem,
        gmem_huge,
        iommufd: ifd,
        devices,
    })
}

fn set_irqs(k: &Kernel, m: &Made, on: bool) -> Result<(), SimError> {
    for &(_, b, fd) in &m.devices {
        with_payload(k, fd, &bdf(b), |d: &VfioDevice| {
            d.set_irqs(on);
            Ok(())
        })?;
    }
    Ok(())
}

/// Stage 1 of the vm scenario on `k` (booted): register, build the VM, preserve its files
/// type by type, show the freeze refused with interrupts on, turn them off.
pub(super) fn populate(k: &Kernel, p: &Plan, rep: &mut Reporter<'_>) -> Result<(), SimError> {
    let _current = k.enter();
    let ((h, devs), t) = timed(|| register(k, p.hugetlb_form))?;
    rep.phase(
        "register",
        t,
        &format!(
            "memfd, huge-memfd, kvm, guest_memfd, iommufd (IOMMU FLB), vfio-pci (PCI FLB); \
             HugeTLB as {}; PCI bus of {} functions",
            hugetlb_form_name(p.hugetlb_form),
            BUS.len()
        ),
    )?;
    let (m, t) = timed(|| make(k, &h, p, &devs))?;
    rep.phase(
        "create",
        t,
        &format!(
            "guest RAM {} sealed; {POOL} x 2 MiB pool; huge-memfd {HUGE_PAGES} x 2 MiB; \
             VM; guest_memfd {GMEM_PAGES} pages ({} written) + {HUGE_PAGES} x 2 MiB HugeTLB; \
             iommufd: 2 IOAS mappings, 2 HWPTs (1 marked); {} vfio-pci devices, irqs on",
            Human(p.size),
            (0..GMEM_PAGES).filter(|&i| gmem_written(i)).count(),
            m.devices.len()
        ),
    )?;
    let dev = op(|| "open /dev/liveupdate".into(), k.open_dev())?;
    let s = op(
        || format!("create session {SESSION}"),
        k.create_session(dev, SESSION),
    )?;
    let files: [(&str, Vec<(u64, i32)>); 6] = [
        ("memfd", vec![(RAM, m.ram)]),
        ("huge-memfd", vec![(HUGE, m.huge)]),
        ("kvm", vec![(VM, m.vm)]),
        (
            "guest_memfd",
            vec![(GMEM, m.gmem), (GMEM_HUGE, m.gmem_huge)],
        ),
        ("iommufd", vec![(IOMMUFD, m.iommufd)]),
        (
            "vfio-pci",
            m.devices.iter().map(|&(t, _, fd)| (t, fd)).collect(),
        ),
    ];
    for (what, fds) in files {
        let before = k.stats().kho.preserved_pages;
        let ((), t) = timed(|| {
            for &(token, fd) in &fds {
                op(
                    || format!("preserve {what} (token {token})"),
                    k.preserve_fd(s, fd, token),
                )?;
            }
            Ok(())
        })?;
        let after = k.stats().kho.preserved_pages;
        let tokens: Vec<String> = fds.iter().map(|(t, _)| t.to_string()).collect();
        rep.phase(
            &format!("preserve {what}"),
            t,
            &format!(
                "token {}; {after} pages preserved (+{})",
                tokens.join(", "),
                after.saturating_sub(before)
            ),
        )?;
    }
    // A running VM's devices have their interrupts on: the freeze must refuse.
    let (refused, t) = timed(|| Ok(k.kexec()))?;
    match refused {
        Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(SimError::Check(format!(
                "freeze with interrupts on: {e}, expected EINVAL"
            )));
        }
        Ok(_) => {
            return Err(SimError::Check(
                "the freeze accepted a vfio-pci device with interrupts on".into(),
            ));
        }
    }
    rep.phase(
        "freeze (irqs on)",
        t,
        "refused: EINVAL, as upstream (vfio-pci freeze); the kernel carries on",
    )?;
    let ((), t) = timed(|| set_irqs(k, &m, false))?;
    rep.phase(
        "irqs off",
        t,
        &format!("VFIO_DEVICE_SET_IRQS on {} devices", m.devices.len()),
    )?;
    // The session and files stay open: the reboot serializes them.
    op(|| "close /dev/liveupdate".into(), k.close(dev))
}

/// The retrieved files of stage 2.
struct Got {
    s: i32,
    fds: BTreeMap<u64, i32>,
    hwpts: BTreeMap<u64, Vec<(u64, u64)>>,
}

fn retrieve(
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
fn retrieved(k: &Kernel, token: u64) -> bool {
    k.luo()
        .incoming()
        .iter()
        .find(|s| s.name() == SESSION.as_bytes())
        .is_some_and(|s| k.luo().file_of(s, token).is_some())
}

fn fd_of(got: &Got, token: u64) -> Result<i32, SimError> {
    got.fds
        .get(&token)
        .copied()
        .ok_or_else(|| SimError::Check(format!("file {token} was not retrieved")))
}

fn file(k: &Kernel, got: &Got, token: u64) -> Result<Arc<CoreFile>, SimError> {
    let fd = fd_of(got, token)?;
    op(|| format!("file {token}"), k.file(fd))
}

fn gmem_check(
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
pub(super) fn retrieve_and_verify(
    k: &Kernel,
    p: &Plan,
    rep: &mut Reporter<'_>,
) -> Result<super::Report, SimError> {
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
    Ok(super::Report {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::pattern_byte;

    #[test]
    fn holes_read_as_zero_and_pattern_elsewhere() {
        let mut b = vec![0u8; (4 * PAGE) as usize];
        expected(7, GMEM, 0, &mut b);
        assert!(b[(3 * PAGE) as usize..].iter().all(|&x| x == 0));
        let written = &b[..(3 * PAGE) as usize];
        assert!(written.iter().any(|&x| x != 0));
        assert_eq!(b[5], pattern_byte(7, 0, GMEM as u32, 5));
    }

    #[test]
    fn bdf_names() {
        assert_eq!(bdf(EP_B), "0000:02:01.0");
        assert_eq!(bdf(RP), "0000:00:01.0");
    }
}
