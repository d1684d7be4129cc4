// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The memfd file handler (`mm/memfd_luo.c`), every version: writes `memfd-v1` (6.19/7.0),
//! `memfd-v2` (7.3) or the feature-negotiated `memfd` (next), and reads older versions
//! through reader-only registrations (`can_preserve` false) that migrate on retrieve.
//!
//! Upstream semantics (mm/memfd_luo.c):
//! * only unlinked shmem files qualify (`can_preserve`); `get_id` is the inode;
//! * PRESERVE_FD freezes the inode (growing/shrinking refused from then on), checks seals
//!   (`EOPNOTSUPP`) and size (`EFBIG`), pins and preserves every folio **without copying
//!   data**, and writes the folio array into a preserved vmalloc area;
//! * freeze refreshes `pos`; unpreserve undoes everything and unfreezes;
//! * retrieve builds a new memfd with seals, pos and size over the very same folios; folios
//!   a `memfd-v1` writer recorded as not up to date are zeroed;
//! * finish releases the folios of a file never retrieved.

use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::features::Negotiated;
use luo_abi::file::{File, FileId, FileRef, MFD_ALLOW_SEALING, ShmemFile, ShmemFolio};
use luo_abi::handler::{Ctx, FileHandler, Finish, Migrate, Registration};
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_derive::liveupdate_handler;
use luo_generated::kho::kho_vmalloc;
use luo_generated::memfd::{
    MEMFD_LUO_FOLIO_DIRTY, MEMFD_LUO_FOLIO_UPTODATE, memfd_luo_folio_ser, next, v1, v2,
};
use zerocopy::FromZeros;

use crate::folio_array::FolioArray;
use crate::test_flb::TestFlbs;

const PAGE: u64 = PAGE_SIZE as u64;

/// Counters of what the handler did to folio *data* (process-wide).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Folios whose data the handler copied: preserving a memfd never copies, so this stays 0.
    pub folios_copied: u64,
    /// Folios preserved.
    pub folios_preserved: u64,
    /// Folios restored into a retrieved file.
    pub folios_restored: u64,
    /// Folios a `memfd-v1` image recorded as not up to date, zeroed on retrieve.
    pub folios_zeroed: u64,
    /// Folios of never-retrieved files released at finish.
    pub folios_discarded: u64,
}

static COPIED: AtomicU64 = AtomicU64::new(0);
static PRESERVED: AtomicU64 = AtomicU64::new(0);
static RESTORED: AtomicU64 = AtomicU64::new(0);
static ZEROED: AtomicU64 = AtomicU64::new(0);
static DISCARDED: AtomicU64 = AtomicU64::new(0);

/// The handler's counters.
pub fn stats() -> Stats {
    Stats {
        folios_copied: COPIED.load(Ordering::Relaxed),
        folios_preserved: PRESERVED.load(Ordering::Relaxed),
        folios_restored: RESTORED.load(Ordering::Relaxed),
        folios_zeroed: ZEROED.load(Ordering::Relaxed),
        folios_discarded: DISCARDED.load(Ordering::Relaxed),
    }
}

/// A memfd format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `memfd-v1`.
    V1,
    /// `memfd-v2`.
    V2,
    /// `memfd` (feature negotiation).
    Next,
}

impl Version {
    /// The version with compatible string (or versionless name) `c`.
    pub fn from_compatible(c: &str) -> Option<Version> {
        [Version::V1, Version::V2, Version::Next]
            .into_iter()
            .find(|v| v.compatible() == c)
    }

    /// The compatible string (the versionless name for `next`).
    pub const fn compatible(self) -> &'static str {
        match self {
            Version::V1 => v1::MEMFD_LUO_FH_COMPATIBLE,
            Version::V2 => v2::MEMFD_LUO_FH_COMPATIBLE,
            Version::Next => next::MEMFD_LUO_FH_NAME,
        }
    }
}

/// The 6.19/7.0 handler: writes `memfd-v1`.
#[liveupdate_handler(compatible = "memfd-v1", abi = luo_generated::memfd::v1::memfd_luo_ser)]
pub struct MemfdV1;

