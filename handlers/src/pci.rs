// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The PCI core's live update state: the FLB `"pci"` with `PCI_LUO_FLB_VERSION` 2 in its data
//! (spec `pci/data_v2`, drivers/pci/liveupdate.c as
//! applied), linked by the `vfio-pci-v2` handler ([`crate::vfio_pci`]).
//!
//! The FLB's data is a `struct pci_ser` {version, nr_devices, devices}: `devices` heads a KHO
//! block chain ([`crate::kho_block`]) of `struct pci_dev_ser`, grown a block at a time as
//! devices are preserved. [`pci_liveupdate_preserve`] enters the endpoint once (`EBUSY` the
//! second time) and walks up to its root port, each bridge's `refcount` counting the preserved
//! devices at or below it; an entry whose refcount fell to 0 is reused, and `nr_devices`
//! counts the entries in use. The new kernel refuses data of another version (upstream
//! panics), reads the chain back into a map of the entries with `refcount > 0` (upstream's
//! xarray keyed by `domain << 16 | bdf`), and [`pci_liveupdate_finish`] decrements along the
//! device's path.
//!
//! The model's PCI bus is a per-kernel topology that tests (or `luo simulate`) enumerate with
//! [`Pci::add_device`] in each kernel. Two errors the posted series names without their value are the
//! model's choice: a VF is refused with `EINVAL`, and a preserve after the kexec's device
//! shutdown ([`Pci::device_shutdown`], upstream's shutdown freeze) with `EBUSY`.
//!
//! The FLB is written with `#[liveupdate_flb]` ([`PciFlb`]); its `pci_ser` is rewritten after
//! the preserve through the outgoing data address. A kernel's PCI core is reached through a
//! [`Pci`] handle.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use luo_abi::global::{FlbCell, FlbState, StateCtx};
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::sync::StdBackend;
use luo_abi::{Errno, PhysAddr};
use luo_derive::liveupdate_flb;
use luo_generated::pci::data_v2::{PCI_LUO_FLB_VERSION, pci_dev_ser, pci_ser};
use zerocopy::{FromZeros, IntoBytes};

use crate::iommu::{FlbCalls, lock};
use crate::kho_block::{self, BlockChain};

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

/// The outgoing FLB object: the entries as written and the chain holding them.
struct Out {
    /// Entries in chain order; one at refcount 0 is free for the next device.
    slots: Vec<pci_dev_ser>,
    chain: BlockChain<pci_dev_ser>,
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

/// Rewrites the chain and the `pci_ser` at `data` from `out`.
fn write_out(kho: &dyn KhoService, data: PhysAddr, out: &Out) -> Result<(), Errno> {
    let devices = out.chain.write(kho, &out.slots)?;
    let ser = pci_ser {
        version: PCI_LUO_FLB_VERSION,
        nr_devices: out.slots.iter().filter(|e| e.refcount > 0).count() as u32,
        devices,
    };
    kho.write(data, ser.as_bytes())
}

/// `pci_liveupdate_preserve`: enters the device and bumps every bridge above it.
/// `EINVAL` without an outgoing PCI FLB or for a VF, `ENODEV` if not on the bus, `EBUSY` if
/// already preserved or after [`Pci::device_shutdown`], `ENOSPC` when the chain would pass
/// `KHO_MAX_BLOCKS`.
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
            .position(|e| e.refcount > 0 && e.domain == a.0 && e.bdf == a.1)
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
    let free = out.slots.iter().filter(|e| e.refcount == 0).count();
    out.chain
        .ensure(kho, out.slots.len() + new.saturating_sub(free))?;
    for a in &path {
        match slot(out, *a) {
            Some(i) => {
                out.slots[i].refcount += 1;
            }
            None => {
                let e = pci_dev_ser {
                    domain: a.0,
                    bdf: a.1,
                    refcount: 1,
                };
                match out.slots.iter().position(|e| e.refcount == 0) {
                    Some(i) => out.slots[i] = e,
                    None => out.slots.push(e),
                }
            }
        }
    }
    write_out(kho, data, out)
}

