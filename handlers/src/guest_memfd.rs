//! The guest_memfd file handler (`guest_memfd_luo_v1`, spec `kvm/v1`), after upstream's
//! guest_memfd preservation series (`reference/luo-upstream.md` §8c).
//!
//! A guest_memfd is handed over as a `struct guest_memfd_luo_ser` (size, flags, VM token) and
//! its folios as `struct guest_memfd_luo_folio_ser` records (pfn, flags, index) in a preserved
//! vmalloc area; each folio is KHO-preserved, so its contents cross the kexec in place.
//!
//! A guest_memfd belongs to a VM. The handler declares that its files depend on
//! `kvm_vm_luo_v1` files (`depends_on`) and lets the core resolve the relation: preserve
//! checks and freeze records the VM's token in the same session
//! (`liveupdate_get_token_outgoing`: `ENOENT` when the VM is not preserved there), and
//! retrieve gets the VM back through the core (`liveupdate_get_file_incoming`), which
//! retrieves it first if userspace has not. The core unpreserves and finishes the guest_memfd
//! before its VM.
//!
//! HugeTLB-backed guest_memfds (this project's `GUEST_MEMFD_LUO_FLAG_HUGETLB`) take their
//! pages from the HugeTLB pools ([`crate::hugetlb`]) and account them there.
//!
//! The handlers are registered by [`crate::hugetlb::register`]. Driving them from the core
//! (`luo_core::Kernel`), e.g. for a simulation:
//!
//! ```text
//! let vm = k.open_synthetic(FileKind::KvmVm, kvm::VM_FILE_NAME, Box::new(Vm::new(0)?))?;
//! let g = GuestMemfd::new(k.file(vm)?, size, GUEST_MEMFD_LUO_FLAG_MMAP)?;
//! g.pages().write(off, data)?;
//! let (digest, folios) = (g.pages().digest()?, g.pages().folios());
//! let gfd = k.open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(g))?;
//! // preserve vm then gfd in one session, kexec, retrieve gfd (the VM comes with it):
//! let g = gmem_of(&*k2.file(fd)?).unwrap();
//! assert_eq!((g.pages().digest()?, g.pages().folios()), (digest, folios));
//! assert_eq!(vm_of(&**g.vm()).unwrap().vm_type(), 0);
//! ```

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::kho::{KhoExt, KhoService};
use luo_abi::{Errno, PAGE_SIZE, Phys, PhysAddr};
use luo_generated::kvm::v1::guest_memfd_luo_ser;
use luo_generated::kvm::v1::{GUEST_MEMFD_LUO_FH_COMPATIBLE, KVM_LUO_FH_COMPATIBLE};
use luo_generated::kvm::{
    GUEST_MEMFD_LUO_FLAG_HUGETLB, GUEST_MEMFD_LUO_FLAG_INIT_SHARED, GUEST_MEMFD_LUO_FLAG_MMAP,
    GUEST_MEMFD_LUO_FOLIO_UPTODATE, GUEST_MEMFD_LUO_SUPPORTED_FLAGS, guest_memfd_luo_folio_ser,
};
use luo_generated::liveupdate::{
    file as CFile, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use zerocopy::FromZeros;

use crate::folio_array;
use crate::host::{DependsOn, FileOps, StaticHandler, compat48, host, kind_of, rc, synthetic_of};
use crate::hugetlb;
use crate::kvm::vm_of;
use crate::pages::{self, Folio, Pages};

type Kho = Arc<dyn KhoService + Send + Sync>;

/// Name of a guest_memfd file (`anon_inode:[kvm-gmem]`).
pub const GMEM_FILE_NAME: &str = "kvm-gmem";

/// A guest_memfd: the payload of a [`FileKind::GuestMemfd`] synthetic file.
pub struct GuestMemfd {
    vm: FileRef,
    flags: u64,
    pages: Pages,
    private: AtomicBool,
}

impl GuestMemfd {
    /// `KVM_CREATE_GUEST_MEMFD` on `vm`: `size` bytes (nonzero, page aligned), `flags` a
    /// subset of `GUEST_MEMFD_LUO_FLAG_MMAP | GUEST_MEMFD_LUO_FLAG_INIT_SHARED`; folios are
    /// allocated on first write. `EINVAL` otherwise, or when `vm` is not a VM.
    pub fn new(vm: FileRef, size: u64, flags: u64) -> Result<GuestMemfd, Errno> {
        if vm_of(&*vm).is_none()
            || flags & !(GUEST_MEMFD_LUO_FLAG_MMAP | GUEST_MEMFD_LUO_FLAG_INIT_SHARED) != 0
            || size == 0
            || !size.is_multiple_of(PAGE_SIZE as u64)
        {
            return Err(Errno::EINVAL);
        }
        Ok(GuestMemfd {
            vm,
            flags,
            pages: Pages::new(0, size / PAGE_SIZE as u64)?,
            private: AtomicBool::new(false),
        })
    }

    /// A HugeTLB-backed guest_memfd on `vm`: `nr` huge pages of `order` taken from the
    /// current kernel's HugeTLB pool (`ENOMEM` if it has too few), all faulted in.
    pub fn new_hugetlb(vm: FileRef, order: u32, nr: u64, flags: u64) -> Result<Self, Errno> {
        if vm_of(&*vm).is_none()
            || flags & !(GUEST_MEMFD_LUO_FLAG_MMAP | GUEST_MEMFD_LUO_FLAG_INIT_SHARED) != 0
            || order == 0
        {
            return Err(Errno::EINVAL);
        }
        let pages = Pages::new(order, nr)?;
        hugetlb::alloc(order, nr)?;
        for i in 0..nr {
            pages.populate(i)?;
        }
        Ok(GuestMemfd {
            vm,
            flags: flags | GUEST_MEMFD_LUO_FLAG_HUGETLB,
            pages,
            private: AtomicBool::new(false),
        })
    }

    /// The VM file it belongs to.
    pub fn vm(&self) -> &FileRef {
        &self.vm
    }

    /// `GUEST_MEMFD_LUO_FLAG_*` flags.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// Its memory.
    pub fn pages(&self) -> &Pages {
        &self.pages
    }

    /// Backed by HugeTLB pages.
    pub fn is_hugetlb(&self) -> bool {
        self.flags & GUEST_MEMFD_LUO_FLAG_HUGETLB != 0
    }

    /// Converts part of it to private memory (`KVM_SET_MEMORY_ATTRIBUTES`): upstream cannot
    /// preserve a guest_memfd with private memory, so no handler accepts it any more.
    pub fn make_private(&self) {
        self.private.store(true, Ordering::Relaxed);
    }
}

/// The guest_memfd behind a file, if it is one.
pub fn gmem_of(f: &dyn File) -> Option<&GuestMemfd> {
    if f.kind() != FileKind::GuestMemfd {
        return None;
    }
    host().ok()?.payload(f)?.downcast_ref::<GuestMemfd>()
}

fn gmem_ptr<'a>(f: *mut CFile) -> Option<&'a GuestMemfd> {
    synthetic_of::<GuestMemfd>(f)
}

static OPS: FileOps = FileOps(liveupdate_file_ops {
    can_preserve: Some(can_preserve),
    preserve: Some(preserve),
    unpreserve: Some(unpreserve),
    freeze: Some(freeze),
    unfreeze: None,
    retrieve: Some(retrieve),
    can_finish: None,
    finish: Some(finish),
    get_id: None,
    owner: std::ptr::null_mut(),
});

static KVM_COMPAT: [u8; 48] = compat48(KVM_LUO_FH_COMPATIBLE);
static DEPENDS_ON: DependsOn = DependsOn(&[KVM_COMPAT.as_ptr(), std::ptr::null()]);

/// The `guest_memfd_luo_v1` handler; its files depend on `kvm_vm_luo_v1` files.
pub static GUEST_MEMFD: StaticHandler =
    StaticHandler::with_deps(&OPS, GUEST_MEMFD_LUO_FH_COMPATIBLE, &DEPENDS_ON);

unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut CFile) -> bool {
    kind_of(f) == Some(FileKind::GuestMemfd)
        && gmem_ptr(f).is_some_and(|g| {
            // Upstream: no private memory, no large folios (this project: unless HugeTLB).
            !g.private.load(Ordering::Relaxed) && (g.pages.order() == 0 || g.is_hugetlb())
        })
}