/// The 7.3 handler: writes `memfd-v2`, reads `memfd-v1` through the generated migration.
#[liveupdate_handler(
    compatible = "memfd-v2",
    abi = luo_generated::memfd::v2::memfd_luo_ser,
    reads = ["memfd-v1"],
)]
pub struct MemfdV2;

/// The next handler: writes the feature-negotiated `memfd`, reads both exact-match versions.
#[liveupdate_handler(
    name = "memfd",
    abi = luo_generated::memfd::next::memfd_luo_ser,
    features(
        SEALS(bit = 0, fields = [seals], required),
        FOLIOS(bit = 1, fields = [nr_folios, folios], required),
    ),
    active = [SEALS, FOLIOS],
    reads = ["memfd-v2", "memfd-v1"],
)]
pub struct MemfdNext;

/// Registers the memfd handler of a kernel that writes `writes` and reads `reads` (upstream:
/// `memfd_luo_init`, a late_initcall): the writer, plus a reader of each older version read.
/// With `test_flbs` (`CONFIG_LIVEUPDATE_TEST`) the upstream test FLBs are linked to it, and
/// their handed-over data checked, as upstream's test does at every registration.
pub fn register(
    k: &impl Registry,
    writes: Version,
    reads: &[Version],
    test_flbs: Option<&TestFlbs>,
) -> Result<(), Errno> {
    fn go<H: FileHandler<Globals = ()>>(
        k: &impl Registry,
        handler: H,
        writes: Version,
        reads: &[Version],
        test_flbs: Option<&TestFlbs>,
    ) -> Result<(), Errno> {
        let older: Vec<&str> = reads
            .iter()
            .filter(|r| **r != writes)
            .map(|r| r.compatible())
            .collect();
        let mut reg = Registration::new(handler, k.host(), ());
        if let Some(t) = test_flbs {
            reg = t.link(reg);
        }
        k.register_handler_reading(reg, &older)
    }
    match writes {
        Version::V1 => go(k, MemfdV1, writes, reads, test_flbs),
        Version::V2 => go(k, MemfdV2, writes, reads, test_flbs),
        Version::Next => go(k, MemfdNext, writes, reads, test_flbs),
    }?;
    test_flbs.map_or(Ok(()), TestFlbs::check_incoming)
}

/// The memfd handler's initcall (upstream: `memfd_luo_init`): registers the writer and the
/// readers of the formats the kernel `k` writes and reads (`Registry::writes("memfd")`), with
/// upstream's test FLBs linked when `k` is configured with them. A kernel without the memfd
/// component gets `-EOPNOTSUPP`.
pub fn initcall<R: Registry>(k: &R) -> Result<(), Errno> {
    let writes = k.writes("memfd").ok_or(Errno::EOPNOTSUPP)?;
    let test_flbs = k.test_config().then(|| TestFlbs::new(k));
    register_compatible(k, writes, k.reads("memfd"), test_flbs.as_ref())
}

/// [`register`] for versions given by compatible string, as a kernel profile names them
/// (`luo_core::KernelVersion::memfd_writes` / `memfd_reads`); `-EINVAL` for a format this
/// handler does not know.
pub fn register_compatible(
    k: &impl Registry,
    writes: &str,
    reads: &[&str],
    test_flbs: Option<&TestFlbs>,
) -> Result<(), Errno> {
    let v = |c: &str| Version::from_compatible(c).ok_or(Errno::EINVAL);
    let reads = reads.iter().map(|c| v(c)).collect::<Result<Vec<_>, _>>()?;
    register(k, v(writes)?, &reads, test_flbs)
}

/// A `memfd_luo_ser` of any version, as the callbacks work with it.
#[derive(Clone, Copy, Debug)]
struct Record {
    pos: u64,
    size: u64,
    /// `F_SEAL_*`; always 0 for `memfd-v1`.
    seals: u32,
    nr_folios: u64,
    folios: kho_vmalloc,
}

