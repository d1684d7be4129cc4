// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `dispatch`: the callbacks of one preserved file, called through the ops table luo-core
//! registered, as luo-core calls them.
//!
//! Two handlers of the same memfd-like file do the same work (`can_preserve`: is the file's
//! object ours; `preserve`: read its position, size and seals, check the seals, fill a
//! `struct memfd_luo_ser` and hand it over in memory from `kho_alloc_preserve`; `unpreserve`:
//! read the struct back, account for it, free the memory):
//!
//! * [`Variant::Generated`]: a [`FileHandler`] written with `#[liveupdate_handler]`, whose
//!   `liveupdate_file_ops` table calls the `luo_abi::handler::rt` runtime; registered with
//!   [`Registry::register_handler`] (the kernel owns the registration);
//! * [`Variant::HandRust`]: the same handler written by hand against the generated C table: a
//!   `#[repr(C)]` handler struct (the raw `liveupdate_file_handler` first, for
//!   `container_of`) with a hand-filled `liveupdate_file_ops` of `unsafe extern "C"` callbacks,
//!   using the same KHO service (the kernel's [`LuoHost::kho`]); registered with
//!   [`Kernel::register_raw_handler`], as a C handler is.
//!
//! Both run in one luo-core [`Kernel`] on the same file: a luo-core [`CoreFile`] (what a
//! `struct file *` is), a synthetic file whose object is a [`BenchFile`]. The caller is the
//! same for both and does what luo-core does with a registered handler between `PRESERVE_FD`
//! and the session's release: it takes the `struct liveupdate_file_handler *` the core
//! registered ([`luo_core::luo::Luo::handler_ptr`]), copies its ops table once (as the core
//! does at registration), and per file calls `can_preserve`, the `get_id` op or the file's
//! address when there is none, `preserve` with the argument block the core fills, then
//! `unpreserve` with the same block. So both variants pay the same core cost (the KHO
//! allocation and free of the record through luo-core's KHO) and the difference is the
//! macro's.

use std::ffi::c_int;
use std::hint::black_box;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use luo_abi::Errno;
use luo_abi::file::{File, FileHead, FileKind, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoExt;
use luo_abi::registry::Registry;
use luo_abi::{Phys, PhysAddr};
use luo_core::file::CoreFile;
use luo_core::{BackingKind, BootOptions, Kernel};
use luo_derive::liveupdate_handler;
use luo_generated::kho::kho_vmalloc;
use luo_generated::liveupdate::{
    file, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use luo_generated::memfd::v2::{MEMFD_LUO_ALL_SEALS, memfd_luo_ser};
use zerocopy::FromZeros;

/// Which handler a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `#[liveupdate_handler]` over the generated table, registered as a Rust handler.
    Generated,
    /// The same handler by hand: `#[repr(C)]` struct, hand-filled table, registered raw.
    HandRust,
    /// The same handler in C (`c/dispatch.c`, `gcc -O2`), registered raw (context).
    C,
}

impl Variant {
    /// Every variant, generated first.
    pub const ALL: [Variant; 3] = [Variant::Generated, Variant::HandRust, Variant::C];

    /// Short name (also the argument of the callgrind child).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Generated => "generated",
            Variant::HandRust => "hand_rust",
            Variant::C => "c",
        }
    }

    /// Parses [`Variant::name`].
    pub fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }

    /// The compatible string the variant registers.
    pub fn compatible(self) -> &'static str {
        match self {
            Variant::Generated => GEN_COMPATIBLE,
            Variant::HandRust => HAND_COMPATIBLE,
            Variant::C => C_COMPATIBLE,
        }
    }
}

const GEN_COMPATIBLE: &str = "bench-dispatch-gen-v2";
const HAND_COMPATIBLE: &str = "bench-dispatch-hand-v2";
const C_COMPATIBLE: &str = "bench-dispatch-c-v2";

