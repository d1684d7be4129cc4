//! The LUO core: handler and FLB registry, sessions, preserved files, serialization at reboot
//! (`luo-v5`) and deserialization at boot.
//!
//! Handlers and FLBs are called through the generated C ops tables
//! (`luo_generated::liveupdate`), whatever language they are written in.

use std::collections::{BTreeMap, HashSet};
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;

use luo_abi::abi::AbiType;
use luo_abi::features::{FeatureDecl, FeatureError, FeatureHeader, negotiate};
use luo_abi::kho::KhoService;
use luo_abi::{Errno, PAGE_SIZE, PhysAddr};
use luo_generated::liveupdate::{
    liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops, liveupdate_flb,
    liveupdate_flb_op_args, liveupdate_flb_ops, liveupdate_session,
};
use luo_generated::luo::luo_file_ser;
use luo_generated::luo::v5::{
    LUO_ABI_COMPAT_LEN, LUO_ABI_COMPATIBLE, LUO_FILES_PER_BLOCK, LUO_FLB_MAX, LUO_FLB_PGCNT,
    LUO_KHO_ENTRY_NAME, LUO_SESSIONS_PER_BLOCK, luo_file_set_ser, luo_flb_header_ser, luo_flb_ser,
    luo_ser, luo_session_ser,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::blocks::{BlockSet, PhysRead, read_chain, read_obj};
use crate::error::ImageError;
use crate::file::CoreFile;
use crate::kho::Kho;
use crate::lock_order::{Level, Ordered, lock};
use crate::util::{cstr, lossy};
use crate::version::{KernelVersion, LuoFormat};
use luo_generated::luo::{next, v1};

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

/// A registered file handler.
pub(crate) struct Handler {
    pub(crate) ptr: Ptr<liveupdate_file_handler>,
    pub(crate) ops: Ops<liveupdate_file_ops>,
    pub(crate) compatible: String,
    pub(crate) compat_buf: [u8; 48],
    pub(crate) flbs: Ordered<Vec<Arc<Flb>>>,
    pub(crate) global: Ordered<Option<Arc<crate::global::GlobalState>>>,
    /// Compatibles of the handlers whose files this handler's files may depend on
    /// (`depends_on`, see [`crate::depend`]).
    pub(crate) depends_on: Vec<String>,
}

impl Handler {
    fn args(&self, s: &Session) -> liveupdate_file_op_args {
        liveupdate_file_op_args {
            handler: self.ptr.0,
            retrieve_status: 0,
            file: std::ptr::null_mut(),
            serialized_data: 0,
            private_data: std::ptr::null_mut(),
            session: s.as_c(),
        }
    }

    fn can_preserve(&self, f: &Arc<CoreFile>) -> bool {
        match self.ops.0.can_preserve {
            // SAFETY: a registered handler's callbacks take its own struct and a live file.
            Some(cb) => unsafe { cb(self.ptr.0, CoreFile::as_c(f)) },
            None => false,
        }
    }

    fn get_id(&self, f: &Arc<CoreFile>) -> u64 {
        match self.ops.0.get_id {
            // SAFETY: as `can_preserve`.
            // `c_ulong` is 32 bits on i386: widen portably.
            #[allow(clippy::useless_conversion)]
            Some(cb) => u64::from(unsafe { cb(CoreFile::as_c(f)) }),
            None => Arc::as_ptr(f) as u64,
        }
    }

    fn call(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_file_op_args) -> core::ffi::c_int>,
        args: &mut liveupdate_file_op_args,
    ) -> Result<(), Errno> {
        match op {
            // SAFETY: `args` is a valid, exclusive argument block for the duration of the call.
            Some(cb) => ret(unsafe { cb(args) }),
            None => Ok(()),
        }
    }

    fn call_void(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_file_op_args)>,
        args: &mut liveupdate_file_op_args,
    ) {
        if let Some(cb) = op {
            // SAFETY: as `call`.
            unsafe { cb(args) }
        }
    }
}

#[derive(Default)]
struct FlbOut {
    count: u64,
    data: u64,
    obj: usize,
}

#[derive(Default)]
struct FlbIn {
    /// `None` until the incoming entry was looked up.
    entry: Option<Option<(u64, u64)>>,
    count: u64,
    obj: usize,
    retrieved: bool,
    finished: bool,
}

/// A registered FLB (its private state lives here, not in the C struct).
pub(crate) struct Flb {
    pub(crate) ptr: Ptr<liveupdate_flb>,
    ops: Ops<liveupdate_flb_ops>,
    pub(crate) compatible: String,
    users: Ordered<usize>,
    out: Ordered<FlbOut>,
    inc: Ordered<FlbIn>,
}

thread_local! {
    /// The FLBs whose callback runs on this thread, innermost last. Re-entry is a matter of
    /// this thread alone: an outgoing and an incoming callback of one FLB may run at once on
    /// two threads (each direction has its own lock), and a get from inside a callback must
    /// be refused before it takes any lock (the callback holds the FLB's, which comes after
    /// the registry the lookup takes).
    static IN_FLB_CALLBACK: std::cell::RefCell<Vec<usize>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `EDEADLK` when this thread is running one of `flb`'s callbacks.
fn flb_reentry(flb: *mut liveupdate_flb) -> Result<(), Errno> {
    if IN_FLB_CALLBACK.with_borrow(|v| v.contains(&(flb as usize))) {
        return Err(Errno::EDEADLK);
    }
    Ok(())
}

impl Flb {
    /// Runs one of the FLB's callbacks, marking this thread as inside it.
    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        IN_FLB_CALLBACK.with_borrow_mut(|v| v.push(self.ptr.0 as usize));
        let r = f();
        IN_FLB_CALLBACK.with_borrow_mut(|v| v.pop());
        r
    }

    fn args(&self, data: u64, obj: usize) -> liveupdate_flb_op_args {
        liveupdate_flb_op_args {
            flb: self.ptr.0,
            data,
            obj: obj as *mut c_void,
        }
    }

    fn call(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_flb_op_args) -> core::ffi::c_int>,
        args: &mut liveupdate_flb_op_args,
    ) -> Result<(), Errno> {
        match op {
            // SAFETY: a registered FLB's callbacks take a valid, exclusive argument block.
            Some(cb) => self.run(|| ret(unsafe { cb(args) })),
            None => Err(Errno::EINVAL),
        }
    }

    fn call_void(
        &self,
        op: Option<unsafe extern "C" fn(*mut liveupdate_flb_op_args)>,
        args: &mut liveupdate_flb_op_args,
    ) {
        if let Some(cb) = op {
            // SAFETY: as `call`.
            self.run(|| unsafe { cb(args) })
        }
    }
}

#[derive(Default)]
struct Registry {
    handlers: Vec<Arc<Handler>>,
    flbs: Vec<Arc<Flb>>,
}

/// One preserved file of a session.
pub(crate) struct LuoFile {
    pub(crate) token: u64,
    pub(crate) handler: Arc<Handler>,
    pub(crate) file: Option<Arc<CoreFile>>,
    pub(crate) data: u64,
    private: Ptr<c_void>,
    pub(crate) status: i32,
    id: Option<u64>,
    /// Tokens of the files of the same session this one depends on, as recorded by
    /// `liveupdate_get_token_outgoing` / `liveupdate_get_file_incoming` ([`crate::depend`]).
    pub(crate) deps: Vec<u64>,
    /// Its retrieve is running (on the thread owning the session's retrieval).
    retrieving: bool,
}

