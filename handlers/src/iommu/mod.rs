// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The IOMMU core's live update state: the FLB `"iommu-liveupdate-v1"` (spec `iommu/v1`,
//! as posted upstream), linked by the `iommufd-v1` handler ([`crate::iommufd`]).
//!
//! The FLB's data is a `struct iommu_flb_ser` naming the first page of three chains of
//! page-sized arrays: hardware units (`iommu_hw_ser`), domains (`iommu_domain_ser`, the roots
//! of I/O page tables) and devices (`iommu_device_ser`). As upstream, slots are appended and
//! never reused, a full page chains to a new one (`iommu_array_hdr_ser.next_array_phys`), a
//! new object starts with `ref_count` 1, a hardware unit is written once and every further
//! device behind it bumps its `ref_count`, and undoing a preservation sets
//! `deleted` in the slot's header. Every write goes to KHO-preserved pages, and the new
//! kernel reads the chains back from those pages ([`Incoming`]).
//!
//! Upstream's `iommu_domain_ser.restored_domain` is a kernel pointer; the spec models it as
//! the reserved `reserved_restored_domain` (written zero) and the new kernel keeps its
//! restored domains in the FLB's incoming object instead ([`Iommu::restore_domain`]).
//!
//! The model's hardware: a domain's I/O page table is one page (the top-level table) listing
//! the mapped IOVA ranges (see [`domain_map`]); a VT-d unit's root-entry page is allocated
//! when the unit is first preserved. What crosses the kexec are those very pages, preserved by
//! [`iommu_preserve_domain`] / [`iommu_preserve_device`] and restored by the FLB's retrieve.
//!
//! The FLB is written with `#[liveupdate_flb]` ([`IommuFlb`]); a kernel's IOMMU core is its
//! cell, reached through an [`Iommu`] handle (the iommufd handler, its files and tests hold
//! one). The FLB's data names the heads of the chains, which never move; the chains
//! themselves are rewritten after the preserve, through the outgoing object.

mod domain;
mod incoming;
mod outgoing;

pub use domain::{DOMAIN_MAX_RANGES, Domain, domain_map, domain_ranges};
pub use incoming::{Incoming, IncomingDevice, IncomingDomain, IncomingHw, decode};
pub use outgoing::{
    iommu_preserve_device, iommu_preserve_domain, iommu_unpreserve_device, iommu_unpreserve_domain,
};

use domain::alloc_domain;
use incoming::read_incoming;
use outgoing::{Out, update_hdr};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::sync::StdBackend;
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_derive::liveupdate_flb;
use luo_generated::iommu::iommu_domain_ser;
use luo_generated::iommu::v1::iommu_flb_ser;

/// A kernel's KHO as a shared handle (what tests get from a kernel).
pub type Kho = Arc<dyn KhoService + Send + Sync>;

const PAGE: u64 = PAGE_SIZE as u64;

/// Longest chain the new kernel follows (a loop or a runaway chain is `EINVAL`).
const MAX_CHAIN_PAGES: usize = 4096;

/// Locks `m`, recovering from a panic in another holder (the data stays consistent: every
/// update is one assignment under the lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often each FLB callback ran in one kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlbCalls {
    /// `preserve` calls (first dependent file preserved).
    pub preserve: u64,
    /// `unpreserve` calls (last dependent file unpreserved).
    pub unpreserve: u64,
    /// `retrieve` calls (first `get_incoming`, or the last finish).
    pub retrieve: u64,
    /// `finish` calls (last dependent file finished).
    pub finish: u64,
}

/// An IOMMU hardware unit (a VT-d DRHD in the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwUnit {
    /// Identifies the unit across the kexec: VT-d's register base.
    pub token: u64,
}

/// A device behind an IOMMU, as the IOMMU core names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IommuDevice {
    /// PCI domain (segment) number.
    pub pci_domain: u32,
    /// PCI bus << 8 | devfn.
    pub devid: u16,
    /// The hardware unit the device is behind.
    pub hw: HwUnit,
}

// ---- the FLB ---------------------------------------------------------------------------

/// The FLB `"iommu-liveupdate-v1"` of one kernel: its callback counts and the ids of its
/// domains. The IOMMU core of the model lives in its outgoing and incoming objects.
#[liveupdate_flb(compatible = "iommu-liveupdate-v1", abi = iommu_flb_ser, lock = StdBackend)]
pub struct IommuFlb {
    calls: Mutex<FlbCalls>,
    /// The next domain id (`iommu_domain` identity, also the VT-d domain id).
    next_domain: AtomicU64,
}

impl Default for IommuFlb {
    fn default() -> Self {
        IommuFlb {
            calls: Mutex::new(FlbCalls::default()),
            next_domain: AtomicU64::new(1),
        }
    }
}

/// The IOMMU FLB's outgoing object (the chains being written).
pub struct Outgoing(Mutex<Out>);

/// The IOMMU FLB's incoming object (what the previous kernel handed over, and which
/// domains this kernel rebuilt).
pub struct IncomingState(Mutex<Incoming>);

#[liveupdate_flb]
impl FlbState for IommuFlb {
    type Outgoing = Outgoing;
    type Incoming = IncomingState;

    fn preserve(&self, cx: &StateCtx<'_>) -> luo_abi::Result<(iommu_flb_ser, Outgoing)> {
        let (ser, out) = Out::new(cx.kho())?;
        lock(&self.calls).preserve += 1;
        Ok((ser, Outgoing(Mutex::new(out))))
    }

