// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The KVM VM file handler (`kvm_vm_luo_v1`, spec `kvm/v1`), after upstream's guest_memfd
//! preservation series (posted upstream, not merged).
//!
//! A VM file is handed over as a `struct kvm_luo_ser` holding the VM type; the new kernel
//! creates a new VM of that type. The handler has no freeze: nothing about the VM changes on
//! the reboot path. guest_memfds name their VM by its token ([`crate::guest_memfd`]).
//!
//! The model's VM ([`Vm`]) is a synthetic file of [`FileKind::KvmVm`]; create one with
//! [`Vm::new`] and install it with the core's `open_synthetic`. The handler
//! ([`KvmVmHandler`], written with `#[liveupdate_handler]`) is registered by [`register`],
//! which [`crate::vm::register`] calls with guest_memfd's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::registry::Registry;
use luo_abi::{Errno, Result};
use luo_derive::liveupdate_handler;
use luo_generated::kvm::v1::{KVM_LUO_FH_COMPATIBLE, kvm_luo_ser};

/// `KVM_X86_DEFAULT_VM`.
pub const KVM_X86_DEFAULT_VM: u64 = 0;
/// `KVM_X86_SW_PROTECTED_VM`.
pub const KVM_X86_SW_PROTECTED_VM: u64 = 1;
/// `KVM_X86_SEV_VM`.
pub const KVM_X86_SEV_VM: u64 = 2;
/// `KVM_X86_SEV_ES_VM`.
pub const KVM_X86_SEV_ES_VM: u64 = 3;
/// `KVM_X86_SNP_VM`.
pub const KVM_X86_SNP_VM: u64 = 4;
/// `KVM_X86_TDX_VM`.
pub const KVM_X86_TDX_VM: u64 = 5;

/// The VM types the model's (x86) KVM can create.
pub const VM_TYPES: [u64; 6] = [
    KVM_X86_DEFAULT_VM,
    KVM_X86_SW_PROTECTED_VM,
    KVM_X86_SEV_VM,
    KVM_X86_SEV_ES_VM,
    KVM_X86_SNP_VM,
    KVM_X86_TDX_VM,
];

/// Name of a VM file (`anon_inode:kvm-vm`).
pub const VM_FILE_NAME: &str = "kvm-vm";

/// Created VMs, to tell them apart in tests.
static NEXT_VM: AtomicU64 = AtomicU64::new(1);

/// A KVM VM (`struct kvm`): the payload of a [`FileKind::KvmVm`] synthetic file.
#[derive(Debug)]
pub struct Vm {
    vm_type: u64,
    id: u64,
    restored: bool,
    dead: AtomicBool,
    bugged: AtomicBool,
}

impl Vm {
    /// `KVM_CREATE_VM(type)`: `EINVAL` for a type the model's KVM does not know.
    pub fn new(vm_type: u64) -> Result<Vm, Errno> {
        Vm::create(vm_type, false)
    }

    fn create(vm_type: u64, restored: bool) -> Result<Vm, Errno> {
        if !VM_TYPES.contains(&vm_type) {
            return Err(Errno::EINVAL);
        }
        Ok(Vm {
            vm_type,
            id: NEXT_VM.fetch_add(1, Ordering::Relaxed),
            restored,
            dead: AtomicBool::new(false),
            bugged: AtomicBool::new(false),
        })
    }

    /// The VM type.
    pub fn vm_type(&self) -> u64 {
        self.vm_type
    }

    /// A number unique to this VM in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Created by a retrieve in the new kernel.
    pub fn is_restored(&self) -> bool {
        self.restored
    }

    /// `kvm_vm_dead()`: the VM refuses every further ioctl.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }

    /// `KVM_BUG_ON()` fired: the VM is bugged (and dead).
    pub fn bug(&self) {
        self.bugged.store(true, Ordering::Relaxed);
        self.kill();
    }

    fn usable(&self) -> bool {
        !self.dead.load(Ordering::Relaxed) && !self.bugged.load(Ordering::Relaxed)
    }
}

/// The VM behind a file, if it is one.
pub fn vm_of(f: &dyn File) -> Option<&Vm> {
    if f.kind() != FileKind::KvmVm {
        return None;
    }
    f.payload()?.downcast_ref::<Vm>()
}

/// The `kvm_vm_luo_v1` handler: a VM file is handed over as its type.
#[liveupdate_handler(compatible = "kvm_vm_luo_v1", abi = kvm_luo_ser)]
pub struct KvmVmHandler;

const _: () = assert!(luo_abi::abi::str_eq(
    <KvmVmHandler as luo_abi::handler::HandlerAbi>::COMPATIBLE,
    KVM_LUO_FH_COMPATIBLE
));

#[liveupdate_handler]
impl FileHandler for KvmVmHandler {
    fn can_preserve(&self, file: &dyn File) -> bool {
        vm_of(file).is_some()
    }

    fn preserve(&self, _cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(kvm_luo_ser, ())> {
        let vm = vm_of(file).ok_or(Errno::EINVAL)?;
        // Upstream: a dead or bugged VM cannot be preserved. The errno is the model's: EIO,
        // what KVM's ioctls return on a dead VM.
        if !vm.usable() {
            return Err(Errno::EIO);
        }
        Ok((
            kvm_luo_ser {
                vm_type: vm.vm_type,
            },
            (),
        ))
    }

    fn unpreserve(&self, _cx: &Ctx<'_, Self>, _file: &dyn File, _ser: kvm_luo_ser, _: ()) {
        // Nothing but the handed-over struct, which the runtime frees.
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: kvm_luo_ser) -> Result<FileRef> {
        // A type this KVM does not know fails the retrieve (EINVAL); the runtime releases the
        // handed-over struct either way.
        let vm = Vm::create(ser.vm_type, true)?;
        cx.open_synthetic(FileKind::KvmVm, VM_FILE_NAME, Box::new(vm))
    }

    fn finish(&self, _cx: &Ctx<'_, Self>, _how: Finish<'_, kvm_luo_ser>) {
        // Nothing beyond the struct: a VM holds no preserved memory.
    }
}

/// Registers the `kvm_vm_luo_v1` handler with `k`.
pub fn register(k: &impl Registry) -> Result<()> {
    k.register_handler(Registration::new(KvmVmHandler, k.host(), ()))
}
