// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The PCI core's live update state: the FLB `"pci-v3"` (spec `pci/v3`,
//! `reference/luo-upstream.md` §8c), linked by the `vfio-pci-v1` handler
//! ([`crate::vfio_pci`]).
//!
//! The FLB's data is one KHO allocation: a `struct pci_ser` followed by `max_nr_devices`
//! `struct pci_dev_ser`, the array sized at FLB preserve for every PCI device present. As in
//! v6+ of the series, [`pci_liveupdate_preserve`] enters the endpoint once (`EBUSY` the second
//! time) and walks up to its root port, each bridge's `refcount` counting the preserved
//! devices at or below it; `ENOSPC` when the array is full. The new kernel reads the array
//! back into a map of the entries with `refcount > 0` (upstream's xarray keyed by
//! `domain << 16 | bdf`), and [`pci_liveupdate_finish`] decrements along the device's path.
//!
//! The model's PCI bus is a per-kernel topology that tests (or `luo simulate`) enumerate with
//! [`Pci::add_device`] in each kernel. Two errors §8c names without their value are the
//! model's choice: a VF is refused with `EINVAL`, and a preserve after the kexec's device
//! shutdown ([`Pci::device_shutdown`], upstream's shutdown freeze) with `EBUSY`.
//!
//! The FLB is written with `#[liveupdate_flb]` ([`PciFlb`]); its data is a variable-length
//! record (`StateCtx::reserve_trailer` at preserve) rewritten after the preserve through
//! `FlbCell::outgoing_data`. A kernel's PCI core is reached through a [`Pci`] handle.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::sync::StdBackend;
use luo_abi::{Errno, PhysAddr};
use luo_derive::liveupdate_flb;
use luo_generated::pci::v3::{pci_dev_ser, pci_ser};
use zerocopy::{FromZeros, IntoBytes};

use crate::iommu::{FlbCalls, lock};

/// What a PCI function is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciKind {
    /// An endpoint (physical function).
    Endpoint,
    /// A bridge or root port: other functions sit below it.
    Bridge,
    /// A virtual function (SR-IOV); never preserved.
    Vf,
}

/// A PCI function's address: domain (segment) and bus << 8 | devfn.
pub type PciAddr = (u32, u16);

#[derive(Clone, Copy, Debug)]
struct PciDev {
    parent: Option<u16>,
    kind: PciKind,
}

/// The outgoing FLB object: the array's capacity and its entries as written.
struct Out {
    max: u32,
    /// Slot by device, in slot order.
    slots: Vec<pci_dev_ser>,
    /// Set once unpreserved: the data is freed.
    freed: bool,
}

/// The PCI core of one kernel: its bus, the FLB's callback counts, whether the kexec's
/// device shutdown ran.
#[derive(Default)]
struct Bus {
    topo: BTreeMap<PciAddr, PciDev>,
    calls: FlbCalls,
    shutdown: bool,
}

/// The device and the bridges above it, up to its root port (`ENODEV` if not on the bus).
fn path(topo: &BTreeMap<PciAddr, PciDev>, at: PciAddr) -> Result<Vec<PciAddr>, Errno> {
    let mut p = vec![at];
    let mut d = topo.get(&at).ok_or(Errno::ENODEV)?;
    while let Some(up) = d.parent {
        if p.len() > topo.len() {
            return Err(Errno::EINVAL);
        }
        p.push((at.0, up));
        d = topo.get(&(at.0, up)).ok_or(Errno::ENODEV)?;
    }
    Ok(p)
}

fn write_out(kho: &dyn KhoService, data: PhysAddr, out: &Out) -> Result<(), Errno> {
    let mut buf = Vec::with_capacity(8 + 8 * out.slots.len());
    buf.extend_from_slice(zerocopy::IntoBytes::as_bytes(&pci_ser {
        max_nr_devices: out.max,
        nr_devices: out.slots.len() as u32,
    }));
    for e in &out.slots {
        buf.extend_from_slice(zerocopy::IntoBytes::as_bytes(e));
    }
    kho.write(data, &buf)
}

