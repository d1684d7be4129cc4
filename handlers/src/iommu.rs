// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The IOMMU core's live update state: the FLB `"iommu-liveupdate-v1"` (spec `iommu/v1`,
//! `reference/luo-upstream.md` §8c), linked by the `iommufd-v1` handler ([`crate::iommufd`]).
//!
//! The FLB's data is a `struct iommu_flb_ser` naming the first page of three chains of
//! page-sized arrays: hardware units (`iommu_hw_ser`), domains (`iommu_domain_ser`, the roots
//! of I/O page tables) and devices (`iommu_device_ser`). As upstream, slots are appended and
//! never reused, a full page chains to a new one (`iommu_array_hdr_ser.next_array_phys`), a
//! new object starts with `ref_count` 1, a hardware unit is written once and every further
//! device behind it bumps its `ref_count`, and undoing a preservation sets
//! `IOMMU_SER_FLAG_DELETED` in the slot. Every write goes to KHO-preserved pages, and the new
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::host::LuoHost;
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::registry::Registry;
use luo_abi::sync::StdBackend;
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_derive::liveupdate_flb;
use luo_generated::iommu::v1::iommu_flb_ser;
use luo_generated::iommu::{
    IOMMU_DEVICE_ARRAY_NR, IOMMU_DOMAIN_ARRAY_NR, IOMMU_HW_ARRAY_NR, IOMMU_INTEL,
    IOMMU_SER_FLAG_DELETED, IOMMU_SER_FLAG_INCOMING, iommu_array_hdr_ser, iommu_dev_map_ser,
    iommu_device_intel_ser, iommu_device_ser, iommu_domain_ser, iommu_hdr_ser, iommu_hw_ser,
    iommu_intel_ser,
};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

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

/// An I/O page table (`struct iommu_domain`) of the current kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Unique in the process; also the VT-d domain id recorded as the attachment id.
    pub id: u64,
    /// Physical address of the top-level table page.
    pub top_table: u64,
    /// Level of the top table.
    pub top_level: u64,
    /// Width of the IO virtual address space, in bits.
    pub vasz: u32,
}

/// Top-table entries the model's page-table page holds: a `u64` count, then `(iova, length)`.
pub const DOMAIN_MAX_RANGES: usize = (PAGE_SIZE - 8) / 16;

/// Allocates a new domain (`iommu_paging_domain_alloc`): an empty top-level table page in the
/// kernel of `kho`, with an id from `ids` (unique in that kernel).
fn alloc_domain(kho: &dyn KhoService, ids: &AtomicU64) -> Result<Domain, Errno> {
    let top = kho.alloc_folio(0)?;
    if let Err(e) = kho.write(top, &[0u8; 8]) {
        let _ = kho.free_folio(top, 0);
        return Err(e);
    }
    Ok(Domain {
        id: ids.fetch_add(1, Ordering::Relaxed),
        top_table: top.as_u64(),
        top_level: 4,
        vasz: 48,
    })
}

/// Writes `ranges` (`(iova, length)`) into the domain's page-table page (`iommu_map`);
/// `ENOSPC` beyond [`DOMAIN_MAX_RANGES`].
pub fn domain_map(
    kho: &dyn KhoService,
    top_table: u64,
    ranges: &[(u64, u64)],
) -> Result<(), Errno> {
    if ranges.len() > DOMAIN_MAX_RANGES {
        return Err(Errno::ENOSPC);
    }
    let mut page = Vec::with_capacity(8 + 16 * ranges.len());
    page.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    for (iova, len) in ranges {
        page.extend_from_slice(&iova.to_le_bytes());
        page.extend_from_slice(&len.to_le_bytes());
    }
    kho.write(PhysAddr::new(top_table), &page)
}

