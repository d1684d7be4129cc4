// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The memory of a synthetic memory file (a HugeTLB memfd, a guest_memfd): real folios of the
//! KHO model, one per file index, allocated on first write (a fault) or all at creation.
//!
//! Contents are bytes in the model's memory, so a preserved folio keeps them across the kexec
//! at the same physical address, and a test can check them there.
//!
//! A file's memory belongs to one kernel: [`Pages`] keeps that kernel's host (whose KHO holds
//! the folios), given explicitly when the file is made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::host::LuoHost;
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};

/// One folio of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Folio {
    /// Its physical address.
    pub phys: PhysAddr,
    /// Written (or zeroed) since it was allocated: its contents are valid.
    pub uptodate: bool,
}

struct St {
    folios: BTreeMap<u64, Folio>,
    frozen: bool,
}

/// The folios of one file: `nr` slots of `PAGE_SIZE << order` bytes.
pub struct Pages {
    host: Arc<dyn LuoHost>,
    order: u32,
    nr: u64,
    st: Mutex<St>,
}

impl Pages {
    /// No folio yet, in the kernel of `host` (`Registry::host`).
    pub fn new(host: Arc<dyn LuoHost>, order: u32, nr: u64) -> Result<Pages, Errno> {
        // Bounded so that sizes (`nr << (order + 12)`) cannot overflow.
        if order > 18 || nr == 0 || nr > u64::MAX >> (order + 12) {
            return Err(Errno::EINVAL);
        }
        Ok(Pages {
            host,
            order,
            nr,
            st: Mutex::new(St {
                folios: BTreeMap::new(),
                frozen: false,
            }),
        })
    }

    /// Folios restored in the new kernel (already claimed from KHO), at their indices.
    pub(crate) fn restored(
        host: Arc<dyn LuoHost>,
        order: u32,
        nr: u64,
        folios: BTreeMap<u64, Folio>,
    ) -> Result<Pages, Errno> {
        let p = Pages::new(host, order, nr)?;
        p.lock().folios = folios;
        Ok(p)
    }

    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kho(&self) -> &dyn KhoService {
        self.host.kho()
    }

    /// Page order of each folio.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Number of folio slots (the file size in folios).
    pub fn nr(&self) -> u64 {
        self.nr
    }

    /// Bytes per folio.
    pub fn folio_bytes(&self) -> u64 {
        (PAGE_SIZE as u64) << self.order
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.nr * self.folio_bytes()
    }

    /// The folios, by index.
    pub fn folios(&self) -> Vec<(u64, Folio)> {
        self.lock().folios.iter().map(|(i, f)| (*i, *f)).collect()
    }

    /// Whether the mapping is frozen (preserved): no folio can be added.
    pub fn is_frozen(&self) -> bool {
        self.lock().frozen
    }

    pub(crate) fn set_frozen(&self, frozen: bool) {
        self.lock().frozen = frozen;
    }

    /// Allocates the folio at `index` (zeroed, up to date) unless it exists: a fault.
    /// `EPERM` while frozen, `EINVAL` past the end.
    pub fn populate(&self, index: u64) -> Result<PhysAddr, Errno> {
        let mut st = self.lock();
        self.populate_locked(&mut st, index)
    }

    fn populate_locked(&self, st: &mut St, index: u64) -> Result<PhysAddr, Errno> {
        if index >= self.nr {
            return Err(Errno::EINVAL);
        }
        if let Some(f) = st.folios.get(&index) {
            return Ok(f.phys);
        }
        if st.frozen {
            return Err(Errno::EPERM);
        }
        let phys = self.kho().alloc_folio(self.order)?;
        st.folios.insert(
            index,
            Folio {
                phys,
                uptodate: true,
            },
        );
        Ok(phys)
    }

