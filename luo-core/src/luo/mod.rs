// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The LUO core: handler and FLB registry, sessions, preserved files, serialization at reboot
//! (`luo-v5`) and deserialization at boot.
//!
//! Handlers and FLBs are called through the generated C ops tables
//! (`luo_generated::liveupdate`), whatever language they are written in.
//!
//! The split follows upstream's `kernel/liveupdate/`: this module is `luo_core.c` (the core
//! of one kernel: boot, `/dev/liveupdate` open and close, whether LUO is enabled);
//! `registry` the handler registration of `luo_file.c`; `file` the preserved files of
//! `luo_file.c`; `flb` is `luo_flb.c`; `session` is `luo_session.c`; `serialize` the handover
//! formats written at reboot and read at boot.

pub mod depend;
pub mod fdt_luo;
mod file;
mod flb;
pub mod global;
mod incoming;
mod registry;
mod serialize;
mod session;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_generated::luo::v5::{
    LUO_KHO_ENTRY_NAME, LUO_SESSIONS_PER_BLOCK, luo_ser, luo_session_ser,
};

use crate::blocks::BlockSet;
use crate::error::ImageError;
use crate::kho::Kho;
use crate::lock_order::{Level, Ordered};
use crate::version::{KernelVersion, LuoFormat};
use luo_generated::luo::next;

pub(crate) use file::LuoFile;
pub(crate) use flb::Flb;
pub(crate) use registry::Handler;
use registry::Registry;
pub use serialize::{Incoming, SessionImage, detect_format, read_incoming, read_incoming_as};
pub use session::Session;
use session::SessionSt;

/// A raw pointer that may cross threads; what it points to is the registrant's to keep alive.
#[derive(Debug)]
pub(crate) struct Ptr<T>(pub(crate) *mut T);

impl<T> Clone for Ptr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<T> {}
impl<T> PartialEq for Ptr<T> {
    fn eq(&self, o: &Self) -> bool {
        std::ptr::eq(self.0, o.0)
    }
}

// SAFETY: registered handler and FLB structs are static data the registrant keeps alive and
// unchanged while registered (the upstream contract); the core only reads them.
unsafe impl<T> Send for Ptr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Ptr<T> {}

/// A copy of an ops table (function pointers and an owner pointer).
#[derive(Clone, Copy)]
pub(crate) struct Ops<T>(pub(crate) T);
// SAFETY: ops tables are plain function pointers plus an opaque owner pointer that the core
// never dereferences; calling the functions from any thread is the handler's contract.
unsafe impl<T> Send for Ops<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Ops<T> {}

fn ret(r: core::ffi::c_int) -> Result<(), Errno> {
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::from_neg(r).unwrap_or(Errno::EINVAL))
    }
}

struct Lists {
    out: Vec<Arc<Session>>,
    /// Names of the outgoing sessions (unique among them).
    names: HashSet<Vec<u8>>,
    inc: incoming::IncomingSessions,
    blocks: BlockSet,
}

enum Deser {
    Pending(Vec<SessionImage>),
    Done(Result<(), Errno>),
}

/// The LUO core of one kernel.
pub struct Luo {
    kho: Arc<Kho>,
    enabled: bool,
    reg: Ordered<Registry>,
    lists: Ordered<Lists>,
    /// Identities of the preserved files (the handlers' `get_id`, not image data).
    ids: Ordered<rustc_hash::FxHashSet<u64>>,
    dev_in_use: AtomicBool,
    deser: Ordered<Deser>,
    flb_in: Option<BTreeMap<String, (u64, u64)>>,
    root: u64,
    flb_area: u64,
    liveupdate_num: u64,
    frozen: AtomicBool,
    ext: crate::luo::global::Ext,
    version: KernelVersion,
    v1_area: Ordered<Option<u64>>,
}