/// What preserve keeps for unpreserve (`private_data`).
pub struct Private {
    folios: Vec<ShmemFolio>,
    /// The runs of `folios` preserved in KHO so far.
    runs: Vec<Run>,
    /// The folio records, in a preserved vmalloc area (`None` until built).
    array: Option<FolioArray<memfd_luo_folio_ser>>,
}

/// What differs between the versions a handler writes.
trait Writer: FileHandler<Private = Private> {
    /// Records each folio's real flags (6.19) instead of always DIRTY|UPTODATE (7.3 on).
    const REAL_FLAGS: bool;
    /// Seals this version can carry (a preserve with others gives `EOPNOTSUPP`); `None`: 6.19
    /// ignored seals, the new file came back unsealed.
    const SEALS: Option<u64>;
    /// The struct handed over.
    fn to_abi(s: &Record) -> Self::Ser;
    /// `pos` of a struct handed over (refreshed at freeze).
    fn set_pos(ser: &mut Self::Ser, pos: u64);
    /// The validated contents of a struct read (or migrated) at retrieve or finish.
    fn from_read(r: Self::Read) -> Result<Record, Errno>;
}

fn from_v2(s: &v2::memfd_luo_ser) -> Result<Record, Errno> {
    if u64::from(s.seals) & !v2::MEMFD_LUO_ALL_SEALS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    // No flag is defined in memfd-v2: refuse unknown bits rather than ignore them.
    if s.flags != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(Record {
        pos: s.pos,
        size: s.size,
        seals: s.seals,
        nr_folios: s.nr_folios,
        folios: s.folios,
    })
}

impl Writer for MemfdV1 {
    const REAL_FLAGS: bool = true;
    const SEALS: Option<u64> = None;
    fn to_abi(s: &Record) -> v1::memfd_luo_ser {
        v1::memfd_luo_ser {
            pos: s.pos,
            size: s.size,
            nr_folios: s.nr_folios,
            folios: s.folios,
        }
    }
    fn set_pos(ser: &mut v1::memfd_luo_ser, pos: u64) {
        ser.pos = pos;
    }
    fn from_read(s: v1::memfd_luo_ser) -> Result<Record, Errno> {
        // The generated migration: seals and flags default to 0.
        from_v2(&v2::memfd_luo_ser::from(s))
    }
}

impl Writer for MemfdV2 {
    const REAL_FLAGS: bool = false;
    const SEALS: Option<u64> = Some(v2::MEMFD_LUO_ALL_SEALS);
    fn to_abi(s: &Record) -> v2::memfd_luo_ser {
        v2::memfd_luo_ser {
            pos: s.pos,
            size: s.size,
            seals: s.seals,
            flags: 0,
            nr_folios: s.nr_folios,
            folios: s.folios,
        }
    }
    fn set_pos(ser: &mut v2::memfd_luo_ser, pos: u64) {
        ser.pos = pos;
    }
    fn from_read(s: v2::memfd_luo_ser) -> Result<Record, Errno> {
        from_v2(&s)
    }
}

impl Migrate<v1::memfd_luo_ser> for MemfdV2 {
    fn migrate(&self, old: v1::memfd_luo_ser) -> luo_abi::Result<v2::memfd_luo_ser> {
        Ok(old.into())
    }
}

impl Writer for MemfdNext {
    const REAL_FLAGS: bool = false;
    const SEALS: Option<u64> = Some(next::MEMFD_LUO_ALL_SEALS);
    fn to_abi(s: &Record) -> next::memfd_luo_ser {
        // The runtime writes the feature header and zeroes the fields of inactive features.
        next::memfd_luo_ser {
            features: FromZeros::new_zeroed(),
            pos: s.pos,
            size: s.size,
            seals: s.seals,
            flags: 0,
            nr_folios: s.nr_folios,
            folios: s.folios,
        }
    }
    fn set_pos(ser: &mut next::memfd_luo_ser, pos: u64) {
        ser.pos = pos;
    }
    fn from_read(n: Negotiated<next::memfd_luo_ser>) -> Result<Record, Errno> {
        let s = n.ser();
        if s.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let seals = n.get(MemfdNext::SEALS, |s| s.seals).unwrap_or(0);
        if u64::from(seals) & !next::MEMFD_LUO_ALL_SEALS != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let (nr_folios, folios) = n
            .get(MemfdNext::FOLIOS, |s| (s.nr_folios, s.folios))
            .unwrap_or((0, kho_vmalloc::new_zeroed()));
        Ok(Record {
            pos: s.pos,
            size: s.size,
            seals,
            nr_folios,
            folios,
        })
    }
}