// ---------------------------------------------------------------------------------------------
// The file.

/// The object behind the benchmark's file (a synthetic luo-core file): what both handlers
/// downcast the file's payload to.
pub struct BenchFile {
    /// File position.
    pub pos: u64,
    /// File size.
    pub size: u64,
    /// Seals.
    pub seals: u32,
}

/// Bytes of the files unpreserved so far (what `unpreserve` accounts, so that it reads the
/// record it is given); the C handler adds to it too.
#[unsafe(export_name = "luo_bench_unpreserved_bytes")]
pub static UNPRESERVED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The C handler's view of a bench file (the model's stand-in for the memfd's inode): 0 and
/// the position, size and seals through the non-NULL pointers, or `-EINVAL` for a file that
/// is not a bench file.
///
/// # Safety
///
/// `f` is NULL or a live luo-core file; the non-NULL pointers are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_bench_file_state(
    f: *mut file,
    pos: *mut u64,
    size: *mut u64,
    seals: *mut u32,
) -> c_int {
    // SAFETY: caller contract.
    let Some(b) = (unsafe { FileHead::borrow(f.cast()) }).and_then(bench_file) else {
        return EINVAL;
    };
    // SAFETY: caller contract: each pointer is NULL or valid for a write.
    unsafe {
        if !pos.is_null() {
            *pos = b.pos;
        }
        if !size.is_null() {
            *size = b.size;
        }
        if !seals.is_null() {
            *seals = b.seals;
        }
    }
    0
}

#[inline(always)]
fn bench_file(file: &dyn File) -> Option<&BenchFile> {
    file.payload()?.downcast_ref::<BenchFile>()
}

#[inline(always)]
fn ser_of(f: &BenchFile) -> luo_abi::Result<memfd_luo_ser> {
    if u64::from(f.seals) & !MEMFD_LUO_ALL_SEALS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(memfd_luo_ser {
        pos: f.pos,
        size: f.size,
        seals: f.seals,
        flags: 0,
        nr_folios: 0,
        folios: kho_vmalloc::new_zeroed(),
    })
}

#[inline(always)]
fn account_unpreserve(ser: &memfd_luo_ser) {
    UNPRESERVED_BYTES.fetch_add(ser.size, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Generated: the macros.

/// The memfd-like handler written with `#[liveupdate_handler]`.
#[liveupdate_handler(compatible = "bench-dispatch-gen-v2", abi = luo_generated::memfd::v2::memfd_luo_ser)]
pub struct GenMemfd;

#[liveupdate_handler]
impl FileHandler for GenMemfd {
    fn can_preserve(&self, file: &dyn File) -> bool {
        bench_file(file).is_some()
    }

    fn preserve(
        &self,
        _cx: &Ctx<'_, Self>,
        file: &dyn File,
    ) -> luo_abi::Result<(memfd_luo_ser, ())> {
        let f = bench_file(file).ok_or(Errno::EINVAL)?;
        Ok((ser_of(f)?, ()))
    }

    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, ser: memfd_luo_ser, _: ()) {
        account_unpreserve(&ser);
    }

    fn retrieve(&self, cx: &Ctx<'_, Self>, d: memfd_luo_ser) -> luo_abi::Result<FileRef> {
        cx.open_synthetic(
            FileKind::Other,
            "bench",
            Box::new(BenchFile {
                pos: d.pos,
                size: d.size,
                seals: d.seals,
            }),
        )
    }

    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
}

// ---------------------------------------------------------------------------------------------
// Hand-written Rust against the generated C table.

/// The same handler by hand: the raw struct first (the core's pointer is the handler's), then
/// what its callbacks need.
#[repr(C)]
pub struct HandMemfd {
    raw: liveupdate_file_handler,
    host: Arc<dyn LuoHost>,
}

const EBADF: c_int = Errno::EBADF.to_neg();
const EINVAL: c_int = Errno::EINVAL.to_neg();
const EOPNOTSUPP: c_int = Errno::EOPNOTSUPP.to_neg();

const HAND_OPS: liveupdate_file_ops = liveupdate_file_ops {
    can_preserve: Some(hand_can_preserve),
    preserve: Some(hand_preserve),
    unpreserve: Some(hand_unpreserve),
    freeze: None,
    unfreeze: None,
    retrieve: Some(hand_retrieve),
    can_finish: None,
    finish: Some(hand_finish),
    get_id: None,
    owner: ptr::null_mut(),
};

impl HandMemfd {
    /// The handler, run by `host` (its kernel's [`Registry::host`]).
    pub fn new(host: Arc<dyn LuoHost>) -> Box<HandMemfd> {
        Box::new(HandMemfd {
            raw: liveupdate_file_handler {
                ops: &HAND_OPS,
                compatible: luo_abi::abi::compat_bytes(HAND_COMPATIBLE),
                depends_on: ptr::null(),
            },
            host,
        })
    }

    /// The `struct liveupdate_file_handler *` to register.
    pub fn raw(&self) -> *mut liveupdate_file_handler {
        &self.raw as *const liveupdate_file_handler as *mut liveupdate_file_handler
    }
}

/// The arguments and the handler of a callback.
///
/// # Safety
///
/// `args` is the core's valid, exclusive argument block, whose handler is a live `HandMemfd`.
#[inline(always)]
unsafe fn hand<'a>(
    args: *mut liveupdate_file_op_args,
) -> (&'a mut liveupdate_file_op_args, &'a HandMemfd) {
    // SAFETY: caller contract; `raw` is the first field of the `#[repr(C)]` `HandMemfd`.
    unsafe {
        let a = &mut *args;
        let h = &*a.handler.cast::<HandMemfd>();
        (a, h)
    }
}

