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
//! [`add_device`] in each kernel. Two errors §8c names without their value are the model's
//! choice: a VF is refused with `EINVAL`, and a preserve after the kexec's device shutdown
//! ([`device_shutdown`], upstream's shutdown freeze) with `EBUSY`.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};

use luo_abi::kho::KhoExt;
use luo_abi::{Errno, Phys, PhysAddr};
use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_flb_op_args, liveupdate_flb_ops,
};
use luo_generated::pci::v3::{PCI_LUO_FLB_COMPATIBLE, pci_dev_ser, pci_ser};

use crate::host::{FlbOps, StaticFlb, host, rc};
use crate::iommu::{FlbCalls, Kho, PerKernel};

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

/// The outgoing FLB data.
struct Out {
    data: u64,
    max: u32,
    /// Slot by device, in slot order.
    slots: Vec<pci_dev_ser>,
}

#[derive(Default)]
struct St {
    topo: BTreeMap<PciAddr, PciDev>,
    calls: FlbCalls,
    out: Option<Out>,
    shutdown: bool,
    inc: Option<BTreeMap<PciAddr, u16>>,
}

static STATE: PerKernel<St> = PerKernel::new();

/// Adds a function to the current kernel's PCI bus (enumeration). `EEXIST` if present,
/// `EINVAL` if `parent` is not a bridge of the same domain.
pub fn add_device(domain: u32, bdf: u16, parent: Option<u16>, kind: PciKind) -> Result<(), Errno> {
    STATE
        .with(|s, _| {
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
        })
        .and_then(|r| r)
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

fn write_out(kho: &Kho, out: &Out) -> Result<(), Errno> {
    let mut buf = Vec::with_capacity(8 + 8 * out.slots.len());
    buf.extend_from_slice(zerocopy::IntoBytes::as_bytes(&pci_ser {
        max_nr_devices: out.max,
        nr_devices: out.slots.len() as u32,
    }));
    for e in &out.slots {
        buf.extend_from_slice(zerocopy::IntoBytes::as_bytes(e));
    }
    kho.write(PhysAddr::new(out.data), &buf)
}

/// `pci_liveupdate_preserve`: enters the device and bumps every bridge above it.
/// `EINVAL` without an outgoing PCI FLB or for a VF, `ENODEV` if not on the bus, `EBUSY` if
/// already preserved or after [`device_shutdown`], `ENOSPC` when the array is full.
pub fn pci_liveupdate_preserve(domain: u32, bdf: u16) -> Result<(), Errno> {
    STATE
        .with(|s, kho| {
            if s.shutdown {
                return Err(Errno::EBUSY);
            }
            let out = s.out.as_mut().ok_or(Errno::EINVAL)?;
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
            if let Some(i) = slot(out, path[0])
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
            write_out(kho, out)
        })
        .and_then(|r| r)
}

/// `pci_liveupdate_unpreserve`: decrements the device's entry and every bridge above it
/// (entries stay, at refcount 0: slots are not reused for other devices).
pub fn pci_liveupdate_unpreserve(domain: u32, bdf: u16) {
    let _ = STATE.with(|s, kho| {
        let (Some(out), Ok(path)) = (s.out.as_mut(), path(&s.topo, (domain, bdf))) else {
            return;
        };
        for a in path {
            if let Some(e) = out
                .slots
                .iter_mut()
                .find(|e| e.domain == a.0 && e.bdf == a.1)
            {
                e.refcount = e.refcount.saturating_sub(1);
            }
        }
        let _ = write_out(kho, out);
    });
}

/// The kexec's device shutdown (`pci_device_shutdown` after `liveupdate_reboot`): from now on
/// the PCI core refuses to preserve devices.
pub fn device_shutdown() -> Result<(), Errno> {
    STATE.with(|s, _| s.shutdown = true)
}

/// The outgoing entries as written to the FLB data: `(domain, bdf) -> refcount`.
pub fn outgoing() -> Result<BTreeMap<PciAddr, u16>, Errno> {
    STATE.with(|s, _| {
        s.out
            .as_ref()
            .map(|o| {
                o.slots
                    .iter()
                    .map(|e| ((e.domain, e.bdf), e.refcount))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The outgoing FLB data's address (`struct pci_ser`), if preserved.
pub fn outgoing_data() -> Result<Option<u64>, Errno> {
    STATE.with(|s, _| s.out.as_ref().map(|o| o.data))
}

/// Largest array the new kernel accepts (the PCI address space: 2^16 functions per domain,
/// a few domains).
const MAX_DEVICES: u32 = 1 << 20;

/// Reads a `pci_ser` and its entries: `(domain, bdf) -> refcount`, every entry; and the
/// array's capacity. `EINVAL` if `nr_devices > max_nr_devices` or a device appears twice.
pub fn decode(kho: &Kho, data: u64) -> Result<(u32, BTreeMap<PciAddr, u16>), Errno> {
    let h: pci_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
    if h.nr_devices > h.max_nr_devices || h.max_nr_devices > MAX_DEVICES {
        return Err(Errno::EINVAL);
    }
    let mut m = BTreeMap::new();
    for i in 0..u64::from(h.nr_devices) {
        let e: pci_dev_ser = kho.read_obj(Phys::new(PhysAddr::new(data + 8 + 8 * i)))?;
        if m.insert((e.domain, e.bdf), e.refcount).is_some() {
            return Err(Errno::EINVAL);
        }
    }
    Ok((h.max_nr_devices, m))
}

// ---- the FLB ---------------------------------------------------------------------------

static FLB_OPS: FlbOps = FlbOps(liveupdate_flb_ops {
    preserve: Some(flb_preserve),
    unpreserve: Some(flb_unpreserve),
    retrieve: Some(flb_retrieve),
    finish: Some(flb_finish),
    owner: std::ptr::null_mut(),
});

/// The FLB `"pci-v3"`.
pub(crate) static PCI_FLB: StaticFlb = StaticFlb::new(&FLB_OPS, PCI_LUO_FLB_COMPATIBLE);

unsafe extern "C" fn flb_preserve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc(STATE
        .with(|s, kho| {
            // Sized for every present device: no allocation at device preserve time.
            let max = u32::try_from(s.topo.len()).map_err(|_| Errno::ENOSPC)?;
            let data = kho.alloc_preserve(8 + 8 * max as usize)?.as_u64();
            let out = Out {
                data,
                max,
                slots: Vec::new(),
            };
            if let Err(e) = write_out(kho, &out) {
                let _ = kho.unpreserve_free(PhysAddr::new(data));
                return Err(e);
            }
            a.data = data;
            a.obj = PCI_FLB.as_ptr().cast::<c_void>();
            s.out = Some(out);
            s.calls.preserve += 1;
            Ok(())
        })
        .and_then(|r| r))
}

unsafe extern "C" fn flb_unpreserve(_a: *mut liveupdate_flb_op_args) {
    let _ = STATE.with(|s, kho| {
        if let Some(o) = s.out.take() {
            let _ = kho.unpreserve_free(PhysAddr::new(o.data));
        }
        s.calls.unpreserve += 1;
    });
}

unsafe extern "C" fn flb_retrieve(a: *mut liveupdate_flb_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc(STATE
        .with(|s, kho| {
            let (_, m) = decode(kho, a.data)?;
            kho.restore_free(PhysAddr::new(a.data))?;
            s.inc = Some(m.into_iter().filter(|(_, r)| *r > 0).collect());
            s.calls.retrieve += 1;
            a.obj = PCI_FLB.as_ptr().cast::<c_void>();
            Ok(())
        })
        .and_then(|r| r))
}

unsafe extern "C" fn flb_finish(_a: *mut liveupdate_flb_op_args) {
    let _ = STATE.with(|s, _| {
        s.inc = None;
        s.calls.finish += 1;
    });
}

/// Links the PCI FLB to `fh` (upstream: `pci_liveupdate_register_flb`); keeps the current
/// kernel's topology, resets the rest.
pub(crate) fn register_flb(fh: *mut liveupdate_file_handler) -> Result<(), Errno> {
    STATE.with(|s, _| {
        *s = St {
            topo: std::mem::take(&mut s.topo),
            ..St::default()
        }
    })?;
    // SAFETY: `'static` descriptors; the handler is registered by the caller.
    unsafe { host()?.register_flb(fh, PCI_FLB.as_ptr()) }
}

/// Forgets the current kernel's PCI state, topology included (a new boot).
pub fn reset() -> Result<(), Errno> {
    STATE.reset()
}

/// The PCI FLB's callbacks in the current kernel so far.
pub fn flb_calls() -> Result<FlbCalls, Errno> {
    STATE.with(|s, _| s.calls)
}

/// `liveupdate_flb_get_incoming` on the PCI FLB: the incoming entries with `refcount > 0`.
/// Pair with [`put_incoming`].
pub fn get_incoming() -> Result<BTreeMap<PciAddr, u16>, Errno> {
    host()?.flb_get_incoming(PCI_FLB.as_ptr())?;
    match STATE.with(|s, _| s.inc.clone()) {
        Ok(Some(m)) => Ok(m),
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

/// `liveupdate_flb_put_incoming` on the PCI FLB.
pub fn put_incoming() {
    if let Ok(h) = host() {
        h.flb_put_incoming(PCI_FLB.as_ptr());
    }
}

/// `pci_liveupdate_finish`: the device is done with; decrements its entry and every bridge
/// above it (the path from this kernel's bus, or the entry alone if it was not enumerated).
/// `ENOENT` if the device was not handed over (or is already at 0).
pub fn pci_liveupdate_finish(domain: u32, bdf: u16) -> Result<(), Errno> {
    get_incoming()?;
    let r = STATE
        .with(|s, _| {
            let inc = s.inc.as_mut().ok_or(Errno::ENODATA)?;
            if !inc.contains_key(&(domain, bdf)) {
                return Err(Errno::ENOENT);
            }
            let path = path(&s.topo, (domain, bdf)).unwrap_or_else(|_| vec![(domain, bdf)]);
            for a in path {
                if let Some(r) = inc.get_mut(&a) {
                    *r = r.saturating_sub(1);
                    if *r == 0 {
                        inc.remove(&a);
                    }
                }
            }
            Ok(())
        })
        .and_then(|r| r);
    put_incoming();
    r
}
