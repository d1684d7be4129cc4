// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The guest_memfd file handler (`guest_memfd_luo_v1`, spec `kvm/v1`), after upstream's
//! guest_memfd preservation series (posted upstream, not merged).
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
//! The handler ([`GuestMemfdHandler`], written with `#[liveupdate_handler]`) is registered by
//! [`register`], which [`crate::vm::register`] calls. Driving it from the core
//! (`luo_core::Kernel`), e.g. for a simulation:
//!
//! ```text
//! let vm = k.open_synthetic(FileKind::KvmVm, kvm::VM_FILE_NAME, Box::new(Vm::new(0)?))?;
//! let g = GuestMemfd::new(k.host(), k.file(vm)?, size, GUEST_MEMFD_LUO_FLAG_MMAP)?;
//! g.pages().write(off, data)?;
//! let (digest, folios) = (g.pages().digest()?, g.pages().folios());
//! let gfd = k.open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(g))?;
//! // preserve vm then gfd in one session, kexec, retrieve gfd (the VM comes with it):
//! let g = gmem_of(&*k2.file(fd)?).unwrap();
//! assert_eq!((g.pages().digest()?, g.pages().folios()), (digest, folios));
//! assert_eq!(vm_of(&**g.vm()).unwrap().vm_type(), 0);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr, Result};
use luo_derive::liveupdate_handler;
use luo_generated::kvm::v1::guest_memfd_luo_ser;
use luo_generated::kvm::v1::{GUEST_MEMFD_LUO_FH_COMPATIBLE, KVM_LUO_FH_COMPATIBLE};
use luo_generated::kvm::{
    GUEST_MEMFD_LUO_FLAG_HUGETLB, GUEST_MEMFD_LUO_FLAG_INIT_SHARED, GUEST_MEMFD_LUO_FLAG_MMAP,
    GUEST_MEMFD_LUO_FOLIO_UPTODATE, GUEST_MEMFD_LUO_SUPPORTED_FLAGS, guest_memfd_luo_folio_ser,
};
use zerocopy::FromZeros;

use crate::folio_array::FolioArray;
use crate::hugetlb::Hugetlb;
use crate::kvm::vm_of;
use crate::pages::{self, Folio, Pages};

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
    /// `KVM_CREATE_GUEST_MEMFD` on `vm`, in the kernel of `host` (`Registry::host`): `size`
    /// bytes (nonzero, page aligned), `flags` a subset of
    /// `GUEST_MEMFD_LUO_FLAG_MMAP | GUEST_MEMFD_LUO_FLAG_INIT_SHARED`; folios are allocated on
    /// first write. `EINVAL` otherwise, or when `vm` is not a VM.
    pub fn new(host: Arc<dyn LuoHost>, vm: FileRef, size: u64, flags: u64) -> Result<GuestMemfd> {
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
            pages: Pages::new(host, 0, size / PAGE_SIZE as u64)?,
            private: AtomicBool::new(false),
        })
    }

    /// A HugeTLB-backed guest_memfd on `vm`: `nr` huge pages of `order` taken from the
    /// kernel's HugeTLB pool `hugetlb` (`ENOMEM` if it has too few), all faulted in.
    pub fn new_hugetlb(
        hugetlb: &Hugetlb,
        vm: FileRef,
        order: u32,
        nr: u64,
        flags: u64,
    ) -> Result<Self> {
        if vm_of(&*vm).is_none()
            || flags & !(GUEST_MEMFD_LUO_FLAG_MMAP | GUEST_MEMFD_LUO_FLAG_INIT_SHARED) != 0
            || order == 0
        {
            return Err(Errno::EINVAL);
        }
        let pages = hugetlb.alloc_pages(order, nr)?;
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
    f.payload()?.downcast_ref::<GuestMemfd>()
}

/// The `guest_memfd_luo_v1` handler; its files depend on `kvm_vm_luo_v1` files. Its pages
/// of HugeTLB-backed files are accounted in `hugetlb`, the kernel's pools.
#[liveupdate_handler(
    compatible = "guest_memfd_luo_v1",
    abi = guest_memfd_luo_ser,
    depends_on = ["kvm_vm_luo_v1"],
)]
pub struct GuestMemfdHandler {
    hugetlb: Hugetlb,
}