/// `pci_liveupdate_preserve`: enters the device and bumps every bridge above it.
/// `EINVAL` without an outgoing PCI FLB or for a VF, `ENODEV` if not on the bus, `EBUSY` if
/// already preserved or after [`Pci::device_shutdown`], `ENOSPC` when the array is full.
pub fn pci_liveupdate_preserve(
    flb: &FlbCell<PciFlb>,
    kho: &dyn KhoService,
    domain: u32,
    bdf: u16,
) -> Result<(), Errno> {
    // The outgoing object first, without the bus lock: getting it may ask the core, whose
    // FLB preserve takes the bus lock.
    let g = outgoing(flb)?;
    let s = lock(&flb.flb().bus);
    if s.shutdown {
        return Err(Errno::EBUSY);
    }
    let mut out = lock(&g.0);
    let data = match flb.outgoing_data() {
        Some(d) if !out.freed => d,
        _ => return Err(Errno::EINVAL),
    };
    let out = &mut *out;
    let dev = s.topo.get(&(domain, bdf)).ok_or(Errno::ENODEV)?;
    if dev.kind == PciKind::Vf {
        return Err(Errno::EINVAL);
    }
    let path = path(&s.topo, (domain, bdf))?;
    let slot = |out: &Out, a: PciAddr| {
        out.slots
            .iter()
            .position(|e| e.domain == a.0 && e.bdf == a.1)
    };
    if let Some(i) = path.first().and_then(|a| slot(out, *a))
        && out.slots[i].refcount > 0
    {
        return Err(Errno::EBUSY);
    }
    if path
        .iter()
        .any(|a| slot(out, *a).is_some_and(|i| out.slots[i].refcount == u16::MAX))
    {
        return Err(Errno::EOVERFLOW);
    }
    let new = path.iter().filter(|a| slot(out, **a).is_none()).count();
    if out.slots.len() + new > out.max as usize {
        return Err(Errno::ENOSPC);
    }
    for a in &path {
        match slot(out, *a) {
            Some(i) => {
                out.slots[i].refcount += 1;
            }
            None => out.slots.push(pci_dev_ser {
                domain: a.0,
                bdf: a.1,
                refcount: 1,
            }),
        }
    }
    write_out(kho, data, out)
}

/// `pci_liveupdate_unpreserve`: decrements the device's entry and every bridge above it
/// (entries stay, at refcount 0: slots are not reused for other devices).
pub fn pci_liveupdate_unpreserve(
    flb: &FlbCell<PciFlb>,
    kho: &dyn KhoService,
    domain: u32,
    bdf: u16,
) {
    let Ok(g) = outgoing(flb) else { return };
    let s = lock(&flb.flb().bus);
    let mut out = lock(&g.0);
    let (Some(data), Ok(path)) = (flb.outgoing_data(), path(&s.topo, (domain, bdf))) else {
        return;
    };
    if out.freed {
        return;
    }
    for a in path {
        if let Some(e) = out
            .slots
            .iter_mut()
            .find(|e| e.domain == a.0 && e.bdf == a.1)
        {
            e.refcount = e.refcount.saturating_sub(1);
        }
        let _ = write_out(kho, data, &out);
    }
}

/// Largest array the new kernel accepts (the PCI address space: 2^16 functions per domain,
/// a few domains).
const MAX_DEVICES: u32 = 1 << 20;

/// Reads a `pci_ser` and its entries: `(domain, bdf) -> refcount`, every entry; and the
/// array's capacity. `EINVAL` if `nr_devices > max_nr_devices` or a device appears twice.
pub fn decode(kho: &dyn KhoService, data: u64) -> Result<(u32, BTreeMap<PciAddr, u16>), Errno> {
    decode_with(|off, buf| kho.read(PhysAddr::new(data + off as u64), buf))
}