/// A call the freeze/rollback path made, for tests of the rollback order.
pub type FreezeLog = Vec<(String, u64, &'static str)>;

impl Luo {
    /// Boots LUO: reads the incoming state (early_initcall), then sets up the outgoing root
    /// (late_initcall).
    pub(crate) fn boot(
        kho: Arc<Kho>,
        enabled: bool,
        version: KernelVersion,
    ) -> Result<Luo, ImageError> {
        let subtree = kho
            .retrieve_subtree(LUO_KHO_ENTRY_NAME)
            .ok()
            .map(|(p, s)| (p.as_u64(), s));
        let (inc, pages) = read_incoming_as(&*kho, subtree, version)?;
        for p in pages {
            kho.restore_free(PhysAddr::new(p))
                .map_err(|_| ImageError::NotPreserved {
                    what: "LUO metadata page",
                    phys: p,
                })?;
        }
        let liveupdate_num = inc.liveupdate_num.map_or(0, |n| n.wrapping_add(1));
        let host = ImageError::Host;
        let root_size = Self::root_size(version);
        let root = kho.alloc_preserve(root_size).map_err(host)?.as_u64();
        // 6.19 has no FLBs: its FLB area (kept for the FLB code) is not handed over.
        let flb_area = if version.luo_writes() == LuoFormat::V1 {
            kho.alloc_folio(0)
        } else {
            kho.alloc_preserve(PAGE_SIZE)
        }
        .map_err(host)?
        .as_u64();
        let luo = Luo {
            kho,
            enabled,
            reg: Ordered::new(Level::Registry, Registry::default()),
            lists: Ordered::new(
                Level::Lists,
                Lists {
                    out: Vec::new(),
                    names: HashSet::new(),
                    inc: incoming::IncomingSessions::default(),
                    blocks: BlockSet::new(size_of::<luo_session_ser>(), LUO_SESSIONS_PER_BLOCK),
                },
            ),
            ids: Ordered::new(Level::Ids, rustc_hash::FxHashSet::default()),
            dev_in_use: AtomicBool::new(false),
            deser: Ordered::new(Level::Deser, Deser::Pending(inc.sessions)),
            flb_in: inc.flbs,
            root,
            flb_area,
            liveupdate_num,
            frozen: AtomicBool::new(false),
            ext: crate::luo::global::Ext::default(),
            version,
            v1_area: Ordered::new(Level::V1Area, None),
        };
        luo.read_incoming_ext()?;
        luo.write_root(0).map_err(host)?;
        luo.write_flb_header(0).map_err(host)?;
        luo.kho
            .add_subtree(LUO_KHO_ENTRY_NAME, PhysAddr::new(root), root_size)
            .map_err(host)?;
        Ok(luo)
    }

    fn root_size(version: KernelVersion) -> usize {
        match version.luo_writes() {
            LuoFormat::V5 => size_of::<luo_ser>(),
            LuoFormat::Next => size_of::<next::luo_ser>(),
            LuoFormat::V1 | LuoFormat::V1Flb => PAGE_SIZE,
        }
    }

    /// The kernel this LUO plays.
    pub fn version(&self) -> KernelVersion {
        self.version
    }

    pub(crate) fn ext(&self) -> &crate::luo::global::Ext {
        &self.ext
    }

    pub(crate) fn kho(&self) -> &Arc<Kho> {
        &self.kho
    }

    /// This kernel's `liveupdate_num`.
    pub fn liveupdate_num(&self) -> u64 {
        self.liveupdate_num
    }

    /// Whether LUO is enabled (`liveupdate=on`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Pages LUO itself keeps preserved whatever happens (`luo_ser` and the FLB area).
    pub fn root_pages(&self) -> u64 {
        2
    }

    fn check_enabled(&self) -> Result<(), Errno> {
        if self.enabled {
            Ok(())
        } else {
            Err(Errno::EOPNOTSUPP)
        }
    }

    // ---- registration -------------------------------------------------------------------

    /// First-open semantics: single opener (`EBUSY`); lazy deserialization of the incoming
    /// sessions, whose failure is cached (`EIO` for this and every later open).
    pub(crate) fn open_dev(&self) -> Result<(), Errno> {
        if !self.enabled {
            return Err(Errno::ENODEV);
        }
        if self
            .dev_in_use
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Errno::EBUSY);
        }
        if let Err(e) = self.deserialize() {
            self.dev_in_use.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn close_dev(&self) {
        self.dev_in_use.store(false, Ordering::Release);
    }

    fn check_live(&self) -> Result<(), Errno> {
        if self.frozen.load(Ordering::Acquire) {
            // Upstream blocks forever on the serialize rwsem; the model refuses.
            return Err(Errno::EBUSY);
        }
        Ok(())
    }
}