const _: () = {
    use luo_abi::handler::HandlerAbi;
    assert!(luo_abi::abi::str_eq(
        <GuestMemfdHandler as HandlerAbi>::COMPATIBLE,
        GUEST_MEMFD_LUO_FH_COMPATIBLE
    ));
    assert!(luo_abi::abi::str_eq(
        <crate::kvm::KvmVmHandler as HandlerAbi>::COMPATIBLE,
        KVM_LUO_FH_COMPATIBLE
    ));
};

/// The folio array a preserved guest_memfd keeps until unpreserve.
type Array = FolioArray<guest_memfd_luo_folio_ser>;

#[liveupdate_handler]
impl FileHandler for GuestMemfdHandler {
    type Private = Array;

    fn can_preserve(&self, file: &dyn File) -> bool {
        gmem_of(file).is_some_and(|g| {
            // Upstream: no private memory, no large folios (this project: unless HugeTLB).
            !g.private.load(Ordering::Relaxed) && (g.pages.order() == 0 || g.is_hugetlb())
        })
    }

    fn preserve(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
    ) -> Result<(guest_memfd_luo_ser, Array)> {
        let g = gmem_of(file).ok_or(Errno::EINVAL)?;
        // The VM must be preserved in the same session (the core says ENOENT otherwise).
        cx.session().get_token_outgoing(&*g.vm)?;
        // Upstream freezes the mapping first: no folio comes or goes while preserved.
        g.pages.set_frozen(true);
        self.preserve_steps(cx.kho(), g)
            .inspect_err(|_| g.pages.set_frozen(false))
    }

    fn unpreserve(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        _ser: guest_memfd_luo_ser,
        array: Array,
    ) {
        array.unpreserve(cx.kho());
        let Some(g) = gmem_of(file) else {
            return;
        };
        g.pages.unpreserve_folios();
        if g.is_hugetlb() {
            // `void` op: the pools only lose a count they would report.
            let _ = self.hugetlb.unpreserve_pages(g.pages.order(), g.pages.nr());
        }
        g.pages.set_frozen(false);
    }

    fn freeze(
        &self,
        cx: &Ctx<'_, Self>,
        file: &dyn File,
        ser: &mut guest_memfd_luo_ser,
        _array: &mut Array,
    ) -> Result {
        let g = gmem_of(file).ok_or(Errno::EINVAL)?;
        // Upstream: vm_token is the VM file's outgoing token, taken at freeze.
        ser.vm_token = cx.session().get_token_outgoing(&*g.vm)?;
        Ok(())
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: guest_memfd_luo_ser) -> Result<FileRef> {
        let kho = cx.kho();
        let records = FolioArray::restore(kho, &{ ser.folios }, ser.nr_folios)?;
        let inc = Incoming { ser, records };
        self.rebuild(cx, &inc).inspect_err(|_| {
            // Not coming back: its folios are freed, HugeTLB pages back to their pool.
            inc.discard(kho, &self.hugetlb);
        })
    }

    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, guest_memfd_luo_ser>) {
        // Never retrieved: its folios are discarded (upstream), HugeTLB pages back to the
        // pool. A retrieved file owns them; a failed retrieve released them then.
        let Finish::NotRetrieved(ser) = how else {
            return;
        };
        let kho = cx.kho();
        if let Ok(records) = FolioArray::restore(kho, &{ ser.folios }, ser.nr_folios) {
            Incoming { ser, records }.discard(kho, &self.hugetlb);
        }
    }
}

impl GuestMemfdHandler {
    /// KHO-preserves every folio, writes the folio array and builds the
    /// `guest_memfd_luo_ser`; on failure undoes what it did.
    fn preserve_steps(
        &self,
        kho: &dyn KhoService,
        g: &GuestMemfd,
    ) -> Result<(guest_memfd_luo_ser, Array)> {
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
            FolioArray::preserve(kho, &records).inspect_err(|_| g.pages.unpreserve_folios())?;
        let ser = guest_memfd_luo_ser {
            size: g.pages.size(),
            flags: g.flags,
            nr_folios: records.len() as u64,
            // Set at freeze, as upstream.
            vm_token: 0,
            folios: array.abi(),
        };
        let counted = if g.is_hugetlb() {
            self.hugetlb.preserve_pages(g.pages.order(), g.pages.nr())
        } else {
            Ok(())
        };
        match counted {
            Ok(()) => Ok((ser, array)),
            Err(e) => {
                array.unpreserve(kho);
                g.pages.unpreserve_folios();
                Err(e)
            }
        }
    }