impl LuoFile {
    fn args(&self, s: &Session) -> liveupdate_file_op_args {
        let mut a = self.handler.args(s);
        a.retrieve_status = self.status;
        a.file = self
            .file
            .as_ref()
            .map_or(std::ptr::null_mut(), CoreFile::as_c);
        a.serialized_data = self.data;
        a.private_data = self.private.0;
        a
    }
}

pub(crate) struct SessionSt {
    pub(crate) files: Vec<LuoFile>,
    pub(crate) retrieved: bool,
    blocks: BlockSet,
    /// Incoming metadata pages of the session's files (phys, order), freed at finish.
    in_blocks: Vec<(u64, u32)>,
    /// The outgoing `luo-v1` file area (6.19/7.0: one contiguous 2-page array).
    flat: Option<u64>,
}

/// A session (outgoing, or incoming from the previous kernel).
pub struct Session {
    name: Vec<u8>,
    incoming: bool,
    pub(crate) st: Ordered<SessionSt>,
    /// The thread retrieving files of the session and its nesting depth: a retrieve may
    /// retrieve its dependencies ([`crate::depend`]), so retrieval is owned by one thread at a
    /// time (upstream holds the session mutex across it) and re-entrant on that thread.
    owner: Mutex<Option<(ThreadId, u32)>>,
    owner_cv: Condvar,
}

/// Ownership of a session's retrieval, released on drop.
pub(crate) struct RetrieveOwner<'a>(&'a Session);

impl Drop for RetrieveOwner<'_> {
    fn drop(&mut self) {
        let mut o = lock(&self.0.owner);
        if let Some((t, n)) = *o {
            *o = (n > 1).then_some((t, n - 1));
        }
        if o.is_none() {
            self.0.owner_cv.notify_all();
        }
    }
}

impl Session {
    fn new(name: Vec<u8>, incoming: bool) -> Session {
        Session {
            owner: Mutex::new(None),
            owner_cv: Condvar::new(),
            name,
            incoming,
            st: Ordered::new(
                Level::Session,
                SessionSt {
                    files: Vec::new(),
                    retrieved: false,
                    blocks: BlockSet::new(size_of::<luo_file_ser>(), LUO_FILES_PER_BLOCK),
                    in_blocks: Vec::new(),
                    flat: None,
                },
            ),
        }
    }

    /// The `struct liveupdate_session *` handlers see (`liveupdate_file_op_args.session`).
    pub(crate) fn as_c(&self) -> *mut liveupdate_session {
        (self as *const Session).cast_mut().cast()
    }