fn ser_at(data: u64) -> Phys<guest_memfd_luo_ser> {
    Phys::new(PhysAddr::new(data))
}

unsafe extern "C" fn preserve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: LUO passes a valid argument block, exclusively ours for the call.
    let a = unsafe { &mut *a };
    rc((|| {
        let g = gmem_ptr(a.file).ok_or(Errno::EINVAL)?;
        let h = host()?;
        // The VM must be preserved in the same session (the core says ENOENT otherwise).
        h.get_token_outgoing(a.session, &*g.vm)?;
        let kho = h.kho()?;
        // Upstream freezes the mapping first: no folio comes or goes while preserved.
        g.pages.set_frozen(true);
        match preserve_steps(&kho, g) {
            Ok((data, array)) => {
                a.serialized_data = data;
                a.private_data = array.into_private();
                Ok(())
            }
            Err(e) => {
                g.pages.set_frozen(false);
                Err(e)
            }
        }
    })())
}

/// KHO-preserves every folio, writes the folio array and the `guest_memfd_luo_ser`; on
/// failure undoes what it did.
fn preserve_steps(kho: &Kho, g: &GuestMemfd) -> Result<(u64, folio_array::Preserved), Errno> {
    let records = g.pages.preserve_folios(|index, f| {
        let mut r = guest_memfd_luo_folio_ser::new_zeroed();
        r.set_pfn(f.phys.pfn());
        r.set_flags(if f.uptodate {
            GUEST_MEMFD_LUO_FOLIO_UPTODATE
        } else {
            0
        });
        r.index = index;
        r
    })?;
    let array =
        folio_array::preserve(&**kho, &records).inspect_err(|_| g.pages.unpreserve_folios())?;
    let ser = guest_memfd_luo_ser {
        size: g.pages.size(),
        flags: g.flags,
        nr_folios: records.len() as u64,
        // Set at freeze, as upstream.
        vm_token: 0,
        folios: array.abi(),
    };
    let r = kho.alloc_preserve_obj(&ser).and_then(|p| {
        if g.is_hugetlb() {
            hugetlb::preserve_pages(g.pages.order(), g.pages.nr())?;
        }
        Ok(p)
    });
    match r {
        Ok(p) => Ok((p.addr().as_u64(), array)),
        Err(e) => {
            folio_array::unpreserve(&**kho, array);
            g.pages.unpreserve_folios();
            Err(e)
        }
    }
}