/// Reads the ranges mapped by the page-table page at `top_table` (`EINVAL` if corrupt).
pub fn domain_ranges(kho: &dyn KhoService, top_table: u64) -> Result<Vec<(u64, u64)>, Errno> {
    let mut n = [0u8; 8];
    kho.read(PhysAddr::new(top_table), &mut n)?;
    let n = usize::try_from(u64::from_le_bytes(n)).map_err(|_| Errno::EINVAL)?;
    if n > DOMAIN_MAX_RANGES {
        return Err(Errno::EINVAL);
    }
    let mut buf = vec![0u8; 16 * n];
    kho.read(PhysAddr::new(top_table + 8), &mut buf)?;
    Ok(buf
        .chunks_exact(16)
        .map(|c| {
            let (a, b) = c.split_at(8);
            (
                u64::from_le_bytes(a.try_into().unwrap_or_default()),
                u64::from_le_bytes(b.try_into().unwrap_or_default()),
            )
        })
        .collect())
}

// ---- the outgoing chains ---------------------------------------------------------------

/// One chain of page-sized arrays, appended to.
struct Chain {
    pages: Vec<u64>,
    nr_last: u64,
    cap: u64,
    obj_size: u64,
}

impl Chain {
    fn new(kho: &dyn KhoService, cap: u64, obj_size: usize) -> Result<Chain, Errno> {
        Ok(Chain {
            pages: vec![kho.alloc_preserve(PAGE_SIZE)?.as_u64()],
            nr_last: 0,
            cap,
            obj_size: obj_size as u64,
        })
    }

    fn head(&self) -> u64 {
        self.pages[0]
    }

    fn write_hdr(kho: &dyn KhoService, page: u64, next: u64, nr: u64) -> Result<(), Errno> {
        kho.write_obj(
            Phys::new(PhysAddr::new(page)),
            &iommu_array_hdr_ser {
                next_array_phys: next,
                nr_objects: nr,
            },
        )
    }

    /// Appends `obj` and returns its slot's address; a full page chains a new one.
    fn append<T: IntoBytes + Immutable>(
        &mut self,
        kho: &dyn KhoService,
        obj: &T,
    ) -> Result<u64, Errno> {
        if self.nr_last == self.cap {
            let p = kho.alloc_preserve(PAGE_SIZE)?.as_u64();
            let last = *self.pages.last().ok_or(Errno::EINVAL)?;
            if let Err(e) = Self::write_hdr(kho, last, p, self.nr_last) {
                let _ = kho.unpreserve_free(PhysAddr::new(p));
                return Err(e);
            }
            self.pages.push(p);
            self.nr_last = 0;
        }
        let page = *self.pages.last().ok_or(Errno::EINVAL)?;
        let slot = page + size_of::<iommu_array_hdr_ser>() as u64 + self.nr_last * self.obj_size;
        kho.write_obj(Phys::new(PhysAddr::new(slot)), obj)?;
        self.nr_last += 1;
        Self::write_hdr(kho, page, 0, self.nr_last)?;
        Ok(slot)
    }

    fn free(&self, kho: &dyn KhoService) {
        for p in &self.pages {
            let _ = kho.unpreserve_free(PhysAddr::new(*p));
        }
    }
}

fn update_hdr(
    kho: &dyn KhoService,
    slot: u64,
    f: impl FnOnce(&mut iommu_hdr_ser),
) -> Result<(), Errno> {
    let p = Phys::<iommu_hdr_ser>::new(PhysAddr::new(slot));
    let mut h = kho.read_obj(p)?;
    f(&mut h);
    kho.write_obj(p, &h)
}

fn deleted(h: &mut iommu_hdr_ser) {
    h.ref_count = 0;
    h.flags |= IOMMU_SER_FLAG_DELETED as u32;
}

fn release(h: &mut iommu_hdr_ser) {
    let n = h.ref_count.saturating_sub(1);
    h.ref_count = n;
    if n == 0 {
        h.flags |= IOMMU_SER_FLAG_DELETED as u32;
    }
}

