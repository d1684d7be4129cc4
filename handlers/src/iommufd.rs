// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `iommufd-v1` file handler (spec `iommufd/v1`, as posted upstream), on a
//! synthetic iommufd ([`Iommufd`]), with the IOMMU FLB ([`crate::iommu`]) linked.
//!
//! The model's iommufd has one IOAS: mappings of a file range at an IOVA
//! ([`Iommufd::ioas_map`]), and hardware page tables ([`Iommufd::hwpt_alloc`]) each with its
//! own domain, whose page table lists the IOAS's mappings. Userspace marks the HWPTs to keep
//! with `IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE {hwpt_id, hwpt_token}`
//! ([`Iommufd::hwpt_mark_preserve`]; a token already used in this iommufd is `EADDRINUSE`;
//! there is no unmark).
//!
//! preserve, as upstream:
//! * every IOAS mapping must be backed by a memfd (a file-backed mapping of anything else, or
//!   a memfd without `F_SEAL_SEAL | F_SEAL_GROW | F_SEAL_SHRINK`, is `EINVAL`), and that memfd
//!   must be preserved in the same session: the core's `liveupdate_get_token_outgoing`, whose
//!   `ENOENT` is returned as is. So the order is memfd, then iommufd;
//! * each marked HWPT's domain is written to the IOMMU FLB (`iommu_preserve_domain`) and
//!   named, with its token, in `struct iommufd_ser` + `nr_hwpts` `struct iommufd_hwpt_ser`
//!   (one KHO allocation, `reclaimed` 0: a variable-length record, the entries written by the
//!   runtime after the header from [`luo_abi::handler::Ctx::set_trailer`]);
//! * the IOAS is then frozen: mapping more is `EBUSY` while preserved (the variant of the
//!   series that freezes it, so nothing unpreserved can be mapped behind LUO's back).
//!
//! After the kexec the RFC-era semantics apply (the 2026 phase-1 series has no retrieve):
//! retrieve reads the HWPT entries from the record the runtime claimed (then releases) and
//! gives a new, empty iommufd; [`Iommufd::hwpt_restore`] (the RFC's restore ioctl) rebuilds a
//! HWPT by token from the domain the IOMMU FLB handed over and marks it reclaimed (in the
//! iommufd: the RFC writes `reclaimed` into the handed-over bytes, which this runtime has
//! already released); `can_finish` is false until every preserved HWPT is reclaimed, so
//! FINISH is `EBUSY` until then (also for a never-retrieved iommufd with HWPTs, whose
//! header `can_finish` reads without claiming the record).
//!
//! The handler is written with `#[liveupdate_handler]` ([`IommufdHandler`]) and registered
//! per kernel with [`register`], which returns the kernel's [`Iommu`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::file::{File, FileKind, FileRef, seals};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration, RetrieveStatus};
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Phys, PhysAddr};
use luo_derive::liveupdate_handler;
use luo_generated::iommufd::v1::{iommufd_hwpt_ser, iommufd_ser};
use zerocopy::{FromZeros, IntoBytes};

use crate::iommu::{self, Domain, HwUnit, Iommu, IommuDevice, IommuFlb, lock};

/// The seals an IOAS mapping's memfd must carry.
pub const REQUIRED_SEALS: u32 = seals::F_SEAL_SEAL | seals::F_SEAL_GROW | seals::F_SEAL_SHRINK;

/// Most HWPTs the new kernel accepts in one iommufd's data.
const MAX_HWPTS: u64 = 1 << 16;

/// One IOAS mapping: `length` bytes of `file` at `iova`.
#[derive(Clone)]
pub struct Mapping {
    /// IO virtual address.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
    /// The file mapped (`IOMMU_IOAS_MAP_FILE`).
    pub file: FileRef,
}

/// A hardware page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hwpt {
    /// Its domain.
    pub domain: Domain,
    /// The hardware unit it was allocated for.
    pub hw: HwUnit,
    /// The token it is marked with for preservation.
    pub token: Option<u64>,
}

/// A HWPT the previous kernel preserved, as its `iommufd_hwpt_ser` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreservedHwpt {
    /// `domain_data`: the domain's slot in the IOMMU FLB.
    pub domain_data: u64,
    /// `token`.
    pub token: u64,
    /// `reclaimed`.
    pub reclaimed: bool,
}

