//! The `vfio-pci-v1` file handler (spec `vfio_pci/v1`, `reference/luo-upstream.md` §8c), on a
//! synthetic VFIO cdev ([`VfioDevice`]), with the PCI FLB ([`crate::pci`]) linked.
//!
//! As upstream, vfio-pci does not link the IOMMU FLB: a device bound to an iommufd and
//! attached to one of its HWPTs reaches the IOMMU state through `iommufd_device_preserve`
//! ([`crate::iommufd::Iommufd::device_preserve`]), which needs the outgoing IOMMU FLB (an
//! iommufd already preserved) and the HWPT's domain preserved (the HWPT marked and its
//! iommufd preserved), else `EINVAL`. With the iommufd's own check (its mappings' memfds
//! preserved in the same session) this enforces the order memfd → iommufd → vfio cdev.
//!
//! * preserve: `iommufd_device_preserve` if attached, then `pci_liveupdate_preserve` (errors
//!   undo the first), then `struct vfio_pci_core_device_ser {domain, bdf}`.
//! * freeze: refused with `EINVAL` while the device's interrupts are enabled.
//! * retrieve: the device must be in the PCI FLB's incoming entries (`ENOENT` otherwise); a
//!   new, unattached device file.
//! * finish: `pci_liveupdate_finish` (refcounts decremented up the path) and the data freed.
//! * opening a preserved device's cdev the normal way after the kexec ([`VfioDevice::open`])
//!   is `EBUSY` until its file is finished.
//!
//! A never-retrieved device: v5 of the series has `can_finish` return `retrieve_status > 0`,
//! so FINISH is `EBUSY` until it is retrieved ([`CanFinish::Upstream`]). With
//! [`CanFinish::DropUnretrieved`] the model instead lets FINISH drop the device's state
//! (its PCI entries are finished like a retrieved device's, counted in
//! [`Stats::dropped`]).
//!
//! # Driving a VM's devices (tests, `luo simulate --scenario vm`)
//!
//! In each kernel, after boot: [`boot_devices`] (iommufd handler + IOMMU FLB, the PCI bus,
//! this handler + PCI FLB). Old kernel: a sealed memfd (`F_SEAL_SEAL | F_SEAL_GROW |
//! F_SEAL_SHRINK`) preserved first; [`crate::iommufd::open`], then on the
//! [`crate::iommufd::Iommufd`] handle `ioas_map(memfd file, iova, len)`, `hwpt_alloc`,
//! `hwpt_mark_preserve(id, token)`, and record `marked_ranges()`; preserve the iommufd; [`open`]
//! a [`VfioDevice`] [`VfioDevice::attach`]ed to the HWPT and preserve it. New kernel: retrieve
//! the memfd, the iommufd (`restore_all(hw)` must give the recorded ranges, read from the very
//! page tables handed over) and the devices ([`VfioDevice::is_retrieved`], same `domain`/`bdf`),
//! then FINISH.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use luo_abi::Errno;
use luo_abi::file::FileKind;
use luo_abi::kho::KhoExt;
use luo_abi::{Phys, PhysAddr};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use luo_generated::vfio_pci::v1::{VFIO_PCI_LUO_FH_COMPATIBLE, vfio_pci_core_device_ser};

use crate::host::{FileOps, StaticHandler, host, kind_of, rc, synthetic_of};
use crate::iommu::{HwUnit, IommuDevice, PerKernel};
use crate::iommufd::Iommufd;
use crate::pci;

/// What FINISH does with a device that was never retrieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CanFinish {
    /// v5: `can_finish` is `retrieve_status > 0`; FINISH is `EBUSY` until it is retrieved.
    #[default]
    Upstream,
    /// The device's state is dropped at FINISH.
    DropUnretrieved,
}

/// What the handler did in one kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Devices finished after a retrieve.
    pub finished: u64,
    /// Devices finished without ever being retrieved (their state dropped).
    pub dropped: u64,
}

#[derive(Default)]
struct St {
    mode: CanFinish,
    stats: Stats,
}

static STATE: PerKernel<St> = PerKernel::new();

/// A synthetic vfio-pci device file (a VFIO cdev): the payload of a [`FileKind::VfioPci`]
/// file.
pub struct VfioDevice {
    /// PCI domain (segment) number.
    pub domain: u32,
    /// Bus << 8 | devfn.
    pub bdf: u16,
    /// The IOMMU unit the device is behind (`None` for a retrieved device until re-probed).
    pub hw: Option<HwUnit>,
    irqs: AtomicBool,
    preserved: AtomicBool,
    retrieved: bool,
    attach: Mutex<Option<(Iommufd, u32)>>,
}

