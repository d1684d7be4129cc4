// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The handlers of a VM's files and the HugeTLB state they share: the HugeTLB pools (FLB or
//! subsystem, chosen per kernel), `huge-memfd-v1`, `kvm_vm_luo_v1` and `guest_memfd_luo_v1`.
//! Registered together because the pools' FLB is linked to every handler whose files use the
//! pools before its incoming state is fetched.

use luo_abi::Result;
use luo_abi::registry::Registry;

use crate::hugetlb::{Form, Hugetlb};

/// Registers with `k` the HugeTLB state in `form` and the handlers of the files that use it:
/// `huge-memfd-v1`, `kvm_vm_luo_v1` and `guest_memfd_luo_v1` (which depends on it); in the
/// FLB form the FLB is linked to huge-memfd and guest_memfd and its incoming state fetched
/// at once (the RFC's init), in the subsystem form the subsystem is booted from the previous
/// kernel's data. Call it once per boot, before anything touches HugeTLB; the returned
/// [`Hugetlb`] is the kernel's pools.
pub fn register(k: &impl Registry, form: Form) -> Result<Hugetlb> {
    let h = Hugetlb::new(k, form);
    h.register_huge_memfd(k)?;
    crate::kvm::register(k)?;
    crate::guest_memfd::register(k, &h)?;
    h.start(k)?;
    Ok(h)
}
