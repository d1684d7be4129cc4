//! The KVM VM file handler (`kvm_vm_luo_v1`, spec `kvm/v1`), after upstream's guest_memfd
//! preservation series (`reference/luo-upstream.md` §8c).
//!
//! A VM file is handed over as a `struct kvm_luo_ser` holding the VM type; the new kernel
//! creates a new VM of that type. The handler has no freeze: nothing about the VM changes on
//! the reboot path. guest_memfds name their VM by its token ([`crate::guest_memfd`]).
//!
//! The model's VM ([`Vm`]) is a synthetic file of [`FileKind::KvmVm`]; create one with
//! [`Vm::new`] and install it with the core's `open_synthetic`. The handler is registered by
//! [`crate::hugetlb::register`], with guest_memfd's.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use luo_abi::file::{File, FileKind};
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, Phys, PhysAddr};
use luo_generated::kvm::v1::{KVM_LUO_FH_COMPATIBLE, kvm_luo_ser};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};

use crate::host::{FileOps, StaticHandler, host, kind_of, rc, synthetic_of};

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
    let h = host().ok()?;
    h.payload(f)?.downcast_ref::<Vm>()
}

fn vm_ptr<'a>(f: *mut CFile) -> Option<&'a Vm> {
    synthetic_of::<Vm>(f)
}

static OPS: FileOps = FileOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: None,
    unfreeze: None,
    retrieve: Some(retrieve),
    can_finish: None,
    finish: Some(finish),
    get_id: None,
    owner: std::ptr::null_mut(),
});

/// The `kvm_vm_luo_v1` handler.
pub static KVM_VM: StaticHandler = StaticHandler::new(&OPS, KVM_LUO_FH_COMPATIBLE);

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    kind_of(f) == Some(FileKind::KvmVm) && vm_ptr(f).is_some()
}

unsafe extern "C" fn preserve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc((|| {
        let vm = vm_ptr(a.file).ok_or(Errno::EINVAL)?;
        // Upstream: a dead or bugged VM cannot be preserved. The errno is the model's: EIO,
        // what KVM's ioctls return on a dead VM.
        if !vm.usable() {
            return Err(Errno::EIO);
        }
        let ser = kvm_luo_ser {
            vm_type: vm.vm_type,
        };
        a.serialized_data = host()?.kho()?.alloc_preserve_obj(&ser)?.addr().as_u64();
        Ok(())
    })())
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    if let Ok(kho) = host().and_then(|h| h.kho()) {
        let _ = kho.unpreserve_free(PhysAddr::new(a.serialized_data));
    }
}

/// The VM type handed over at `data`.
fn read_type(kho: &dyn KhoService, data: u64) -> Result<u64, Errno> {
    let ser: kvm_luo_ser = kho.read_obj(Phys::new(PhysAddr::new(data)))?;
    Ok(ser.vm_type)
}

unsafe extern "C" fn retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let h = host()?;
        let kho = h.kho()?;
        let vm_type = read_type(&*kho, a.serialized_data);
        // Created or not, the handed-over state is released here: finish skips files whose
        // retrieve failed.
        kho.restore_free(PhysAddr::new(a.serialized_data))?;
        let vm = Vm::create(vm_type?, true)?;
        let f = h.open_synthetic(FileKind::KvmVm, VM_FILE_NAME, Box::new(vm))?;
        a.file = h.file_to_c(f)?;
        Ok(())
    })())
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    if a.retrieve_status != 0 {
        return;
    }
    if let Ok(kho) = host().and_then(|h| h.kho()) {
        let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
    }
}