/// `pci_liveupdate_unpreserve`: decrements the device's entry and every bridge above it; an
/// entry at refcount 0 is zeroed and free for the next device (upstream's `memset`).
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
            .find(|e| e.refcount > 0 && e.domain == a.0 && e.bdf == a.1)
        {
            e.refcount -= 1;
            if e.refcount == 0 {
                *e = pci_dev_ser::new_zeroed();
            }
        }
    }
    // The chain only shrinks in use, never in blocks: it fits.
    let _ = write_out(kho, data, &out);
}

/// The entries in use of the outgoing data at `data` (the chain as written, not claimed):
/// `(domain, bdf) -> refcount`; for tests and `luo inspect`. The errors of [`check`].
pub fn decode(kho: &dyn KhoService, data: u64) -> Result<BTreeMap<PciAddr, u16>, Errno> {
    let mut ser = pci_ser::new_zeroed();
    kho.read(PhysAddr::new(data), ser.as_mut_bytes())?;
    let mut entries = Vec::new();
    let mut next = ser.devices;
    let per = kho_block::per_block::<pci_dev_ser>() as u64;
    let mut blocks = 0u64;
    while next != 0 {
        blocks += 1;
        let mut hdr = luo_generated::block::kho_block_header_ser::new_zeroed();
        kho.read(PhysAddr::new(next), hdr.as_mut_bytes())?;
        if hdr.count == 0 || hdr.count > per || blocks > luo_generated::block::KHO_MAX_BLOCKS {
            return Err(Errno::EINVAL);
        }
        for i in 0..hdr.count {
            let mut e = pci_dev_ser::new_zeroed();
            kho.read(PhysAddr::new(next + 16 + 8 * i), e.as_mut_bytes())?;
            entries.push(e);
        }
        next = hdr.next.addr().as_u64();
    }
    check(&ser, &entries)
}

/// Checks a handed-over `pci_ser` with its chain's entries: the version this kernel reads
/// (upstream panics on another), `nr_devices` equal to the entries in use, no device twice.
/// `EINVAL` otherwise. Returns the entries in use.
fn check(ser: &pci_ser, entries: &[pci_dev_ser]) -> Result<BTreeMap<PciAddr, u16>, Errno> {
    if ser.version != PCI_LUO_FLB_VERSION {
        return Err(Errno::EINVAL);
    }
    let mut m = BTreeMap::new();
    for e in entries.iter().filter(|e| e.refcount > 0) {
        if m.insert((e.domain, e.bdf), e.refcount).is_some() {
            return Err(Errno::EINVAL);
        }
    }
    if m.len() != ser.nr_devices as usize {
        return Err(Errno::EINVAL);
    }
    Ok(m)
}

// ---- the FLB ---------------------------------------------------------------------------

/// The FLB `"pci"` (version 2 in its data) of one kernel, with the kernel's PCI bus.
#[liveupdate_flb(compatible = "pci", abi = pci_ser, lock = StdBackend)]
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

    fn preserve(&self, _: &StateCtx<'_>) -> luo_abi::Result<(pci_ser, Outgoing)> {
        lock(&self.bus).calls.preserve += 1;
        // The chain grows as devices are preserved; none yet.
        let out = Out {
            slots: Vec::new(),
            chain: BlockChain::new(),
            freed: false,
        };
        Ok((
            pci_ser {
                version: PCI_LUO_FLB_VERSION,
                nr_devices: 0,
                devices: 0,
            },
            Outgoing(Mutex::new(out)),
        ))
    }

    fn unpreserve(&self, cx: &StateCtx<'_>, _: pci_ser, obj: Arc<Outgoing>) {
        let mut out = lock(&obj.0);
        out.chain.free(cx.kho());
        out.freed = true;
        lock(&self.bus).calls.unpreserve += 1;
    }

    fn retrieve(&self, cx: &StateCtx<'_>, ser: pci_ser) -> luo_abi::Result<Incoming> {
        // The version first: nothing else is read from data of another version.
        if ser.version != PCI_LUO_FLB_VERSION {
            return Err(Errno::EINVAL);
        }
        let entries = kho_block::read_chain::<pci_dev_ser>(cx.kho(), ser.devices)?;
        let m = check(&ser, &entries)?;
        lock(&self.bus).calls.retrieve += 1;
        Ok(Incoming(Mutex::new(m)))
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

/// One kernel's PCI core: its bus and the PCI FLB (linked by the `vfio-pci-v2` handler). A
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
            .filter(|e| e.refcount > 0)
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
