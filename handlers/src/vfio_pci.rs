// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `vfio-pci-v2` file handler (spec `vfio_pci/v2`, as posted upstream), on a
//! synthetic VFIO cdev ([`VfioDevice`]), with the PCI FLB ([`crate::pci`]) linked. It also
//! reads `vfio-pci-v1` records (what this tree's `next` wrote before): a v1 device has no
//! `reset_works` (read as 0, no function reset) and no iommufd token.
//!
//! As upstream, vfio-pci does not link the IOMMU FLB: a device bound to an iommufd and
//! attached to one of its HWPTs reaches the IOMMU state through `iommufd_device_preserve`
//! ([`crate::iommufd::Iommufd::device_preserve`]), which needs the outgoing IOMMU FLB (an
//! iommufd already preserved) and the HWPT's domain preserved (the HWPT marked and its
//! iommufd preserved), else `EINVAL`. With the iommufd's own check (its mappings' memfds
//! preserved in the same session) this enforces the order memfd → iommufd → vfio cdev.
//!
//! * preserve: `iommufd_device_preserve` if attached, then `pci_liveupdate_preserve` (errors
//!   undo the first), then `struct vfio_pci_core_device_ser {domain, bdf, reset_works,
//!   iommufd_ser}`.
//! * freeze: refused with `EINVAL` while the device's interrupts are enabled; records the
//!   LUO token of the iommufd file the device is bound to ([`VfioDevice::attach_file`]),
//!   which must be preserved in the same session (`liveupdate_get_token_outgoing`; the
//!   handler `depends_on` `iommufd-v1`), `EOVERFLOW` for a token wider than the record's u32.
//! * retrieve: the device must be in the PCI FLB's incoming entries (`ENOENT` otherwise); a
//!   new, unattached device file.
//! * finish: `pci_liveupdate_finish` (refcounts decremented up the path), for the retrieved
//!   device's `domain`/`bdf` or, never retrieved, the record's; the runtime frees the record.
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
//! this handler + PCI FLB, all written with the macros and registered through
//! [`luo_abi::registry::Registry`]), which returns the kernel's [`Devices`]. Old kernel: a sealed memfd (`F_SEAL_SEAL | F_SEAL_GROW |
//! F_SEAL_SHRINK`) preserved first; [`crate::iommufd::open`] on `Devices::iommu`, then on the
//! [`crate::iommufd::Iommufd`] handle `ioas_map(memfd file, iova, len)`, `hwpt_alloc`,
//! `hwpt_mark_preserve(id, token)`, and record `marked_ranges()`; preserve the iommufd; [`open`]
//! a [`VfioDevice`] [`VfioDevice::attach`]ed to the HWPT and preserve it. New kernel: retrieve
//! the memfd, the iommufd (`restore_all(hw)` must give the recorded ranges, read from the very
//! page tables handed over) and the devices ([`VfioDevice::is_retrieved`], same `domain`/`bdf`),
//! then FINISH.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::Errno;
use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish, Migrate, Registration, RetrieveStatus};
use luo_abi::registry::Registry;
use luo_derive::liveupdate_handler;
use luo_generated::vfio_pci::v1;
use luo_generated::vfio_pci::v2::{
    VFIO_PCI_LUO_FH_COMPATIBLE, vfio_iommufd_ser, vfio_pci_core_device_ser,
};

use crate::iommu::{HwUnit, Iommu, IommuDevice, lock};
use crate::iommufd::Iommufd;
use crate::pci::{self, Pci, PciFlb};

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

/// A synthetic vfio-pci device file (a VFIO cdev): the payload of a [`FileKind::VfioPci`]
/// file.
pub struct VfioDevice {
    /// PCI domain (segment) number.
    pub domain: u32,
    /// Bus << 8 | devfn.
    pub bdf: u16,
    /// The IOMMU unit the device is behind (`None` for a retrieved device until re-probed).
    pub hw: Option<HwUnit>,
    /// Whether a function reset works on the device (`vdev->reset_works`).
    pub reset_works: bool,
    irqs: AtomicBool,
    preserved: AtomicBool,
    retrieved: bool,
    attach: Mutex<Option<(Iommufd, u32)>>,
    /// The iommufd's file, when bound through it: its token goes into the record.
    iommufd_file: Mutex<Option<FileRef>>,
    /// For a retrieved device: the iommufd token its record named (0: none).
    incoming_iommufd_token: u32,
}

impl VfioDevice {
    /// The device at `domain:bdf`, behind `hw`, interrupts disabled, not bound.
    pub fn new(domain: u32, bdf: u16, hw: HwUnit) -> VfioDevice {
        VfioDevice {
            domain,
            bdf,
            hw: Some(hw),
            reset_works: true,
            irqs: AtomicBool::new(false),
            preserved: AtomicBool::new(false),
            retrieved: false,
            attach: Mutex::new(None),
            iommufd_file: Mutex::new(None),
            incoming_iommufd_token: 0,
        }
    }