/// [`decode`] through `read(offset, buf)`: in the FLB's `retrieve`, the bounded reader of
/// the claimed record ([`StateCtx::read_record`]).
fn decode_with(
    read: impl Fn(usize, &mut [u8]) -> Result<(), Errno>,
) -> Result<(u32, BTreeMap<PciAddr, u16>), Errno> {
    let mut h = pci_ser::new_zeroed();
    read(0, h.as_mut_bytes())?;
    if h.nr_devices > h.max_nr_devices || h.max_nr_devices > MAX_DEVICES {
        return Err(Errno::EINVAL);
    }
    let mut m = BTreeMap::new();
    for i in 0..h.nr_devices as usize {
        let mut e = pci_dev_ser::new_zeroed();
        read(
            size_of::<pci_ser>() + i * size_of::<pci_dev_ser>(),
            e.as_mut_bytes(),
        )?;
        if m.insert((e.domain, e.bdf), e.refcount).is_some() {
            return Err(Errno::EINVAL);
        }
    }
    Ok((h.max_nr_devices, m))
}

// ---- the FLB ---------------------------------------------------------------------------

/// The FLB `"pci-v3"` of one kernel, with the kernel's PCI bus.
#[liveupdate_flb(compatible = "pci-v3", abi = pci_ser, lock = StdBackend)]
#[derive(Default)]
pub struct PciFlb {
    bus: Mutex<Bus>,
}

/// The PCI FLB's outgoing object (the array being written).
pub struct Outgoing(Mutex<Out>);

/// The PCI FLB's incoming object: the entries with `refcount > 0`, decremented by
/// [`pci_liveupdate_finish`].
pub struct Incoming(Mutex<BTreeMap<PciAddr, u16>>);

#[liveupdate_flb]
impl FlbState for PciFlb {
    type Outgoing = Outgoing;
    type Incoming = Incoming;

    fn preserve(&self, cx: &StateCtx<'_>) -> luo_abi::Result<(pci_ser, Outgoing)> {
        let mut s = lock(&self.bus);
        // Sized for every present device: no allocation at device preserve time. The
        // entries follow the header in the same allocation (a variable-length record).
        let max = u32::try_from(s.topo.len()).map_err(|_| Errno::ENOSPC)?;
        cx.reserve_trailer(size_of::<pci_dev_ser>() * max as usize);
        s.calls.preserve += 1;
        let out = Out {
            max,
            slots: Vec::new(),
            freed: false,
        };
        Ok((
            pci_ser {
                max_nr_devices: max,
                nr_devices: 0,
            },
            Outgoing(Mutex::new(out)),
        ))
    }

    fn unpreserve(&self, _: &StateCtx<'_>, _: pci_ser, obj: Arc<Outgoing>) {
        lock(&obj.0).freed = true;
        lock(&self.bus).calls.unpreserve += 1;
    }

    fn retrieve(&self, cx: &StateCtx<'_>, _: pci_ser) -> luo_abi::Result<Incoming> {
        let (_, m) = decode_with(|off, buf| cx.read_record(off, buf))?;
        lock(&self.bus).calls.retrieve += 1;
        Ok(Incoming(Mutex::new(
            m.into_iter().filter(|(_, r)| *r > 0).collect(),
        )))
    }

    fn finish(&self, _: &StateCtx<'_>, _: Arc<Incoming>) {
        lock(&self.bus).calls.finish += 1;
    }
}

/// Whether `(domain, bdf)` is among the incoming entries (`refcount > 0`).
pub fn incoming_has(inc: &Incoming, domain: u32, bdf: u16) -> bool {
    lock(&inc.0).contains_key(&(domain, bdf))
}

/// The outgoing object: `EINVAL` without an outgoing PCI FLB.
fn outgoing(flb: &FlbCell<PciFlb>) -> Result<luo_abi::global::FlbOutgoing<'_, PciFlb>, Errno> {
    flb.get_outgoing().map_err(|e| match e {
        Errno::ENODATA | Errno::ENOENT => Errno::EINVAL,
        e => e,
    })
}

/// One kernel's PCI core: its bus and the PCI FLB (linked by the `vfio-pci-v1` handler). A
/// handle: clones are the same FLB.
#[derive(Clone)]
pub struct Pci {
    flb: Arc<FlbCell<PciFlb>>,
    host: Arc<dyn LuoHost>,
}

impl Pci {
    /// A new PCI core with an empty bus and its FLB, run by `k`; link the FLB by registering
    /// the vfio-pci handler with it ([`crate::vfio_pci::register`]).
    pub fn new(k: &impl Registry) -> Pci {
        Pci {
            flb: k.new_flb(PciFlb::default()),
            host: k.host(),
        }
    }