unsafe extern "C" fn hand_can_preserve(_h: *mut liveupdate_file_handler, f: *mut file) -> bool {
    // SAFETY: the core passes a live file (a `CoreFile`, whose head comes first).
    unsafe { FileHead::borrow(f.cast()) }.is_some_and(|f| bench_file(f).is_some())
}

unsafe extern "C" fn hand_preserve(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: the core's argument block for this handler.
    let (a, h) = unsafe { hand(args) };
    // SAFETY: the core passes a live file.
    let Some(file) = (unsafe { FileHead::borrow(a.file.cast()) }) else {
        return EBADF;
    };
    let Some(f) = bench_file(file) else {
        return EINVAL;
    };
    let ser = match ser_of(f) {
        Ok(s) => s,
        Err(e) => return e.to_neg(),
    };
    match h.host.kho().alloc_preserve_obj(&ser) {
        Ok(p) => {
            a.serialized_data = p.addr().as_u64();
            a.private_data = ptr::null_mut();
            0
        }
        Err(e) => e.to_neg(),
    }
}

unsafe extern "C" fn hand_unpreserve(args: *mut liveupdate_file_op_args) {
    // SAFETY: the core's argument block for this handler.
    let (a, h) = unsafe { hand(args) };
    if a.serialized_data == 0 {
        return;
    }
    let at = PhysAddr::new(a.serialized_data);
    let kho = h.host.kho();
    if let Ok(ser) = kho.read_obj(Phys::<memfd_luo_ser>::new(at)) {
        account_unpreserve(&ser);
    }
    let _ = kho.unpreserve_free(at);
}

unsafe extern "C" fn hand_retrieve(_args: *mut liveupdate_file_op_args) -> c_int {
    EOPNOTSUPP
}

unsafe extern "C" fn hand_finish(_args: *mut liveupdate_file_op_args) {}

// ---------------------------------------------------------------------------------------------
// C.

unsafe extern "C" {
    /// The C handler of `c/dispatch.c`.
    static mut luo_bench_c_handler: liveupdate_file_handler;
}

