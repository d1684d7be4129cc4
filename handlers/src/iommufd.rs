//! The `iommufd-v1` file handler (spec `iommufd/v1`, `reference/luo-upstream.md` §8c), on a
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
//!   (one KHO allocation, `reclaimed` 0);
//! * the IOAS is then frozen: mapping more is `EBUSY` while preserved (the variant of the
//!   series that freezes it, so nothing unpreserved can be mapped behind LUO's back).
//!
//! After the kexec the RFC-era semantics apply (the 2026 phase-1 series has no retrieve):
//! retrieve gives a new, empty iommufd; [`Iommufd::hwpt_restore`] (the RFC's restore ioctl)
//! rebuilds a HWPT by token from the domain the IOMMU FLB handed over and sets `reclaimed`
//! to 1 in the handed-over bytes; `can_finish` is false until every preserved HWPT is
//! reclaimed, so FINISH is `EBUSY` until then (also for a never-retrieved iommufd with
//! HWPTs). finish frees the data.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::Errno;
use luo_abi::file::{FileKind, FileRef, seals};
use luo_abi::kho::KhoExt;
use luo_abi::{Phys, PhysAddr};
use luo_generated::iommufd::v1::{IOMMUFD_LUO_FH_COMPATIBLE, iommufd_hwpt_ser, iommufd_ser};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use zerocopy::FromZeros;

use crate::host::{DependsOn, FileOps, StaticHandler, host, kind_of, rc, synthetic_of};
use crate::iommu::{self, Domain, HwUnit, IommuDevice, Kho};

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
    /// The data of this iommufd while preserved (outgoing).
    preserved: Option<u64>,
    /// The data this iommufd was retrieved from (incoming).
    incoming: Option<u64>,
}

struct Shared {
    kho: Kho,
    inner: Mutex<Inner>,
}

impl Drop for Shared {
    /// The last reference to the iommufd is gone: its HWPTs' page tables are freed. KHO
    /// refuses to free a table that is still preserved, which is what the FLB wants.
    fn drop(&mut self) {
        let i = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for h in i.hwpts.values() {
            let _ = self.kho.free_folio(PhysAddr::new(h.domain.top_table), 0);
        }
    }
}

/// A synthetic iommufd (`/dev/iommu`): the payload of a [`FileKind::Iommufd`] file. A
/// handle: clones are the same iommufd (a vfio device bound to it keeps one).
#[derive(Clone)]
pub struct Iommufd(Arc<Shared>);