    /// The FLB's cell (what a handler links in `flbs = [PciFlb]`).
    pub fn flb(&self) -> &Arc<FlbCell<PciFlb>> {
        &self.flb
    }

    /// Adds a function to the bus (enumeration). `EEXIST` if present, `EINVAL` if `parent`
    /// is not a bridge of the same domain.
    pub fn add_device(
        &self,
        domain: u32,
        bdf: u16,
        parent: Option<u16>,
        kind: PciKind,
    ) -> Result<(), Errno> {
        let mut s = lock(&self.flb.flb().bus);
        if s.topo.contains_key(&(domain, bdf)) {
            return Err(Errno::EEXIST);
        }
        if let Some(p) = parent
            && s.topo.get(&(domain, p)).map(|d| d.kind) != Some(PciKind::Bridge)
        {
            return Err(Errno::EINVAL);
        }
        s.topo.insert((domain, bdf), PciDev { parent, kind });
        Ok(())
    }

    /// The kexec's device shutdown (`pci_device_shutdown` after `liveupdate_reboot`): from
    /// now on the PCI core refuses to preserve devices.
    pub fn device_shutdown(&self) {
        lock(&self.flb.flb().bus).shutdown = true;
    }

    /// The outgoing entries as written to the FLB data: `(domain, bdf) -> refcount` (empty
    /// while not preserved).
    pub fn outgoing(&self) -> BTreeMap<PciAddr, u16> {
        let Ok(g) = self.flb.get_outgoing() else {
            return BTreeMap::new();
        };
        let out = lock(&g.0);
        if out.freed {
            return BTreeMap::new();
        }
        out.slots
            .iter()
            .map(|e| ((e.domain, e.bdf), e.refcount))
            .collect()
    }

    /// The outgoing FLB data's address (`struct pci_ser`), if preserved.
    pub fn outgoing_data(&self) -> Option<u64> {
        self.flb.outgoing_data().map(PhysAddr::as_u64)
    }

    /// The PCI FLB's callbacks in this kernel so far.
    pub fn flb_calls(&self) -> FlbCalls {
        lock(&self.flb.flb().bus).calls
    }

    /// `liveupdate_flb_get_incoming` on the PCI FLB: the incoming entries with
    /// `refcount > 0` (the reference is put back before returning).
    pub fn get_incoming(&self) -> Result<BTreeMap<PciAddr, u16>, Errno> {
        let g = self.flb.get_incoming()?;
        Ok(lock(&g.0).clone())
    }

    /// [`pci_liveupdate_preserve`] on this kernel's FLB.
    pub fn preserve(&self, domain: u32, bdf: u16) -> Result<(), Errno> {
        pci_liveupdate_preserve(&self.flb, self.host.kho(), domain, bdf)
    }

    /// [`pci_liveupdate_unpreserve`] on this kernel's FLB.
    pub fn unpreserve(&self, domain: u32, bdf: u16) {
        pci_liveupdate_unpreserve(&self.flb, self.host.kho(), domain, bdf)
    }

    /// [`pci_liveupdate_finish`] on this kernel's FLB.
    pub fn finish(&self, domain: u32, bdf: u16) -> Result<(), Errno> {
        pci_liveupdate_finish(&self.flb, domain, bdf)
    }
}

/// `pci_liveupdate_finish`: the device is done with; decrements its entry and every bridge
/// above it (the path from this kernel's bus, or the entry alone if it was not enumerated).
/// `ENOENT` if the device was not handed over (or is already at 0).
pub fn pci_liveupdate_finish(flb: &FlbCell<PciFlb>, domain: u32, bdf: u16) -> Result<(), Errno> {
    let g = flb.get_incoming()?;
    let path =
        path(&lock(&flb.flb().bus).topo, (domain, bdf)).unwrap_or_else(|_| vec![(domain, bdf)]);
    let mut inc = lock(&g.0);
    if !inc.contains_key(&(domain, bdf)) {
        return Err(Errno::ENOENT);
    }
    for a in path {
        if let Some(r) = inc.get_mut(&a) {
            *r = r.saturating_sub(1);
            if *r == 0 {
                inc.remove(&a);
            }
        }
    }
    Ok(())
}
