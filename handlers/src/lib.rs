//! LUO file handlers and global state (issues 5 and 6).
//!
//! Handlers here are written against the generated C ops tables and reach the core that runs
//! them through [`host::Host`], which the core installs once ([`host::set_host`]); they do
//! not depend on the core crate.

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