struct HwOut {
    slot: u64,
    root_table: u64,
    bitmap: [u64; 8],
}

/// The outgoing FLB object: the three chains and what is written in them. Emptied by the
/// FLB's `unpreserve` (guards may outlive it).
struct Out {
    hw: Chain,
    dom: Chain,
    dev: Chain,
    hws: HashMap<u64, HwOut>,
    /// Domain id -> (slot, top table).
    doms: HashMap<u64, (u64, u64)>,
    /// Device -> (slot, domain id).
    devs: HashMap<IommuDevice, (u64, u64)>,
    /// Set once unpreserved: nothing may be written to the freed chains any more.
    freed: bool,
}

impl Out {
    /// Allocates the three chains; returns the `iommu_flb_ser` naming their heads.
    fn new(kho: &dyn KhoService) -> Result<(iommu_flb_ser, Out), Errno> {
        let mut chains: Vec<Chain> = Vec::new();
        for (cap, size) in [
            (IOMMU_HW_ARRAY_NR, size_of::<iommu_hw_ser>()),
            (IOMMU_DOMAIN_ARRAY_NR, size_of::<iommu_domain_ser>()),
            (IOMMU_DEVICE_ARRAY_NR, size_of::<iommu_device_ser>()),
        ] {
            match Chain::new(kho, cap, size) {
                Ok(c) => chains.push(c),
                Err(e) => {
                    chains.iter().for_each(|c| c.free(kho));
                    return Err(e);
                }
            }
        }
        let (Some(dev), Some(dom), Some(hw)) = (chains.pop(), chains.pop(), chains.pop()) else {
            return Err(Errno::EINVAL);
        };
        let ser = iommu_flb_ser {
            iommu_array_phys: Phys::new(PhysAddr::new(hw.head())),
            iommu_domain_array_phys: Phys::new(PhysAddr::new(dom.head())),
            device_array_phys: Phys::new(PhysAddr::new(dev.head())),
        };
        let out = Out {
            hw,
            dom,
            dev,
            hws: HashMap::new(),
            doms: HashMap::new(),
            devs: HashMap::new(),
            freed: false,
        };
        Ok((ser, out))
    }

    /// Frees every chain page and unpreserves the tables still preserved (the runtime frees
    /// the `iommu_flb_ser` itself).
    fn free(&mut self, kho: &dyn KhoService) {
        if std::mem::replace(&mut self.freed, true) {
            return;
        }
        for (_, top) in self.doms.drain().map(|(_, v)| v) {
            let _ = kho.unpreserve_folio(PhysAddr::new(top), 0);
        }
        for (_, h) in self.hws.drain() {
            let _ = kho.unpreserve_free(PhysAddr::new(h.root_table));
        }
        self.devs.clear();
        self.hw.free(kho);
        self.dom.free(kho);
        self.dev.free(kho);
    }
}

// ---- the incoming state ----------------------------------------------------------------

/// A hardware unit as the previous kernel handed it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingHw {
    /// Its slot's address.
    pub phys: u64,
    /// `hdr`.
    pub ref_count: u32,
    /// `hdr.flags`.
    pub flags: u32,
    /// `token`.
    pub token: u64,
    /// `type` (`enum iommu_type_ser`).
    pub hw_type: u64,
    /// VT-d root-entry page.
    pub root_table: u64,
    /// VT-d preserved context tables, bit `bus * 2 + (devfn >> 7)`.
    pub context_tables_bitmap: [u64; 8],
}

/// A domain as the previous kernel handed it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingDomain {
    /// Its slot's address (what `iommufd_hwpt_ser.domain_data` names).
    pub phys: u64,
    /// `hdr.ref_count`.
    pub ref_count: u32,
    /// `hdr.flags`.
    pub flags: u32,
    /// `top_table_phys`.
    pub top_table_phys: u64,
    /// `top_level`.
    pub top_level: u64,
    /// `vasz`.
    pub vasz: u32,
    /// Rebuilt by this kernel ([`Iommu::restore_domain`]).
    pub restored: bool,
}

