// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Feature negotiation (`struct luo_feature_hdr`, the mm tree's successor of compatible
//! strings; the feature-negotiation proposal's `liveupdate_feature_entry`).
//!
//! A feature-negotiated ABI struct starts with a header of three bit sets: `supp` (what the
//! writer supports), `req` (what a reader must understand) and `active` (what this payload
//! uses), plus reserved words that must be zero. The writer fills them from the features the
//! handler declares and uses; the reader
//!
//! * refuses a payload with a `req` bit it does not know ([`FeatureError::UnknownRequired`],
//!   `-EOPNOTSUPP`),
//! * ignores unknown `supp` bits (and unknown optional `active` bits: their data is skipped),
//! * refuses an `active` bit that is not in `supp`, or non-zero reserved words (`-EINVAL`),
//! * hands the handler optional fields only when their feature is active: see
//!   [`Negotiated::get`]; `#[liveupdate_handler]` also zeroes the fields of inactive features
//!   before the handler sees the struct.

use core::fmt;

use crate::errno::Errno;

/// One feature bit of a feature-negotiated ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Feature {
    /// Bit number (0..64).
    pub bit: u32,
    /// Name (`MEMFD_LUO_FEATURE_SEALS`), for diagnostics.
    pub name: &'static str,
}

impl Feature {
    /// A feature at `bit`.
    pub const fn new(bit: u32, name: &'static str) -> Feature {
        Feature { bit, name }
    }

    /// The feature's mask (`BIT(bit)`).
    pub const fn mask(self) -> u64 {
        1u64 << self.bit
    }
}

/// What a handler declares: the features it knows and how it publishes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureDecl {
    /// Every feature this build understands (and therefore writes in `supp`).
    pub supported: u64,
    /// Features a reader must understand (`req`).
    pub required: u64,
    /// Features used by default in a payload this build writes (`active`).
    pub active: u64,
}

/// The three bit sets of a feature header as read from a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FeatureHeader {
    /// `supp`.
    pub supp: u64,
    /// `req`.
    pub req: u64,
    /// `active`.
    pub active: u64,
}

/// Why a feature-negotiated payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// The writer requires features this reader does not know.
    UnknownRequired {
        /// The unknown required bits.
        bits: u64,
    },
    /// A feature is active but not declared supported by the writer: a malformed header.
    ActiveNotSupported {
        /// The offending bits.
        bits: u64,
    },
    /// The reserved words of the header are not zero.
    ReservedNonZero,
}

impl FeatureError {
    /// The errno the read fails with.
    pub const fn errno(self) -> Errno {
        match self {
            FeatureError::UnknownRequired { .. } => Errno::EOPNOTSUPP,
            FeatureError::ActiveNotSupported { .. } | FeatureError::ReservedNonZero => {
                Errno::EINVAL
            }
        }
    }
}

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeatureError::UnknownRequired { bits } => write!(
                f,
                "the payload requires features {bits:#x} that this kernel does not know; \
                 it cannot be read (live update into an older kernel?)"
            ),
            FeatureError::ActiveNotSupported { bits } => write!(
                f,
                "features {bits:#x} are active but not supported by the writer (corrupt header)"
            ),
            FeatureError::ReservedNonZero => {
                f.write_str("reserved words of the header are not zero")
            }
        }
    }
}

impl From<FeatureError> for Errno {
    fn from(e: FeatureError) -> Errno {
        e.errno()
    }
}

/// Checks an incoming header against what this build knows; returns the active features this
/// build will read (the known subset of `active`).
pub const fn negotiate(
    decl: &FeatureDecl,
    hdr: FeatureHeader,
    reserved_zero: bool,
) -> Result<u64, FeatureError> {
    if !reserved_zero {
        return Err(FeatureError::ReservedNonZero);
    }
    let unknown_req = hdr.req & !decl.supported;
    if unknown_req != 0 {
        return Err(FeatureError::UnknownRequired { bits: unknown_req });
    }
    let bad_active = hdr.active & !hdr.supp;
    if bad_active != 0 {
        return Err(FeatureError::ActiveNotSupported { bits: bad_active });
    }
    Ok(hdr.active & decl.supported)
}

