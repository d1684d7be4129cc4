// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The three `memfd_luo_ser` versions, read into one in-memory form ([`Ser`]): how
//! `luo inspect` shows a handed-over memfd, whatever kernel wrote it. The memfd handler itself
//! (`luo-handlers`) reads its records through the typed runtime of the macros; this is the
//! image viewer's byte-level reader of the same generated layouts.
//!
//! * `memfd-v1` (6.19): no seals; each folio's real DIRTY/UPTODATE flags. Read through the
//!   **generated** migration `v2::memfd_luo_ser: From<v1::memfd_luo_ser>`.
//! * `memfd-v2` (7.3): seals, `flags` (no bit defined: non-zero is refused).
//! * `memfd` (next, feature-negotiated): a `luo_feature_hdr` first; SEALS and FOLIOS feature bits. A reader
//!   refuses unknown *required* bits, ignores unknown *supported* bits and reads an optional
//!   field only when its bit is *active*; `reserved` must be zero.

use luo_abi::Errno;
use luo_abi::abi::AbiType;
use luo_generated::kho::kho_vmalloc;
use luo_generated::luo::next::luo_feature_hdr;
use luo_generated::memfd::{next, v1, v2};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// A `memfd_luo_ser` of any version, as the handler works with it.
#[derive(Clone, Copy, Debug)]
pub struct Ser {
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

/// A version of the memfd handover format.
pub trait Format: Send + Sync + 'static {
    /// The handler's compatible string (the versionless name for `next`).
    const COMPAT: &'static str;
    /// Size of the serialized struct.
    const SIZE: usize;
    /// Records each folio's real flags (6.19) instead of always DIRTY|UPTODATE (7.3 on).
    const REAL_FLAGS: bool;
    /// Seals this version can carry (a preserve with others gives `EOPNOTSUPP`).
    const SEALS: Option<u64>;
    /// Serializes `s`.
    fn encode(s: &Ser) -> Vec<u8>;
    /// Reads and validates a serialized struct.
    fn decode(b: &[u8]) -> Result<Ser, Errno>;
}

/// `memfd-v1` (6.19, 7.0).
pub struct V1;
/// `memfd-v2` (7.3).
pub struct V2;
/// `memfd` with feature negotiation (next).
pub struct Next;

fn from_v2(s: &v2::memfd_luo_ser) -> Ser {
    Ser {
        pos: s.pos,
        size: s.size,
        seals: s.seals,
        nr_folios: s.nr_folios,
        folios: s.folios,
    }
}

impl Format for V1 {
    const COMPAT: &'static str = v1::MEMFD_LUO_FH_COMPATIBLE;
    const SIZE: usize = size_of::<v1::memfd_luo_ser>();
    const REAL_FLAGS: bool = true;
    // 6.19 ignored seals: the new file came back unsealed.
    const SEALS: Option<u64> = None;

    fn encode(s: &Ser) -> Vec<u8> {
        v1::memfd_luo_ser {
            pos: s.pos,
            size: s.size,
            nr_folios: s.nr_folios,
            folios: s.folios,
        }
        .as_bytes()
        .to_vec()
    }

    fn decode(b: &[u8]) -> Result<Ser, Errno> {
        let old = v1::memfd_luo_ser::read_from_bytes(b).map_err(|_| Errno::EINVAL)?;
        old.check_reserved().map_err(|_| Errno::EINVAL)?;
        // The generated migration: seals and flags default to 0.
        Ok(from_v2(&v2::memfd_luo_ser::from(old)))
    }
}

impl Format for V2 {
    const COMPAT: &'static str = v2::MEMFD_LUO_FH_COMPATIBLE;
    const SIZE: usize = size_of::<v2::memfd_luo_ser>();
    const REAL_FLAGS: bool = false;
    const SEALS: Option<u64> = Some(v2::MEMFD_LUO_ALL_SEALS);

    fn encode(s: &Ser) -> Vec<u8> {
        v2::memfd_luo_ser {
            pos: s.pos,
            size: s.size,
            seals: s.seals,
            flags: 0,
            nr_folios: s.nr_folios,
            folios: s.folios,
        }
        .as_bytes()
        .to_vec()
    }

    fn decode(b: &[u8]) -> Result<Ser, Errno> {
        let s = v2::memfd_luo_ser::read_from_bytes(b).map_err(|_| Errno::EINVAL)?;
        s.check_reserved().map_err(|_| Errno::EINVAL)?;
        if u64::from(s.seals) & !v2::MEMFD_LUO_ALL_SEALS != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        // No flag is defined in memfd-v2: refuse unknown bits rather than ignore them.
        if s.flags != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(from_v2(&s))
    }
}

/// Why a feature header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// A required bit this reader does not know.
    UnknownRequired(u64),
    /// An active bit that is not supported by the producer itself.
    ActiveNotSupported(u64),
    /// Non-zero reserved words.
    Reserved,
}

/// Checks a `luo_feature_hdr` against the bits a reader `known`s (the *inferred* rules of
/// feature negotiation): unknown required bits refuse, unknown supported bits are ignored.
pub fn check_features(h: &luo_feature_hdr, known: u64) -> Result<u64, FeatureError> {
    h.check_reserved().map_err(|_| FeatureError::Reserved)?;
    let unknown = h.req & !known;
    if unknown != 0 {
        return Err(FeatureError::UnknownRequired(unknown));
    }
    if h.active & !h.supp != 0 {
        return Err(FeatureError::ActiveNotSupported(h.active & !h.supp));
    }
    Ok(h.active & known)
}