unsafe extern "C" fn unpreserve(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    let (Some(g), Ok(kho)) = (gmem_ptr(a.file), host().and_then(|h| h.kho())) else {
        return;
    };
    // SAFETY: `private_data` is NULL or the array preserve handed to LUO, given back once.
    if let Some(array) = unsafe { folio_array::Preserved::take_private(&mut a.private_data) } {
        folio_array::unpreserve(&*kho, array);
    }
    g.pages.unpreserve_folios();
    if g.is_hugetlb() {
        let _ = hugetlb::unpreserve_pages(g.pages.order(), g.pages.nr());
    }
    let _ = kho.unpreserve_free(PhysAddr::new(a.serialized_data));
    g.pages.set_frozen(false);
}

unsafe extern "C" fn freeze(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let g = gmem_ptr(a.file).ok_or(Errno::EINVAL)?;
        let h = host()?;
        // Upstream: vm_token is the VM file's outgoing token, taken at freeze.
        let token = h.get_token_outgoing(a.session, &*g.vm)?;
        let kho = h.kho()?;
        let mut ser = kho.read_obj(ser_at(a.serialized_data))?;
        ser.vm_token = token;
        kho.write_obj(ser_at(a.serialized_data), &ser)
    })())
}

/// A handed-over guest_memfd, checked: the file's flags, size and folio records.
struct Incoming {
    ser: guest_memfd_luo_ser,
    records: Vec<guest_memfd_luo_folio_ser>,
}

/// Reads the state at `data` and its folio array (claiming the array).
fn read_incoming(kho: &Kho, data: u64) -> Result<Incoming, Errno> {
    let ser = kho.read_obj(ser_at(data))?;
    let records = folio_array::restore(&**kho, &{ ser.folios }, ser.nr_folios)?;
    Ok(Incoming { ser, records })
}

impl Incoming {
    fn hugetlb(&self) -> bool {
        self.ser.flags & GUEST_MEMFD_LUO_FLAG_HUGETLB != 0
    }

