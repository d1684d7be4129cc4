// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The incoming side: the chains read back, checked, in the new kernel.

use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, Phys, PhysAddr};
use luo_generated::iommu::v1::iommu_flb_ser;
use luo_generated::iommu::{
    IOMMU_DEVICE_ARRAY_NR, IOMMU_DOMAIN_ARRAY_NR, IOMMU_HW_ARRAY_NR, iommu_array_hdr_ser,
    iommu_device_ser, iommu_domain_ser, iommu_hdr_ser, iommu_hw_ser, iommu_intel_ser,
};
use zerocopy::FromBytes;

use super::{MAX_CHAIN_PAGES, PAGE};

// ---- the incoming state ----------------------------------------------------------------

/// A hardware unit as the previous kernel handed it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingHw {
    /// Its slot's address.
    pub phys: u64,
    /// `hdr`.
    pub ref_count: u32,
    /// `hdr.deleted`.
    pub deleted: bool,
    /// `hdr.incoming`.
    pub incoming: bool,
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
    /// `hdr.deleted`.
    pub deleted: bool,
    /// `hdr.incoming`.
    pub incoming: bool,
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
    /// `hdr.deleted`.
    pub deleted: bool,
    /// `hdr.incoming`.
    pub incoming: bool,
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
    pub(super) pages: Vec<u64>,
    data: u64,
}

/// The slots of one chain from `head`, and its pages (a loop, a runaway chain or an
/// overfull page is `EINVAL`).
pub(super) fn chain_slots(
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

/// A header's `deleted` and `incoming` bits; `EINVAL` when a reserved bit is set (no kernel
/// writes one, so the header is not what this kernel reads).
fn state_bits(h: iommu_hdr_ser) -> Result<(bool, bool), Errno> {
    if h.reserved() != 0 {
        return Err(Errno::EINVAL);
    }
    Ok((h.deleted() != 0, h.incoming() != 0))
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
        let (deleted, incoming) = state_bits(h.hdr)?;
        let intel = iommu_intel_ser::read_from_bytes(&h.arch).map_err(|_| Errno::EINVAL)?;
        inc.hws.push(IncomingHw {
            phys,
            ref_count: h.hdr.ref_count,
            deleted,
            incoming,
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
        let (deleted, incoming) = state_bits(d.hdr)?;
        inc.domains.push(IncomingDomain {
            phys,
            ref_count: d.hdr.ref_count,
            deleted,
            incoming,
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
        let (deleted, incoming) = state_bits(d.hdr)?;
        inc.devices.push(IncomingDevice {
            ref_count: d.hdr.ref_count,
            deleted,
            incoming,
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
pub(super) fn read_incoming(kho: &dyn KhoService, data: u64) -> Result<Incoming, Errno> {
    let inc = decode(kho, data)?;
    for p in &inc.pages {
        kho.restore_folio(PhysAddr::new(*p))?;
    }
    for h in inc.hws.iter().filter(|h| !h.deleted && h.root_table != 0) {
        kho.restore_free(PhysAddr::new(h.root_table))?;
    }
    for d in inc.domains.iter().filter(|d| !d.deleted) {
        kho.restore_folio(PhysAddr::new(d.top_table_phys))?;
    }
    Ok(inc)
}