/// A device as the previous kernel handed it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingDevice {
    /// `hdr.ref_count`.
    pub ref_count: u32,
    /// `hdr.flags`.
    pub flags: u32,
    /// `pci_domain_nr`.
    pub pci_domain: u32,
    /// `devid`.
    pub devid: u32,
    /// `dev_map.attachment_id`.
    pub attachment_id: u64,
    /// `dev_map.domain_phys`.
    pub domain_phys: u64,
    /// `dev_map.iommu_phys`.
    pub iommu_phys: u64,
}

/// The IOMMU state the previous kernel handed over, read back from its chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// Hardware units, in slot order.
    pub hws: Vec<IncomingHw>,
    /// Domains, in slot order.
    pub domains: Vec<IncomingDomain>,
    /// Devices, in slot order.
    pub devices: Vec<IncomingDevice>,
    pages: Vec<u64>,
    data: u64,
}

/// The slots of one chain from `head`, and its pages (a loop, a runaway chain or an
/// overfull page is `EINVAL`).
fn chain_slots(
    kho: &dyn KhoService,
    head: u64,
    cap: u64,
    size: usize,
) -> Result<(Vec<u64>, Vec<u64>), Errno> {
    let (mut slots, mut pages) = (Vec::new(), Vec::new());
    let mut p = head;
    while p != 0 {
        if pages.contains(&p) || pages.len() >= MAX_CHAIN_PAGES || !p.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let h: iommu_array_hdr_ser = kho.read_obj(Phys::new(PhysAddr::new(p)))?;
        if h.nr_objects > cap {
            return Err(Errno::EINVAL);
        }
        let first = p + size_of::<iommu_array_hdr_ser>() as u64;
        slots.extend((0..h.nr_objects).map(|i| first + i * size as u64));
        pages.push(p);
        p = h.next_array_phys;
    }
    Ok((slots, pages))
}

fn is_live(flags: u32) -> bool {
    flags & IOMMU_SER_FLAG_DELETED as u32 == 0
}

/// Reads an `iommu_flb_ser` and its three chains from memory, changing nothing (also used to
/// check what a kernel wrote before its kexec).
pub fn decode(kho: &dyn KhoService, data: u64) -> Result<Incoming, Errno> {
    let ser: iommu_flb_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
    let heads = [
        ser.iommu_array_phys.addr().as_u64(),
        ser.iommu_domain_array_phys.addr().as_u64(),
        ser.device_array_phys.addr().as_u64(),
    ];
    // Upstream panics on a zero array address; the model refuses the data.
    if heads.contains(&0) {
        return Err(Errno::EINVAL);
    }
    let mut inc = Incoming {
        data,
        ..Incoming::default()
    };
    let (slots, pages) = chain_slots(kho, heads[0], IOMMU_HW_ARRAY_NR, size_of::<iommu_hw_ser>())?;
    inc.pages.extend(pages);
    for phys in slots {
        let h: iommu_hw_ser = kho.read_obj(Phys::new(PhysAddr::new(phys)))?;
        let intel = iommu_intel_ser::read_from_bytes(&h.arch).map_err(|_| Errno::EINVAL)?;
        inc.hws.push(IncomingHw {
            phys,
            ref_count: h.hdr.ref_count,
            flags: h.hdr.flags,
            token: h.token,
            hw_type: h.hw_type,
            root_table: intel.root_table,
            context_tables_bitmap: intel.context_tables_bitmap,
        });
    }
    let (slots, pages) = chain_slots(
        kho,
        heads[1],
        IOMMU_DOMAIN_ARRAY_NR,
        size_of::<iommu_domain_ser>(),
    )?;
    inc.pages.extend(pages);
    for phys in slots {
        let d: iommu_domain_ser = kho.read_obj(Phys::new(PhysAddr::new(phys)))?;
        inc.domains.push(IncomingDomain {
            phys,
            ref_count: d.hdr.ref_count,
            flags: d.hdr.flags,
            top_table_phys: d.top_table_phys,
            top_level: d.top_level,
            vasz: d.vasz,
            restored: false,
        });
    }
    let (slots, pages) = chain_slots(
        kho,
        heads[2],
        IOMMU_DEVICE_ARRAY_NR,
        size_of::<iommu_device_ser>(),
    )?;
    inc.pages.extend(pages);
    for phys in slots {
        let d: iommu_device_ser = kho.read_obj(Phys::new(PhysAddr::new(phys)))?;
        inc.devices.push(IncomingDevice {
            ref_count: d.hdr.ref_count,
            flags: d.hdr.flags,
            pci_domain: d.pci_domain_nr,
            devid: d.devid,
            attachment_id: d.dev_map.attachment_id,
            domain_phys: d.dev_map.domain_phys.addr().as_u64(),
            iommu_phys: d.dev_map.iommu_phys.addr().as_u64(),
        });
    }
    Ok(inc)
}