    /// Opens the device's cdev in the kernel of `pci` (the normal path, not LUO's retrieve):
    /// `EBUSY` while the previous kernel's preservation still holds it (it is among the PCI
    /// FLB's incoming entries, until its file is finished). Reading the entries retrieves the
    /// PCI FLB if nothing did yet, as enumeration marks incoming devices upstream.
    pub fn open(pci: &Pci, domain: u32, bdf: u16, hw: HwUnit) -> Result<VfioDevice, Errno> {
        match pci.get_incoming() {
            Ok(inc) => {
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
        lock(&self.attach)
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

    /// [`VfioDevice::attach`] to the iommufd of `file` (a [`FileKind::Iommufd`] file), whose
    /// LUO token the record then carries. `EINVAL` for another kind of file.
    pub fn attach_file(&self, file: FileRef, hwpt_id: u32) -> Result<(), Errno> {
        let fd = (file.kind() == FileKind::Iommufd)
            .then(|| file.payload()?.downcast_ref::<Iommufd>().cloned())
            .flatten()
            .ok_or(Errno::EINVAL)?;
        self.attach(&fd, hwpt_id)?;
        *lock(&self.iommufd_file) = Some(file);
        Ok(())
    }

    /// For a retrieved device: the token of the iommufd its record named (0 when none).
    pub fn incoming_iommufd_token(&self) -> u32 {
        self.incoming_iommufd_token
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

/// The `vfio-pci-v2` handler, linking the PCI FLB; `mode` says what FINISH does with a device
/// never retrieved, `stats` counts the finishes.
#[liveupdate_handler(
    compatible = "vfio-pci-v2",
    abi = luo_generated::vfio_pci::v2::vfio_pci_core_device_ser,
    flbs = [PciFlb],
    reads = ["vfio-pci-v1"],
    depends_on = ["iommufd-v1"],
)]
pub struct VfioPci {
    mode: CanFinish,
    stats: Arc<Mutex<Stats>>,
}

const _: () = assert!(luo_abi::abi::str_eq(
    <VfioPci as luo_abi::handler::HandlerAbi>::COMPATIBLE,
    VFIO_PCI_LUO_FH_COMPATIBLE
));

/// A `vfio-pci-v1` record: the device without `reset_works` (0: the new kernel does not
/// count on a function reset) and without an iommufd token.
impl Migrate<v1::vfio_pci_core_device_ser> for VfioPci {
    fn migrate(
        &self,
        old: v1::vfio_pci_core_device_ser,
    ) -> luo_abi::Result<vfio_pci_core_device_ser> {
        Ok(vfio_pci_core_device_ser {
            domain: old.domain,
            bdf: old.bdf,
            reset_works: 0,
            iommufd_ser: vfio_iommufd_ser { token: 0 },
        })
    }
}

fn device_of(f: &dyn File) -> Option<&VfioDevice> {
    (f.kind() == FileKind::VfioPci)
        .then(|| f.payload()?.downcast_ref::<VfioDevice>())
        .flatten()
}

#[liveupdate_handler]
impl FileHandler for VfioPci {
    fn can_preserve(&self, file: &dyn File) -> bool {
        device_of(file).is_some()
    }

    fn preserve(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
    ) -> luo_abi::Result<(vfio_pci_core_device_ser, ())> {
        let dev = device_of(file).ok_or(Errno::EINVAL)?;
        let attached = dev.attachment();
        let idev = dev.iommu_device();
        if let (Some((fd, hwpt)), Some(idev)) = (&attached, &idev) {
            fd.device_preserve(*hwpt, idev)?;
        }
        if let Err(e) =
            pci::pci_liveupdate_preserve(cx.global::<PciFlb>(), cx.kho(), dev.domain, dev.bdf)
        {
            if let (Some((fd, _)), Some(idev)) = (&attached, &idev) {
                fd.device_unpreserve(idev);
            }
            return Err(e);
        }
        // If the runtime cannot write the record it calls `unpreserve`, which undoes both.
        dev.preserved.store(true, Ordering::Release);
        Ok((
            vfio_pci_core_device_ser {
                domain: dev.domain,
                bdf: dev.bdf,
                reset_works: u8::from(dev.reset_works),
                iommufd_ser: vfio_iommufd_ser { token: 0 },
            },
            (),
        ))
    }

    fn freeze(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        ser: &mut vfio_pci_core_device_ser,
        _: &mut (),
    ) -> luo_abi::Result {
        let d = match device_of(file) {
            Some(d) if !d.irqs.load(Ordering::Acquire) => d,
            _ => return Err(Errno::EINVAL),
        };
        // Tokens are final at freeze; the iommufd must be preserved in this session.
        let iommufd = lock(&d.iommufd_file).clone();
        if let Some(fd) = iommufd {
            let token = cx.session().get_token_outgoing(&*fd)?;
            ser.iommufd_ser.token = u32::try_from(token).map_err(|_| Errno::EOVERFLOW)?;
        }
        Ok(())
    }

    fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, _: vfio_pci_core_device_ser, _: ()) {
        let Some(dev) = device_of(file) else { return };
        pci::pci_liveupdate_unpreserve(cx.global::<PciFlb>(), cx.kho(), dev.domain, dev.bdf);
        if let (Some((fd, _)), Some(idev)) = (dev.attachment(), dev.iommu_device()) {
            fd.device_unpreserve(&idev);
        }
        dev.preserved.store(false, Ordering::Release);
    }

    fn retrieve(
        &self,
        cx: &Ctx<'_, Self>,
        ser: vfio_pci_core_device_ser,
    ) -> luo_abi::Result<FileRef> {
        let present = {
            let inc = cx.global::<PciFlb>().get_incoming()?;
            pci::incoming_has(&inc, ser.domain, ser.bdf)
        };
        if !present {
            return Err(Errno::ENOENT);
        }
        let dev = VfioDevice {
            hw: None,
            retrieved: true,
            reset_works: ser.reset_works != 0,
            incoming_iommufd_token: ser.iommufd_ser.token,
            ..VfioDevice::new(ser.domain, ser.bdf, HwUnit { token: 0 })
        };
        cx.open_synthetic(FileKind::VfioPci, "vfio-pci", Box::new(dev))
    }

    fn can_finish(&self, _: &Ctx<'_, Self>, _: Option<&dyn File>, status: RetrieveStatus) -> bool {
        // v5: `retrieve_status > 0`; dropping the unretrieved: `retrieve_status >= 0`.
        matches!(
            (self.mode, status),
            (_, RetrieveStatus::Retrieved)
                | (CanFinish::DropUnretrieved, RetrieveStatus::NotRetrieved)
        )
    }

    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, vfio_pci_core_device_ser>) {
        let flb = cx.global::<PciFlb>();
        match how {
            Finish::Retrieved(f) => {
                if let Some(d) = device_of(f) {
                    let _ = pci::pci_liveupdate_finish(flb, d.domain, d.bdf);
                }
                lock(&self.stats).finished += 1;
            }
            Finish::NotRetrieved(ser) => {
                let _ = pci::pci_liveupdate_finish(flb, ser.domain, ser.bdf);
                lock(&self.stats).dropped += 1;
            }
            // The record was released at the failed retrieve: nothing names the device.
            Finish::Failed(_) => lock(&self.stats).dropped += 1,
        }
    }
}

/// What a kernel's device handlers are: the IOMMU core (iommufd handler + IOMMU FLB), the
/// PCI core (bus + PCI FLB) and the vfio-pci handler's counts. A handle: clones are the same.
#[derive(Clone)]
pub struct Devices {
    /// The IOMMU core.
    pub iommu: Iommu,
    /// The PCI core.
    pub pci: Pci,
    stats: Arc<Mutex<Stats>>,
}

impl Devices {
    /// The vfio-pci handler's finish counts in this kernel.
    pub fn stats(&self) -> Stats {
        *lock(&self.stats)
    }
}

/// Registers the `vfio-pci-v2` handler (and its `vfio-pci-v1` reader) in `k` with `pci`'s FLB linked to it (upstream:
/// `pci_liveupdate_register_flb`); returns its finish counts. Once per boot, after
/// [`crate::iommufd::register`].
pub fn register(k: &impl Registry, mode: CanFinish, pci: &Pci) -> Result<Arc<Mutex<Stats>>, Errno> {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let handler = VfioPci {
        mode,
        stats: Arc::clone(&stats),
    };
    k.register_handler(Registration::new(
        handler,
        k.host(),
        (Arc::clone(pci.flb()),),
    ))?;
    Ok(stats)
}

/// Registers everything a VM's devices need in `k`, in order: the iommufd handler with the
/// IOMMU FLB, the PCI bus `bus` (`(domain, bdf, parent bridge, kind)`, parents first) and
/// this handler with the PCI FLB. Once per boot, after the memfd handler.
pub fn boot_devices(
    k: &impl Registry,
    mode: CanFinish,
    bus: &[(u32, u16, Option<u16>, pci::PciKind)],
) -> Result<Devices, Errno> {
    let iommu = crate::iommufd::register(k)?;
    let pci = Pci::new(k);
    for (domain, bdf, parent, kind) in bus {
        pci.add_device(*domain, *bdf, *parent, *kind)?;
    }
    let stats = register(k, mode, &pci)?;
    Ok(Devices { iommu, pci, stats })
}

/// Opens a vfio-pci device file for `dev` through `open` (e.g.
/// `|kind, name, payload| kernel.open_synthetic(kind, name, payload)`).
pub fn open<T>(
    dev: VfioDevice,
    open: impl FnOnce(FileKind, &str, Box<dyn std::any::Any + Send + Sync>) -> Result<T, Errno>,
) -> Result<T, Errno> {
    open(FileKind::VfioPci, "vfio-pci", Box::new(dev))
}