    /// Writes `data` at byte offset `off`, faulting folios in.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        let mut st = self.lock();
        self.span(off, data.len(), |index, at, range| {
            let phys = self.populate_locked(&mut st, index)?;
            self.kho()
                .write(PhysAddr::new(phys.as_u64() + at), &data[range])
        })
    }

    /// Reads `buf.len()` bytes at byte offset `off`; holes read as zeroes.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let st = self.lock();
        self.span(off, buf.len(), |index, at, range| {
            match st.folios.get(&index) {
                Some(f) => self
                    .kho()
                    .read(PhysAddr::new(f.phys.as_u64() + at), &mut buf[range]),
                None => {
                    buf[range].fill(0);
                    Ok(())
                }
            }
        })
    }

    /// A digest of the contents (FNV-1a over each folio's index and bytes, in index order):
    /// equal before and after a live update when every folio came back intact and in place.
    pub fn digest(&self) -> Result<u64, Errno> {
        let st = self.lock();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        let mut buf = vec![0u8; self.folio_bytes() as usize];
        for (i, f) in &st.folios {
            self.kho().read(f.phys, &mut buf)?;
            eat(&i.to_le_bytes());
            eat(&buf);
        }
        Ok(h)
    }

    /// Calls `f(index, offset in folio, range in the buffer)` for each folio `off..off+len`
    /// touches; `EINVAL` past the end of the file.
    fn span(
        &self,
        off: u64,
        len: usize,
        mut f: impl FnMut(u64, u64, std::ops::Range<usize>) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let end = off.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if end > self.size() {
            return Err(Errno::EINVAL);
        }
        let fb = self.folio_bytes();
        let mut pos = off;
        while pos < end {
            let at = pos % fb;
            let n = (fb - at).min(end - pos);
            let b = (pos - off) as usize;
            f(pos / fb, at, b..b + n as usize)?;
            pos += n;
        }
        Ok(())
    }
}

impl Pages {
    /// KHO-preserves every folio (upstream: `kho_preserve_folio` for each; here one
    /// `preserve_range` per physically contiguous run, all or nothing) and returns their
    /// handed-over records, made by `record(index, folio)`.
    pub(crate) fn preserve_folios<R>(
        &self,
        record: impl Fn(u64, &Folio) -> R,
    ) -> Result<Vec<R>, Errno> {
        let folios = self.folios();
        let runs = self.runs(&folios);
        for (i, &(phys, count)) in runs.iter().enumerate() {
            if let Err(e) = self.kho().preserve_range(phys, self.order, count) {
                for &(phys, count) in &runs[..i] {
                    let _ = self.kho().unpreserve_range(phys, self.order, count);
                }
                return Err(e);
            }
        }
        Ok(folios.iter().map(|(index, f)| record(*index, f)).collect())
    }

    /// Undoes [`Pages::preserve_folios`]: the file is unpreserved, or a later step of its
    /// preserve failed.
    pub(crate) fn unpreserve_folios(&self) {
        for (phys, count) in self.runs(&self.folios()) {
            let _ = self.kho().unpreserve_range(phys, self.order, count);
        }
    }

    /// The folios (in index order) as runs of physically contiguous ones: (first, count).
    fn runs(&self, folios: &[(u64, Folio)]) -> Vec<(PhysAddr, usize)> {
        let bytes = self.folio_bytes();
        let mut runs: Vec<(PhysAddr, usize)> = Vec::new();
        for (_, f) in folios {
            match runs.last_mut() {
                Some((first, n)) if first.as_u64() + (*n as u64) * bytes == f.phys.as_u64() => {
                    *n += 1;
                }
                _ => runs.push((f.phys, 1)),
            }
        }
        runs
    }
}

/// Where the pages of an incoming file go when the file does not keep them: the free pool of
/// their size (the HugeTLB pools implement it), so that this module needs nothing of HugeTLB.
pub trait IncomingPool {
    /// `nr` incoming pages of `order` leave their file for the free pool.
    fn release_incoming(&self, order: u32, nr: u64) -> luo_abi::Result;
}