/// The FLB's retrieve: decodes the chains, then takes every page into this kernel: the
/// chain pages (freed at finish), the live units' root tables and domains' page tables. The
/// `iommu_flb_ser` itself is the runtime's to release.
fn read_incoming(kho: &dyn KhoService, data: u64) -> Result<Incoming, Errno> {
    let inc = decode(kho, data)?;
    for p in &inc.pages {
        kho.restore_folio(PhysAddr::new(*p))?;
    }
    for h in inc
        .hws
        .iter()
        .filter(|h| is_live(h.flags) && h.root_table != 0)
    {
        kho.restore_free(PhysAddr::new(h.root_table))?;
    }
    for d in inc.domains.iter().filter(|d| is_live(d.flags)) {
        kho.restore_folio(PhysAddr::new(d.top_table_phys))?;
    }
    Ok(inc)
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
            if !d.restored && is_live(d.flags) {
                let _ = kho.free_folio(PhysAddr::new(d.top_table_phys), 0);
            }
        }
        for p in &inc.pages {
            let _ = kho.free_folio(PhysAddr::new(*p), 0);
        }
        lock(&self.calls).finish += 1;
    }
}

/// Runs `f` on the outgoing chains: `EINVAL` without an outgoing IOMMU FLB (no iommufd
/// preserved) or once it was unpreserved.
fn with_out<R>(
    flb: &FlbCell<IommuFlb>,
    f: impl FnOnce(&mut Out) -> Result<R, Errno>,
) -> Result<R, Errno> {
    let g = flb.get_outgoing().map_err(|e| match e {
        Errno::ENODATA | Errno::ENOENT => Errno::EINVAL,
        e => e,
    })?;
    let mut out = lock(&g.0);
    if out.freed {
        return Err(Errno::EINVAL);
    }
    f(&mut out)
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
    /// `IOMMU_SER_FLAG_INCOMING`. `ENOENT` if no live domain is at `phys`, `EBUSY` if it was
    /// already rebuilt. Takes and drops an incoming FLB reference.
    pub fn restore_domain(&self, phys: u64) -> Result<Domain, Errno> {
        let g = self.flb.get_incoming()?;
        let mut inc = lock(&g.0);
        let d = inc
            .domains
            .iter_mut()
            .find(|d| d.phys == phys && is_live(d.flags))
            .ok_or(Errno::ENOENT)?;
        if d.restored {
            return Err(Errno::EBUSY);
        }
        update_hdr(self.kho(), phys, |h| {
            h.flags |= IOMMU_SER_FLAG_INCOMING as u32
        })?;
        d.restored = true;
        d.flags |= IOMMU_SER_FLAG_INCOMING as u32;
        Ok(Domain {
            id: self.flb.flb().next_domain.fetch_add(1, Ordering::Relaxed),
            top_table: d.top_table_phys,
            top_level: d.top_level,
            vasz: d.vasz,
        })
    }
}