/// An exact-match version read by the feature-negotiated handler: every feature it carried
/// is active.
fn next_of_v2(old: v2::memfd_luo_ser) -> next::memfd_luo_ser {
    next::memfd_luo_ser {
        // Every feature the exact-match versions carried is active.
        features: luo_generated::luo::next::luo_feature_hdr {
            supp: next::MEMFD_LUO_FEATURES_SUPP,
            req: next::MEMFD_LUO_FEATURES_REQ,
            active: next::MEMFD_LUO_FEATURES_ACTIVE,
            ..FromZeros::new_zeroed()
        },
        pos: old.pos,
        size: old.size,
        seals: old.seals,
        flags: old.flags,
        nr_folios: old.nr_folios,
        folios: old.folios,
    }
}

impl Migrate<v2::memfd_luo_ser> for MemfdNext {
    fn migrate(&self, old: v2::memfd_luo_ser) -> luo_abi::Result<next::memfd_luo_ser> {
        Ok(next_of_v2(old))
    }
}

impl Migrate<v1::memfd_luo_ser> for MemfdNext {
    fn migrate(&self, old: v1::memfd_luo_ser) -> luo_abi::Result<next::memfd_luo_ser> {
        Ok(next_of_v2(old.into()))
    }
}

/// The callbacks, the same for every version written.
macro_rules! memfd_callbacks {
    ($handler:ty) => {
        #[liveupdate_handler]
        impl FileHandler for $handler {
            type Private = Private;

            fn can_preserve(&self, file: &dyn File) -> bool {
                can_preserve(file)
            }
            fn preserve(
                &self,
                cx: &Ctx<'_, Self>,
                file: &dyn File,
            ) -> luo_abi::Result<(Self::Ser, Private)> {
                preserve::<Self>(cx.kho(), file)
            }
            fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, _: Self::Ser, p: Private) {
                undo(cx.kho(), file, p);
            }
            fn freeze(
                &self,
                _: &Ctx<'_, Self>,
                file: &dyn File,
                ser: &mut Self::Ser,
                _: &mut Private,
            ) -> luo_abi::Result {
                let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
                <Self as Writer>::set_pos(ser, shm.pos());
                Ok(())
            }
            fn retrieve(&self, cx: &Ctx<'_, Self>, data: Self::Read) -> luo_abi::Result<FileRef> {
                let ser = <Self as Writer>::from_read(data)?;
                let file = cx.memfd_alloc_file("", MFD_ALLOW_SEALING)?;
                retrieve(cx.kho(), &file, &ser)?;
                Ok(file)
            }
            fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, Self::Read>) {
                if let Finish::NotRetrieved(data) = how
                    && let Ok(ser) = <Self as Writer>::from_read(data)
                {
                    discard(cx.kho(), &ser);
                }
            }
            fn get_id(file: &dyn File) -> FileId {
                file.as_shmem().map_or(FileId(0), |s| s.inode_id())
            }
        }
    };
}

memfd_callbacks!(MemfdV1);
memfd_callbacks!(MemfdV2);
memfd_callbacks!(MemfdNext);

/// Only unlinked shmem files (memfds) qualify.
fn can_preserve(file: &dyn File) -> bool {
    file.as_shmem().is_some_and(|s| s.nlink() == 0)
}

fn preserve<W: Writer>(kho: &dyn KhoService, file: &dyn File) -> Result<(W::Ser, Private), Errno> {
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    // Upstream: inode_lock + shmem_freeze(inode, true) first.
    shm.set_frozen(true);
    let mut p = Private {
        folios: Vec::new(),
        runs: Vec::new(),
        array: None,
    };
    match preserve_steps::<W>(kho, shm, &mut p) {
        Ok(ser) => Ok((W::to_abi(&ser), p)),
        Err(e) => {
            undo(kho, file, p);
            Err(e)
        }
    }
}