    /// Checks the handed-over state, gets the VM back through the core and rebuilds the file.
    fn rebuild(&self, cx: &Ctx<'_, Self>, inc: &Incoming) -> Result<FileRef> {
        inc.check()?;
        let vm_token = inc.ser.vm_token;
        // The VM comes back through the core, retrieved first if userspace has not yet; the
        // core refuses a token naming a file of another handler (EINVAL) or none (ENOENT).
        let vm = cx.session().get_file_incoming(vm_token)?;
        if vm_of(&*vm).is_none() {
            return Err(Errno::EINVAL);
        }
        let pool = inc
            .hugetlb()
            .then_some(&self.hugetlb as &dyn pages::IncomingPool);
        let (claimed, order, folios) = inc.restore_folios(cx.kho(), pool)?;
        let slots = inc.ser.size / ((PAGE_SIZE as u64) << order);
        let n = folios.len() as u64;
        let pages = Pages::restored(self.hugetlb.host(), order, slots, folios)?;
        claimed.keep();
        if inc.hugetlb() {
            // The file keeps the pages held for it; on failure dropping `pages` frees them.
            self.hugetlb.claim_incoming(order, n)?;
        }
        let g = GuestMemfd {
            vm,
            flags: inc.ser.flags,
            pages,
            private: AtomicBool::new(false),
        };
        cx.open_synthetic(FileKind::GuestMemfd, GMEM_FILE_NAME, Box::new(g))
    }
}

/// A handed-over guest_memfd: its state and folio records (the array claimed and freed).
struct Incoming {
    ser: guest_memfd_luo_ser,
    records: Vec<guest_memfd_luo_folio_ser>,
}

impl Incoming {
    fn hugetlb(&self) -> bool {
        self.ser.flags & GUEST_MEMFD_LUO_FLAG_HUGETLB != 0
    }

    /// Checks everything that does not need the folios themselves.
    fn check(&self) -> Result {
        let (size, flags, nr) = (self.ser.size, self.ser.flags, self.ser.nr_folios);
        if flags & !GUEST_MEMFD_LUO_SUPPORTED_FLAGS != 0
            || size == 0
            || !size.is_multiple_of(PAGE_SIZE as u64)
            || nr > size / PAGE_SIZE as u64
        {
            return Err(Errno::EINVAL);
        }
        let mut seen = BTreeSet::new();
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
    /// HugeTLB one must be fully populated. On failure the claimed folios are freed (and
    /// HugeTLB pages given back to `pool`).
    fn restore_folios<'k>(
        &self,
        kho: &'k dyn KhoService,
        pool: Option<&'k dyn pages::IncomingPool>,
    ) -> Result<(pages::Claimed<'k>, u32, BTreeMap<u64, Folio>)> {
        let mut claimed = pages::Claimed::new(kho, pool);
        let mut out = BTreeMap::new();
        let mut order = None;
        for r in &self.records {
            let (phys, o) = claimed.claim(r.pfn())?;
            // Orders above 18 are no folio this model allocates (and would overflow below).
            if o > 18 || *order.get_or_insert(o) != o {
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
    fn discard(&self, kho: &dyn KhoService, hugetlb: &Hugetlb) {
        let pool = self
            .hugetlb()
            .then_some(hugetlb as &dyn pages::IncomingPool);
        pages::discard(kho, self.records.iter().map(|r| r.pfn()), pool);
    }
}

/// Registers the `guest_memfd_luo_v1` handler with `k`, its HugeTLB-backed files accounted in
/// `hugetlb` (linked to its FLB in [`crate::hugetlb::Form::Flb`]). Register the
/// `kvm_vm_luo_v1` handler first ([`crate::kvm::register`]): guest_memfd depends on it.
pub fn register(k: &impl Registry, hugetlb: &Hugetlb) -> Result<()> {
    let reg = Registration::new(
        GuestMemfdHandler {
            hugetlb: hugetlb.clone(),
        },
        k.host(),
        (),
    );
    k.register_handler(hugetlb.link(reg))
}