#[derive(Default)]
struct Inner {
    mappings: Vec<Mapping>,
    hwpts: BTreeMap<u32, Hwpt>,
    next_id: u32,
    /// Whether this iommufd is preserved (outgoing).
    preserved: bool,
    /// The HWPTs the previous kernel preserved, read from the data this iommufd was
    /// retrieved from (incoming), with what this kernel reclaimed since.
    incoming: Option<Vec<PreservedHwpt>>,
}

struct Shared {
    iommu: Iommu,
    inner: Mutex<Inner>,
}

impl Drop for Shared {
    /// The last reference to the iommufd is gone: its HWPTs' page tables are freed. KHO
    /// refuses to free a table that is still preserved, which is what the FLB wants.
    fn drop(&mut self) {
        let i = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for h in i.hwpts.values() {
            let _ = self
                .iommu
                .kho()
                .free_folio(PhysAddr::new(h.domain.top_table), 0);
        }
    }
}

/// A synthetic iommufd (`/dev/iommu`): the payload of a [`FileKind::Iommufd`] file. A
/// handle: clones are the same iommufd (a vfio device bound to it keeps one).
#[derive(Clone)]
pub struct Iommufd(Arc<Shared>);

impl Iommufd {
    /// A new iommufd in the kernel of `iommu`.
    pub fn new(iommu: &Iommu) -> Iommufd {
        Iommufd(Arc::new(Shared {
            iommu: iommu.clone(),
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.0.inner)
    }

    fn kho(&self) -> &dyn KhoService {
        self.0.iommu.kho()
    }

    /// The IOMMU core of the iommufd's kernel.
    pub fn iommu(&self) -> &Iommu {
        &self.0.iommu
    }

    /// Whether two handles are the same iommufd.
    pub fn same(&self, other: &Iommufd) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn ranges(i: &Inner) -> Vec<(u64, u64)> {
        i.mappings.iter().map(|m| (m.iova, m.length)).collect()
    }

    /// `IOMMU_IOAS_MAP_FILE`: maps `length` bytes of `file` at `iova` in the IOAS and in
    /// every HWPT's page table. `EINVAL` for an empty or wrapping range, `EEXIST` if it
    /// overlaps a mapping, `EBUSY` while the iommufd is preserved.
    pub fn ioas_map(&self, file: FileRef, iova: u64, length: u64) -> Result<(), Errno> {
        let end = iova.checked_add(length).ok_or(Errno::EINVAL)?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let mut i = self.lock();
        if i.preserved {
            return Err(Errno::EBUSY);
        }
        if i.mappings
            .iter()
            .any(|m| iova < m.iova + m.length && m.iova < end)
        {
            return Err(Errno::EEXIST);
        }
        i.mappings.push(Mapping { iova, length, file });
        let ranges = Self::ranges(&i);
        let r = i
            .hwpts
            .values()
            .try_for_each(|h| iommu::domain_map(self.kho(), h.domain.top_table, &ranges));
        if r.is_err() {
            i.mappings.pop();
            let ranges = Self::ranges(&i);
            for h in i.hwpts.values() {
                let _ = iommu::domain_map(self.kho(), h.domain.top_table, &ranges);
            }
        }
        r
    }

    /// `IOMMU_HWPT_ALLOC`: a new HWPT on `hw`, its page table mapping the IOAS. Returns its
    /// id.
    pub fn hwpt_alloc(&self, hw: HwUnit) -> Result<u32, Errno> {
        let domain = self.iommu().alloc_domain()?;
        let mut i = self.lock();
        if let Err(e) = iommu::domain_map(self.kho(), domain.top_table, &Self::ranges(&i)) {
            let _ = self.kho().free_folio(PhysAddr::new(domain.top_table), 0);
            return Err(e);
        }
        let id = i.next_id;
        i.next_id += 1;
        i.hwpts.insert(
            id,
            Hwpt {
                domain,
                hw,
                token: None,
            },
        );
        Ok(id)
    }

    /// `IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE {hwpt_id, hwpt_token}`. `ENOENT` for an unknown
    /// HWPT, `EADDRINUSE` if a HWPT of this iommufd already has the token, `EBUSY` while
    /// the iommufd is preserved.
    pub fn hwpt_mark_preserve(&self, hwpt_id: u32, token: u64) -> Result<(), Errno> {
        let mut i = self.lock();
        if i.preserved {
            return Err(Errno::EBUSY);
        }
        if !i.hwpts.contains_key(&hwpt_id) {
            return Err(Errno::ENOENT);
        }
        if i.hwpts.values().any(|h| h.token == Some(token)) {
            return Err(Errno::EADDRINUSE);
        }
        if let Some(h) = i.hwpts.get_mut(&hwpt_id) {
            h.token = Some(token);
        }
        Ok(())
    }

    /// The HWPTs: id -> HWPT.
    pub fn hwpts(&self) -> BTreeMap<u32, Hwpt> {
        self.lock().hwpts.clone()
    }

    /// The IOAS mappings.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock().mappings.clone()
    }

    /// The ranges HWPT `hwpt_id`'s page table maps, read from its page.
    pub fn hwpt_ranges(&self, hwpt_id: u32) -> Result<Vec<(u64, u64)>, Errno> {
        let top = self
            .lock()
            .hwpts
            .get(&hwpt_id)
            .ok_or(Errno::ENOENT)?
            .domain
            .top_table;
        iommu::domain_ranges(self.kho(), top)
    }

    /// The HWPTs the previous kernel preserved for this (retrieved) iommufd, as read from
    /// the handed-over data at retrieve, with `reclaimed` set for those rebuilt since.
    /// `EINVAL` for an iommufd that was not retrieved.
    pub fn preserved_hwpts(&self) -> Result<Vec<PreservedHwpt>, Errno> {
        self.lock().incoming.clone().ok_or(Errno::EINVAL)
    }

    /// The RFC's restore ioctl: rebuilds the preserved HWPT marked `token` from its domain
    /// in the IOMMU FLB, marks it reclaimed and returns the new HWPT's id. `EINVAL` for an
    /// iommufd that was not retrieved, `ENOENT` for an unknown token, `EBUSY` if already
    /// reclaimed.
    ///
    /// The RFC sets `reclaimed` in the handed-over bytes; here the runtime claims and releases
    /// the file's record once, at retrieve, so the handler keeps what it read (and what it
    /// reclaimed) in the iommufd instead.
    pub fn hwpt_restore(&self, token: u64, hw: HwUnit) -> Result<u32, Errno> {
        let domain_data = {
            let i = self.lock();
            let h = i
                .incoming
                .as_ref()
                .ok_or(Errno::EINVAL)?
                .iter()
                .find(|h| h.token == token)
                .copied()
                .ok_or(Errno::ENOENT)?;
            if h.reclaimed {
                return Err(Errno::EBUSY);
            }
            h.domain_data
        };
        // Not under the iommufd's lock: this may retrieve the IOMMU FLB.
        let domain = self.iommu().restore_domain(domain_data)?;
        let mut i = self.lock();
        if let Some(h) = i
            .incoming
            .as_mut()
            .and_then(|v| v.iter_mut().find(|h| h.token == token))
        {
            h.reclaimed = true;
        }
        let id = i.next_id;
        i.next_id += 1;
        i.hwpts.insert(
            id,
            Hwpt {
                domain,
                hw,
                token: Some(token),
            },
        );
        Ok(id)
    }

    /// What the marked HWPTs map, read from their page tables: token -> ranges. Record it
    /// before the kexec and compare with [`Iommufd::restore_all`] after.
    pub fn marked_ranges(&self) -> Result<BTreeMap<u64, Vec<(u64, u64)>>, Errno> {
        let hwpts = self.hwpts();
        hwpts
            .values()
            .filter_map(|h| h.token.map(|t| (t, h.domain.top_table)))
            .map(|(t, top)| Ok((t, iommu::domain_ranges(self.kho(), top)?)))
            .collect()
    }

    /// Rebuilds every HWPT the previous kernel preserved (and that is not yet reclaimed) on
    /// `hw`, and returns what each maps, read from its restored page table: token -> ranges.
    pub fn restore_all(&self, hw: HwUnit) -> Result<BTreeMap<u64, Vec<(u64, u64)>>, Errno> {
        let mut out = BTreeMap::new();
        for h in self.preserved_hwpts()? {
            if h.reclaimed {
                continue;
            }
            let id = self.hwpt_restore(h.token, hw)?;
            out.insert(h.token, self.hwpt_ranges(id)?);
        }
        Ok(out)
    }

    /// The preserve half of `iommufd_device_preserve`: records `dev`, attached to HWPT
    /// `hwpt_id` of this iommufd, in the IOMMU FLB. `ENOENT` for an unknown HWPT; `EINVAL`
    /// without an outgoing IOMMU FLB (no iommufd preserved) or if the HWPT's domain is not
    /// preserved (the HWPT was not marked, or its iommufd is not preserved).
    pub fn device_preserve(&self, hwpt_id: u32, dev: &IommuDevice) -> Result<(), Errno> {
        let d = self.lock().hwpts.get(&hwpt_id).ok_or(Errno::ENOENT)?.domain;
        self.iommu().preserve_device(dev, d.id)
    }

    /// Undoes [`Iommufd::device_preserve`].
    pub fn device_unpreserve(&self, dev: &IommuDevice) {
        self.iommu().unpreserve_device(dev);
    }
}

fn hwpt_at(data: u64, i: u64) -> Phys<iommufd_hwpt_ser> {
    Phys::new(PhysAddr::new(
        data + size_of::<iommufd_ser>() as u64 + i * size_of::<iommufd_hwpt_ser>() as u64,
    ))
}

fn preserved_hwpt(e: &iommufd_hwpt_ser) -> PreservedHwpt {
    PreservedHwpt {
        domain_data: e.domain_data.addr().as_u64(),
        token: e.token,
        reclaimed: e.reclaimed != 0,
    }
}

/// Reads an `iommufd_ser` and its HWPT array from memory (`EINVAL` if `nr_hwpts` is absurd):
/// what a kernel handed over, before anything claims it.
pub fn decode(kho: &dyn KhoService, data: u64) -> Result<Vec<PreservedHwpt>, Errno> {
    let h: iommufd_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
    if h.nr_hwpts > MAX_HWPTS {
        return Err(Errno::EINVAL);
    }
    (0..h.nr_hwpts)
        .map(|i| Ok(preserved_hwpt(&kho.read_obj(hwpt_at(data, i))?)))
        .collect()
}

// ---- the handler -----------------------------------------------------------------------

/// The `iommufd-v1` handler, linking the IOMMU FLB. Its files may depend on the memfds their
/// IOAS maps, whichever memfd version the kernel writes. Keeps the kernel's [`Iommu`] for
/// the iommufds it retrieves.
#[liveupdate_handler(
    compatible = "iommufd-v1",
    abi = iommufd_ser,
    flbs = [IommuFlb],
    depends_on = ["memfd", "memfd-v2", "memfd-v1"],
)]
pub struct IommufdHandler {
    iommu: Iommu,
}