/// Folios claimed from KHO while a file is retrieved. Dropped before [`Claimed::keep`] (a
/// record was bad, the file cannot be rebuilt), they are released again with
/// [`release_claimed`], so a failed retrieve leaves no folio behind.
pub(crate) struct Claimed<'a> {
    kho: &'a dyn KhoService,
    pool: Option<&'a dyn IncomingPool>,
    folios: Vec<(PhysAddr, u32)>,
}

impl<'a> Claimed<'a> {
    /// Nothing claimed yet; `pool`: the HugeTLB pools the pages go back to on release (a
    /// HugeTLB file), if any.
    pub(crate) fn new(kho: &'a dyn KhoService, pool: Option<&'a dyn IncomingPool>) -> Claimed<'a> {
        Claimed {
            kho,
            pool,
            folios: Vec::new(),
        }
    }

    /// Claims the folio at `pfn` (`kho_restore_folio`): its address and order.
    pub(crate) fn claim(&mut self, pfn: u64) -> Result<(PhysAddr, u32), Errno> {
        let phys = PhysAddr::from_pfn(pfn).ok_or(Errno::EINVAL)?;
        let order = self.kho.restore_folio(phys)?;
        self.folios.push((phys, order));
        Ok((phys, order))
    }

    /// Claims the `count` folios of `order` back to back from `pfn` (`restore_range`): all
    /// or none.
    pub(crate) fn claim_run(&mut self, pfn: u64, order: u32, count: usize) -> Result<(), Errno> {
        let phys = PhysAddr::from_pfn(pfn).ok_or(Errno::EINVAL)?;
        self.kho.restore_range(phys, order, count)?;
        let bytes = (PAGE_SIZE as u64) << order;
        self.folios
            .extend((0..count as u64).map(|i| (PhysAddr::new(phys.as_u64() + i * bytes), order)));
        Ok(())
    }

    /// The file is rebuilt: its folios stay claimed.
    pub(crate) fn keep(mut self) {
        self.folios.clear();
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        release_claimed(self.kho, &self.folios, self.pool);
    }
}

/// Frees folios claimed from KHO for a file that is not coming back (never retrieved, or its
/// retrieve failed); the pages of a HugeTLB file go back to the free pool of their size.
fn release_claimed(
    kho: &dyn KhoService,
    claimed: &[(PhysAddr, u32)],
    pool: Option<&dyn IncomingPool>,
) {
    let mut freed = BTreeMap::<u32, u64>::new();
    for &(phys, order) in claimed {
        // Release path: a folio KHO refuses to free is KHO's to account, nothing to undo here.
        let _ = kho.free_folio(phys, order);
        *freed.entry(order).or_default() += 1;
    }
    if let Some(pool) = pool {
        for (order, n) in freed {
            // As above: the pages are gone from the file whatever the pools say.
            let _ = pool.release_incoming(order, n);
        }
    }
}

/// Claims every folio at `pfns` that can be claimed and releases them ([`release_claimed`]).
pub(crate) fn discard(
    kho: &dyn KhoService,
    pfns: impl Iterator<Item = u64>,
    pool: Option<&dyn IncomingPool>,
) {
    let claimed: Vec<_> = pfns
        .filter_map(PhysAddr::from_pfn)
        .filter_map(|p| Some((p, kho.restore_folio(p).ok()?)))
        .collect();
    release_claimed(kho, &claimed, pool);
}

impl Drop for Pages {
    fn drop(&mut self) {
        // The file goes away: its folios go back to the allocator. A folio still preserved
        // (its kernel kexec'ed) is refused, harmlessly: that memory belongs to the next kernel.
        let st = self.st.get_mut().unwrap_or_else(|e| e.into_inner());
        let kho = self.host.kho();
        for f in st.folios.values() {
            let _ = kho.free_folio(f.phys, self.order);
        }
    }
}