fn preserve_steps<W: Writer>(
    kho: &dyn KhoService,
    shm: &dyn ShmemFile,
    p: &mut Private,
) -> Result<Record, Errno> {
    let seals = shm.seals();
    if let Some(all) = W::SEALS
        && u64::from(seals) & !all != 0
    {
        return Err(Errno::EOPNOTSUPP);
    }
    let size = shm.size();
    if size.div_ceil(PAGE) > u64::from(u32::MAX) {
        return Err(Errno::EFBIG);
    }
    let mut ser = Record {
        pos: shm.pos(),
        size,
        seals: if W::SEALS.is_some() { seals } else { 0 },
        nr_folios: 0,
        folios: kho_vmalloc::new_zeroed(),
    };
    p.folios = shm.pin_folios()?;
    if !p.folios.is_empty() {
        // The folios as physically contiguous runs of one order, each preserved with one KHO
        // call. On an error the runs preserved so far are in `p.runs`, which `undo`
        // unpreserves.
        let mut i = 0;
        while i < p.folios.len() {
            let f = &p.folios[i];
            let mut r = Run::one(f.index, f.phys, f.order);
            let size = PAGE << f.order;
            let mut next = f.phys.as_u64().wrapping_add(size);
            i += 1;
            while let Some(g) = p.folios.get(i)
                && g.phys.as_u64() == next
                && g.order == r.order
                && next != 0
            {
                r.count += 1;
                next = next.wrapping_add(size);
                i += 1;
            }
            preserve_run(kho, &mut p.runs, r)?;
        }
        PRESERVED.fetch_add(p.folios.len() as u64, Ordering::Relaxed);
        let array = FolioArray::preserve_map(kho, &p.folios, record::<W>)?;
        ser.nr_folios = p.folios.len() as u64;
        ser.folios = array.abi();
        p.array = Some(array);
    }
    Ok(ser)
}

/// The handed-over record of a pinned folio.
#[inline]
fn record<W: Writer>(f: &ShmemFolio) -> memfd_luo_folio_ser {
    let mut e = memfd_luo_folio_ser::new_zeroed();
    e.set_pfn(f.phys.pfn());
    let flags = if W::REAL_FLAGS {
        (if f.dirty { MEMFD_LUO_FOLIO_DIRTY } else { 0 })
            | (if f.uptodate {
                MEMFD_LUO_FOLIO_UPTODATE
            } else {
                0
            })
    } else {
        // 7.3 on: always dirty; a folio not up to date would have been zeroed.
        MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE
    };
    e.set_flags(flags);
    e.index = f.index;
    e
}

/// Undoes a (possibly partial) preserve.
fn undo(kho: &dyn KhoService, file: &dyn File, p: Private) {
    if let Some(array) = p.array {
        array.unpreserve(kho);
    }
    for r in &p.runs {
        let _ = kho.unpreserve_range(r.phys, r.order, r.count);
    }
    if let Some(shm) = file.as_shmem() {
        if !p.folios.is_empty() {
            shm.unpin_folios(&p.folios);
        }
        shm.set_frozen(false);
    }
}

/// `count` folios of `order`, back to back from `phys`, at file indexes `index` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    index: u64,
    phys: PhysAddr,
    order: u32,
    count: usize,
}

impl Run {
    fn one(index: u64, phys: PhysAddr, order: u32) -> Run {
        Run {
            index,
            phys,
            order,
            count: 1,
        }
    }
}

fn preserve_run(kho: &dyn KhoService, runs: &mut Vec<Run>, r: Run) -> Result<(), Errno> {
    kho.preserve_range(r.phys, r.order, r.count)?;
    runs.push(r);
    Ok(())
}