// ---- preserving domains and devices ----------------------------------------------------

/// `iommu_preserve_domain`: writes the domain into the outgoing FLB and preserves its page
/// table. `EINVAL` without an outgoing IOMMU FLB, `EBUSY` if already preserved.
pub fn iommu_preserve_domain(
    flb: &FlbCell<IommuFlb>,
    kho: &dyn KhoService,
    d: &Domain,
) -> Result<Phys<iommu_domain_ser>, Errno> {
    with_out(flb, |out| {
        if out.doms.contains_key(&d.id) {
            return Err(Errno::EBUSY);
        }
        let mut ser = iommu_domain_ser {
            hdr: iommu_hdr_ser {
                ref_count: 1,
                flags: 0,
            },
            top_table_phys: d.top_table,
            top_level: d.top_level,
            vasz: d.vasz,
            bitfield_28: 0,
            reserved_restored_domain: 0,
        };
        ser.set_sign_extend(0);
        kho.preserve_folio(PhysAddr::new(d.top_table), 0)?;
        match out.dom.append(kho, &ser) {
            Ok(slot) => {
                out.doms.insert(d.id, (slot, d.top_table));
                Ok(Phys::new(PhysAddr::new(slot)))
            }
            Err(e) => {
                let _ = kho.unpreserve_folio(PhysAddr::new(d.top_table), 0);
                Err(e)
            }
        }
    })
}

/// `iommu_unpreserve_domain`: drops the HWPT's reference; the last one marks the slot
/// `IOMMU_SER_FLAG_DELETED` and unpreserves the page table.
pub fn iommu_unpreserve_domain(flb: &FlbCell<IommuFlb>, kho: &dyn KhoService, d: &Domain) {
    let _ = with_out(flb, |out| {
        release_domain(out, kho, d.id);
        Ok(())
    });
}

/// Drops one reference on a preserved domain; the last one marks its slot deleted and
/// unpreserves its page table.
fn release_domain(out: &mut Out, kho: &dyn KhoService, id: u64) {
    let Some(&(slot, top)) = out.doms.get(&id) else {
        return;
    };
    let mut gone = false;
    let _ = update_hdr(kho, slot, |h| {
        release(h);
        gone = h.ref_count == 0;
    });
    if gone {
        out.doms.remove(&id);
        let _ = kho.unpreserve_folio(PhysAddr::new(top), 0);
    }
}