impl VfioDevice {
    /// The device at `domain:bdf`, behind `hw`, interrupts disabled, not bound.
    pub fn new(domain: u32, bdf: u16, hw: HwUnit) -> VfioDevice {
        VfioDevice {
            domain,
            bdf,
            hw: Some(hw),
            irqs: AtomicBool::new(false),
            preserved: AtomicBool::new(false),
            retrieved: false,
            attach: Mutex::new(None),
        }
    }

    /// Opens the device's cdev in the current kernel (the normal path, not LUO's retrieve):
    /// `EBUSY` while the previous kernel's preservation still holds it (it is among the PCI
    /// FLB's incoming entries, until its file is finished). Reading the entries retrieves the
    /// PCI FLB if nothing did yet, as enumeration marks incoming devices upstream.
    pub fn open(domain: u32, bdf: u16, hw: HwUnit) -> Result<VfioDevice, Errno> {
        match pci::get_incoming() {
            Ok(inc) => {
                pci::put_incoming();
                if inc.contains_key(&(domain, bdf)) {
                    return Err(Errno::EBUSY);
                }
            }
            Err(Errno::ENODATA | Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        Ok(VfioDevice::new(domain, bdf, hw))
    }

    fn attached(&self) -> MutexGuard<'_, Option<(Iommufd, u32)>> {
        self.attach.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD` + `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: binds to `iommufd` and
    /// attaches to its HWPT `hwpt_id`. `ENOENT` for an unknown HWPT, `EBUSY` while the
    /// device is preserved, `EINVAL` for a device without an IOMMU unit.
    pub fn attach(&self, iommufd: &Iommufd, hwpt_id: u32) -> Result<(), Errno> {
        if self.preserved.load(Ordering::Acquire) {
            return Err(Errno::EBUSY);
        }
        if self.hw.is_none() {
            return Err(Errno::EINVAL);
        }
        if !iommufd.hwpts().contains_key(&hwpt_id) {
            return Err(Errno::ENOENT);
        }
        *self.attached() = Some((iommufd.clone(), hwpt_id));
        Ok(())
    }

    /// The iommufd and HWPT the device is attached to.
    pub fn attachment(&self) -> Option<(Iommufd, u32)> {
        self.attached().clone()
    }

    /// Enables or disables the device's interrupts (`VFIO_DEVICE_SET_IRQS`).
    pub fn set_irqs(&self, enabled: bool) {
        self.irqs.store(enabled, Ordering::Release);
    }

    /// Whether this device file was retrieved from the previous kernel.
    pub fn is_retrieved(&self) -> bool {
        self.retrieved
    }

    fn iommu_device(&self) -> Option<IommuDevice> {
        self.hw.map(|hw| IommuDevice {
            pci_domain: self.domain,
            devid: self.bdf,
            hw,
        })
    }
}

// ---- the handler -----------------------------------------------------------------------

static OPS: FileOps = FileOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: Some(freeze),
    unfreeze: None,
    retrieve: Some(retrieve),
    can_finish: Some(can_finish),
    finish: Some(finish),
    get_id: None,
    owner: std::ptr::null_mut(),
});

/// The `vfio-pci-v1` handler.
pub static VFIO_PCI: StaticHandler = StaticHandler::new(&OPS, VFIO_PCI_LUO_FH_COMPATIBLE);

fn device_of<'a>(f: *mut CFile) -> Option<&'a VfioDevice> {
    (kind_of(f)? == FileKind::VfioPci)
        .then(|| synthetic_of::<VfioDevice>(f))
        .flatten()
}

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    device_of(f).is_some()
}

unsafe extern "C" fn preserve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc((|| {
        let dev = device_of(a.file).ok_or(Errno::EINVAL)?;
        let attached = dev.attachment();
        let idev = dev.iommu_device();
        if let (Some((fd, hwpt)), Some(idev)) = (&attached, &idev) {
            fd.device_preserve(*hwpt, idev)?;
        }
        let undo_iommu = || {
            if let (Some((fd, _)), Some(idev)) = (&attached, &idev) {
                fd.device_unpreserve(idev);
            }
        };
        if let Err(e) = pci::pci_liveupdate_preserve(dev.domain, dev.bdf) {
            undo_iommu();
            return Err(e);
        }
        let kho = host()?.kho()?;
        let ser = vfio_pci_core_device_ser {
            domain: dev.domain,
            bdf: dev.bdf,
        };
        match kho.alloc_preserve_obj(&ser) {
            Ok(p) => {
                a.serialized_data = p.addr().as_u64();
                dev.preserved.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                pci::pci_liveupdate_unpreserve(dev.domain, dev.bdf);
                undo_iommu();
                Err(e)
            }
        }
    })())
}