/// Consecutive records of a retrieved file whose pfn and index both advance by the same power
/// of two `step` (a folio of `step` pages followed by the next, as `memfd_pin_folios` lists
/// them, holes filled), all up to date or all not: what one run of folios should be.
#[derive(Clone, Copy, Debug)]
struct RecordRun {
    index: u64,
    pfn: u64,
    n: usize,
    step: u64,
    uptodate: bool,
    last_index: u64,
    last_pfn: u64,
}

impl RecordRun {
    /// A run of the one record `e`; `EIO` for a pfn no address has.
    fn start(e: &memfd_luo_folio_ser) -> Result<RecordRun, Errno> {
        PhysAddr::from_pfn(e.pfn()).ok_or(Errno::EIO)?;
        Ok(RecordRun {
            index: e.index,
            pfn: e.pfn(),
            n: 1,
            step: 1,
            uptodate: e.flags() & MEMFD_LUO_FOLIO_UPTODATE != 0,
            last_index: e.index,
            last_pfn: e.pfn(),
        })
    }

    /// Adds `e` if it continues the run.
    #[inline]
    fn extend(&mut self, e: &memfd_luo_folio_ser) -> bool {
        let step = e.pfn().wrapping_sub(self.last_pfn);
        let uptodate = e.flags() & MEMFD_LUO_FOLIO_UPTODATE != 0;
        let same_step = if self.n > 1 {
            step == self.step
        } else {
            step.is_power_of_two()
        };
        if !same_step || uptodate != self.uptodate || step != e.index.wrapping_sub(self.last_index)
        {
            return false;
        }
        self.step = step;
        self.n += 1;
        self.last_index = e.index;
        self.last_pfn = e.pfn();
        true
    }

    /// Adds all of `records` if they all continue the run with its step, else nothing: one
    /// pass without branches per record (the common case: a page of records of one
    /// contiguous memfd), so it runs at the speed of reading them.
    #[inline]
    fn extend_all(&mut self, records: &[memfd_luo_folio_ser]) -> bool {
        let Some(first) = records.first() else {
            return true;
        };
        let step = if self.n > 1 {
            self.step
        } else {
            first.pfn().wrapping_sub(self.last_pfn)
        };
        if !step.is_power_of_two() {
            return false;
        }
        // Every record minus its expected value, OR-ed: zero iff all match. The pfn and
        // index advance together, so one running difference checks both.
        let flag = if self.uptodate {
            MEMFD_LUO_FOLIO_UPTODATE
        } else {
            0
        };
        let delta = self.last_index.wrapping_sub(self.last_pfn);
        let mut want = self.last_pfn;
        let mut diff = 0u64;
        for e in records {
            want = want.wrapping_add(step);
            let pfn = e.pfn();
            diff |= (pfn ^ want)
                | (e.index ^ pfn.wrapping_add(delta))
                | ((e.flags() & MEMFD_LUO_FOLIO_UPTODATE) ^ flag);
        }
        if diff != 0 {
            return false;
        }
        let last = &records[records.len() - 1];
        self.step = step;
        self.n += records.len();
        self.last_pfn = last.pfn();
        self.last_index = last.index;
        true
    }

    /// The address of its `i`-th folio (a pfn that `start` or `extend` accepted, or between
    /// two such).
    fn phys(&self, i: usize) -> Result<PhysAddr, Errno> {
        let pfn = self.pfn.wrapping_add((i as u64).wrapping_mul(self.step));
        PhysAddr::from_pfn(pfn).ok_or(Errno::EIO)
    }
}

/// Feeds the records of a file to `take` as [`RecordRun`]s, in order.
struct RunSplitter {
    cur: Option<RecordRun>,
}

impl RunSplitter {
    /// Feeds `records`; `take` gets every run they complete. Stops at the first record
    /// [`RecordRun::start`] refuses, or error of `take`.
    fn push(
        &mut self,
        records: &[memfd_luo_folio_ser],
        take: &mut impl FnMut(RecordRun) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let Some((first, rest)) = records.split_first() else {
            return Ok(());
        };
        // The current run is kept in a local through the loop (in registers, not in `self`).
        let (mut cur, rest) = match self.cur.take() {
            Some(c) => (c, records),
            None => (RecordRun::start(first)?, rest),
        };
        if cur.extend_all(rest) {
            self.cur = Some(cur);
            return Ok(());
        }
        for e in rest {
            if cur.extend(e) {
                continue;
            }
            match RecordRun::start(e) {
                Ok(next) => take(std::mem::replace(&mut cur, next))?,
                Err(err) => {
                    self.cur = Some(cur);
                    return Err(err);
                }
            }
        }
        self.cur = Some(cur);
        Ok(())
    }

