// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! HugeTLB global state both ways (an FLB or a subsystem), shared by two file types:
//! HugeTLB memfds (`huge-memfd-v1`, here) and guest_memfd (`guest_memfd_luo_v1`,
//! [`crate::guest_memfd`], HugeTLB-backed or not).
//!
//! The pools' preserved pages (per huge page size: the pages of preserved files) are handed
//! over as `struct hugetlb_ser` (spec `hugetlb/v1`, as posted) in one of two forms, chosen at
//! [`crate::vm::register`] (at run time, per kernel):
//!
//! * [`Form::Flb`] — upstream's RFC: the FLB `"hugetlb-v1"` ([`HugetlbFlb`],
//!   `#[liveupdate_flb]`), linked to both handlers at registration
//!   (`Registration::link_flb`) and rewritten as files add pages (`FlbCell::write_outgoing`).
//!   It is
//!   preserved with the first file of *either* handler (even a guest_memfd that uses no huge
//!   page) and not at all when no such file is preserved; in the new kernel it is retrieved on
//!   demand (the huge-memfd handler calls `get_incoming` eagerly at registration, as the RFC's
//!   init does) and finished with the last dependent file.
//! * [`Form::Subsystem`] — LUO v4's choice: the subsystem `"hugetlb"` ([`HugetlbSubsystem`],
//!   `#[liveupdate_subsystem]`) with its own lifecycle,
//!   frozen on the reboot path after the files, booted when it registers in the new kernel
//!   (before any file is retrieved, so the free pages are back in the pool), finished after the
//!   last incoming session.
//!
//! The new kernel counts the handed-over pages into its pools, held for the files they belong
//! to; the rest of a pool (its free pages) is the new kernel's own configuration
//! ([`Hugetlb::configure`]), as upstream sizes the boot-time pool minus the preserved pages.
//!
//! The pools are counts per size; a file's pages are taken from its pool when it is created and
//! are real folios of the KHO model ([`crate::pages`]), listed in the file's handed-over folio
//! array (`hugemfd_folio_ser` here, `guest_memfd_luo_folio_ser` in [`crate::guest_memfd`]). A
//! never-retrieved file's pages go back to the free pool at finish; a retrieved file keeps
//! them.
//!
//! Everything is per kernel: [`crate::vm::register`] returns the kernel's [`Hugetlb`] (its pools, and its
//! FLB in the FLB form), through which files are made ([`HugeMemfd::new`],
//! `GuestMemfd::new_hugetlb`) and the pools configured and inspected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use luo_abi::file::{File, FileKind, FileRef};
use luo_abi::global::{FlbCell, FlbState, StateCtx, Subsystem};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoService;
use luo_abi::registry::Registry;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr, Result};
use luo_derive::{liveupdate_flb, liveupdate_handler, liveupdate_subsystem};
use luo_generated::hugetlb::hugemfd_folio_ser;
use luo_generated::hugetlb::v1::{
    HUGEMFD_LUO_FH_COMPATIBLE, HUGETLB_FLB_COMPATIBLE, hugemfd_ser, hugetlb_hstate_ser, hugetlb_ser,
};
use zerocopy::FromZeros;

use crate::folio_array::FolioArray;
use crate::pages::{self, Folio, Pages};

/// How the HugeTLB pools cross the live update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Upstream's RFC: the FLB `"hugetlb-v1"` linked to both handlers.
    Flb,
    /// The seed's choice: a subsystem with its own lifecycle.
    Subsystem,
}

/// One huge page size's pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    /// Pages in the pool.
    pub total: u64,
    /// Free pages.
    pub free: u64,
    /// Pages of incoming files not yet retrieved or finished.
    pub held_incoming: u64,
}

/// What happened to the HugeTLB global state in one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The pools by page order.
    pub pools: BTreeMap<u32, Pool>,
    /// Pages of outgoing preserved files, by order.
    pub preserved: BTreeMap<u32, u64>,
    /// FLB preserve calls in this kernel.
    pub flb_preserved: u64,
    /// FLB unpreserve calls.
    pub flb_unpreserved: u64,
    /// FLB retrieve calls.
    pub flb_retrieved: u64,
    /// FLB finish calls.
    pub flb_finished: u64,
    /// Subsystem freeze calls.
    pub sub_frozen: u64,
    /// Subsystem boot calls.
    pub sub_booted: u64,
    /// Subsystem finish calls.
    pub sub_finished: u64,
}

