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
use luo_abi::file::{File, FileId, FileRef, MFD_ALLOW_SEALING, ShmemFolio};
use luo_abi::handler::{Ctx, FileHandler, Finish, Migrate, Registration};
use luo_abi::registry::Registry;
use luo_abi::{Errno, PAGE_SIZE};
use luo_derive::liveupdate_handler;
use luo_generated::kho::kho_vmalloc;
use luo_generated::memfd::{memfd_luo_folio_ser, next, v1, v2};
use zerocopy::FromZeros;

use crate::folio_array::FolioArray;
use crate::test_flb::TestFlbs;

mod preserve;
mod record;
mod retrieve;

use preserve::*;
pub use record::{RecordView, decode, encode, record_size};
use retrieve::*;

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

#[cfg(test)]
mod tests {
    use luo_generated::memfd::{MEMFD_LUO_FOLIO_DIRTY, MEMFD_LUO_FOLIO_UPTODATE};

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