    /// Takes ownership of the session's retrieval: waits while another thread has it,
    /// nests on this one.
    pub(crate) fn own_retrieval(&self) -> RetrieveOwner<'_> {
        let me = std::thread::current().id();
        let mut o = lock(&self.owner);
        loop {
            match *o {
                None => {
                    *o = Some((me, 1));
                    break;
                }
                Some((t, n)) if t == me => {
                    *o = Some((t, n + 1));
                    break;
                }
                Some(_) => {
                    o = self
                        .owner_cv
                        .wait(o)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
        RetrieveOwner(self)
    }

    /// The session name (without NUL).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Whether it came from the previous kernel.
    pub fn is_incoming(&self) -> bool {
        self.incoming
    }

    /// Tokens of its files, in preservation order.
    pub fn tokens(&self) -> Vec<u64> {
        lock(&self.st).files.iter().map(|f| f.token).collect()
    }

    /// Tokens of the files the file under `token` depends on, as recorded by LUO.
    pub fn file_deps(&self, token: u64) -> Option<Vec<u64>> {
        lock(&self.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .map(|f| f.deps.clone())
    }

    /// The handler's serialized-data handle of the file under `token` (its `luo_file_ser.data`).
    pub fn file_data(&self, token: u64) -> Option<u64> {
        lock(&self.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .map(|f| f.data)
    }
}

/// A session as read at boot, before its files are bound to handlers.
#[derive(Clone, Debug)]
pub struct SessionImage {
    /// Name.
    pub name: Vec<u8>,
    /// Head of its file chain.
    pub files: u64,
    /// Its file count.
    pub count: u64,
    /// `files` is a contiguous `luo_file_ser[]` (6.19/7.0), not a block chain.
    pub flat: bool,
}

/// What the previous kernel handed over, as read at early boot.
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    /// The previous `liveupdate_num`, if there was a live update.
    pub liveupdate_num: Option<u64>,
    /// Its sessions.
    pub sessions: Vec<SessionImage>,
    /// Its FLB entries (name → (data, count)); `None` without FLB data.
    pub flbs: Option<BTreeMap<String, (u64, u64)>>,
}

struct Lists {
    out: Vec<Arc<Session>>,
    /// Names of the outgoing sessions (unique among them).
    names: HashSet<Vec<u8>>,
    inc: Vec<Arc<Session>>,
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
    ids: Ordered<HashSet<u64>>,
    dev_in_use: AtomicBool,
    deser: Ordered<Deser>,
    flb_in: Option<BTreeMap<String, (u64, u64)>>,
    root: u64,
    flb_area: u64,
    liveupdate_num: u64,
    frozen: AtomicBool,
    ext: crate::global::Ext,
    version: KernelVersion,
    v1_area: Ordered<Option<u64>>,
}

/// A call the freeze/rollback path made, for tests of the rollback order.
pub type FreezeLog = Vec<(String, u64, &'static str)>;

/// Reads the incoming LUO state (early boot), in any format the model knows. No `"LUO"`
/// subtree is a fresh start.
pub fn read_incoming<M: PhysRead + ?Sized>(
    mem: &M,
    subtree: Option<(u64, usize)>,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    read_incoming_as(mem, subtree, KernelVersion::Next)
}

/// Which format a `"LUO"` subtree holds (FDT magic, `luo-v5` compatible, else a
/// feature-negotiated `luo_ser`).
pub fn detect_format<M: PhysRead + ?Sized>(
    mem: &M,
    root: u64,
    size: usize,
) -> Result<LuoFormat, ImageError> {
    if size < 8 {
        return Err(ImageError::LuoTooSmall {
            size,
            need: size_of::<luo_ser>(),
        });
    }
    let head: [u8; 8] = read_obj(mem, root, "LUO root")?;
    if head[..4] == crate::fdt_luo::FDT_MAGIC.to_be_bytes() {
        return Ok(LuoFormat::V1);
    }
    let mut want = [0u8; LUO_ABI_COMPAT_LEN as usize];
    want[..LUO_ABI_COMPATIBLE.len()].copy_from_slice(LUO_ABI_COMPATIBLE.as_bytes());
    if head == want {
        return Ok(LuoFormat::V5);
    }
    if head.starts_with(b"luo-") {
        return Err(ImageError::Compatible {
            found: lossy(&head),
            expected: LUO_ABI_COMPATIBLE,
        });
    }
    if size >= size_of::<next::luo_ser>() {
        return Ok(LuoFormat::Next);
    }
    Err(ImageError::Compatible {
        found: lossy(&head),
        expected: LUO_ABI_COMPATIBLE,
    })
}

fn format_name(f: LuoFormat) -> &'static str {
    match f {
        LuoFormat::V1 => "luo-v1 (FDT, luo-session-v2)",
        LuoFormat::V1Flb => "luo-v1 (FDT, luo-session-v2, luo-flb-v1)",
        LuoFormat::V5 => "luo-v5",
        LuoFormat::Next => "next (feature-negotiated luo_ser)",
    }
}

/// Reads the incoming LUO state as kernel `kernel` does: a format it does not read is an
/// [`ImageError::UnsupportedFormat`] (upstream: panic).
pub fn read_incoming_as<M: PhysRead + ?Sized>(
    mem: &M,
    subtree: Option<(u64, usize)>,
    kernel: KernelVersion,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    let Some((root, size)) = subtree else {
        return Ok((Incoming::default(), Vec::new()));
    };
    let mut found = detect_format(mem, root, size)?;
    if found == LuoFormat::V1 {
        found = crate::fdt_luo::flavour(mem, root, size)?;
    }
    let reads = kernel.luo_reads();
    if !reads.contains(&found) {
        return Err(ImageError::UnsupportedFormat {
            found: format_name(found).to_owned(),
            kernel: kernel.name(),
            reads: reads
                .iter()
                .map(|f| format_name(*f))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    match found {
        LuoFormat::V1 | LuoFormat::V1Flb => crate::fdt_luo::read(mem, root, size),
        LuoFormat::V5 => {
            if size < size_of::<luo_ser>() {
                return Err(ImageError::LuoTooSmall {
                    size,
                    need: size_of::<luo_ser>(),
                });
            }
            let ser: luo_ser = read_obj(mem, root, "luo_ser")?;
            read_chains(
                mem,
                root,
                ser.liveupdate_num,
                ser.sessions_pa.addr().as_u64(),
                ser.flbs_pa.addr().as_u64(),
            )
        }
        LuoFormat::Next => {
            let ser: next::luo_ser = read_obj(mem, root, "luo_ser (next)")?;
            let known = next::LUO_CORE_FEATURES_SUPP;
            let h = ser.features;
            let decl = FeatureDecl {
                supported: known,
                required: 0,
                active: 0,
            };
            let hdr = FeatureHeader {
                supp: h.supp,
                req: h.req,
                active: h.active,
            };
            match negotiate(&decl, hdr, h.check_reserved().is_ok()) {
                Ok(_) => {}
                Err(FeatureError::UnknownRequired { bits }) => {
                    return Err(ImageError::UnknownFeature {
                        component: "luo",
                        bits,
                        known,
                    });
                }
                Err(e) => {
                    return Err(ImageError::BadFeatures {
                        component: "luo",
                        why: format!("{e:?}"),
                    });
                }
            }
            let active = h.active;
            let num = if active & next::LUO_FEATURE_NUMBER != 0 {
                ser.liveupdate_num
            } else {
                0
            };
            let sessions = if active & next::LUO_FEATURE_SESSIONS != 0 {
                ser.sessions_pa.addr().as_u64()
            } else {
                0
            };
            let flbs = if active & next::LUO_FEATURE_FLBS != 0 {
                ser.flbs_pa.addr().as_u64()
            } else {
                0
            };
            read_chains(mem, root, num, sessions, flbs)
        }
    }
}

/// Reads the session and FLB block chains of a `luo-v5` or `next` root.
fn read_chains<M: PhysRead + ?Sized>(
    mem: &M,
    root: u64,
    liveupdate_num: u64,
    sessions_pa: u64,
    flbs_pa: u64,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    // Pages the incoming metadata occupies (to restore and free once read).
    let mut pages = vec![root];
    let chain = read_chain(
        mem,
        sessions_pa,
        size_of::<luo_session_ser>(),
        LUO_SESSIONS_PER_BLOCK,
        "session",
    )?;
    pages.extend(&chain.blocks);
    let mut sessions = Vec::new();
    for (i, e) in chain
        .entries
        .chunks_exact(size_of::<luo_session_ser>())
        .enumerate()
    {
        let s: luo_session_ser =
            zerocopy::FromBytes::read_from_bytes(e).map_err(|_| ImageError::Truncated {
                what: "luo_session_ser",
                phys: root,
            })?;
        let end = s
            .name
            .iter()
            .position(|&b| b == 0)
            .ok_or(ImageError::SessionName { index: i })?;
        sessions.push(SessionImage {
            name: s.name[..end].to_vec(),
            files: s.file_set_ser.files.addr().as_u64(),
            count: s.file_set_ser.count,
            flat: false,
        });
    }
    let flbs = if flbs_pa == 0 {
        None
    } else {
        let h: luo_flb_header_ser = read_obj(mem, flbs_pa, "luo_flb_header_ser")?;
        if h.pgcnt != LUO_FLB_PGCNT || h.count > LUO_FLB_MAX {
            return Err(ImageError::FlbHeader {
                phys: flbs_pa,
                pgcnt: h.pgcnt,
                count: h.count,
            });
        }
        let mut map = BTreeMap::new();
        for i in 0..h.count {
            let at = (size_of::<luo_flb_header_ser>() as u64 + i * size_of::<luo_flb_ser>() as u64)
                .checked_add(flbs_pa)
                .ok_or(ImageError::Truncated {
                    what: "luo_flb_ser",
                    phys: flbs_pa,
                })?;
            let e: luo_flb_ser = read_obj(mem, at, "luo_flb_ser")?;
            let name = cstr(&e.name).ok_or(ImageError::FlbHeader {
                phys: flbs_pa,
                pgcnt: h.pgcnt,
                count: h.count,
            })?;
            map.insert(name.to_owned(), (e.data, e.count));
        }
        pages.push(flbs_pa);
        Some(map)
    };
    Ok((
        Incoming {
            liveupdate_num: Some(liveupdate_num),
            sessions,
            flbs,
        },
        pages,
    ))
}

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
                    inc: Vec::new(),
                    blocks: BlockSet::new(size_of::<luo_session_ser>(), LUO_SESSIONS_PER_BLOCK),
                },
            ),
            ids: Ordered::new(Level::Ids, HashSet::new()),
            dev_in_use: AtomicBool::new(false),
            deser: Ordered::new(Level::Deser, Deser::Pending(inc.sessions)),
            flb_in: inc.flbs,
            root,
            flb_area,
            liveupdate_num,
            frozen: AtomicBool::new(false),
            ext: crate::global::Ext::default(),
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

    fn writes_fdt(&self) -> bool {
        matches!(self.version.luo_writes(), LuoFormat::V1 | LuoFormat::V1Flb)
    }

    /// 6.19/7.0: the session area (`luo_session_header_ser` + `luo_session_ser[]`,
    /// `LUO_SESSION_PGCNT` pages), allocated once.
    fn write_session_area(&self, entries: &[luo_session_ser]) -> Result<u64, Errno> {
        if entries.len() as u64 > v1::LUO_SESSION_MAX {
            return Err(Errno::ENOSPC);
        }
        let mut a = lock(&self.v1_area);
        let area = match *a {
            Some(x) => x,
            None => {
                let x = self
                    .kho
                    .alloc_preserve(v1::LUO_SESSION_PGCNT as usize * PAGE_SIZE)?
                    .as_u64();
                *a = Some(x);
                x
            }
        };
        let h = v1::luo_session_header_ser {
            count: entries.len() as u64,
        };
        self.kho.write(PhysAddr::new(area), h.as_bytes())?;
        // `luo_session_ser` of luo-session-v2 and of luo-v5 have the same 80-byte layout.
        self.kho
            .write(PhysAddr::new(area + 8), entries.as_bytes())?;
        Ok(area)
    }

    fn write_root(&self, sessions_pa: u64) -> Result<(), Errno> {
        match self.version.luo_writes() {
            LuoFormat::V5 => {}
            LuoFormat::Next => {
                let mut ser = next::luo_ser::new_zeroed();
                ser.features.supp = next::LUO_CORE_FEATURES_SUPP;
                ser.features.req = next::LUO_CORE_FEATURES_REQ;
                ser.features.active = next::LUO_CORE_FEATURES_ACTIVE;
                ser.liveupdate_num = self.liveupdate_num;
                ser.sessions_pa = luo_abi::Phys::new(PhysAddr::new(sessions_pa));
                ser.flbs_pa = luo_abi::Phys::new(PhysAddr::new(self.flb_area));
                return self.kho.write(PhysAddr::new(self.root), ser.as_bytes());
            }
            LuoFormat::V1 | LuoFormat::V1Flb => {
                let flbs = (self.version.luo_writes() == LuoFormat::V1Flb).then_some(self.flb_area);
                let fdt = crate::fdt_luo::build(self.liveupdate_num, sessions_pa, flbs);
                if fdt.len() > PAGE_SIZE {
                    return Err(Errno::ENOSPC);
                }
                return self.kho.write(PhysAddr::new(self.root), &fdt);
            }
        }
        let mut ser = luo_ser::new_zeroed();
        ser.compatible[..LUO_ABI_COMPATIBLE.len()].copy_from_slice(LUO_ABI_COMPATIBLE.as_bytes());
        ser.liveupdate_num = self.liveupdate_num;
        ser.sessions_pa = luo_abi::Phys::new(PhysAddr::new(sessions_pa));
        ser.flbs_pa = luo_abi::Phys::new(PhysAddr::new(self.flb_area));
        self.kho.write(PhysAddr::new(self.root), ser.as_bytes())
    }

    fn write_flb_header(&self, count: u64) -> Result<(), Errno> {
        let h = luo_flb_header_ser {
            pgcnt: LUO_FLB_PGCNT,
            count,
        };
        self.kho.write(PhysAddr::new(self.flb_area), h.as_bytes())
    }

    pub(crate) fn ext(&self) -> &crate::global::Ext {
        &self.ext
    }

    pub(crate) fn kho(&self) -> &Arc<Kho> {
        &self.kho
    }

    pub(crate) fn handler_by_ptr(&self, fh: *mut liveupdate_file_handler) -> Option<Arc<Handler>> {
        lock(&self.reg)
            .handlers
            .iter()
            .find(|h| std::ptr::eq(h.ptr.0, fh))
            .cloned()
    }

    pub(crate) fn handler_global_states(&self) -> Vec<(String, Arc<crate::global::GlobalState>)> {
        lock(&self.reg)
            .handlers
            .iter()
            .filter_map(|h| Some((h.compatible.clone(), lock(&h.global).clone()?)))
            .collect()
    }

    /// The handlers with a registered global state: their `struct liveupdate_file_handler *`
    /// and the state.
    pub(crate) fn handler_global_state_ptrs(
        &self,
    ) -> Vec<(
        *mut liveupdate_file_handler,
        Arc<crate::global::GlobalState>,
    )> {
        lock(&self.reg)
            .handlers
            .iter()
            .filter_map(|h| Some((h.ptr.0, lock(&h.global).clone()?)))
            .collect()
    }

    /// Unfinished incoming files bound to the handler with `compat`.
    pub(crate) fn incoming_files_of(&self, compat: &str) -> u64 {
        let inc = lock(&self.lists).inc.clone();
        inc.iter()
            .map(|s| {
                lock(&s.st)
                    .files
                    .iter()
                    .filter(|f| f.handler.compatible == compat)
                    .count() as u64
            })
            .sum()
    }

    /// Whether the incoming sessions were deserialized and none has unfinished files.
    pub(crate) fn incoming_all_finished(&self) -> bool {
        if !matches!(*lock(&self.deser), Deser::Done(Ok(()))) {
            return false;
        }
        let inc = lock(&self.lists).inc.clone();
        inc.iter().all(|s| lock(&s.st).files.is_empty())
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

    /// `liveupdate_register_file_handler`.
    ///
    /// # Safety
    ///
    /// `fh` must point to a handler struct (and ops table) that stays valid and unchanged until
    /// it is unregistered (and while files it preserved exist).
    pub unsafe fn register_file_handler(
        &self,
        fh: *mut liveupdate_file_handler,
    ) -> Result<(), Errno> {
        self.check_enabled()?;
        if fh.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the caller guarantees `fh` is valid.
        let h = unsafe { &*fh };
        if h.ops.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a non-NULL ops pointer of a valid handler points to its ops table.
        let ops = unsafe { *h.ops };
        if ops.can_preserve.is_none()
            || ops.preserve.is_none()
            || ops.unpreserve.is_none()
            || ops.retrieve.is_none()
            || ops.finish.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let compatible = cstr(&h.compatible).ok_or(Errno::EINVAL)?.to_owned();
        if compatible.is_empty() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the caller guarantees the handler's `depends_on` array is valid.
        let depends_on = unsafe { crate::depend::read_depends_on(h.depends_on) }?;
        let mut reg = lock(&self.reg);
        if reg.handlers.iter().any(|x| x.compatible == compatible) {
            return Err(Errno::EEXIST);
        }
        if reg.handlers.iter().any(|x| std::ptr::eq(x.ptr.0, fh)) {
            return Err(Errno::EEXIST);
        }
        reg.handlers.push(Arc::new(Handler {
            ptr: Ptr(fh),
            ops: Ops(ops),
            compatible,
            compat_buf: h.compatible,
            flbs: Ordered::new(Level::HandlerFlbs, Vec::new()),
            global: Ordered::new(Level::HandlerFlbs, None),
            depends_on,
        }));
        Ok(())
    }

    /// `liveupdate_unregister_file_handler`: unlinks its FLBs and the handler.
    pub fn unregister_file_handler(&self, fh: *mut liveupdate_file_handler) {
        let mut reg = lock(&self.reg);
        let Some(i) = reg.handlers.iter().position(|x| std::ptr::eq(x.ptr.0, fh)) else {
            return;
        };
        let h = reg.handlers.remove(i);
        let flbs = std::mem::take(&mut *lock(&h.flbs));
        for flb in flbs {
            Self::drop_flb_user(&mut reg, &flb);
        }
    }

    fn drop_flb_user(reg: &mut Registry, flb: &Arc<Flb>) {
        let mut users = lock(&flb.users);
        *users = users.saturating_sub(1);
        if *users == 0 {
            reg.flbs.retain(|f| !Arc::ptr_eq(f, flb));
        }
    }

    /// Compatible strings of the registered handlers, in registration order.
    pub fn handlers(&self) -> Vec<String> {
        lock(&self.reg)
            .handlers
            .iter()
            .map(|h| h.compatible.clone())
            .collect()
    }

    /// The registered `struct liveupdate_file_handler *` with `compatible`, if any (what a C
    /// caller of `liveupdate_register_flb` holds; Rust handlers never see it).
    pub fn handler_ptr(&self, compatible: &str) -> Option<*mut liveupdate_file_handler> {
        lock(&self.reg)
            .handlers
            .iter()
            .find(|h| h.compatible == compatible)
            .map(|h| h.ptr.0)
    }

    /// The registered `struct liveupdate_flb *` with `compatible`, if any FLB of that name is
    /// linked to a handler.
    pub fn flb_ptr(&self, compatible: &str) -> Option<*mut liveupdate_flb> {
        lock(&self.reg)
            .flbs
            .iter()
            .find(|f| f.compatible == compatible)
            .map(|f| f.ptr.0)
    }

    /// `liveupdate_register_flb`.
    ///
    /// # Safety
    ///
    /// `flb` must point to an FLB struct (and ops table) that stays valid and unchanged while
    /// linked; `fh` is only compared, never dereferenced.
    pub unsafe fn register_flb(
        &self,
        fh: *mut liveupdate_file_handler,
        flb: *mut liveupdate_flb,
    ) -> Result<(), Errno> {
        self.check_enabled()?;
        if self.version.luo_writes() == LuoFormat::V1 {
            // 6.19 has no FLBs: their data could not be handed over (it stayed an unclaimed
            // incoming page; found by `fault_sweep::kho_allocation_failure_at_every_site`).
            return Err(Errno::EOPNOTSUPP);
        }
        if flb.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the caller guarantees `flb` is valid.
        let f = unsafe { &*flb };
        if f.ops.is_null() {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a non-NULL ops pointer of a valid FLB points to its ops table.
        let ops = unsafe { *f.ops };
        if ops.preserve.is_none()
            || ops.unpreserve.is_none()
            || ops.retrieve.is_none()
            || ops.finish.is_none()
        {
            return Err(Errno::EINVAL);
        }
        let compatible = cstr(&f.compatible).ok_or(Errno::EINVAL)?.to_owned();
        let mut reg = lock(&self.reg);
        let h = reg
            .handlers
            .iter()
            .find(|x| std::ptr::eq(x.ptr.0, fh))
            .cloned()
            .ok_or(Errno::EINVAL)?;
        let mut links = lock(&h.flbs);
        if links.iter().any(|x| std::ptr::eq(x.ptr.0, flb)) {
            return Err(Errno::EEXIST);
        }
        let entry = match reg.flbs.iter().find(|x| std::ptr::eq(x.ptr.0, flb)) {
            Some(e) => Arc::clone(e),
            None => {
                if reg.flbs.iter().any(|x| x.compatible == compatible) {
                    return Err(Errno::EEXIST);
                }
                if reg.flbs.len() as u64 >= LUO_FLB_MAX {
                    return Err(Errno::ENOSPC);
                }
                let e = Arc::new(Flb {
                    ptr: Ptr(flb),
                    ops: Ops(ops),
                    compatible,
                    users: Ordered::new(Level::Flb, 0),
                    out: Ordered::new(Level::Flb, FlbOut::default()),
                    inc: Ordered::new(Level::Flb, FlbIn::default()),
                });
                reg.flbs.push(Arc::clone(&e));
                e
            }
        };
        *lock(&entry.users) += 1;
        links.push(entry);
        Ok(())
    }

    /// `liveupdate_unregister_flb`.
    pub fn unregister_flb(&self, fh: *mut liveupdate_file_handler, flb: *mut liveupdate_flb) {
        let mut reg = lock(&self.reg);
        let Some(h) = reg
            .handlers
            .iter()
            .find(|x| std::ptr::eq(x.ptr.0, fh))
            .cloned()
        else {
            return;
        };
        let removed = {
            let mut links = lock(&h.flbs);
            links
                .iter()
                .position(|x| std::ptr::eq(x.ptr.0, flb))
                .map(|i| links.remove(i))
        };
        if let Some(e) = removed {
            Self::drop_flb_user(&mut reg, &e);
        }
    }

    fn find_flb(&self, flb: *mut liveupdate_flb) -> Result<Arc<Flb>, Errno> {
        lock(&self.reg)
            .flbs
            .iter()
            .find(|x| std::ptr::eq(x.ptr.0, flb))
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// `liveupdate_flb_get_outgoing`: the live object (NULL if not preserved).
    pub fn flb_get_outgoing(&self, flb: *mut liveupdate_flb) -> Result<*mut c_void, Errno> {
        self.check_enabled()?;
        flb_reentry(flb)?;
        let f = self.find_flb(flb)?;
        Ok(lock(&f.out).obj as *mut c_void)
    }

    /// `liveupdate_flb_get_incoming`: retrieves lazily and takes a reference.
    pub fn flb_get_incoming(&self, flb: *mut liveupdate_flb) -> Result<*mut c_void, Errno> {
        self.check_enabled()?;
        flb_reentry(flb)?;
        let f = self.find_flb(flb)?;
        let map = self.flb_in.as_ref().ok_or(Errno::ENODATA)?;
        let mut inc = lock(&f.inc);
        if inc.finished {
            return Err(Errno::ENODATA);
        }
        let (data, _) = Self::flb_entry(map, &f, &mut inc).ok_or(Errno::ENOENT)?;
        if !inc.retrieved {
            let mut a = f.args(data, 0);
            f.call(f.ops.0.retrieve, &mut a)?;
            inc.obj = a.obj as usize;
            inc.retrieved = true;
        }
        inc.count += 1;
        Ok(inc.obj as *mut c_void)
    }

    fn flb_entry(
        map: &BTreeMap<String, (u64, u64)>,
        f: &Flb,
        inc: &mut FlbIn,
    ) -> Option<(u64, u64)> {
        if inc.entry.is_none() {
            let e = map.get(&f.compatible).copied();
            inc.entry = Some(e);
            if let Some((_, c)) = e {
                inc.count = c;
            }
        }
        inc.entry.flatten()
    }

    /// `liveupdate_flb_put_incoming`: drops a reference; the last one finishes the FLB.
    pub fn flb_put_incoming(&self, flb: *mut liveupdate_flb) {
        if flb_reentry(flb).is_ok()
            && let Ok(f) = self.find_flb(flb)
        {
            self.flb_put(&f);
        }
    }

    fn flb_put(&self, f: &Flb) {
        let Some(map) = self.flb_in.as_ref() else {
            return;
        };
        let mut inc = lock(&f.inc);
        let Some((data, _)) = Self::flb_entry(map, f, &mut inc) else {
            return;
        };
        if inc.finished {
            return;
        }
        inc.count = inc.count.saturating_sub(1);
        if inc.count > 0 {
            return;
        }
        if !inc.retrieved {
            let mut a = f.args(data, 0);
            if f.call(f.ops.0.retrieve, &mut a).is_ok() {
                inc.obj = a.obj as usize;
                inc.retrieved = true;
            }
        }
        let mut a = f.args(data, inc.obj);
        f.call_void(f.ops.0.finish, &mut a);
        inc.finished = true;
    }

    /// FLB preserve for one file of `h`: the first dependent file preserves the object. On
    /// failure the FLBs already done for this file are rolled back in reverse.
    fn flb_file_preserve(&self, h: &Handler) -> Result<(), Errno> {
        let flbs = lock(&h.flbs).clone();
        for (i, f) in flbs.iter().enumerate() {
            let mut out = lock(&f.out);
            if out.count == 0 {
                let mut a = f.args(0, 0);
                if let Err(e) = f.call(f.ops.0.preserve, &mut a) {
                    drop(out);
                    for g in flbs[..i].iter().rev() {
                        self.flb_unpreserve_one(g);
                    }
                    return Err(e);
                }
                out.data = a.data;
                out.obj = a.obj as usize;
            }
            out.count += 1;
        }
        Ok(())
    }

    fn flb_unpreserve_one(&self, f: &Flb) {
        let mut out = lock(&f.out);
        out.count = out.count.saturating_sub(1);
        if out.count == 0 {
            let mut a = f.args(out.data, out.obj);
            f.call_void(f.ops.0.unpreserve, &mut a);
            *out = FlbOut::default();
        }
    }

    fn flb_file_unpreserve(&self, h: &Handler) {
        let flbs = lock(&h.flbs).clone();
        for f in flbs.iter().rev() {
            self.flb_unpreserve_one(f);
        }
    }

    fn flb_file_finish(&self, h: &Handler) {
        let flbs = lock(&h.flbs).clone();
        for f in flbs.iter().rev() {
            self.flb_put(f);
        }
    }

    fn flb_serialize(&self) -> Result<(), Errno> {
        let flbs = lock(&self.reg).flbs.clone();
        let mut n = 0u64;
        for f in flbs {
            let out = lock(&f.out);
            if out.count == 0 {
                continue;
            }
            let mut e = luo_flb_ser::new_zeroed();
            e.name = crate::util::to_cbuf(&f.compatible).ok_or(Errno::EINVAL)?;
            e.data = out.data;
            e.count = out.count;
            let at = self.flb_area
                + size_of::<luo_flb_header_ser>() as u64
                + n * size_of::<luo_flb_ser>() as u64;
            self.kho.write(PhysAddr::new(at), e.as_bytes())?;
            n += 1;
        }
        self.write_flb_header(n)
    }

    // ---- /dev/liveupdate ----------------------------------------------------------------

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

    fn deserialize(&self) -> Result<(), Errno> {
        let mut d = lock(&self.deser);
        let pending = match &mut *d {
            Deser::Done(r) => return r.map_err(|_| Errno::EIO),
            Deser::Pending(p) => std::mem::take(p),
        };
        let r = self.deserialize_sessions(pending);
        *d = Deser::Done(r);
        drop(d);
        if r.is_ok() {
            // Bind the incoming files to handler global states registered before.
            for (compat, g) in self.handler_global_states() {
                g.add_files(self.incoming_files_of(&compat));
            }
            self.maybe_finish_subsystems();
        }
        r.map_err(|_| Errno::EIO)
    }

    fn deserialize_sessions(&self, images: Vec<SessionImage>) -> Result<(), Errno> {
        let handlers = lock(&self.reg).handlers.clone();
        let mut sessions = Vec::new();
        for img in images {
            let chain = if img.flat {
                let mut entries = vec![0u8; img.count as usize * size_of::<luo_file_ser>()];
                let mut blocks = Vec::new();
                if img.files != 0 {
                    crate::blocks::read_preserved(&*self.kho, img.files, &mut entries, "file")?;
                    blocks.push(img.files);
                } else if img.count != 0 {
                    return Err(Errno::EINVAL);
                }
                crate::blocks::Chain { entries, blocks }
            } else {
                read_chain(
                    &*self.kho,
                    img.files,
                    size_of::<luo_file_ser>(),
                    LUO_FILES_PER_BLOCK,
                    "file",
                )?
            };
            let found = (chain.entries.len() / size_of::<luo_file_ser>()) as u64;
            if found != img.count {
                return Err(Errno::EINVAL);
            }
            let s = Session::new(img.name, true);
            {
                let mut st = lock(&s.st);
                for e in chain.entries.chunks_exact(size_of::<luo_file_ser>()) {
                    let fs: luo_file_ser =
                        zerocopy::FromBytes::read_from_bytes(e).map_err(|_| Errno::EINVAL)?;
                    let compat = cstr(&fs.compatible).ok_or(Errno::EINVAL)?;
                    let h = handlers
                        .iter()
                        .find(|h| h.compatible == compat)
                        .cloned()
                        .ok_or(Errno::ENOENT)?;
                    st.files.push(LuoFile {
                        token: fs.token,
                        handler: h,
                        file: None,
                        data: fs.data,
                        private: Ptr(std::ptr::null_mut()),
                        status: 0,
                        id: None,
                        deps: Vec::new(),
                        retrieving: false,
                    });
                }
                for &b in &chain.blocks {
                    let order = self.kho.restore_folio(PhysAddr::new(b))?;
                    st.in_blocks.push((b, order));
                }
            }
            sessions.push(Arc::new(s));
        }
        lock(&self.lists).inc.extend(sessions);
        Ok(())
    }

    // ---- sessions -------------------------------------------------------------------------

    fn check_live(&self) -> Result<(), Errno> {
        if self.frozen.load(Ordering::Acquire) {
            // Upstream blocks forever on the serialize rwsem; the model refuses.
            return Err(Errno::EBUSY);
        }
        Ok(())
    }

    /// CREATE_SESSION.
    pub(crate) fn create_session(&self, name: &[u8]) -> Result<Arc<Session>, Errno> {
        self.check_live()?;
        let mut l = lock(&self.lists);
        if l.names.contains(name) {
            return Err(Errno::EEXIST);
        }
        let n = l.out.len() as u64 + 1;
        if !self.writes_fdt() {
            l.blocks.ensure(&*self.kho, n)?;
        }
        let s = Arc::new(Session::new(name.to_vec(), false));
        l.out.push(Arc::clone(&s));
        l.names.insert(name.to_vec());
        Ok(s)
    }

    /// RETRIEVE_SESSION.
    pub(crate) fn retrieve_session(&self, name: &[u8]) -> Result<Arc<Session>, Errno> {
        self.check_live()?;
        let l = lock(&self.lists);
        let s = l
            .inc
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        let mut st = lock(&s.st);
        if st.retrieved {
            return Err(Errno::EINVAL);
        }
        st.retrieved = true;
        drop(st);
        Ok(s)
    }

    /// PRESERVE_FD, in the newest order of checks.
    pub(crate) fn preserve_fd(
        &self,
        s: &Arc<Session>,
        token: u64,
        file: Result<Arc<CoreFile>, Errno>,
    ) -> Result<(), Errno> {
        self.check_live()?;
        if s.incoming {
            return Err(Errno::EINVAL);
        }
        let mut st = lock(&s.st);
        if st.files.iter().any(|f| f.token == token) {
            return Err(Errno::EEXIST);
        }
        let n = st.files.len() as u64;
        if !self.writes_fdt() {
            st.blocks.ensure(&*self.kho, n + 1)?;
        }
        let r = self.preserve_file(s, &st.files, token, file);
        match r {
            Ok(f) => {
                st.files.push(f);
                Ok(())
            }
            Err(e) => {
                st.blocks.trim(&*self.kho, n);
                Err(e)
            }
        }
    }

    fn preserve_file(
        &self,
        s: &Arc<Session>,
        preserved: &[LuoFile],
        token: u64,
        file: Result<Arc<CoreFile>, Errno>,
    ) -> Result<LuoFile, Errno> {
        let file = file?;
        let handlers = lock(&self.reg).handlers.clone();
        let h = handlers
            .into_iter()
            .find(|h| h.can_preserve(&file))
            .ok_or(Errno::ENOENT)?;
        let id = h.get_id(&file);
        if !lock(&self.ids).insert(id) {
            return Err(Errno::EBUSY);
        }
        if let Err(e) = self.flb_file_preserve(&h) {
            lock(&self.ids).remove(&id);
            return Err(e);
        }
        if let Err(e) = self.global_state_file_get(h.ptr.0) {
            self.flb_file_unpreserve(&h);
            lock(&self.ids).remove(&id);
            return Err(e);
        }
        let mut a = h.args(s);
        a.file = CoreFile::as_c(&file);
        let index = crate::depend::outgoing_index(&h, preserved);
        let frame = crate::depend::Frame::new(s, &h, index);
        let c = crate::depend::in_frame(frame, || h.call(h.ops.0.preserve, &mut a));
        if c.overruled {
            h.call_void(h.ops.0.unpreserve, &mut a);
        }
        let deps = c.edges;
        if let Err(e) = c.r {
            self.global_state_file_put(h.ptr.0);
            self.flb_file_unpreserve(&h);
            lock(&self.ids).remove(&id);
            return Err(e);
        }
        Ok(LuoFile {
            token,
            handler: h,
            file: Some(file),
            data: a.serialized_data,
            private: Ptr(a.private_data),
            status: 0,
            id: Some(id),
            deps,
            retrieving: false,
        })
    }

    /// RETRIEVE_FD: returns the file to install (another reference on later calls).
    pub(crate) fn retrieve_fd(&self, s: &Arc<Session>, token: u64) -> Result<Arc<CoreFile>, Errno> {
        self.check_live()?;
        if !s.incoming {
            return Err(Errno::EINVAL);
        }
        if !lock(&s.st).retrieved {
            return Err(Errno::EINVAL);
        }
        let _own = s.own_retrieval();
        self.retrieve_file(s, token)
    }

    /// Retrieves the file under `token` once (later calls return it again), with the
    /// session's retrieval owned by this thread. The session lock is not held across the
    /// handler's retrieve, which may retrieve the file's dependencies
    /// (`liveupdate_get_file_incoming`); asking for a file whose retrieve is running is a
    /// cycle (`EDEADLK`).
    pub(crate) fn retrieve_file(
        &self,
        s: &Arc<Session>,
        token: u64,
    ) -> Result<Arc<CoreFile>, Errno> {
        let (mut a, h) = {
            let mut st = lock(&s.st);
            let f = st
                .files
                .iter_mut()
                .find(|f| f.token == token)
                .ok_or(Errno::ENOENT)?;
            if f.status < 0 {
                return Err(Errno::from_neg(f.status).unwrap_or(Errno::EIO));
            }
            if let Some(file) = &f.file {
                return Ok(Arc::clone(file));
            }
            if f.retrieving {
                return Err(Errno::EDEADLK);
            }
            f.retrieving = true;
            (f.args(s), Arc::clone(&f.handler))
        };
        let frame = crate::depend::Frame::new(s, &h, Arc::from([]));
        let c = crate::depend::in_frame(frame, || h.call(h.ops.0.retrieve, &mut a));
        if c.overruled {
            // SAFETY: the retrieve succeeded, so it handed over one reference to its file,
            // which is dropped here.
            drop(unsafe { CoreFile::from_c_owned(a.file.cast_const()) });
        }
        let (r, deps) = (c.r, c.edges);
        let mut st = lock(&s.st);
        // Still there: finishing the session needs its retrieval, which this thread owns.
        let f = st
            .files
            .iter_mut()
            .find(|f| f.token == token)
            .ok_or(Errno::EINVAL)?;
        f.retrieving = false;
        crate::depend::merge(&mut f.deps, deps);
        if let Err(e) = r {
            f.status = e.to_neg();
            return Err(e);
        }
        // SAFETY: a handler's retrieve hands over one reference to the file it returns.
        let Some(file) = (unsafe { CoreFile::from_c_owned(a.file.cast_const()) }) else {
            f.status = Errno::EINVAL.to_neg();
            return Err(Errno::EINVAL);
        };
        if let Some(m) = file.memfd() {
            m.settle()?;
        }
        f.status = 1;
        let id = f.handler.get_id(&file);
        if lock(&self.ids).insert(id) {
            f.id = Some(id);
        }
        f.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// FINISH: `can_finish` for every file, then `finish` from the last file to the first.
    pub(crate) fn finish(&self, s: &Session) -> Result<(), Errno> {
        self.check_live()?;
        if !s.incoming {
            return Err(Errno::EINVAL);
        }
        let _own = s.own_retrieval();
        let mut st = lock(&s.st);
        if !st.retrieved {
            return Err(Errno::EINVAL);
        }
        if st.files.is_empty() {
            return Ok(());
        }
        for f in &st.files {
            if let Some(cb) = f.handler.ops.0.can_finish {
                let mut a = f.args(s);
                // SAFETY: `a` is a valid, exclusive argument block for the call.
                if !unsafe { cb(&mut a) } {
                    return Err(Errno::EBUSY);
                }
            }
        }
        for f in crate::depend::take_in_release_order(&mut st.files, true) {
            let mut a = f.args(s);
            f.handler.call_void(f.handler.ops.0.finish, &mut a);
            self.flb_file_finish(&f.handler);
            self.global_state_file_put(f.handler.ptr.0);
            if let Some(id) = f.id {
                lock(&self.ids).remove(&id);
            }
        }
        for (b, order) in std::mem::take(&mut st.in_blocks) {
            let _ = self.kho.free_folio(PhysAddr::new(b), order);
        }
        drop(st);
        self.kho.release_idle_regions();
        self.maybe_finish_subsystems();
        Ok(())
    }

    /// Last close of a session fd: an outgoing session unpreserves its files (last to
    /// first) and goes away; a retrieved one is finished, and stays if that fails.
    pub(crate) fn release_session(&self, s: &Arc<Session>) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        if s.incoming {
            if self.finish(s).is_ok() {
                lock(&self.lists).inc.retain(|x| !Arc::ptr_eq(x, s));
            }
            return;
        }
        {
            let mut st = lock(&s.st);
            for f in crate::depend::take_in_release_order(&mut st.files, false) {
                let mut a = f.args(s);
                f.handler.call_void(f.handler.ops.0.unpreserve, &mut a);
                self.flb_file_unpreserve(&f.handler);
                self.global_state_file_put(f.handler.ptr.0);
                if let Some(id) = f.id {
                    lock(&self.ids).remove(&id);
                }
            }
            st.blocks.free_all(&*self.kho);
            if let Some(a) = st.flat.take() {
                let _ = self.kho.unpreserve_free(PhysAddr::new(a));
            }
        }
        let mut l = lock(&self.lists);
        l.out.retain(|x| !Arc::ptr_eq(x, s));
        l.names.remove(&s.name);
        let n = l.out.len() as u64;
        l.blocks.trim(&*self.kho, n);
    }

    /// Outgoing sessions, in creation order.
    pub fn outgoing(&self) -> Vec<Arc<Session>> {
        lock(&self.lists).out.clone()
    }

    /// Incoming sessions (after deserialization), in handover order.
    pub fn incoming(&self) -> Vec<Arc<Session>> {
        lock(&self.lists).inc.clone()
    }

    // ---- reboot ---------------------------------------------------------------------------

    /// `liveupdate_reboot()`: freezes every file (sessions in order, files FIFO) and writes
    /// the `luo-v5` state. A failing freeze is rolled back in upstream order and returned;
    /// `log` records every freeze/unfreeze call.
    pub(crate) fn serialize(&self, log: &mut FreezeLog) -> Result<(), Errno> {
        self.check_live()?;
        self.release_idle_global_states();

        let l = lock(&self.lists);
        let mut entries: Vec<luo_session_ser> = Vec::with_capacity(l.out.len());
        for (si, s) in l.out.iter().enumerate() {
            let r = {
                let mut st = lock(&s.st);
                self.freeze_session(s, &mut st, log)
            };
            match r {
                Ok((files, count)) => {
                    let mut e = luo_session_ser::new_zeroed();
                    e.name[..s.name.len()].copy_from_slice(&s.name);
                    e.file_set_ser = luo_file_set_ser {
                        files: luo_abi::Phys::new(PhysAddr::new(files)),
                        count,
                    };
                    entries.push(e);
                }
                Err(err) => {
                    for prev in l.out[..si].iter().rev() {
                        let st = lock(&prev.st);
                        for f in st.files.iter() {
                            Self::unfreeze(prev, f, log);
                        }
                    }
                    l.blocks.clear(&*self.kho);
                    return Err(err);
                }
            }
        }
        if let Err(err) = self.freeze_subsystems() {
            for s in l.out.iter().rev() {
                let st = lock(&s.st);
                for f in st.files.iter() {
                    Self::unfreeze(s, f, log);
                }
            }
            l.blocks.clear(&*self.kho);
            return Err(err);
        }
        let written = (|| {
            let head = if self.writes_fdt() {
                self.write_session_area(&entries)?
            } else {
                l.blocks.write(&*self.kho, entries.as_bytes())?
            };
            self.flb_serialize()?;
            self.write_ext()?;
            self.write_root(head)
        })();
        if let Err(err) = written {
            // An allocation after the freeze failed (6.19/7.0's session area, the
            // global-state page): roll back as for a failed freeze, so this kernel carries on
            // (found by `fault_sweep::kho_allocation_failure_at_every_site`).
            self.cancel_frozen_subsystems();
            for s in l.out.iter().rev() {
                let st = lock(&s.st);
                for f in st.files.iter() {
                    Self::unfreeze(s, f, log);
                }
            }
            l.blocks.clear(&*self.kho);
            return Err(err);
        }
        self.frozen.store(true, Ordering::Release);
        Ok(())
    }

    fn unfreeze(s: &Session, f: &LuoFile, log: &mut FreezeLog) {
        let mut a = f.args(s);
        log.push((lossy(&s.name), f.token, "unfreeze"));
        f.handler.call_void(f.handler.ops.0.unfreeze, &mut a);
    }

    fn freeze_session(
        &self,
        s: &Arc<Session>,
        st: &mut SessionSt,
        log: &mut FreezeLog,
    ) -> Result<(u64, u64), Errno> {
        // Built once, for the first file whose handler declares dependencies.
        let mut index = None;
        for i in 0..st.files.len() {
            let h = Arc::clone(&st.files[i].handler);
            let idx = if h.depends_on.is_empty() {
                Arc::from([])
            } else {
                Arc::clone(
                    index.get_or_insert_with(|| crate::depend::outgoing_index(&h, &st.files)),
                )
            };
            let f = &mut st.files[i];
            let mut a = f.args(s);
            log.push((lossy(&s.name), f.token, "freeze"));
            let frame = crate::depend::Frame::new(s, &h, idx);
            let c = crate::depend::in_frame(frame, || h.call(h.ops.0.freeze, &mut a));
            crate::depend::merge(&mut f.deps, c.edges);
            if c.overruled {
                Self::unfreeze(s, f, log);
            }
            match c.r {
                Ok(()) => f.data = a.serialized_data,
                Err(e) => {
                    for g in &st.files[..i] {
                        Self::unfreeze(s, g, log);
                    }
                    st.blocks.clear(&*self.kho);
                    return Err(e);
                }
            }
        }
        let entries: Vec<luo_file_ser> = st
            .files
            .iter()
            .map(|f| luo_file_ser {
                compatible: f.handler.compat_buf,
                data: f.data,
                token: f.token,
            })
            .collect();
        if self.writes_fdt() {
            // 6.19/7.0: one contiguous area of LUO_FILE_PGCNT pages per session.
            if entries.len() as u64 > v1::LUO_FILE_MAX {
                for g in st.files.iter() {
                    Self::unfreeze(s, g, log);
                }
                return Err(Errno::ENOSPC);
            }
            let area = match st.flat {
                Some(a) => Ok(a),
                None => self
                    .kho
                    .alloc_preserve(v1::LUO_FILE_PGCNT as usize * PAGE_SIZE)
                    .map(|p| p.as_u64()),
            };
            let written = area.and_then(|a| {
                st.flat = Some(a);
                self.kho
                    .write(PhysAddr::new(a), entries.as_bytes())
                    .map(|()| a)
            });
            return match written {
                Ok(a) => Ok((a, entries.len() as u64)),
                Err(e) => {
                    // This session's files are frozen already: unfreeze them, as for a failed
                    // freeze (found by `fault_sweep::kho_allocation_failure_at_every_site`).
                    for g in st.files.iter() {
                        Self::unfreeze(s, g, log);
                    }
                    Err(e)
                }
            };
        }
        let head = st.blocks.write(&*self.kho, entries.as_bytes())?;
        Ok((head, entries.len() as u64))
    }

    /// The file preserved (or retrieved) under `token` in `s`, if any.
    pub fn file_of(&self, s: &Session, token: u64) -> Option<Arc<CoreFile>> {
        lock(&s.st)
            .files
            .iter()
            .find(|f| f.token == token)
            .and_then(|f| f.file.clone())
    }
}