/// The iommufd behind a file (`None` if it is not one).
fn iommufd_of(f: &dyn File) -> Option<&Iommufd> {
    (f.kind() == FileKind::Iommufd)
        .then(|| f.payload()?.downcast_ref::<Iommufd>())
        .flatten()
}

/// Checks one IOAS mapping: a sealed memfd preserved in the same session
/// (`liveupdate_get_token_outgoing`: `ENOENT` unless it is; the core also records the
/// iommufd as depending on it, so it is unpreserved and finished before the memfd).
fn check_mapping(cx: &Ctx<'_, IommufdHandler>, m: &Mapping) -> Result<(), Errno> {
    let shmem = m.file.as_shmem().ok_or(Errno::EINVAL)?;
    if shmem.seals() & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(Errno::EINVAL);
    }
    cx.session().get_token_outgoing(&*m.file).map(|_| ())
}

#[liveupdate_handler]
impl FileHandler for IommufdHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        iommufd_of(file).is_some()
    }

    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> luo_abi::Result<(iommufd_ser, ())> {
        let fd = iommufd_of(file).ok_or(Errno::EINVAL)?;
        let mut i = fd.lock();
        if i.preserved {
            return Err(Errno::EBUSY);
        }
        for m in &i.mappings {
            check_mapping(cx, m)?;
        }
        let (flb, kho) = (cx.global::<IommuFlb>(), cx.kho());
        let marked: Vec<Hwpt> = i
            .hwpts
            .values()
            .filter(|h| h.token.is_some())
            .copied()
            .collect();
        let mut done: Vec<Domain> = Vec::new();
        let mut entries = Vec::with_capacity(marked.len() * size_of::<iommufd_hwpt_ser>());
        for h in &marked {
            match iommu::iommu_preserve_domain(flb, kho, &h.domain) {
                Ok(p) => {
                    done.push(h.domain);
                    let mut e = iommufd_hwpt_ser::new_zeroed();
                    e.domain_data = p;
                    e.token = h.token.unwrap_or_default();
                    entries.extend_from_slice(e.as_bytes());
                }
                Err(e) => {
                    for d in &done {
                        iommu::iommu_unpreserve_domain(flb, kho, d);
                    }
                    return Err(e);
                }
            }
        }
        // `struct iommufd_ser` then its `nr_hwpts` entries, in one allocation.
        cx.set_trailer(entries);
        i.preserved = true;
        Ok((
            iommufd_ser {
                nr_hwpts: marked.len() as u64,
            },
            (),
        ))
    }

    fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, _: iommufd_ser, _: ()) {
        let Some(fd) = iommufd_of(file) else { return };
        let mut i = fd.lock();
        for h in i.hwpts.values().filter(|h| h.token.is_some()) {
            iommu::iommu_unpreserve_domain(cx.global::<IommuFlb>(), cx.kho(), &h.domain);
        }
        i.preserved = false;
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: iommufd_ser) -> luo_abi::Result<FileRef> {
        // Validated before anything is created.
        if ser.nr_hwpts > MAX_HWPTS {
            return Err(Errno::EINVAL);
        }
        let n = usize::try_from(ser.nr_hwpts).map_err(|_| Errno::EINVAL)?;
        let hwpts = cx
            .record_entries::<iommufd_hwpt_ser>(n)?
            .iter()
            .map(preserved_hwpt)
            .collect();
        let fd = Iommufd::new(&self.iommu);
        fd.lock().incoming = Some(hwpts);
        cx.open_synthetic(FileKind::Iommufd, "iommufd", Box::new(fd))
    }

    fn can_finish(
        &self,
        cx: &Ctx<'_, Self>,
        file: Option<&dyn File>,
        status: RetrieveStatus,
    ) -> bool {
        // RFC-era: every preserved HWPT must have been rebuilt, retrieved or not.
        match status {
            RetrieveStatus::Retrieved => file.and_then(iommufd_of).is_some_and(|fd| {
                fd.lock()
                    .incoming
                    .as_ref()
                    .is_none_or(|v| v.iter().all(|h| h.reclaimed))
            }),
            // Nothing of a file never retrieved was rebuilt: only one without HWPTs may go.
            RetrieveStatus::NotRetrieved => {
                let mut nr = [0u8; 8];
                cx.read_record(0, &mut nr).is_ok() && u64::from_le_bytes(nr) == 0
            }
            RetrieveStatus::Failed(_) => false,
        }
    }

    fn finish(&self, _: &Ctx<'_, Self>, how: Finish<'_, iommufd_ser>) {
        if let Finish::Retrieved(f) = how
            && let Some(fd) = iommufd_of(f)
        {
            fd.lock().incoming = None;
        }
    }
}

/// Registers the `iommufd-v1` handler in `k` with a new IOMMU FLB linked to it
/// (upstream: `iommu_liveupdate_register_flb`); returns the kernel's IOMMU core. Once per
/// boot, after the memfd handler.
pub fn register(k: &impl Registry) -> Result<Iommu, Errno> {
    let iommu = Iommu::new(k);
    let handler = IommufdHandler {
        iommu: iommu.clone(),
    };
    k.register_handler(Registration::new(
        handler,
        k.host(),
        (Arc::clone(iommu.flb()),),
    ))?;
    Ok(iommu)
}

/// Opens a new iommufd in the kernel of `iommu`: a convenience for tests and `luo simulate`,
/// `open` being e.g. `|kind, name, payload| kernel.open_synthetic(kind, name, payload)`.
pub fn open<T>(
    iommu: &Iommu,
    open: impl FnOnce(FileKind, &str, Box<dyn std::any::Any + Send + Sync>) -> Result<T, Errno>,
) -> Result<T, Errno> {
    open(FileKind::Iommufd, "iommufd", Box::new(Iommufd::new(iommu)))
}