/// The feature header our `next` memfd writes.
pub fn next_features() -> luo_feature_hdr {
    let mut h = luo_feature_hdr::new_zeroed();
    h.supp = next::MEMFD_LUO_FEATURES_SUPP;
    h.req = next::MEMFD_LUO_FEATURES_REQ;
    h.active = next::MEMFD_LUO_FEATURES_ACTIVE;
    h
}

impl Format for Next {
    const COMPAT: &'static str = next::MEMFD_LUO_FH_NAME;
    const SIZE: usize = size_of::<next::memfd_luo_ser>();
    const REAL_FLAGS: bool = false;
    const SEALS: Option<u64> = Some(next::MEMFD_LUO_ALL_SEALS);

    fn encode(s: &Ser) -> Vec<u8> {
        next::memfd_luo_ser {
            features: next_features(),
            pos: s.pos,
            size: s.size,
            seals: s.seals,
            flags: 0,
            nr_folios: s.nr_folios,
            folios: s.folios,
        }
        .as_bytes()
        .to_vec()
    }

    fn decode(b: &[u8]) -> Result<Ser, Errno> {
        let s = next::memfd_luo_ser::read_from_bytes(b).map_err(|_| Errno::EINVAL)?;
        let features = s.features;
        let active = match check_features(&features, next::MEMFD_LUO_FEATURES_SUPP) {
            Ok(a) => a,
            Err(FeatureError::UnknownRequired(_)) => return Err(Errno::EOPNOTSUPP),
            Err(_) => return Err(Errno::EINVAL),
        };
        if s.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let mut out = Ser {
            pos: s.pos,
            size: s.size,
            seals: 0,
            nr_folios: 0,
            folios: kho_vmalloc::new_zeroed(),
        };
        if active & next::MEMFD_LUO_FEATURE_SEALS != 0 {
            if u64::from(s.seals) & !next::MEMFD_LUO_ALL_SEALS != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            out.seals = s.seals;
        }
        if active & next::MEMFD_LUO_FEATURE_FOLIOS != 0 {
            out.nr_folios = s.nr_folios;
            out.folios = s.folios;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ser {
        Ser {
            pos: 3,
            size: 8192,
            seals: 0x6,
            nr_folios: 2,
            folios: kho_vmalloc::new_zeroed(),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let b = V2::encode(&s);
        assert_eq!(b.len(), 48);
        let r = V2::decode(&b).unwrap();
        assert_eq!((r.pos, r.size, r.seals, r.nr_folios), (3, 8192, 6, 2));
        let b = Next::encode(&s);
        assert_eq!(b.len(), 176);
        let r = Next::decode(&b).unwrap();
        assert_eq!((r.pos, r.size, r.seals, r.nr_folios), (3, 8192, 6, 2));
        let b = V1::encode(&s);
        assert_eq!(b.len(), 40);
        let r = V1::decode(&b).unwrap();
        assert_eq!((r.pos, r.size, r.seals, r.nr_folios), (3, 8192, 0, 2));
    }

    #[test]
    fn v2_refuses_flags_and_unknown_seals() {
        let mut b = V2::encode(&sample());
        b[20] = 1;
        assert_eq!(V2::decode(&b).unwrap_err(), Errno::EINVAL);
        let mut b = V2::encode(&sample());
        b[16] = 0x40;
        assert_eq!(V2::decode(&b).unwrap_err(), Errno::EOPNOTSUPP);
    }

    #[test]
    fn next_negotiation() {
        let s = sample();
        // An unknown *required* bit refuses.
        let mut m = next::memfd_luo_ser::read_from_bytes(&Next::encode(&s)[..]).unwrap();
        m.features.req |= 1 << 9;
        m.features.supp |= 1 << 9;
        assert_eq!(
            Next::decode(m.as_bytes()).unwrap_err(),
            Errno::EOPNOTSUPP,
            "unknown required bit"
        );
        assert_eq!(
            check_features(&{ m.features }, next::MEMFD_LUO_FEATURES_SUPP),
            Err(FeatureError::UnknownRequired(1 << 9))
        );
        // An unknown *supported* (and even active) bit is ignored.
        let mut m = next::memfd_luo_ser::read_from_bytes(&Next::encode(&s)[..]).unwrap();
        m.features.supp |= 1 << 12;
        m.features.active |= 1 << 12;
        assert_eq!(Next::decode(m.as_bytes()).unwrap().seals, 6);
        // SEALS not active: the seals field is not read.
        let mut m = next::memfd_luo_ser::read_from_bytes(&Next::encode(&s)[..]).unwrap();
        m.features.active &= !next::MEMFD_LUO_FEATURE_SEALS;
        m.features.req &= !next::MEMFD_LUO_FEATURE_SEALS;
        assert_eq!(Next::decode(m.as_bytes()).unwrap().seals, 0);
        // Reserved words must be zero.
        let mut m = next::memfd_luo_ser::read_from_bytes(&Next::encode(&s)[..]).unwrap();
        m.features.reserved[3] = 1;
        assert_eq!(Next::decode(m.as_bytes()).unwrap_err(), Errno::EINVAL);
    }
}
