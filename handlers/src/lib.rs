//! LUO file handlers and global state (issues 5 and 6).
//!
//! Handlers here do not depend on the core crate. Those not yet ported to the macros are
//! written against the generated C ops tables and reach the core that runs them through
//! [`host::Host`], which the core installs once ([`host::set_host`]). Their files are the model's synthetic objects (a VM, an
//! iommufd, a VFIO cdev) or real memfds; what they hand over is written with the generated
//! types into KHO-preserved memory.
//!
//! * [`memfd`]: memfd, every version; [`test_flb`]: upstream's test FLBs.
//! * [`hugetlb`]: the HugeTLB pools (FLB or subsystem, chosen per kernel) and `huge-memfd-v1`;
//!   [`kvm`] and [`guest_memfd`] (which depends on its VM's file); [`pages`] and
//!   [`folio_array`]: the folios of those files and their handed-over arrays.
//! * [`iommu`] (the IOMMU FLB) and [`iommufd`]; [`pci`] (the PCI FLB) and [`vfio_pci`].
//! * [`test_flb`]: upstream's test FLBs.

pub mod folio_array;
pub mod guest_memfd;
pub mod host;
pub mod hugetlb;
pub mod iommu;
pub mod iommufd;
pub mod kvm;
pub mod memfd;
pub mod pages;
pub mod pci;
pub mod test_flb;
pub mod vfio_pci;

/// Whether two strings are equal, at compile time: a handler's macro-given compatible string
/// is asserted equal to the generated constant of its spec.
pub(crate) const fn same_str(a: &str, b: &str) -> bool {
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