    fn finish(self, take: &mut impl FnMut(RecordRun) -> Result<(), Errno>) -> Result<(), Errno> {
        self.cur.map_or(Ok(()), take)
    }
}

/// Claims the folios of the record run `rr` and appends what was claimed to `claimed`. All
/// but the last are folios of `step` pages (each is followed by the next): one
/// [`KhoService::restore_range`]; the last folio's size is known only to KHO:
/// [`KhoService::restore_folio`].
fn claim_run(kho: &dyn KhoService, rr: &RecordRun, claimed: &mut Vec<Run>) -> Result<(), Errno> {
    let phys = rr.phys(0)?;
    if rr.n > 1 {
        let order = rr.step.trailing_zeros();
        kho.restore_range(phys, order, rr.n - 1)?;
        claimed.push(Run {
            index: rr.index,
            phys,
            order,
            count: rr.n - 1,
        });
    }
    let last = rr.phys(rr.n - 1)?;
    let order = kho.restore_folio(last)?;
    match claimed.last_mut() {
        Some(r) if rr.n > 1 && r.order == order => r.count += 1,
        _ => claimed.push(Run::one(rr.last_index, last, order)),
    }
    Ok(())
}

/// Makes a restored run the file's, zeroing its folios first when they were never written.
fn install_run(
    kho: &dyn KhoService,
    shm: &dyn ShmemFile,
    r: &Run,
    uptodate: bool,
) -> Result<(), Errno> {
    if !uptodate {
        // A memfd-v1 writer recorded the folios' real flags: one never written holds
        // garbage, so zero it before it becomes visible (as memfd_luo.c does).
        let zeroes = vec![0u8; (PAGE << r.order) as usize];
        for i in 0..r.count as u64 {
            kho.write(
                PhysAddr::new(r.phys.as_u64() + i * (PAGE << r.order)),
                &zeroes,
            )?;
        }
        ZEROED.fetch_add(r.count as u64, Ordering::Relaxed);
    }
    shm.add_folios(
        ShmemFolio {
            index: r.index,
            phys: r.phys,
            order: r.order,
            dirty: true,
            uptodate: true,
        },
        r.count,
    )?;
    RESTORED.fetch_add(r.count as u64, Ordering::Relaxed);
    Ok(())
}

/// Rebuilds `file` (a new memfd) from a validated record: seals, pos, size, then the very
/// same folios, a run at a time (`kho_restore_folio` and the page-cache insert for each
/// folio, upstream), as the records are read from the folio array.
fn retrieve(kho: &dyn KhoService, file: &FileRef, ser: &Record) -> Result<(), Errno> {
    let shm = file.as_shmem().ok_or(Errno::EINVAL)?;
    shm.add_seals(ser.seals)?;
    shm.set_pos(ser.pos);
    shm.set_size(ser.size)?;
    let mut claimed: Vec<Run> = Vec::new();
    // The first error of a record or a run, as opposed to one of the array itself.
    let mut failed = None;
    let mut take = |rr: RecordRun| -> Result<(), Errno> {
        let before = claimed.len();
        claim_run(kho, &rr, &mut claimed).map_err(|_| Errno::EIO)?;
        claimed[before..]
            .iter()
            .try_for_each(|run| install_run(kho, shm, run, rr.uptodate))
    };
    let mut split = RunSplitter { cur: None };
    let read = FolioArray::restore_each(kho, &{ ser.folios }, ser.nr_folios, |records| {
        split
            .push(records, &mut take)
            .inspect_err(|&e| failed = Some(e))
    });
    let r = match (read, failed) {
        (_, Some(e)) => Err(e),
        (Err(_), None) => Err(Errno::EINVAL),
        (Ok(()), None) => split.finish(&mut take),
    };
    // In the model a folio now belongs to the file's region (after an error, to nobody): the
    // restore's reference is dropped, which frees nothing there.
    for run in &claimed {
        let _ = kho.free_range(run.phys, run.order, run.count);
    }
    r
}