/// `iommu_preserve_device`: records a device attached to the preserved domain `domain_id`,
/// writing its hardware unit once (further devices bump the unit's `ref_count`). `EINVAL`
/// without an outgoing IOMMU FLB (no iommufd preserved) or if the domain is not preserved;
/// `EBUSY` if the device already is.
pub fn iommu_preserve_device(
    flb: &FlbCell<IommuFlb>,
    kho: &dyn KhoService,
    dev: &IommuDevice,
    domain_id: u64,
) -> Result<(), Errno> {
    with_out(flb, |out| {
        let &(dom_slot, _) = out.doms.get(&domain_id).ok_or(Errno::EINVAL)?;
        if out.devs.contains_key(dev) {
            return Err(Errno::EBUSY);
        }
        let bit = usize::from(dev.devid >> 8) * 2 + usize::from((dev.devid & 0xff) >> 7);
        let new_hw = !out.hws.contains_key(&dev.hw.token);
        if new_hw {
            let root = kho.alloc_preserve(PAGE_SIZE)?.as_u64();
            let mut ser = iommu_hw_ser {
                hdr: iommu_hdr_ser {
                    ref_count: 1,
                    flags: 0,
                },
                token: dev.hw.token,
                hw_type: u64::from(IOMMU_INTEL),
                arch: [0; 88],
            };
            let mut intel = iommu_intel_ser::new_zeroed();
            intel.phys_addr = dev.hw.token;
            intel.root_table = root;
            intel.context_tables_bitmap[bit / 64] |= 1 << (bit % 64);
            ser.arch.copy_from_slice(intel.as_bytes());
            match out.hw.append(kho, &ser) {
                Ok(slot) => {
                    out.hws.insert(
                        dev.hw.token,
                        HwOut {
                            slot,
                            root_table: root,
                            bitmap: intel.context_tables_bitmap,
                        },
                    );
                }
                Err(e) => {
                    let _ = kho.unpreserve_free(PhysAddr::new(root));
                    return Err(e);
                }
            }
        }
        let hw = out.hws.get_mut(&dev.hw.token).ok_or(Errno::EINVAL)?;
        let hw_slot = hw.slot;
        let ser = iommu_device_ser {
            hdr: iommu_hdr_ser {
                ref_count: 1,
                flags: 0,
            },
            devid: u32::from(dev.devid),
            pci_domain_nr: dev.pci_domain,
            dev_map: iommu_dev_map_ser {
                attachment_id: domain_id,
                domain_phys: Phys::new(PhysAddr::new(dom_slot)),
                iommu_phys: Phys::new(PhysAddr::new(hw_slot)),
            },
            arch: {
                let mut a = [0u8; 24];
                a[..16].copy_from_slice(iommu_device_intel_ser::new_zeroed().as_bytes());
                a
            },
        };
        let slot = match out.dev.append(kho, &ser) {
            Ok(s) => s,
            Err(e) => {
                if new_hw {
                    let _ = update_hdr(kho, hw_slot, deleted);
                    if let Some(h) = out.hws.remove(&dev.hw.token) {
                        let _ = kho.unpreserve_free(PhysAddr::new(h.root_table));
                    }
                }
                return Err(e);
            }
        };
        if !new_hw {
            hw.bitmap[bit / 64] |= 1 << (bit % 64);
            let bitmap = hw.bitmap;
            update_hdr(kho, hw_slot, |h| {
                h.ref_count = h.ref_count.saturating_add(1)
            })?;
            write_bitmap(kho, hw_slot, bitmap)?;
        }
        update_hdr(kho, dom_slot, |h| {
            h.ref_count = h.ref_count.saturating_add(1)
        })?;
        out.devs.insert(*dev, (slot, domain_id));
        Ok(())
    })
}

fn write_bitmap(kho: &dyn KhoService, hw_slot: u64, bitmap: [u64; 8]) -> Result<(), Errno> {
    let p = Phys::<iommu_hw_ser>::new(PhysAddr::new(hw_slot));
    let mut h = kho.read_obj(p)?;
    let mut intel = iommu_intel_ser::read_from_bytes(&h.arch).map_err(|_| Errno::EINVAL)?;
    intel.context_tables_bitmap = bitmap;
    h.arch.copy_from_slice(intel.as_bytes());
    kho.write_obj(p, &h)
}

/// `iommu_unpreserve_device`: marks the device's slot deleted and drops its references on
/// the hardware unit and the domain.
pub fn iommu_unpreserve_device(flb: &FlbCell<IommuFlb>, kho: &dyn KhoService, dev: &IommuDevice) {
    let _ = with_out(flb, |out| {
        let Some((slot, dom)) = out.devs.remove(dev) else {
            return Ok(());
        };
        let _ = update_hdr(kho, slot, deleted);
        if let Some(h) = out.hws.get(&dev.hw.token) {
            let mut gone = false;
            let _ = update_hdr(kho, h.slot, |x| {
                release(x);
                gone = x.ref_count == 0;
            });
            if gone && let Some(h) = out.hws.remove(&dev.hw.token) {
                let _ = kho.unpreserve_free(PhysAddr::new(h.root_table));
            }
        }
        release_domain(out, kho, dom);
        Ok(())
    });
}
