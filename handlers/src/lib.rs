//! LUO file handlers and global state (issues 5 and 6).
//!
//! Handlers here are written against the generated C ops tables and reach the core that runs
//! them through [`host::Host`], which the core installs once ([`host::set_host`]); they do
//! not depend on the core crate. Their files are the model's synthetic objects (a VM, an
//! iommufd, a VFIO cdev) or real memfds; what they hand over is written with the generated
//! types into KHO-preserved memory.
//!
//! * [`memfd`]: memfd, every version; [`hugetlb`]: the HugeTLB pools (FLB or subsystem) and
//!   `huge-memfd-v1`; [`kvm`] and [`guest_memfd`] (which depends on its VM's file);
//!   [`pages`] and [`folio_array`]: the folios of those files and their handed-over arrays.
//! * [`iommu`] (the IOMMU FLB) and [`iommufd`]; [`pci`] (the PCI FLB) and [`vfio_pci`]:
//!   written with `#[liveupdate_flb]` / `#[liveupdate_handler]`, registered per kernel through
//!   [`luo_abi::registry::Registry`] ([`vfio_pci::boot_devices`]), with no process-global
//!   state (the other handlers still go through [`host::Host`] until their ports land).
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