/// Releases the folios and the folio array of a file never retrieved.
fn discard(kho: &dyn KhoService, ser: &Record) {
    let mut claimed: Vec<Run> = Vec::new();
    let mut take = |rr: RecordRun| -> Result<(), Errno> {
        let before = claimed.len();
        if claim_run(kho, &rr, &mut claimed).is_err() {
            // Not a whole run: every folio of it not claimed yet, one by one, so only the
            // folios KHO refuses stay behind (as a per-folio discard leaves them).
            let done: usize = claimed[before..].iter().map(|r| r.count).sum();
            for i in done..rr.n {
                if let Ok(phys) = rr.phys(i)
                    && let Ok(order) = kho.restore_folio(phys)
                {
                    claimed.push(Run::one(0, phys, order));
                }
            }
        }
        Ok(())
    };
    let mut split = RunSplitter { cur: None };
    // A record with an impossible pfn is skipped (`take` itself never fails).
    if FolioArray::restore_each(kho, &{ ser.folios }, ser.nr_folios, |records| {
        for e in records {
            let _ = split.push(core::slice::from_ref(e), &mut take);
        }
        Ok(())
    })
    .is_ok()
    {
        let _ = split.finish(&mut take);
    }
    for run in &claimed {
        if kho.free_range(run.phys, run.order, run.count).is_ok() {
            DISCARDED.fetch_add(run.count as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pfn: u64, index: u64, uptodate: bool) -> memfd_luo_folio_ser {
        let mut e = memfd_luo_folio_ser::new_zeroed();
        e.set_pfn(pfn);
        e.set_flags(
            MEMFD_LUO_FOLIO_DIRTY
                | if uptodate {
                    MEMFD_LUO_FOLIO_UPTODATE
                } else {
                    0
                },
        );
        e.index = index;
        e
    }

    /// The records split into the runs a retrieve claims, fed whole or a record at a time
    /// (pages of records end anywhere in a run).
    #[test]
    fn records_split_into_runs() {
        let mut records = Vec::new();
        // 700 contiguous 4 KiB folios, then 3 of 2 MiB, a gap, one not up to date, and a
        // pfn that goes backwards.
        records.extend((0..700).map(|i| rec(0x1000 + i, i, true)));
        records.extend((0..3).map(|i| rec(0x4000 + 512 * i, 1024 + 512 * i, true)));
        records.push(rec(0x9000, 4096, true));
        records.push(rec(0x9001, 4097, false));
        records.push(rec(0x8000, 4098, true));
        let want = [
            (0x1000, 0, 700, 1),
            (0x4000, 1024, 3, 512),
            (0x9000, 4096, 1, 1),
            (0x9001, 4097, 1, 1),
            (0x8000, 4098, 1, 1),
        ];
        for chunk in [records.len(), 256, 1] {
            let mut got = Vec::new();
            let mut split = RunSplitter { cur: None };
            let mut take = |r: RecordRun| -> Result<(), Errno> {
                got.push((r.pfn, r.index, r.n, r.step, r.uptodate));
                Ok(())
            };
            for c in records.chunks(chunk) {
                split.push(c, &mut take).unwrap();
            }
            split.finish(&mut take).unwrap();
            let got: Vec<_> = got.iter().map(|&(p, i, n, s, _)| (p, i, n, s)).collect();
            assert_eq!(got, want, "chunks of {chunk}");
        }
        // Every 52-bit pfn is an address: no record of a well-formed array is refused.
        let mut split = RunSplitter { cur: None };
        assert_eq!(
            split.push(
                &[rec(1, 0, true), rec(u64::MAX >> 12, 1, true)],
                &mut |_| Ok(())
            ),
            Ok(()),
            "52-bit pfns all fit"
        );
    }
}