/// The largest huge page order the model knows (1 GiB pages are order 18).
const MAX_ORDER: u32 = 18;

/// One kernel's pools, shared by the handlers, the FLB or subsystem, and [`Hugetlb`].
struct Pools {
    /// The kernel's host: the KHO files' pages live in.
    host: Arc<dyn LuoHost>,
    state: Mutex<State>,
}

impl Pools {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock cannot leave the counts half-updated in a way later calls
        // could not live with: every update is a few integer writes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One kernel's HugeTLB: its pools and, in the FLB form, the FLB that carries them. Returned
/// by [`crate::vm::register`]; cheap to clone.
#[derive(Clone)]
pub struct Hugetlb {
    pools: Arc<Pools>,
    flb: Option<Arc<FlbCell<HugetlbFlb>>>,
}

impl Hugetlb {
    /// How the pools cross the live update in this kernel.
    pub fn form(&self) -> Form {
        match self.flb {
            Some(_) => Form::Flb,
            None => Form::Subsystem,
        }
    }

    /// The state: pools, preserved pages, calls of the FLB or subsystem.
    pub fn state(&self) -> State {
        self.pools.lock().clone()
    }

    /// Sets the pool of `order` to `nr` pages (`nr_hugepages`): the pages held for incoming
    /// files count among them (upstream allocates the boot-time pool minus the preserved
    /// pages), the rest are free. `EINVAL` for order 0 or above 18, or fewer pages than are
    /// held.
    pub fn configure(&self, order: u32, nr: u64) -> Result {
        if order == 0 || order > MAX_ORDER {
            return Err(Errno::EINVAL);
        }
        let mut s = self.pools.lock();
        let held = s.pools.get(&order).map_or(0, |p| p.held_incoming);
        let free = nr.checked_sub(held).ok_or(Errno::EINVAL)?;
        s.pools.insert(
            order,
            Pool {
                total: nr,
                free,
                held_incoming: held,
            },
        );
        Ok(())
    }

    /// In the FLB form, the address of the outgoing `struct hugetlb_ser`, once a file that
    /// uses the pools is preserved.
    pub fn outgoing_data(&self) -> Option<u64> {
        self.flb.as_ref()?.outgoing_data().map(PhysAddr::as_u64)
    }

    /// The host of the kernel these pools belong to.
    pub fn host(&self) -> Arc<dyn LuoHost> {
        Arc::clone(&self.pools.host)
    }

    /// `nr` pages of `order` taken from the pool (`ENOMEM` if it has too few), all faulted
    /// in: the memory of a new HugeTLB file.
    pub(crate) fn alloc_pages(&self, order: u32, nr: u64) -> Result<Pages> {
        let pages = Pages::new(self.host(), order, nr)?;
        {
            let mut s = self.pools.lock();
            let p = s.pools.get_mut(&order).ok_or(Errno::ENOMEM)?;
            p.free = p.free.checked_sub(nr).ok_or(Errno::ENOMEM)?;
        }
        let populated = (0..nr).try_for_each(|i| pages.populate(i).map(drop));
        if let Err(e) = populated {
            // Dropping `pages` frees the folios faulted in; the pool gets its pages back.
            if let Some(p) = self.pools.lock().pools.get_mut(&order) {
                p.free += nr;
            }
            return Err(e);
        }
        Ok(pages)
    }

    /// `nr` pages of `order` now belong to a preserved file (kept in step with the FLB data).
    pub(crate) fn preserve_pages(&self, order: u32, nr: u64) -> Result {
        let mut s = self.pools.lock();
        *s.preserved.entry(order).or_default() += nr;
        self.sync_outgoing(&s).inspect_err(|_| {
            if let Some(n) = s.preserved.get_mut(&order) {
                *n -= nr;
            }
        })
    }

    /// Undoes [`Hugetlb::preserve_pages`].
    pub(crate) fn unpreserve_pages(&self, order: u32, nr: u64) -> Result {
        let mut s = self.pools.lock();
        if let Some(n) = s.preserved.get_mut(&order) {
            *n = n.saturating_sub(nr);
        }
        self.sync_outgoing(&s)
    }

