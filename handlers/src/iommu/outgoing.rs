// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The outgoing side: the chains of page-sized arrays the old kernel appends hardware units,
//! domains and devices to, and the preserve/unpreserve calls of the IOMMU core that write them.

use std::collections::HashMap;

use luo_abi::global::FlbCell;
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::iommu::v1::iommu_flb_ser;
use luo_generated::iommu::{
    IOMMU_DEVICE_ARRAY_NR, IOMMU_DOMAIN_ARRAY_NR, IOMMU_HW_ARRAY_NR, IOMMU_INTEL,
    iommu_array_hdr_ser, iommu_dev_map_ser, iommu_device_intel_ser, iommu_device_ser,
    iommu_domain_ser, iommu_hdr_ser, iommu_hw_ser, iommu_intel_ser,
};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use super::{Domain, IommuDevice, IommuFlb, lock};

// ---- the outgoing chains ---------------------------------------------------------------

/// One chain of page-sized arrays, appended to.
pub(super) struct Chain {
    pub(super) pages: Vec<u64>,
    pub(super) nr_last: u64,
    pub(super) cap: u64,
    pub(super) obj_size: u64,
}

impl Chain {
    pub(super) fn new(kho: &dyn KhoService, cap: u64, obj_size: usize) -> Result<Chain, Errno> {
        Ok(Chain {
            pages: vec![kho.alloc_preserve(PAGE_SIZE)?.as_u64()],
            nr_last: 0,
            cap,
            obj_size: obj_size as u64,
        })
    }

    pub(super) fn head(&self) -> u64 {
        self.pages[0]
    }

    pub(super) fn write_hdr(
        kho: &dyn KhoService,
        page: u64,
        next: u64,
        nr: u64,
    ) -> Result<(), Errno> {
        kho.write_obj(
            Phys::new(PhysAddr::new(page)),
            &iommu_array_hdr_ser {
                next_array_phys: next,
                nr_objects: nr,
            },
        )
    }

    /// Appends `obj` and returns its slot's address; a full page chains a new one.
    pub(super) fn append<T: IntoBytes + Immutable>(
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

    pub(super) fn free(&self, kho: &dyn KhoService) {
        for p in &self.pages {
            let _ = kho.unpreserve_free(PhysAddr::new(*p));
        }
    }
}

pub(super) fn update_hdr(
    kho: &dyn KhoService,
    slot: u64,
    f: impl FnOnce(&mut iommu_hdr_ser),
) -> Result<(), Errno> {
    let p = Phys::<iommu_hdr_ser>::new(PhysAddr::new(slot));
    let mut h = kho.read_obj(p)?;
    f(&mut h);
    kho.write_obj(p, &h)
}

pub(super) fn deleted(h: &mut iommu_hdr_ser) {
    h.ref_count = 0;
    h.set_deleted(1);
}

/// The header of a new object: one user, no state bit.
fn new_hdr() -> iommu_hdr_ser {
    let mut h = iommu_hdr_ser::new_zeroed();
    h.ref_count = 1;
    h
}

pub(super) fn release(h: &mut iommu_hdr_ser) {
    let n = h.ref_count.saturating_sub(1);
    h.ref_count = n;
    if n == 0 {
        h.set_deleted(1);
    }
}

pub(super) struct HwOut {
    pub(super) slot: u64,
    pub(super) root_table: u64,
    pub(super) bitmap: [u64; 8],
}

/// The outgoing FLB object: the three chains and what is written in them. Emptied by the
/// FLB's `unpreserve` (guards may outlive it).
pub(super) struct Out {
    pub(super) hw: Chain,
    pub(super) dom: Chain,
    pub(super) dev: Chain,
    pub(super) hws: HashMap<u64, HwOut>,
    /// Domain id -> (slot, top table).
    pub(super) doms: HashMap<u64, (u64, u64)>,
    /// Device -> (slot, domain id).
    pub(super) devs: HashMap<IommuDevice, (u64, u64)>,
    /// Set once unpreserved: nothing may be written to the freed chains any more.
    pub(super) freed: bool,
}

impl Out {
    /// Allocates the three chains; returns the `iommu_flb_ser` naming their heads.
    pub(super) fn new(kho: &dyn KhoService) -> Result<(iommu_flb_ser, Out), Errno> {
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
    pub(super) fn free(&mut self, kho: &dyn KhoService) {
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

/// Runs `f` on the outgoing chains: `EINVAL` without an outgoing IOMMU FLB (no iommufd
/// preserved) or once it was unpreserved.
pub(super) fn with_out<R>(
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
            hdr: new_hdr(),
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
/// `deleted` and unpreserves the page table.
pub fn iommu_unpreserve_domain(flb: &FlbCell<IommuFlb>, kho: &dyn KhoService, d: &Domain) {
    let _ = with_out(flb, |out| {
        release_domain(out, kho, d.id);
        Ok(())
    });
}

/// Drops one reference on a preserved domain; the last one marks its slot deleted and
/// unpreserves its page table.
pub(super) fn release_domain(out: &mut Out, kho: &dyn KhoService, id: u64) {
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
                hdr: new_hdr(),
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
            hdr: new_hdr(),
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

pub(super) fn write_bitmap(
    kho: &dyn KhoService,
    hw_slot: u64,
    bitmap: [u64; 8],
) -> Result<(), Errno> {
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
