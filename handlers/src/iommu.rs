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
//! restored domains in this module's per-kernel state instead ([`restore_domain`]).
//!
//! The model's hardware: a domain's I/O page table is one page (the top-level table) listing
//! the mapped IOVA ranges (see [`domain_map`]); a VT-d unit's root-entry page is allocated
//! when the unit is first preserved. What crosses the kexec are those very pages, preserved by
//! [`iommu_preserve_domain`] / [`iommu_preserve_device`] and restored by the FLB's retrieve.
//!
//! `PerKernel` (state per kernel, keyed by its KHO service) is shared with the iommufd, PCI
//! and vfio-pci modules.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::iommu::v1::{IOMMU_LUO_FLB_COMPATIBLE, iommu_flb_ser};
use luo_generated::iommu::{
    IOMMU_DEVICE_ARRAY_NR, IOMMU_DOMAIN_ARRAY_NR, IOMMU_HW_ARRAY_NR, IOMMU_INTEL,
    IOMMU_SER_FLAG_DELETED, IOMMU_SER_FLAG_INCOMING, iommu_array_hdr_ser, iommu_dev_map_ser,
    iommu_device_intel_ser, iommu_device_ser, iommu_domain_ser, iommu_hdr_ser, iommu_hw_ser,
    iommu_intel_ser,
};
use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_flb_op_args, liveupdate_flb_ops,
};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::host::{FlbOps, StaticFlb, host, rc};

/// The current kernel's KHO.
pub type Kho = Arc<dyn KhoService + Send + Sync>;

const PAGE: u64 = PAGE_SIZE as u64;

/// Longest chain the new kernel follows (a loop or a runaway chain is `EINVAL`).
const MAX_CHAIN_PAGES: usize = 4096;

/// State kept per kernel of the model, keyed by the kernel's KHO service (upstream: globals).
pub(crate) struct PerKernel<T>(OnceLock<Mutex<HashMap<usize, T>>>);

impl<T: Default> PerKernel<T> {
    pub(crate) const fn new() -> Self {
        PerKernel(OnceLock::new())
    }

    /// Runs `f` on the current kernel's state. `f` must not call into the core (an FLB
    /// callback of this state would deadlock on the same lock).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T, &Kho) -> R) -> Result<R, Errno> {
        let kho = host()?.kho()?;
        let key = Arc::as_ptr(&kho) as *const u8 as usize;
        let mut m = self
            .0
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(f(m.entry(key).or_default(), &kho))
    }

    /// Resets the current kernel's state (a fresh kernel may reuse a dead one's address).
    pub(crate) fn reset(&self) -> Result<(), Errno> {
        self.with(|s, _| *s = T::default())
    }
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

static NEXT_DOMAIN: AtomicU64 = AtomicU64::new(1);

/// Allocates a new domain (`iommu_paging_domain_alloc`): an empty top-level table page in the
/// current kernel.
pub fn alloc_domain() -> Result<Domain, Errno> {
    let kho = host()?.kho()?;
    let top = kho.alloc_folio(0)?;
    kho.write(top, &[0u8; 8])?;
    Ok(Domain {
        id: NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed),
        top_table: top.as_u64(),
        top_level: 4,
        vasz: 48,
    })
}