unsafe extern "C" fn freeze(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &*a };
    match device_of(a.file) {
        Some(d) if d.irqs.load(Ordering::Acquire) => Errno::EINVAL.to_neg(),
        Some(_) => 0,
        None => Errno::EINVAL.to_neg(),
    }
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &*a };
    let Some(dev) = device_of(a.file) else { return };
    pci::pci_liveupdate_unpreserve(dev.domain, dev.bdf);
    if let (Some((fd, _)), Some(idev)) = (dev.attachment(), dev.iommu_device()) {
        fd.device_unpreserve(&idev);
    }
    if let Ok(kho) = host().and_then(|h| h.kho()) {
        let _ = kho.unpreserve_free(PhysAddr::new(a.serialized_data));
    }
    dev.preserved.store(false, Ordering::Release);
}

fn read_ser(data: u64) -> Result<vfio_pci_core_device_ser, Errno> {
    host()?.kho()?.read_obj(Phys::new(PhysAddr::new(data)))
}

unsafe extern "C" fn retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let ser = read_ser(a.serialized_data)?;
        let inc = pci::get_incoming()?;
        pci::put_incoming();
        if !inc.contains_key(&(ser.domain, ser.bdf)) {
            return Err(Errno::ENOENT);
        }
        let dev = VfioDevice {
            hw: None,
            retrieved: true,
            ..VfioDevice::new(ser.domain, ser.bdf, HwUnit { token: 0 })
        };
        let h = host()?;
        let f = h.open_synthetic(FileKind::VfioPci, "vfio-pci", Box::new(dev))?;
        a.file = h.file_to_c(f)?;
        Ok(())
    })())
}

unsafe extern "C" fn can_finish(a: *mut liveupdate_file_op_args) -> bool {
    // SAFETY: as above.
    let a = unsafe { &*a };
    match STATE.with(|s, _| s.mode) {
        Ok(CanFinish::DropUnretrieved) => a.retrieve_status >= 0,
        _ => a.retrieve_status > 0,
    }
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &*a };
    let Ok(ser) = read_ser(a.serialized_data) else {
        return;
    };
    let _ = pci::pci_liveupdate_finish(ser.domain, ser.bdf);
    if let Ok(kho) = host().and_then(|h| h.kho()) {
        let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
    }
    let _ = STATE.with(|s, _| {
        if a.retrieve_status > 0 {
            s.stats.finished += 1;
        } else {
            s.stats.dropped += 1;
        }
    });
}

/// Registers the `vfio-pci-v1` handler in the current kernel and links the PCI FLB to it.
/// Once per boot, after [`crate::iommufd::register`] and the bus's [`pci::add_device`]s.
pub fn register(mode: CanFinish) -> Result<(), Errno> {
    STATE.with(|s, _| {
        *s = St {
            mode,
            ..St::default()
        }
    })?;
    let h = host()?;
    // SAFETY: a `'static`, immutable handler.
    unsafe { h.register_file_handler(VFIO_PCI.as_ptr()) }?;
    pci::register_flb(VFIO_PCI.as_ptr())
}

/// Registers everything a VM's devices need in the current kernel, in order: the iommufd
/// handler with the IOMMU FLB, the PCI bus `bus` (`(domain, bdf, parent bridge, kind)`,
/// parents first) and this handler with the PCI FLB. Once per boot, after the memfd handler.
pub fn boot_devices(
    mode: CanFinish,
    bus: &[(u32, u16, Option<u16>, pci::PciKind)],
) -> Result<(), Errno> {
    crate::iommufd::register()?;
    pci::reset()?;
    for (domain, bdf, parent, kind) in bus {
        pci::add_device(*domain, *bdf, *parent, *kind)?;
    }
    register(mode)
}

/// The handler's finish counts in the current kernel.
pub fn stats() -> Result<Stats, Errno> {
    STATE.with(|s, _| s.stats)
}

/// Opens a vfio-pci device file for `dev` through `open` (e.g.
/// `|kind, name, payload| kernel.open_synthetic(kind, name, payload)`).
pub fn open<T>(
    dev: VfioDevice,
    open: impl FnOnce(FileKind, &str, Box<dyn std::any::Any + Send + Sync>) -> Result<T, Errno>,
) -> Result<T, Errno> {
    open(FileKind::VfioPci, "vfio-pci", Box::new(dev))
}
