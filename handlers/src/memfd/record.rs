// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A handed-over `memfd_luo_ser` of any version as bytes: decoded and validated exactly as
//! RETRIEVE_FD does (the runtime's checks of the ABI type and its features, then the
//! version's own), and written as PRESERVE_FD writes it. What `luo inspect` shows of a memfd
//! and what the fuzz target feeds the handler's decoder.

use luo_abi::Errno;
use luo_generated::kho::kho_vmalloc;
use zerocopy::{FromBytes, IntoBytes};

use super::*;

/// A `memfd_luo_ser` of any version, decoded.
#[derive(Clone, Copy, Debug)]
pub struct RecordView {
    /// File position.
    pub pos: u64,
    /// File size.
    pub size: u64,
    /// Seals (`F_SEAL_*`); always 0 for `memfd-v1`.
    pub seals: u32,
    /// Number of folio records.
    pub nr_folios: u64,
    /// The preserved folio array.
    pub folios: kho_vmalloc,
}

impl From<Record> for RecordView {
    fn from(r: Record) -> RecordView {
        RecordView {
            pos: r.pos,
            size: r.size,
            seals: r.seals,
            nr_folios: r.nr_folios,
            folios: r.folios,
        }
    }
}

/// Size of the struct `version` hands over.
pub fn record_size(version: Version) -> usize {
    match version {
        Version::V1 => size_of::<v1::memfd_luo_ser>(),
        Version::V2 => size_of::<v2::memfd_luo_ser>(),
        Version::Next => size_of::<next::memfd_luo_ser>(),
    }
}

/// Decodes and validates the struct `version` handed over, from its first
/// [`record_size`] bytes (`EINVAL` when `bytes` is shorter; errnos as RETRIEVE_FD's).
pub fn decode(version: Version, bytes: &[u8]) -> Result<RecordView, Errno> {
    fn read<W: Writer>(bytes: &[u8]) -> Result<RecordView, Errno> {
        let (ser, _) = W::Ser::read_from_prefix(bytes).map_err(|_| Errno::EINVAL)?;
        W::from_read(W::decode(ser)?).map(RecordView::from)
    }
    match version {
        Version::V1 => read::<MemfdV1>(bytes),
        Version::V2 => read::<MemfdV2>(bytes),
        Version::Next => read::<MemfdNext>(bytes),
    }
}

/// The bytes PRESERVE_FD of `version` writes for `r` (the features active a preserve
/// activates); `EOPNOTSUPP` for seals the version cannot carry, as preserve refuses them.
pub fn encode(version: Version, r: &RecordView) -> Result<Vec<u8>, Errno> {
    fn write<W: Writer>(r: &RecordView) -> Result<Vec<u8>, Errno> {
        if let Some(known) = W::SEALS
            && u64::from(r.seals) & !known != 0
        {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut ser = W::to_abi(&Record {
            pos: r.pos,
            size: r.size,
            seals: r.seals,
            nr_folios: r.nr_folios,
            folios: r.folios,
        });
        W::encode(&mut ser, W::FEATURES.map_or(0, |d| d.active));
        Ok(ser.as_bytes().to_vec())
    }
    match version {
        Version::V1 => write::<MemfdV1>(r),
        Version::V2 => write::<MemfdV2>(r),
        Version::Next => write::<MemfdNext>(r),
    }
}