impl Iommufd {
    /// A new iommufd in the current kernel.
    pub fn new() -> Result<Iommufd, Errno> {
        Ok(Iommufd(Arc::new(Shared {
            kho: host()?.kho()?,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kho(&self) -> &Kho {
        &self.0.kho
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
        if i.preserved.is_some() {
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
    /// id. Needs the current kernel to be this iommufd's.
    pub fn hwpt_alloc(&self, hw: HwUnit) -> Result<u32, Errno> {
        let domain = iommu::alloc_domain()?;
        let mut i = self.lock();
        iommu::domain_map(self.kho(), domain.top_table, &Self::ranges(&i))?;
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
        if i.preserved.is_some() {
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

    /// The HWPTs the previous kernel preserved for this (retrieved) iommufd, read from the
    /// handed-over data. `EINVAL` for an iommufd that was not retrieved.
    pub fn preserved_hwpts(&self) -> Result<Vec<PreservedHwpt>, Errno> {
        let data = self.lock().incoming.ok_or(Errno::EINVAL)?;
        decode(self.kho(), data)
    }

    /// The RFC's restore ioctl: rebuilds the preserved HWPT marked `token` from its domain
    /// in the IOMMU FLB, sets `reclaimed` in the handed-over data and returns the new HWPT's
    /// id. `EINVAL` for an iommufd that was not retrieved, `ENOENT` for an unknown token,
    /// `EBUSY` if already reclaimed.
    pub fn hwpt_restore(&self, token: u64, hw: HwUnit) -> Result<u32, Errno> {
        let data = self.lock().incoming.ok_or(Errno::EINVAL)?;
        let hwpts = decode(self.kho(), data)?;
        let (idx, h) = hwpts
            .iter()
            .enumerate()
            .find(|(_, h)| h.token == token)
            .ok_or(Errno::ENOENT)?;
        if h.reclaimed {
            return Err(Errno::EBUSY);
        }
        let domain = iommu::restore_domain(h.domain_data)?;
        let at = hwpt_at(data, idx as u64);
        let mut ser: iommufd_hwpt_ser = self.kho().read_obj(at)?;
        ser.reclaimed = 1;
        self.kho().write_obj(at, &ser)?;
        let mut i = self.lock();
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
        iommu::iommu_preserve_device(dev, d.id)
    }

    /// Undoes [`Iommufd::device_preserve`].
    pub fn device_unpreserve(&self, dev: &IommuDevice) {
        iommu::iommu_unpreserve_device(dev);
    }
}

fn hwpt_at(data: u64, i: u64) -> Phys<iommufd_hwpt_ser> {
    Phys::new(PhysAddr::new(
        data + size_of::<iommufd_ser>() as u64 + i * size_of::<iommufd_hwpt_ser>() as u64,
    ))
}

/// Reads an `iommufd_ser` and its HWPT array (`EINVAL` if `nr_hwpts` is absurd).
pub fn decode(kho: &Kho, data: u64) -> Result<Vec<PreservedHwpt>, Errno> {
    let h: iommufd_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
    if h.nr_hwpts > MAX_HWPTS {
        return Err(Errno::EINVAL);
    }
    (0..h.nr_hwpts)
        .map(|i| {
            let e: iommufd_hwpt_ser = kho.read_obj(hwpt_at(data, i))?;
            Ok(PreservedHwpt {
                domain_data: e.domain_data.addr().as_u64(),
                token: e.token,
                reclaimed: e.reclaimed != 0,
            })
        })
        .collect()
}

// ---- the handler -----------------------------------------------------------------------

static OPS: FileOps = FileOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: None,
    unfreeze: None,
    retrieve: Some(retrieve),
    can_finish: Some(can_finish),
    finish: Some(finish),
    get_id: None,
    owner: std::ptr::null_mut(),
});

/// What an iommufd may depend on: the memfds its IOAS maps, whichever memfd version the
/// kernel writes.
static DEPENDS_ON: DependsOn = DependsOn(&[
    c"memfd".as_ptr().cast(),
    c"memfd-v2".as_ptr().cast(),
    c"memfd-v1".as_ptr().cast(),
    std::ptr::null(),
]);

/// The `iommufd-v1` handler.
pub static IOMMUFD: StaticHandler =
    StaticHandler::with_deps(&OPS, IOMMUFD_LUO_FH_COMPATIBLE, &DEPENDS_ON);

/// The iommufd behind a `struct file *` LUO passed (`None` if it is not one).
fn iommufd_of<'a>(f: *mut CFile) -> Option<&'a Iommufd> {
    (kind_of(f)? == FileKind::Iommufd)
        .then(|| synthetic_of::<Iommufd>(f))
        .flatten()
}

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    iommufd_of(f).is_some()
}

/// Checks one IOAS mapping: a sealed memfd preserved in the same session.
fn check_mapping(a: &liveupdate_file_op_args, m: &Mapping) -> Result<(), Errno> {
    let shmem = m.file.as_shmem().ok_or(Errno::EINVAL)?;
    if shmem.seals() & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(Errno::EINVAL);
    }
    token_outgoing(a, &m.file).map(|_| ())
}

/// `liveupdate_get_token_outgoing` in the session of the file being preserved: `ENOENT`
/// unless `f` is preserved there (the core also records the iommufd as depending on it, so
/// it is unpreserved and finished before the memfd).
fn token_outgoing(a: &liveupdate_file_op_args, f: &FileRef) -> Result<u64, Errno> {
    host()?.get_token_outgoing(a.session, &**f)
}

unsafe extern "C" fn preserve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc((|| {
        let fd = iommufd_of(a.file).ok_or(Errno::EINVAL)?;
        let mut i = fd.lock();
        if i.preserved.is_some() {
            return Err(Errno::EBUSY);
        }
        for m in &i.mappings {
            check_mapping(a, m)?;
        }
        let marked: Vec<Hwpt> = i
            .hwpts
            .values()
            .filter(|h| h.token.is_some())
            .copied()
            .collect();
        let mut done: Vec<Domain> = Vec::new();
        let undo = |done: &[Domain]| done.iter().for_each(iommu::iommu_unpreserve_domain);
        let mut entries = Vec::new();
        for h in &marked {
            match iommu::iommu_preserve_domain(&h.domain) {
                Ok(p) => {
                    done.push(h.domain);
                    let mut e = iommufd_hwpt_ser::new_zeroed();
                    e.domain_data = p;
                    e.token = h.token.unwrap_or_default();
                    entries.push(e);
                }
                Err(e) => {
                    undo(&done);
                    return Err(e);
                }
            }
        }
        let size = size_of::<iommufd_ser>() + entries.len() * size_of::<iommufd_hwpt_ser>();
        let data = match fd.kho().alloc_preserve(size) {
            Ok(p) => p.as_u64(),
            Err(e) => {
                undo(&done);
                return Err(e);
            }
        };
        let w = (|| {
            fd.kho().write_obj(
                Phys::new(PhysAddr::new(data)),
                &iommufd_ser {
                    nr_hwpts: entries.len() as u64,
                },
            )?;
            for (n, e) in entries.iter().enumerate() {
                fd.kho().write_obj(hwpt_at(data, n as u64), e)?;
            }
            Ok(())
        })();
        if let Err(e) = w {
            let _ = fd.kho().unpreserve_free(PhysAddr::new(data));
            undo(&done);
            return Err(e);
        }
        i.preserved = Some(data);
        a.serialized_data = data;
        Ok(())
    })())
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    let Some(fd) = iommufd_of(a.file) else { return };
    let mut i = fd.lock();
    for h in i.hwpts.values().filter(|h| h.token.is_some()) {
        iommu::iommu_unpreserve_domain(&h.domain);
    }
    if let Some(d) = i.preserved.take() {
        let _ = fd.kho().unpreserve_free(PhysAddr::new(d));
    }
}

unsafe extern "C" fn retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let h = host()?;
        let fd = Iommufd::new()?;
        // Validates the data before anything is created.
        decode(fd.kho(), a.serialized_data)?;
        fd.lock().incoming = Some(a.serialized_data);
        let f = h.open_synthetic(FileKind::Iommufd, "iommufd", Box::new(fd))?;
        a.file = h.file_to_c(f)?;
        Ok(())
    })())
}