    /// In the FLB form, rewrites the FLB's handed-over pools after a file changed them
    /// (upstream: through `get_outgoing`). Called under the pools' lock, so two files cannot
    /// write their snapshots out of order.
    fn sync_outgoing(&self, s: &State) -> Result {
        match &self.flb {
            // Not preserved (no dependent file yet, or no more): nothing handed over to update.
            Some(flb) => match flb.write_outgoing(&snapshot(s)) {
                Ok(()) | Err(Errno::ENODATA) => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }

    /// In the FLB form, the pools exist only once the FLB is retrieved.
    fn ensure_pools(&self) -> Result {
        if let Some(flb) = &self.flb {
            drop(flb.get_incoming()?);
        }
        Ok(())
    }

    /// A retrieved file takes its `nr` pages of `order` held for it (`EINVAL` if the pool
    /// holds fewer).
    pub(crate) fn claim_incoming(&self, order: u32, nr: u64) -> Result {
        self.ensure_pools()?;
        let mut s = self.pools.lock();
        let p = s.pools.get_mut(&order).ok_or(Errno::EINVAL)?;
        p.held_incoming = p.held_incoming.checked_sub(nr).ok_or(Errno::EINVAL)?;
        Ok(())
    }

    /// A file that is not coming back returns its `nr` pages of `order` to the free pool.
    pub(crate) fn release_incoming(&self, order: u32, nr: u64) -> Result {
        self.ensure_pools()?;
        if let Some(p) = self.pools.lock().pools.get_mut(&order) {
            let n = nr.min(p.held_incoming);
            p.held_incoming -= n;
            p.free += n;
        }
        Ok(())
    }

    /// Links the FLB, in the FLB form, to a handler of files that use the pools.
    pub(crate) fn link<H: FileHandler>(&self, reg: Registration<H>) -> Registration<H> {
        match &self.flb {
            Some(flb) => reg.link_flb(Arc::clone(flb)),
            None => reg,
        }
    }
}

/// The handed-over state: for every pool (at most `HUGETLB_SER_MAX_HSTATES`, as upstream's
/// `for_each_hstate`), its order and the pages of preserved files.
fn snapshot(s: &State) -> hugetlb_ser {
    let mut ser = hugetlb_ser::new_zeroed();
    for (i, order) in s.pools.keys().take(ser.hstates.len()).enumerate() {
        ser.hstates[i] = hugetlb_hstate_ser {
            nr_pages: s.preserved.get(order).copied().unwrap_or(0),
            // `configure` keeps orders at most 18.
            order: *order as u8,
        };
        ser.nr_hstates = i as u8 + 1;
    }
    ser
}

/// Counts handed-over pages into the pools, held for the files they belong to. `EINVAL`
/// (and no change) for more entries than the array, an order this kernel has no huge pages
/// of, a size given twice, or a count that does not fit.
fn rebuild(s: &mut State, ser: &hugetlb_ser) -> Result {
    let hstates = ser.hstates;
    let hstates = hstates
        .get(..usize::from(ser.nr_hstates))
        .ok_or(Errno::EINVAL)?;
    let mut pools = s.pools.clone();
    let mut seen = BTreeSet::new();
    for h in hstates {
        let order = u32::from(h.order);
        if order == 0 || order > MAX_ORDER || !seen.insert(order) {
            return Err(Errno::EINVAL);
        }
        let p = pools.entry(order).or_default();
        let add = |a: u64, b: u64| a.checked_add(b).ok_or(Errno::EINVAL);
        p.total = add(p.total, h.nr_pages)?;
        p.held_incoming = add(p.held_incoming, h.nr_pages)?;
    }
    s.pools = pools;
    Ok(())
}

// ---- the FLB form ----------------------------------------------------------------------

/// The FLB `hugetlb-v1`: the pools, preserved with the first file of a linked handler,
/// retrieved on first use in the new kernel, finished with the last dependent file.
#[liveupdate_flb(compatible = "hugetlb-v1", abi = hugetlb_ser)]
pub struct HugetlbFlb {
    pools: Arc<Pools>,
}

const _: () = assert!(luo_abi::abi::str_eq(
    <HugetlbFlb as luo_abi::global::FlbAbi>::COMPATIBLE,
    HUGETLB_FLB_COMPATIBLE
));

#[liveupdate_flb]
impl FlbState for HugetlbFlb {
    type Outgoing = ();
    type Incoming = ();

    fn preserve(&self, _cx: &StateCtx<'_>) -> Result<(hugetlb_ser, ())> {
        let mut s = self.pools.lock();
        s.flb_preserved += 1;
        Ok((snapshot(&s), ()))
    }

    fn unpreserve(&self, _cx: &StateCtx<'_>, _ser: hugetlb_ser, _obj: Arc<()>) {
        self.pools.lock().flb_unpreserved += 1;
    }

    fn retrieve(&self, _cx: &StateCtx<'_>, ser: hugetlb_ser) -> Result<()> {
        let mut s = self.pools.lock();
        rebuild(&mut s, &ser)?;
        s.flb_retrieved += 1;
        Ok(())
    }

    fn finish(&self, _cx: &StateCtx<'_>, _obj: Arc<()>) {
        self.pools.lock().flb_finished += 1;
    }
}

// ---- the subsystem form ----------------------------------------------------------------

/// Name of the subsystem (and of its handed-over data).
pub const SUBSYSTEM_NAME: &str = "hugetlb";

/// The subsystem `hugetlb`: the pools, frozen on the reboot path after the files, booted
/// when it registers in the new kernel, finished after the last incoming session.
#[liveupdate_subsystem(name = "hugetlb", abi = hugetlb_ser)]
pub struct HugetlbSubsystem {
    pools: Arc<Pools>,
}

const _: () = assert!(luo_abi::abi::str_eq(
    <HugetlbSubsystem as luo_abi::global::SubsystemAbi>::NAME,
    SUBSYSTEM_NAME
));

#[liveupdate_subsystem]
impl Subsystem for HugetlbSubsystem {
    type Outgoing = ();
    type Incoming = ();

    fn prepare(&self, _cx: &StateCtx<'_>) -> Result<(hugetlb_ser, ())> {
        Ok((snapshot(&self.pools.lock()), ()))
    }

    fn freeze(&self, _cx: &StateCtx<'_>, ser: &mut hugetlb_ser, _obj: &mut ()) -> Result {
        // The files are frozen by now: the pools as they hand over.
        let mut s = self.pools.lock();
        *ser = snapshot(&s);
        s.sub_frozen += 1;
        Ok(())
    }

    fn cancel(&self, _cx: &StateCtx<'_>, _obj: ()) {
        // Nothing beyond the handed-over struct, which the runtime frees.
    }

    fn boot(&self, _cx: &StateCtx<'_>, ser: hugetlb_ser) -> Result<()> {
        let mut s = self.pools.lock();
        rebuild(&mut s, &ser)?;
        s.sub_booted += 1;
        Ok(())
    }

    fn finish(&self, _cx: &StateCtx<'_>, _obj: ()) {
        self.pools.lock().sub_finished += 1;
    }
}

// ---- the HugeTLB memfd handler ----------------------------------------------------------

/// A HugeTLB memfd (`memfd_create(MFD_HUGETLB)`): the payload of a [`FileKind::HugeMemfd`]
/// synthetic file. Its pages come from the HugeTLB pool at creation, all faulted in.
pub struct HugeMemfd {
    pages: Pages,
}

impl HugeMemfd {
    /// A HugeTLB memfd of `nr` huge pages of `order` from the pool `hugetlb` (`ENOMEM` if it
    /// has too few).
    pub fn new(hugetlb: &Hugetlb, order: u32, nr: u64) -> Result<HugeMemfd> {
        if order == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(HugeMemfd {
            pages: hugetlb.alloc_pages(order, nr)?,
        })
    }

    /// A HugeTLB memfd of `nr` huge pages of `order`, in the kernel of `host`, whose pages
    /// belong to pools kept elsewhere — a C handler's own global state
    /// (`tests/c/huge_memfd_twin.c`): nothing is taken from a [`Hugetlb`]'s pools and folios
    /// are allocated on first write.
    pub fn accounted_elsewhere(host: Arc<dyn LuoHost>, order: u32, nr: u64) -> Result<HugeMemfd> {
        if order == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(HugeMemfd {
            pages: Pages::new(host, order, nr)?,
        })
    }

    /// Its memory.
    pub fn pages(&self) -> &Pages {
        &self.pages
    }
}

fn huge_of(f: &dyn File) -> Option<&HugeMemfd> {
    if f.kind() != FileKind::HugeMemfd {
        return None;
    }
    f.payload()?.downcast_ref::<HugeMemfd>()
}

/// The `huge-memfd-v1` handler; its pages are accounted in `hugetlb`, the kernel's pools.
#[liveupdate_handler(compatible = "huge-memfd-v1", abi = hugemfd_ser)]
pub struct HugeMemfdHandler {
    hugetlb: Hugetlb,
}

const _: () = assert!(luo_abi::abi::str_eq(
    <HugeMemfdHandler as luo_abi::handler::HandlerAbi>::COMPATIBLE,
    HUGEMFD_LUO_FH_COMPATIBLE
));

/// The folio array a preserved HugeTLB memfd keeps until unpreserve.
type Array = FolioArray<hugemfd_folio_ser>;

#[liveupdate_handler]
impl FileHandler for HugeMemfdHandler {
    type Private = Array;

    fn can_preserve(&self, file: &dyn File) -> bool {
        huge_of(file).is_some()
    }

    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(hugemfd_ser, Array)> {
        let m = huge_of(file).ok_or(Errno::EINVAL)?;
        let kho = cx.kho();
        let order = m.pages.order();
        let records = m.pages.preserve_folios(|index, f| {
            let mut r = hugemfd_folio_ser::new_zeroed();
            r.set_pfn(f.phys.pfn());
            r.index = index;
            r
        })?;
        let array =
            FolioArray::preserve(kho, &records).inspect_err(|_| m.pages.unpreserve_folios())?;
        let ser = hugemfd_ser {
            size: m.pages.size(),
            pos: 0,
            nr_folios: records.len() as u64,
            folios: array.abi(),
            // `Pages` keeps orders at most 18.
            order: order as u8,
        };
        match self.hugetlb.preserve_pages(order, m.pages.nr()) {
            Ok(()) => Ok((ser, array)),
            Err(e) => {
                array.unpreserve(kho);
                m.pages.unpreserve_folios();
                Err(e)
            }
        }
    }

    fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, _ser: hugemfd_ser, array: Array) {
        array.unpreserve(cx.kho());
        if let Some(m) = huge_of(file) {
            m.pages.unpreserve_folios();
            // `void` op: the pools only lose a count they would report.
            let _ = self.hugetlb.unpreserve_pages(m.pages.order(), m.pages.nr());
        }
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, ser: hugemfd_ser) -> Result<FileRef> {
        let kho = cx.kho();
        let records = FolioArray::restore(kho, &{ ser.folios }, ser.nr_folios)?;
        let inc = Incoming { ser, records };
        match self.rebuild(kho, &inc) {
            Ok(pages) => cx.open_synthetic(
                FileKind::HugeMemfd,
                "memfd:huge",
                Box::new(HugeMemfd { pages }),
            ),
            Err(e) => {
                inc.discard(kho, &self.hugetlb);
                Err(e)
            }
        }
    }

    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, hugemfd_ser>) {
        // Never retrieved: its pages go back to the free pool. A retrieved file keeps them; a
        // failed retrieve gave them back then.
        let Finish::NotRetrieved(ser) = how else {
            return;
        };
        let kho = cx.kho();
        if let Ok(records) = FolioArray::restore(kho, &{ ser.folios }, ser.nr_folios) {
            Incoming { ser, records }.discard(kho, &self.hugetlb);
        }
    }
}

impl HugeMemfdHandler {
    /// The file's memory, rebuilt from its checked records.
    fn rebuild(&self, kho: &dyn KhoService, inc: &Incoming) -> Result<Pages> {
        let slots = inc.slots()?;
        let (claimed, folios) = inc.restore_folios(kho, &self.hugetlb)?;
        let n = folios.len() as u64;
        let pages = Pages::restored(self.hugetlb.host(), inc.order(), slots, folios)?;
        claimed.keep();
        // The file keeps the pages held for it; on failure dropping `pages` frees them.
        self.hugetlb.claim_incoming(inc.order(), n)?;
        Ok(pages)
    }
}

/// A handed-over HugeTLB memfd: its state and folio records (the array claimed and freed).
struct Incoming {
    ser: hugemfd_ser,
    records: Vec<hugemfd_folio_ser>,
}

impl Incoming {
    fn order(&self) -> u32 {
        u32::from(self.ser.order)
    }

