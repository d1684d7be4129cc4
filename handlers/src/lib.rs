// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! LUO file handlers and global state.
//!
//! Every handler here is written with the macros (`#[liveupdate_handler]`,
//! `#[liveupdate_flb]`, `#[liveupdate_subsystem]`) and registered with a kernel given
//! explicitly (functions generic over [`luo_abi::registry::Registry`]); the crate does not
//! depend on the core. Files are the model's synthetic objects (a VM, an iommufd, a VFIO cdev)
//! or real memfds; what handlers hand over is written with the generated types into
//! KHO-preserved memory by the runtime the macros expand against.
//!
//! * [`memfd`]: memfd, every version; [`test_flb`]: upstream's test FLBs.
//! * [`hugetlb`]: the HugeTLB pools (FLB or subsystem, chosen per kernel) and `huge-memfd-v1`;
//!   [`kvm`] and [`guest_memfd`] (which depends on its VM's file); [`pages`] and
//!   [`folio_array`]: the folios of those files and their handed-over arrays; [`vm`]
//!   registers them together.
//! * [`iommu`] (the IOMMU FLB) and [`iommufd`]; [`pci`] (the PCI FLB, its devices in a KHO
//!   block chain: [`kho_block`]) and [`vfio_pci`].
//! * [`test_flb`]: upstream's test FLBs.

pub mod folio_array;
pub mod guest_memfd;
pub mod hugetlb;
pub mod iommu;
pub mod iommufd;
pub mod kho_block;
pub mod kvm;
pub mod memfd;
pub mod pages;
pub mod pci;
pub mod test_flb;
pub mod vfio_pci;
pub mod vm;