    /// Checks everything that does not need the folios themselves.
    fn check(&self) -> Result<(), Errno> {
        let (size, flags, nr) = (self.ser.size, self.ser.flags, self.ser.nr_folios);
        if flags & !GUEST_MEMFD_LUO_SUPPORTED_FLAGS != 0
            || size == 0
            || !size.is_multiple_of(PAGE_SIZE as u64)
            || nr > size / PAGE_SIZE as u64
        {
            return Err(Errno::EINVAL);
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.records {
            if r.flags() & !GUEST_MEMFD_LUO_FOLIO_UPTODATE != 0
                || PhysAddr::from_pfn(r.pfn()).is_none()
                || !seen.insert(r.index)
            {
                return Err(Errno::EINVAL);
            }
        }
        Ok(())
    }

    /// Claims every folio; all must be of one order, at an index inside the file, and a
    /// HugeTLB one must be fully populated. On failure the claimed folios are freed.
    fn restore_folios<'k>(
        &self,
        kho: &'k Kho,
    ) -> Result<(pages::Claimed<'k>, u32, BTreeMap<u64, Folio>), Errno> {
        let mut claimed = pages::Claimed::new(kho, self.hugetlb());
        let mut out = BTreeMap::new();
        let mut order = None;
        for r in &self.records {
            let (phys, o) = claimed.claim(r.pfn())?;
            if *order.get_or_insert(o) != o {
                return Err(Errno::EINVAL);
            }
            let uptodate = r.flags() & GUEST_MEMFD_LUO_FOLIO_UPTODATE != 0;
            if !uptodate {
                // Never written: what the page holds is not the guest's, zero it.
                kho.write(phys, &vec![0u8; PAGE_SIZE << o])?;
            }
            out.insert(r.index, Folio { phys, uptodate });
        }
        let order = order.unwrap_or(0);
        let slots = self.ser.size / ((PAGE_SIZE as u64) << order);
        if (self.hugetlb() && (order == 0 || self.ser.nr_folios != slots))
            || (!self.hugetlb() && order != 0)
            || out.keys().any(|&i| i >= slots)
        {
            return Err(Errno::EINVAL);
        }
        Ok((claimed, order, out))
    }

    /// Claims and frees every folio that can be claimed (a guest_memfd that is not coming
    /// back); a HugeTLB one gives their pages back to the free pool of their size.
    fn discard(&self, kho: &Kho) {
        pages::discard(kho, self.records.iter().map(|r| r.pfn()), self.hugetlb());
    }
}

unsafe extern "C" fn retrieve(a: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    rc((|| {
        let h = host()?;
        let kho = h.kho()?;
        let inc = read_incoming(&kho, a.serialized_data);
        // Rebuilt or not, the handed-over state goes now: finish skips a failed retrieve.
        let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
        let inc = inc?;
        match rebuild(a, &kho, &inc) {
            Ok(f) => {
                a.file = f;
                Ok(())
            }
            Err(e) => {
                inc.discard(&kho);
                Err(e)
            }
        }
    })())
}

fn rebuild(a: &liveupdate_file_op_args, kho: &Kho, inc: &Incoming) -> Result<*mut CFile, Errno> {
    let h = host()?;
    inc.check()?;
    let vm_token = inc.ser.vm_token;
    // The VM comes back through the core, retrieved first if userspace has not yet; the core
    // refuses a token naming a file of another handler (EINVAL) or none (ENOENT).
    let vm = h.get_file_incoming(a.session, vm_token)?;
    if vm_of(&*vm).is_none() {
        return Err(Errno::EINVAL);
    }
    let (claimed, order, folios) = inc.restore_folios(kho)?;
    let slots = inc.ser.size / ((PAGE_SIZE as u64) << order);
    let n = folios.len() as u64;
    let pages = Pages::restored(order, slots, folios)?;
    claimed.keep();
    if inc.hugetlb() {
        // The file keeps the pages held for it; on failure dropping `pages` frees them.
        hugetlb::claim_incoming(order, n)?;
    }
    let g = GuestMemfd {
        vm,
        flags: inc.ser.flags,
        pages,
        private: AtomicBool::new(false),
    };
    let f = h.open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(g))?;
    h.file_to_c(f)
}

unsafe extern "C" fn finish(a: *mut liveupdate_file_op_args) {
    // SAFETY: as above.
    let a = unsafe { &mut *a };
    if a.retrieve_status != 0 {
        return;
    }
    // Never retrieved: its folios are discarded (upstream), HugeTLB pages back to the pool.
    let Ok(kho) = host().and_then(|h| h.kho()) else {
        return;
    };
    if let Ok(inc) = read_incoming(&kho, a.serialized_data) {
        inc.discard(&kho);
    }
    let _ = kho.restore_free(PhysAddr::new(a.serialized_data));
}