// ---------------------------------------------------------------------------------------------
// The caller.

/// A handler as the core holds it after registration: its pointer and a copy of its table.
#[derive(Clone, Copy)]
struct Registered {
    ptr: *mut liveupdate_file_handler,
    ops: liveupdate_file_ops,
}

/// A luo-core kernel with both handlers registered and the file they preserve.
pub struct Dispatch {
    // Dropped first: the kernel (which holds `hand`'s pointer and owns the generated
    // registration), then the file, then the hand-written handler.
    k: Kernel,
    file: Arc<CoreFile>,
    regs: [Registered; 3],
    _hand: Box<HandMemfd>,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch::new()
    }
}

impl Dispatch {
    /// Boots a kernel (no memfd handler), registers both handlers and opens the file.
    pub fn new() -> Dispatch {
        let opts = BootOptions {
            backing: BackingKind::Memfd,
            ..BootOptions::default()
        };
        let k = Kernel::boot(&opts, None).expect("boot");
        k.register_handler(Registration::new(GenMemfd, k.host(), ()))
            .expect("register the generated handler");
        let hand = HandMemfd::new(k.host());
        // SAFETY: `hand` lives in `Dispatch` after the kernel (dropped after it) and is never
        // changed.
        unsafe { k.register_raw_handler(hand.raw()) }.expect("register the hand-written handler");
        // SAFETY: the C handler is a static the C side never changes; only its address is
        // taken.
        unsafe { k.register_raw_handler(ptr::addr_of_mut!(luo_bench_c_handler)) }
            .expect("register the C handler");
        let fd = k
            .open_synthetic(
                FileKind::Other,
                "bench",
                Box::new(BenchFile {
                    pos: 4096,
                    size: 1 << 30,
                    seals: 0x5,
                }),
            )
            .expect("file");
        let file = k.file(fd).expect("file");
        let reg = |v: Variant| {
            let ptr = k.luo().handler_ptr(v.compatible()).expect("registered");
            // SAFETY: a registered handler's struct and ops table are valid while registered.
            let ops = unsafe { *(*ptr).ops };
            Registered { ptr, ops }
        };
        let regs = [
            reg(Variant::Generated),
            reg(Variant::HandRust),
            reg(Variant::C),
        ];
        Dispatch {
            k,
            file,
            regs,
            _hand: hand,
        }
    }

    /// The kernel.
    pub fn kernel(&self) -> &Kernel {
        &self.k
    }

    fn reg(&self, v: Variant) -> Registered {
        match v {
            Variant::Generated => self.regs[0],
            Variant::HandRust => self.regs[1],
            Variant::C => self.regs[2],
        }
    }

    /// One file's callbacks through `v`'s registered table (see [`dispatch_one`]); returns
    /// the `serialized_data` `preserve` gave (0 on error). Inputs through `black_box`.
    #[inline(always)]
    pub fn preserve_unpreserve(&self, v: Variant) -> u64 {
        // The C handler's KHO calls act on the thread's current kernel.
        let _g = self.k.enter();
        let r = self.reg(v);
        let f = CoreFile::as_c(&self.file);
        // SAFETY: `r` is registered in `self.k`, `f` a live file of it.
        unsafe { dispatch_one(black_box(r.ptr), black_box(&r.ops), black_box(f)) }
    }

    /// `n` files' callbacks through `v`; the sum of the handles (so nothing is optimised
    /// away).
    #[inline(never)]
    pub fn run(&self, v: Variant, n: u64) -> u64 {
        // The C handler's KHO calls act on the thread's current kernel.
        let _g = self.k.enter();
        let r = self.reg(v);
        let f = CoreFile::as_c(&self.file);
        let mut sum = 0u64;
        for _ in 0..n {
            // SAFETY: as in `preserve_unpreserve`.
            sum = sum.wrapping_add(unsafe {
                dispatch_one(black_box(r.ptr), black_box(&r.ops), black_box(f))
            });
        }
        sum
    }
}

