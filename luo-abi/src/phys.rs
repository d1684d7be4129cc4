// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Physical pointers as they cross the handover.
//!
//! Every pointer in a KHO ABI structure is a native-endian `u64` physical address, `0` meaning
//! NULL. [`PhysAddr`] is such an address; [`Phys<T>`] additionally records in its type what
//! lives there (`Phys<memfd_luo_ser>`), with the same 8 bytes on the wire. [`AlignedU64`] is the
//! uAPI `__aligned_u64`.
//!
//! All three implement zerocopy's `FromBytes`, `IntoBytes`, `Immutable` and `KnownLayout`, so
//! generated ABI structs can embed them and be read from or written to preserved memory
//! without `unsafe`. [`PhysAddr`] and [`Phys`] have the size and alignment of `u64` and can sit
//! in `#[repr(C, packed)]` structs (`__packed` upstream). [`AlignedU64`] carries
//! `#[repr(align(8))]` and therefore cannot be inside a packed struct; it belongs in the
//! (unpacked) uAPI ioctl structs only.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of a page in the layouts generated Rust types use.
///
/// The generated Rust ABI types (block capacities such as 51 sessions or 63 files per block,
/// `LUO_FLB_MAX`, `kho_vmalloc_chunk`) are laid out for 4 KiB pages, as on x86. The spec tool
/// also computes the 16 KiB and 64 KiB layouts for the schemas, but the Rust types are 4 KiB.
pub const PAGE_SIZE: usize = 4096;

/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// A physical address (`phys_addr_t` on a 64-bit kernel); `0` is NULL.
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// The NULL physical address.
    pub const NULL: PhysAddr = PhysAddr(0);

    /// Wraps a raw address.
    pub const fn new(addr: u64) -> PhysAddr {
        PhysAddr(addr)
    }

    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is NULL (`0`).
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// The page frame number (`PHYS_PFN`).
    pub const fn pfn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }

    /// The address of page frame `pfn` (`PFN_PHYS`), `None` if it does not fit in 64 bits.
    pub const fn from_pfn(pfn: u64) -> Option<PhysAddr> {
        if pfn > (u64::MAX >> PAGE_SHIFT) {
            None
        } else {
            Some(PhysAddr(pfn << PAGE_SHIFT))
        }
    }

    /// Whether the address is a multiple of [`PAGE_SIZE`].
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE as u64)
    }

    /// `self + offset`, `None` on overflow.
    pub const fn checked_add(self, offset: u64) -> Option<PhysAddr> {
        match self.0.checked_add(offset) {
            Some(a) => Some(PhysAddr(a)),
            None => None,
        }
    }
}

impl From<u64> for PhysAddr {
    fn from(addr: u64) -> PhysAddr {
        PhysAddr(addr)
    }
}

impl From<PhysAddr> for u64 {
    fn from(addr: PhysAddr) -> u64 {
        addr.0
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::LowerHex for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A physical address of a `T` (which may be unsized, e.g. `[u8]`): a `u64` on the wire, `0`
/// being NULL.
///
/// `T` only documents what the previous kernel put there; reading it back is always a
/// validated byte copy (see [`crate::kho`]), never a dereference.
#[repr(transparent)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Phys<T: ?Sized> {
    addr: u64,
    _points_to: PhantomData<fn() -> T>,
}

impl<T: ?Sized> Phys<T> {
    /// The NULL pointer.
    pub const NULL: Phys<T> = Phys::new(PhysAddr::NULL);

    /// A pointer to a `T` at `addr`.
    pub const fn new(addr: PhysAddr) -> Phys<T> {
        Phys {
            addr: addr.0,
            _points_to: PhantomData,
        }
    }

    /// The untyped address.
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.addr)
    }

    /// Whether this is NULL (`0`).
    pub const fn is_null(self) -> bool {
        self.addr == 0
    }

    /// The same address, viewed as a pointer to a `U`.
    pub const fn cast<U: ?Sized>(self) -> Phys<U> {
        Phys::new(self.addr())
    }
}

impl<T: ?Sized> Clone for Phys<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Phys<T> {}

impl<T: ?Sized> PartialEq for Phys<T> {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

impl<T: ?Sized> Eq for Phys<T> {}

impl<T: ?Sized> Hash for Phys<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
    }
}

impl<T: ?Sized> Default for Phys<T> {
    fn default() -> Self {
        Self::NULL
    }
}

impl<T: ?Sized> fmt::Debug for Phys<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phys<{}>({:#x})", core::any::type_name::<T>(), self.addr)
    }
}