    fn unpreserve(&self, cx: &StateCtx<'_>, _: iommu_flb_ser, obj: Arc<Outgoing>) {
        lock(&obj.0).free(cx.kho());
        lock(&self.calls).unpreserve += 1;
    }

    fn retrieve(&self, cx: &StateCtx<'_>, _: iommu_flb_ser) -> luo_abi::Result<IncomingState> {
        let data = cx.data().ok_or(Errno::EINVAL)?.as_u64();
        let inc = read_incoming(cx.kho(), data)?;
        lock(&self.calls).retrieve += 1;
        Ok(IncomingState(Mutex::new(inc)))
    }

    fn finish(&self, cx: &StateCtx<'_>, obj: Arc<IncomingState>) {
        let kho = cx.kho();
        let inc = std::mem::take(&mut *lock(&obj.0));
        // Domains nobody rebuilt: their page tables go back to the allocator.
        for d in &inc.domains {
            if !d.restored && !d.deleted {
                let _ = kho.free_folio(PhysAddr::new(d.top_table_phys), 0);
            }
        }
        for p in &inc.pages {
            let _ = kho.free_folio(PhysAddr::new(*p), 0);
        }
        lock(&self.calls).finish += 1;
    }
}

/// One kernel's IOMMU core: the IOMMU FLB it registered (linked by the `iommufd-v1` handler)
/// and the kernel's host. A handle: clones are the same FLB.
#[derive(Clone)]
pub struct Iommu {
    flb: Arc<FlbCell<IommuFlb>>,
    host: Arc<dyn LuoHost>,
}

impl Iommu {
    /// A new IOMMU FLB run by `k` (upstream: the IOMMU core's init); link it by registering
    /// the iommufd handler with it ([`crate::iommufd::register`]).
    pub fn new(k: &impl Registry) -> Iommu {
        Iommu {
            flb: k.new_flb(IommuFlb::default()),
            host: k.host(),
        }
    }

    /// The FLB's cell (what a handler links in `flbs = [IommuFlb]`).
    pub fn flb(&self) -> &Arc<FlbCell<IommuFlb>> {
        &self.flb
    }

    /// The kernel's KHO.
    pub fn kho(&self) -> &dyn KhoService {
        self.host.kho()
    }

    /// The IOMMU FLB's callbacks in this kernel so far.
    pub fn flb_calls(&self) -> FlbCalls {
        *lock(&self.flb.flb().calls)
    }

    /// Whether the kernel has an outgoing IOMMU FLB object (what `liveupdate_flb_get_outgoing`
    /// returns non-NULL for: an iommufd is preserved).
    pub fn outgoing_live(&self) -> bool {
        self.flb.get_outgoing().is_ok()
    }

    /// The outgoing FLB data's address (`iommu_flb_ser`), if preserved.
    pub fn outgoing_data(&self) -> Option<u64> {
        self.flb.outgoing_data().map(PhysAddr::as_u64)
    }

    /// `liveupdate_flb_get_incoming` on the IOMMU FLB: retrieves it on first use and returns
    /// what the previous kernel handed over (the reference is put back before returning).
    pub fn get_incoming(&self) -> Result<Incoming, Errno> {
        let g = self.flb.get_incoming()?;
        Ok(lock(&g.0).clone())
    }

    /// Allocates a new domain (`iommu_paging_domain_alloc`): an empty top-level table page.
    pub fn alloc_domain(&self) -> Result<Domain, Errno> {
        alloc_domain(self.kho(), &self.flb.flb().next_domain)
    }

    /// [`iommu_preserve_domain`] on this kernel's FLB.
    pub fn preserve_domain(&self, d: &Domain) -> Result<Phys<iommu_domain_ser>, Errno> {
        iommu_preserve_domain(&self.flb, self.kho(), d)
    }

    /// [`iommu_unpreserve_domain`] on this kernel's FLB.
    pub fn unpreserve_domain(&self, d: &Domain) {
        iommu_unpreserve_domain(&self.flb, self.kho(), d)
    }

    /// [`iommu_preserve_device`] on this kernel's FLB.
    pub fn preserve_device(&self, dev: &IommuDevice, domain_id: u64) -> Result<(), Errno> {
        iommu_preserve_device(&self.flb, self.kho(), dev, domain_id)
    }

    /// [`iommu_unpreserve_device`] on this kernel's FLB.
    pub fn unpreserve_device(&self, dev: &IommuDevice) {
        iommu_unpreserve_device(&self.flb, self.kho(), dev)
    }

    /// Rebuilds a domain from the incoming FLB (the RFC's restore by `domain_data`): the page
    /// table the previous kernel left becomes a domain of this kernel, and the slot is flagged
    /// `incoming`. `ENOENT` if no live domain is at `phys`, `EBUSY` if it was
    /// already rebuilt. Takes and drops an incoming FLB reference.
    pub fn restore_domain(&self, phys: u64) -> Result<Domain, Errno> {
        let g = self.flb.get_incoming()?;
        let mut inc = lock(&g.0);
        let d = inc
            .domains
            .iter_mut()
            .find(|d| d.phys == phys && !d.deleted)
            .ok_or(Errno::ENOENT)?;
        if d.restored {
            return Err(Errno::EBUSY);
        }
        update_hdr(self.kho(), phys, |h| h.set_incoming(1))?;
        d.restored = true;
        d.incoming = true;
        Ok(Domain {
            id: self.flb.flb().next_domain.fetch_add(1, Ordering::Relaxed),
            top_table: d.top_table_phys,
            top_level: d.top_level,
            vasz: d.vasz,
        })
    }
}