/// What luo-core does with one file of a registered handler from `PRESERVE_FD` to the
/// session's release, reduced to the calls: `can_preserve`, the identity (`get_id`, or the
/// file's address without one), `preserve` with the argument block the core fills, and
/// `unpreserve` with the same block. Returns `serialized_data` (0 if a call failed).
///
/// # Safety
///
/// `h` is a registered handler, `ops` the copy of its table, `f` a live luo-core file.
#[inline(always)]
pub unsafe fn dispatch_one(
    h: *mut liveupdate_file_handler,
    ops: &liveupdate_file_ops,
    f: *mut file,
) -> u64 {
    // Each call below is a registered handler's op called as the core calls it: with the
    // handler's own struct, a live file and a valid, exclusive argument block.
    let Some(can) = ops.can_preserve else {
        return 0;
    };
    // SAFETY: `h` is registered and `f` live (the caller's contract).
    if !unsafe { can(h, f) } {
        return 0;
    }
    #[allow(clippy::useless_conversion)]
    let id = match ops.get_id {
        // SAFETY: `f` is a live file (the caller's contract).
        Some(g) => u64::from(unsafe { g(f) }),
        None => f as u64,
    };
    black_box(id);
    let mut a = liveupdate_file_op_args {
        handler: h,
        retrieve_status: 0,
        file: f,
        serialized_data: 0,
        private_data: ptr::null_mut(),
        session: ptr::null_mut(),
    };
    let r = match ops.preserve {
        // SAFETY: `a` is a valid argument block for `h` and `f`, borrowed exclusively.
        Some(op) => unsafe { op(&mut a) },
        None => EOPNOTSUPP,
    };
    if r != 0 {
        return 0;
    }
    if let Some(op) = ops.unpreserve {
        // SAFETY: the block `preserve` filled, for the same handler and file.
        unsafe { op(&mut a) };
    }
    a.serialized_data
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn every_variant_writes_the_same_struct_through_the_core() {
        let d = Dispatch::new();
        let _g = d.kernel().enter();
        let before = d.kernel().stats().kho;
        let mut seen = Vec::new();
        for v in Variant::ALL {
            assert_eq!(Variant::parse(v.name()), Some(v));
            let r = d.reg(v);
            let f = CoreFile::as_c(&d.file);
            // SAFETY: `r` is registered, `f` live.
            assert!(unsafe { r.ops.can_preserve.unwrap()(r.ptr, f) }, "{v:?}");
            let mut a = liveupdate_file_op_args {
                handler: r.ptr,
                retrieve_status: 0,
                file: f,
                serialized_data: 0,
                private_data: ptr::null_mut(),
                session: ptr::null_mut(),
            };
            // SAFETY: as above.
            assert_eq!(unsafe { r.ops.preserve.unwrap()(&mut a) }, 0, "{v:?}");
            let ser: memfd_luo_ser = d
                .kernel()
                .kho()
                .read_obj(Phys::new(PhysAddr::new(a.serialized_data)))
                .unwrap();
            seen.push(ser);
            let bytes = UNPRESERVED_BYTES.load(Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { r.ops.unpreserve.unwrap()(&mut a) };
            assert!(UNPRESERVED_BYTES.load(Ordering::Relaxed) >= bytes + (1 << 30));
            assert_ne!(d.preserve_unpreserve(v), 0, "{v:?}");
            assert_ne!(d.run(v, 3), 0, "{v:?}");
        }
        assert_eq!(seen[0].as_bytes(), seen[1].as_bytes());
        assert_eq!(seen[0].as_bytes(), seen[2].as_bytes());
        assert_eq!(
            (seen[0].pos, seen[0].size, seen[0].seals, seen[0].flags),
            (4096, 1 << 30, 5, 0)
        );
        // Every record was freed again.
        let after = d.kernel().stats().kho;
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
    }
}