impl<T: ?Sized> From<Phys<T>> for PhysAddr {
    fn from(p: Phys<T>) -> PhysAddr {
        p.addr()
    }
}

impl<T: ?Sized> From<PhysAddr> for Phys<T> {
    fn from(addr: PhysAddr) -> Phys<T> {
        Phys::new(addr)
    }
}

/// The uAPI `__aligned_u64`: a `u64` aligned to 8 bytes on every architecture.
///
/// i386 aligns a plain `u64` to 4 bytes, so uAPI structs use `__aligned_u64` to keep one
/// layout for 32- and 64-bit userspace (`liveupdate_session_preserve_fd.token`).
#[repr(C, align(8))]
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct AlignedU64(pub u64);

impl AlignedU64 {
    /// Wraps a value.
    pub const fn new(v: u64) -> AlignedU64 {
        AlignedU64(v)
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for AlignedU64 {
    fn from(v: u64) -> AlignedU64 {
        AlignedU64(v)
    }
}

impl From<AlignedU64> for u64 {
    fn from(v: AlignedU64) -> u64 {
        v.0
    }
}

impl fmt::Debug for AlignedU64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};
    use std::format;

    #[test]
    fn sizes_and_alignments() {
        assert_eq!(size_of::<PhysAddr>(), 8);
        assert_eq!(align_of::<PhysAddr>(), align_of::<u64>());
        assert_eq!(size_of::<Phys<u32>>(), 8);
        assert_eq!(size_of::<Phys<[u8]>>(), 8);
        assert_eq!(align_of::<Phys<[u8]>>(), align_of::<u64>());
        assert_eq!(size_of::<AlignedU64>(), 8);
        assert_eq!(align_of::<AlignedU64>(), 8);
        assert_eq!(PAGE_SIZE, 1 << PAGE_SHIFT);
    }

    /// The shape of `struct liveupdate_session_preserve_fd`.
    #[repr(C)]
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
    struct PreserveFd {
        size: u32,
        fd: i32,
        token: AlignedU64,
    }

    /// The shape of `struct kho_vmalloc`, packed as upstream.
    #[repr(C, packed)]
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
    struct Vmalloc {
        first: Phys<[u8]>,
        total_pages: u32,
        flags: u16,
        order: u16,
    }

    /// A packed struct where the pointer sits at an odd offset.
    #[repr(C, packed)]
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
    struct Odd {
        tag: u8,
        p: Phys<u64>,
        a: PhysAddr,
    }

    #[test]
    fn embed_in_abi_structs() {
        assert_eq!(size_of::<PreserveFd>(), 16);
        assert_eq!(offset_of!(PreserveFd, token), 8);
        assert_eq!(size_of::<Vmalloc>(), 16);
        assert_eq!(size_of::<Odd>(), 17);
        assert_eq!(offset_of!(Odd, p), 1);

        let v = Vmalloc {
            first: Phys::new(PhysAddr::new(0x1234_5000)),
            total_pages: 3,
            flags: 1,
            order: 0,
        };
        let bytes = v.as_bytes();
        assert_eq!(&bytes[..8], &0x1234_5000u64.to_ne_bytes());
        let back = Vmalloc::read_from_bytes(bytes).unwrap();
        let first = back.first;
        assert_eq!(first.addr(), PhysAddr::new(0x1234_5000));
        let total = back.total_pages;
        assert_eq!(total, 3);

        let odd = Odd::read_from_bytes(&[0xffu8; 17]).unwrap();
        let p = odd.p;
        assert_eq!(p.addr().as_u64(), u64::MAX);
    }

    #[test]
    fn phys_ops() {
        let p: Phys<u32> = Phys::new(PhysAddr::new(0x2000));
        assert!(!p.is_null());
        assert!(Phys::<u32>::NULL.is_null());
        assert!(Phys::<[u8]>::default().is_null());
        let q: Phys<[u8]> = p.cast();
        assert_eq!(q.addr(), p.addr());
        assert_eq!(p, p.cast::<u8>().cast::<u32>());
        assert_eq!(format!("{p:?}"), "Phys<u32>(0x2000)");

        let a = PhysAddr::new(0x3000);
        assert_eq!(a.pfn(), 3);
        assert_eq!(PhysAddr::from_pfn(3), Some(a));
        assert_eq!(PhysAddr::from_pfn(u64::MAX), None);
        assert!(a.is_page_aligned());
        assert!(!PhysAddr::new(0x3008).is_page_aligned());
        assert_eq!(a.checked_add(8), Some(PhysAddr::new(0x3008)));
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert!(PhysAddr::NULL.is_null());
        assert_eq!(format!("{a:?}"), "PhysAddr(0x3000)");
    }
}