    /// Folio slots of the file (its size in huge pages); `EINVAL` unless the size is a
    /// nonzero multiple of the huge page size.
    fn slots(&self) -> Result<u64> {
        let order = self.order();
        if order == 0 || order > MAX_ORDER {
            return Err(Errno::EINVAL);
        }
        let fb = (PAGE_SIZE as u64) << order;
        let size = self.ser.size;
        if size == 0 || !size.is_multiple_of(fb) {
            return Err(Errno::EINVAL);
        }
        Ok(size / fb)
    }

    /// Claims every folio after checking every record (reserved bits clear, index inside the
    /// file, once each, a folio of the file's order). On failure the claimed folios are freed
    /// and their pages given back to `pool`.
    fn restore_folios<'k>(
        &self,
        kho: &'k dyn KhoService,
        pool: &'k Hugetlb,
    ) -> Result<(pages::Claimed<'k>, BTreeMap<u64, Folio>)> {
        let slots = self.slots()?;
        for r in &self.records {
            if r.reserved() != 0 || r.index >= slots || PhysAddr::from_pfn(r.pfn()).is_none() {
                return Err(Errno::EINVAL);
            }
        }
        // Each index once: the records are in index order when this kernel's writer made
        // them (one pass), otherwise sorted first.
        if !self.records.is_sorted_by(|a, b| a.index < b.index) {
            let mut idx: Vec<u64> = self.records.iter().map(|r| r.index).collect();
            idx.sort_unstable();
            if idx.windows(2).any(|w| w[0] == w[1]) {
                return Err(Errno::EINVAL);
            }
        }
        let mut claimed = pages::Claimed::new(kho, Some(pool));
        let mut out = Vec::with_capacity(self.records.len());
        // Physically contiguous records are claimed as one run of folios of the file's order
        // (`restore_range`); a run KHO refuses is claimed folio by folio, which names the
        // folio at fault.
        let step = 1u64 << self.order();
        let mut rest = &self.records[..];
        while let Some(first) = rest.first() {
            let n = 1 + rest
                .windows(2)
                .take_while(|w| w[1].pfn() == w[0].pfn().wrapping_add(step))
                .count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            if n > 1 && claimed.claim_run(first.pfn(), self.order(), n).is_ok() {
                out.extend(run.iter().map(|r| {
                    let phys = PhysAddr::from_pfn(r.pfn()).unwrap_or(PhysAddr::new(0));
                    (
                        r.index,
                        Folio {
                            phys,
                            uptodate: true,
                        },
                    )
                }));
                continue;
            }
            for r in run {
                let (phys, o) = claimed.claim(r.pfn())?;
                if o != self.order() {
                    return Err(Errno::EINVAL);
                }
                out.push((
                    r.index,
                    Folio {
                        phys,
                        uptodate: true,
                    },
                ));
            }
        }
        // Built from index order at once, not one insert per folio.
        Ok((claimed, out.into_iter().collect()))
    }

