// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Support for `#[derive(Abi)]` (luo-derive): what an ABI struct and its fields must be.
//!
//! A handover struct crosses a kexec between two different kernel builds, so its bytes are its
//! contract. `#[derive(Abi)]` proves at compile time that a struct
//!
//! * is `#[repr(C)]` or `#[repr(C, packed)]` (and, if declared, has the declared size),
//! * has no implicit padding (the error names the field it follows and how many bytes),
//! * has only ABI-safe fields ([`AbiField`]): fixed-width integers, arrays of them, physical
//!   pointers and other ABI structs; never `usize`/`isize` (arch-dependent), `bool`, `char`,
//!   references, pointers or enums (whose invalid values are UB to read),
//!
//! and implements [`AbiType`], whose [`AbiType::check_reserved`] rejects data whose
//! `#[abi(reserved)]` fields are not zero. The handler runtime runs that check on every read.

use core::fmt;

use zerocopy::{Immutable, IntoBytes};

use crate::errno::Errno;
use crate::phys::{AlignedU64, Phys, PhysAddr};

/// A type allowed as a field of an ABI struct.
///
/// Reading and writing need zerocopy's `FromBytes`/`IntoBytes` besides; they are not
/// supertraits, so that a struct `#[derive(Abi)]` rejects (for padding, say) gets that one
/// error and not a cascade.
///
/// # Safety
///
/// The type has the same size, alignment and meaning on every architecture the ABI targets,
/// every bit pattern is valid, and it has no padding.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an ABI-safe field type",
    label = "not allowed in a handover struct",
    note = "ABI fields are u8..u64, i8..i64, arrays of them, Phys<T>/PhysAddr/AlignedU64, or structs with #[derive(Abi)]",
    note = "a type from another crate that is zerocopy FromBytes + IntoBytes + Immutable can be allowed with #[abi(foreign)] on the field"
)]
pub unsafe trait AbiField {}

macro_rules! abi_fields {
    ($($t:ty),*) => { $(
        // SAFETY: fixed-width integers: same size everywhere, every bit pattern valid.
        unsafe impl AbiField for $t {}
    )* };
}
abi_fields!(u8, u16, u32, u64, i8, i16, i32, i64);

// SAFETY: an array of ABI fields has no padding between elements and every bit pattern valid.
unsafe impl<T: AbiField, const N: usize> AbiField for [T; N] {}
// SAFETY: a `u64` physical address.
unsafe impl AbiField for PhysAddr {}
// SAFETY: a `u64` physical address.
unsafe impl<T: ?Sized> AbiField for Phys<T> {}
// SAFETY: a `u64` with alignment 8, which the uAPI declares as `__aligned_u64`.
unsafe impl AbiField for AlignedU64 {}

/// A `#[derive(Abi)]` struct: a proven layout plus a reserved-field check.
///
/// # Safety
///
/// Implemented only by `#[derive(Abi)]`, which proves the layout claims at compile time.
pub unsafe trait AbiType: AbiField + Copy {
    /// The struct's name, for diagnostics.
    const NAME: &'static str;
    /// Whether the struct is `#[repr(C, packed)]`.
    const PACKED: bool;

    /// Checks that every `#[abi(reserved)]` field is zero, as a reader must.
    fn check_reserved(&self) -> Result<(), ReservedNonZero>;
}

/// A reserved field that must be zero was not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedNonZero {
    /// The struct.
    pub ty: &'static str,
    /// The field.
    pub field: &'static str,
}

impl fmt::Display for ReservedNonZero {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} is reserved and must be zero", self.ty, self.field)
    }
}

impl From<ReservedNonZero> for Errno {
    /// Invalid incoming data: `EINVAL`.
    fn from(_: ReservedNonZero) -> Errno {
        Errno::EINVAL
    }
}

/// Whether every byte of `v` is zero.
pub fn is_zeroed<T: IntoBytes + Immutable + ?Sized>(v: &T) -> bool {
    v.as_bytes().iter().all(|&b| b == 0)
}

/// The NUL-padded bytes of a `compatible` field of `N` bytes (`[u8; N]`), for const tables.
///
/// Panics at compile time (const evaluation) if `s` is empty, not ASCII, contains NUL or does
/// not fit with its terminating NUL; `#[liveupdate_handler]` reports those cases with a spanned
/// error first.
pub const fn compat_bytes<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    assert!(!b.is_empty(), "compatible string is empty");
    assert!(
        b.len() < N,
        "compatible string does not fit its field with the NUL"
    );
    let mut out = [0u8; N];
    let mut i = 0;
    while i < b.len() {
        assert!(
            b[i].is_ascii() && b[i] != 0,
            "compatible string must be ASCII without NUL"
        );
        out[i] = b[i];
        i += 1;
    }
    out
}

/// `a == b` in const context.
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The string in a NUL-padded `compatible` field, `None` if it is not NUL-terminated ASCII.
pub fn compat_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0)?;
    let s = &field[..end];
    if !s.is_ascii() {
        return None;
    }
    core::str::from_utf8(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: [u8; 8] = compat_bytes("memfd");

    #[test]
    fn compat() {
        assert_eq!(&C, b"memfd\0\0\0");
        assert_eq!(compat_str(&C), Some("memfd"));
        assert_eq!(compat_str(b"abc"), None);
        assert!(str_eq("a", "a"));
        assert!(!str_eq("a", "ab"));
        assert!(!str_eq("ab", "ac"));
        assert!(is_zeroed(&[0u64; 3]));
        assert!(!is_zeroed(&[0u8, 1]));
        let e = ReservedNonZero {
            ty: "t",
            field: "r",
        };
        assert_eq!(Errno::from(e), Errno::EINVAL);
        assert_eq!(std::format!("{e}"), "t.r is reserved and must be zero");
    }
}