/// Writes `ranges` (`(iova, length)`) into the domain's page-table page (`iommu_map`);
/// `ENOSPC` beyond [`DOMAIN_MAX_RANGES`].
pub fn domain_map(kho: &Kho, top_table: u64, ranges: &[(u64, u64)]) -> Result<(), Errno> {
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
pub fn domain_ranges(kho: &Kho, top_table: u64) -> Result<Vec<(u64, u64)>, Errno> {
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
    fn new(kho: &Kho, cap: u64, obj_size: usize) -> Result<Chain, Errno> {
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

    fn write_hdr(kho: &Kho, page: u64, next: u64, nr: u64) -> Result<(), Errno> {
        kho.write_obj(
            Phys::new(PhysAddr::new(page)),
            &iommu_array_hdr_ser {
                next_array_phys: next,
                nr_objects: nr,
            },
        )
    }

    /// Appends `obj` and returns its slot's address; a full page chains a new one.
    fn append<T: IntoBytes + Immutable>(&mut self, kho: &Kho, obj: &T) -> Result<u64, Errno> {
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

    fn free(&self, kho: &Kho) {
        for p in &self.pages {
            let _ = kho.unpreserve_free(PhysAddr::new(*p));
        }
    }
}

fn update_hdr(kho: &Kho, slot: u64, f: impl FnOnce(&mut iommu_hdr_ser)) -> Result<(), Errno> {
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

struct Out {
    data: u64,
    hw: Chain,
    dom: Chain,
    dev: Chain,
    hws: HashMap<u64, HwOut>,
    /// Domain id -> (slot, top table).
    doms: HashMap<u64, (u64, u64)>,
    /// Device -> (slot, domain id).
    devs: HashMap<IommuDevice, (u64, u64)>,
}

impl Out {
    fn new(kho: &Kho) -> Result<Out, Errno> {
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
        let ser = iommu_flb_ser {
            iommu_array_phys: Phys::new(PhysAddr::new(chains[0].head())),
            iommu_domain_array_phys: Phys::new(PhysAddr::new(chains[1].head())),
            device_array_phys: Phys::new(PhysAddr::new(chains[2].head())),
        };
        let data = match kho.alloc_preserve_obj(&ser) {
            Ok(p) => p.addr().as_u64(),
            Err(e) => {
                chains.iter().for_each(|c| c.free(kho));
                return Err(e);
            }
        };
        let dev = chains.pop().ok_or(Errno::EINVAL)?;
        let dom = chains.pop().ok_or(Errno::EINVAL)?;
        let hw = chains.pop().ok_or(Errno::EINVAL)?;
        Ok(Out {
            data,
            hw,
            dom,
            dev,
            hws: HashMap::new(),
            doms: HashMap::new(),
            devs: HashMap::new(),
        })
    }

    /// Frees every chain page and unpreserves the tables still preserved.
    fn free(self, kho: &Kho) {
        for (_, top) in self.doms.values() {
            let _ = kho.unpreserve_folio(PhysAddr::new(*top), 0);
        }
        for h in self.hws.values() {
            let _ = kho.unpreserve_free(PhysAddr::new(h.root_table));
        }
        self.hw.free(kho);
        self.dom.free(kho);
        self.dev.free(kho);
        let _ = kho.unpreserve_free(PhysAddr::new(self.data));
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
    /// Rebuilt by this kernel ([`restore_domain`]).
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
fn chain_slots(kho: &Kho, head: u64, cap: u64, size: usize) -> Result<(Vec<u64>, Vec<u64>), Errno> {
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
pub fn decode(kho: &Kho, data: u64) -> Result<Incoming, Errno> {
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
/// chain pages (freed at finish), the live units' root tables and domains' page tables.
fn read_incoming(kho: &Kho, data: u64) -> Result<Incoming, Errno> {
    let inc = decode(kho, data)?;
    for p in inc.pages.iter().chain([&data]) {
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

/// What the IOMMU FLB did in one kernel, and what it holds.
#[derive(Default)]
struct St {
    calls: FlbCalls,
    out: Option<Out>,
    inc: Option<Incoming>,
}

static STATE: PerKernel<St> = PerKernel::new();

static FLB_OPS: FlbOps = FlbOps(liveupdate_flb_ops {
    preserve: Some(flb_preserve),
    unpreserve: Some(flb_unpreserve),
    retrieve: Some(flb_retrieve),
    finish: Some(flb_finish),
    owner: std::ptr::null_mut(),
});

/// The FLB `"iommu-liveupdate-v1"`.
pub(crate) static IOMMU_FLB: StaticFlb = StaticFlb::new(&FLB_OPS, IOMMU_LUO_FLB_COMPATIBLE);

unsafe extern "C" fn flb_preserve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc(STATE
        .with(|s, kho| {
            let out = Out::new(kho)?;
            a.data = out.data;
            a.obj = IOMMU_FLB.as_ptr().cast::<c_void>();
            s.out = Some(out);
            s.calls.preserve += 1;
            Ok(())
        })
        .and_then(|r| r))
}

unsafe extern "C" fn flb_unpreserve(_a: *mut liveupdate_flb_op_args) {
    let _ = STATE.with(|s, kho| {
        if let Some(out) = s.out.take() {
            out.free(kho);
        }
        s.calls.unpreserve += 1;
    });
}

unsafe extern "C" fn flb_retrieve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc(STATE
        .with(|s, kho| {
            let inc = read_incoming(kho, a.data)?;
            s.inc = Some(inc);
            s.calls.retrieve += 1;
            a.obj = IOMMU_FLB.as_ptr().cast::<c_void>();
            Ok(())
        })
        .and_then(|r| r))
}

unsafe extern "C" fn flb_finish(_a: *mut liveupdate_flb_op_args) {
    let _ = STATE.with(|s, kho| {
        if let Some(inc) = s.inc.take() {
            // Domains nobody rebuilt: their page tables go back to the allocator.
            for d in &inc.domains {
                if !d.restored && is_live(d.flags) {
                    let _ = kho.free_folio(PhysAddr::new(d.top_table_phys), 0);
                }
            }
            for p in inc.pages.iter().chain([&inc.data]) {
                let _ = kho.free_folio(PhysAddr::new(*p), 0);
            }
        }
        s.calls.finish += 1;
    });
}

/// Links the IOMMU FLB to `fh` (upstream: `iommu_liveupdate_register_flb`) and resets the
/// current kernel's IOMMU state. Called by [`crate::iommufd::register`].
pub(crate) fn register_flb(fh: *mut liveupdate_file_handler) -> Result<(), Errno> {
    STATE.reset()?;
    // SAFETY: `'static` descriptors; the handler is registered by the caller.
    unsafe { host()?.register_flb(fh, IOMMU_FLB.as_ptr()) }
}

/// The IOMMU FLB's callbacks in the current kernel so far.
pub fn flb_calls() -> Result<FlbCalls, Errno> {
    STATE.with(|s, _| s.calls)
}

/// Whether the current kernel has an outgoing IOMMU FLB object (what
/// `liveupdate_flb_get_outgoing` returns non-NULL for: an iommufd is preserved).
pub fn outgoing_live() -> Result<bool, Errno> {
    STATE.with(|s, _| s.out.is_some())
}

/// `liveupdate_flb_get_incoming` on the IOMMU FLB: retrieves it on first use and returns
/// what the previous kernel handed over. Pair with [`put_incoming`].
pub fn get_incoming() -> Result<Incoming, Errno> {
    host()?.flb_get_incoming(IOMMU_FLB.as_ptr())?;
    match STATE.with(|s, _| s.inc.clone()) {
        Ok(Some(i)) => Ok(i),
        Ok(None) => {
            put_incoming();
            Err(Errno::ENODATA)
        }
        Err(e) => {
            put_incoming();
            Err(e)
        }
    }
}

/// `liveupdate_flb_put_incoming` on the IOMMU FLB.
pub fn put_incoming() {
    if let Ok(h) = host() {
        h.flb_put_incoming(IOMMU_FLB.as_ptr());
    }
}

// ---- preserving domains and devices ----------------------------------------------------

/// `iommu_preserve_domain`: writes the domain into the outgoing FLB and preserves its page
/// table. `EINVAL` without an outgoing IOMMU FLB, `EBUSY` if already preserved.
pub fn iommu_preserve_domain(d: &Domain) -> Result<Phys<iommu_domain_ser>, Errno> {
    STATE
        .with(|s, kho| {
            let out = s.out.as_mut().ok_or(Errno::EINVAL)?;
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
        .and_then(|r| r)
}

/// `iommu_unpreserve_domain`: drops the HWPT's reference; the last one marks the slot
/// `IOMMU_SER_FLAG_DELETED` and unpreserves the page table.
pub fn iommu_unpreserve_domain(d: &Domain) {
    let _ = STATE.with(|s, kho| {
        let Some(out) = s.out.as_mut() else { return };
        release_domain(out, kho, d.id);
    });
}

/// Drops one reference on a preserved domain; the last one marks its slot deleted and
/// unpreserves its page table.
fn release_domain(out: &mut Out, kho: &Kho, id: u64) {
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
pub fn iommu_preserve_device(dev: &IommuDevice, domain_id: u64) -> Result<(), Errno> {
    STATE
        .with(|s, kho| {
            let out = s.out.as_mut().ok_or(Errno::EINVAL)?;
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
        .and_then(|r| r)
}

fn write_bitmap(kho: &Kho, hw_slot: u64, bitmap: [u64; 8]) -> Result<(), Errno> {
    let p = Phys::<iommu_hw_ser>::new(PhysAddr::new(hw_slot));
    let mut h = kho.read_obj(p)?;
    let mut intel = iommu_intel_ser::read_from_bytes(&h.arch).map_err(|_| Errno::EINVAL)?;
    intel.context_tables_bitmap = bitmap;
    h.arch.copy_from_slice(intel.as_bytes());
    kho.write_obj(p, &h)
}

/// `iommu_unpreserve_device`: marks the device's slot deleted and drops its references on
/// the hardware unit and the domain.
pub fn iommu_unpreserve_device(dev: &IommuDevice) {
    let _ = STATE.with(|s, kho| {
        let Some(out) = s.out.as_mut() else { return };
        let Some((slot, dom)) = out.devs.remove(dev) else {
            return;
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
    });
}

/// Rebuilds a domain from the incoming FLB (the RFC's restore by `domain_data`): the page
/// table the previous kernel left becomes a domain of this kernel, and the slot is flagged
/// `IOMMU_SER_FLAG_INCOMING`. `ENOENT` if no live domain is at `phys`, `EBUSY` if it was
/// already rebuilt. Takes and drops an incoming FLB reference.
pub fn restore_domain(phys: u64) -> Result<Domain, Errno> {
    get_incoming()?;
    let r = STATE
        .with(|s, kho| {
            let inc = s.inc.as_mut().ok_or(Errno::ENODATA)?;
            let d = inc
                .domains
                .iter_mut()
                .find(|d| d.phys == phys && is_live(d.flags))
                .ok_or(Errno::ENOENT)?;
            if d.restored {
                return Err(Errno::EBUSY);
            }
            update_hdr(kho, phys, |h| h.flags |= IOMMU_SER_FLAG_INCOMING as u32)?;
            d.restored = true;
            d.flags |= IOMMU_SER_FLAG_INCOMING as u32;
            Ok(Domain {
                id: NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed),
                top_table: d.top_table_phys,
                top_level: d.top_level,
                vasz: d.vasz,
            })
        })
        .and_then(|r| r);
    put_incoming();
    r
}

/// The outgoing FLB data's address (`iommu_flb_ser`), if preserved.
pub fn outgoing_data() -> Result<Option<u64>, Errno> {
    STATE.with(|s, _| s.out.as_ref().map(|o| o.data))
}