/// The header a writer publishes when it uses the features `active` (a subset of what it
/// supports; required features are always active).
pub const fn publish(decl: &FeatureDecl, active: u64) -> FeatureHeader {
    FeatureHeader {
        supp: decl.supported,
        req: decl.required,
        active: (active | decl.required) & decl.supported,
    }
}

/// A feature-negotiated payload after a successful read: the struct (with the fields of
/// inactive features zeroed) and the features it may be read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated<S> {
    ser: S,
    active: u64,
}

impl<S> Negotiated<S> {
    /// Wraps a payload whose header was checked by [`negotiate`].
    pub const fn new(ser: S, active: u64) -> Negotiated<S> {
        Negotiated { ser, active }
    }

    /// Whether `f` is active in this payload.
    pub const fn is_active(&self, f: Feature) -> bool {
        self.active & f.mask() != 0
    }

    /// The active features this build understood.
    pub const fn active(&self) -> u64 {
        self.active
    }

    /// An optional field, `Some` only when its feature is active:
    /// `data.get(MemfdHandler::SEALS, |s| s.seals)`.
    pub fn get<F>(&self, f: Feature, read: impl FnOnce(&S) -> F) -> Option<F> {
        if self.is_active(f) {
            Some(read(&self.ser))
        } else {
            None
        }
    }

    /// The struct itself, for the fields no feature gates.
    pub const fn ser(&self) -> &S {
        &self.ser
    }

    /// The struct itself.
    pub fn into_inner(self) -> S {
        self.ser
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEALS: Feature = Feature::new(0, "SEALS");
    const FOLIOS: Feature = Feature::new(1, "FOLIOS");
    const DECL: FeatureDecl = FeatureDecl {
        supported: 0b11,
        required: 0b10,
        active: 0b11,
    };

    fn hdr(supp: u64, req: u64, active: u64) -> FeatureHeader {
        FeatureHeader { supp, req, active }
    }

    #[test]
    fn reader_rules() {
        assert_eq!(negotiate(&DECL, hdr(0b11, 0b11, 0b11), true), Ok(0b11));
        // Unknown supported bits are ignored, unknown optional active data skipped.
        assert_eq!(negotiate(&DECL, hdr(0b1111, 0b10, 0b110), true), Ok(0b10));
        // Unknown required bits are refused.
        let e = negotiate(&DECL, hdr(0b111, 0b110, 0b110), true).unwrap_err();
        assert_eq!(e, FeatureError::UnknownRequired { bits: 0b100 });
        assert_eq!(e.errno(), Errno::EOPNOTSUPP);
        assert!(std::format!("{e}").contains("0x4"));
        assert_eq!(
            negotiate(&DECL, hdr(0b01, 0, 0b11), true),
            Err(FeatureError::ActiveNotSupported { bits: 0b10 })
        );
        assert_eq!(
            negotiate(&DECL, hdr(0, 0, 0), false),
            Err(FeatureError::ReservedNonZero)
        );
    }

    #[test]
    fn writer_and_view() {
        assert_eq!(publish(&DECL, 0), hdr(0b11, 0b10, 0b10));
        assert_eq!(publish(&DECL, 0b1101), hdr(0b11, 0b10, 0b11));
        let n = Negotiated::new((7u32, 9u64), FOLIOS.mask());
        assert_eq!(n.get(SEALS, |s| s.0), None);
        assert_eq!(n.get(FOLIOS, |s| s.1), Some(9));
        assert!(n.is_active(FOLIOS));
        assert_eq!(n.ser().0, 7);
        assert_eq!(n.active(), 2);
        assert_eq!(n.into_inner(), (7, 9));
    }
}
