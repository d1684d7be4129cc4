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

use luo_abi::Errno;
use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::registry::Registry;
use luo_generated::kvm::GUEST_MEMFD_LUO_FLAG_MMAP;
use luo_handlers::guest_memfd::{GMEM_FILE_NAME, GuestMemfd};
use luo_handlers::hugetlb::{Form, HugeMemfd, Hugetlb, Pool};
use luo_handlers::iommu::HwUnit;
use luo_handlers::iommufd::{self, Iommufd, REQUIRED_SEALS};
use luo_handlers::kvm::{KVM_X86_SW_PROTECTED_VM, VM_FILE_NAME, Vm};
use luo_handlers::pci::{PciAddr, PciKind};
use luo_handlers::vfio_pci::{self, CanFinish, Devices, VfioDevice};

use super::{Plan, Reporter, SimError, fill, hugetlb_form_name, op, timed};
use crate::size::Human;
use luo_core::{Kernel, KernelVersion};

mod verify;

pub(super) use verify::retrieve_and_verify;

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
pub(crate) fn register(k: &Kernel, form: Form) -> Result<(Hugetlb, Devices), SimError> {
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