unsafe extern "C" fn can_finish(a: *mut liveupdate_file_op_args) -> bool {
    // SAFETY: as above.
    let a = unsafe { &*a };
    let Ok(kho) = host().and_then(|h| h.kho()) else {
        return false;
    };
    // RFC-era: every preserved HWPT must have been rebuilt, retrieved or not.
    decode(&kho, a.serialized_data).is_ok_and(|v| v.iter().all(|h| h.reclaimed))
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &*a };
    if let Ok(kho) = host().and_then(|h| h.kho()) {
        let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
    }
    if let Some(fd) = iommufd_of(a.file) {
        fd.lock().incoming = None;
    }
}

/// Registers the `iommufd-v1` handler in the current kernel and links the IOMMU FLB to it
/// (resetting the kernel's IOMMU state). Once per boot, after the memfd handler.
pub fn register() -> Result<(), Errno> {
    let h = host()?;
    // SAFETY: a `'static`, immutable handler.
    unsafe { h.register_file_handler(IOMMUFD.as_ptr()) }?;
    iommu::register_flb(IOMMUFD.as_ptr())
}

/// Opens a new iommufd in `open`'s kernel: a convenience for tests and `luo simulate`,
/// `open` being e.g. `|kind, name, payload| kernel.open_synthetic(kind, name, payload)`.
pub fn open<T>(
    open: impl FnOnce(FileKind, &str, Box<dyn std::any::Any + Send + Sync>) -> Result<T, Errno>,
) -> Result<T, Errno> {
    open(FileKind::Iommufd, "iommufd", Box::new(Iommufd::new()?))
}