    /// Claims and frees every folio that can be claimed, their pages back to the free pool.
    fn discard(&self, kho: &dyn KhoService, pool: &Hugetlb) {
        pages::discard(kho, self.records.iter().map(|r| r.pfn()), Some(pool));
    }
}

impl Hugetlb {
    /// A kernel's HugeTLB pools, with the FLB cell in the FLB form (not linked to any handler
    /// yet: [`crate::vm::register`] links it to every handler of files that use the pools, then
    /// calls [`Hugetlb::start`]).
    pub fn new(k: &impl Registry, form: Form) -> Hugetlb {
        let pools = Arc::new(Pools {
            host: k.host(),
            state: Mutex::default(),
        });
        let flb = (form == Form::Flb).then(|| {
            k.new_flb(HugetlbFlb {
                pools: Arc::clone(&pools),
            })
        });
        Hugetlb { pools, flb }
    }

    /// Registers `huge-memfd-v1`, linked to the pools' FLB in the FLB form.
    pub fn register_huge_memfd(&self, k: &impl Registry) -> Result {
        let huge = Registration::new(
            HugeMemfdHandler {
                hugetlb: self.clone(),
            },
            k.host(),
            (),
        );
        k.register_handler(self.link(huge))
    }

    /// Starts the pools' handover once every handler that uses them is registered: in the FLB
    /// form the incoming state is fetched at once (the RFC's init, so free pages return to the
    /// pool), in the subsystem form the subsystem registers and is booted from the previous
    /// kernel's data.
    pub fn start(&self, k: &impl Registry) -> Result {
        match &self.flb {
            Some(flb) => match flb.get_incoming() {
                Ok(g) => drop(g),
                Err(Errno::ENODATA | Errno::ENOENT) => {}
                Err(e) => return Err(e),
            },
            None => {
                let sub = k.new_subsystem(HugetlbSubsystem {
                    pools: Arc::clone(&self.pools),
                });
                k.register_subsystem(&sub)?;
            }
        }
        Ok(())
    }
}

impl pages::IncomingPool for Hugetlb {
    fn release_incoming(&self, order: u32, nr: u64) -> Result {
        Hugetlb::release_incoming(self, order, nr)
    }
}
