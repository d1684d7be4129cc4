//! `dispatch`: one `preserve` call through an ops table, as the core makes it.
//!
//! Three handlers do the same work (read the file's position, size and seals, check the
//! seals, fill a `struct memfd_luo_ser`, copy it into memory from `kho_alloc_preserve` and
//! hand its address over as `serialized_data`):
//!
//! * [`Variant::Generated`]: a [`FileHandler`] whose `liveupdate_file_ops` table
//!   `#[liveupdate_handler]` fills with trampolines into `luo_abi::handler::rt`;
//! * [`Variant::HandRust`]: the same handler written by hand in Rust, a `#[repr(C)]` handler
//!   struct (the raw `liveupdate_file_handler` first, for `container_of`) with a hand-filled
//!   table of `unsafe extern "C"` functions, using the same KHO service;
//! * [`Variant::C`]: `c/dispatch.c`, built with `gcc -O2` against the generated
//!   `<linux/liveupdate.h>`, whose KHO is the same ring reached through two C functions.
//!
//! The caller is the same for all three: it takes the handler pointer and the file pointer
//! through `black_box`, builds `liveupdate_file_op_args` and calls `handler->ops->preserve`.

use std::ffi::{c_int, c_void};
use std::hint::black_box;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use luo_abi::Errno;
use luo_abi::file::FileCell;
use luo_abi::file::{File, FileId, FileKind, FileRef};
use luo_abi::handler::{Ctx, FileHandler, Finish, Registration};
use luo_abi::host::LuoHost;
use luo_abi::kho::{KhoExt, KhoService};
use luo_derive::liveupdate_handler;
use luo_generated::kho::kho_vmalloc;
use luo_generated::liveupdate::{
    file, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops,
};
use luo_generated::memfd::v2::{MEMFD_LUO_ALL_SEALS, memfd_luo_ser};
use zerocopy::FromZeros;

use crate::ring::{RingKho, WORDS};

/// Which handler a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `#[liveupdate_handler]` over the generated table.
    Generated,
    /// Hand-written Rust `#[repr(C)]` handler and table.
    HandRust,
    /// The C handler (`gcc -O2`).
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
}

// ---------------------------------------------------------------------------------------------
// The KHO memory every variant preserves into.

static RING: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];

/// The one ring of preserved memory of this benchmark (shared by the three handlers).
pub static KHO: RingKho = RingKho::over(&RING);

/// `kho_alloc_preserve` for the C handler: the address, 0 on failure.
#[unsafe(no_mangle)]
pub extern "C" fn luo_bench_kho_alloc_preserve(size: usize) -> u64 {
    KHO.alloc_raw(size)
}

/// Copies `len` bytes from `buf` to `phys`; 0 or `-EFAULT`.
///
/// # Safety
///
/// `buf` is valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn luo_bench_kho_write(phys: u64, buf: *const c_void, len: usize) -> c_int {
    // SAFETY: caller contract.
    let b = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    luo_abi::errno::to_neg(KHO.write_raw(phys, b))
}

/// `kho_unpreserve_free` for the C handler.
#[unsafe(no_mangle)]
pub extern "C" fn luo_bench_kho_unpreserve_free(phys: u64) -> c_int {
    luo_abi::errno::to_neg(KHO.unpreserve_free(luo_abi::PhysAddr::new(phys)))
}

/// The host the Rust handlers are registered with: only KHO.
pub struct BenchHost {
    kho: &'static RingKho,
}

impl LuoHost for BenchHost {
    fn file_into_raw(
        &self,
        file: luo_abi::file::FileRef,
    ) -> luo_abi::Result<*mut core::ffi::c_void> {
        Ok(luo_abi::file::FileCell::into_raw(file))
    }

    fn kho(&self) -> &dyn KhoService {
        self.kho
    }
}

/// A host over [`KHO`].
pub fn host() -> Arc<dyn LuoHost> {
    Arc::new(BenchHost { kho: &KHO })
}

// ---------------------------------------------------------------------------------------------
// The file.

/// A memfd-like file: what the Rust handlers downcast `&dyn File` to.
pub struct BenchFile {
    /// File position.
    pub pos: u64,
    /// File size.
    pub size: u64,
    /// Seals.
    pub seals: u32,
}

impl File for BenchFile {
    fn kind(&self) -> FileKind {
        FileKind::Memfd
    }
    fn id(&self) -> FileId {
        FileId(self.pos)
    }
}

/// What the C handler's `struct file *` points to (`struct luo_bench_c_file`).
#[repr(C)]
pub struct CFile {
    /// File position.
    pub pos: u64,
    /// File size.
    pub size: u64,
    /// Seals.
    pub seals: u32,
}

#[inline(always)]
fn ser_of(pos: u64, size: u64, seals: u32) -> luo_abi::Result<memfd_luo_ser> {
    if u64::from(seals) & !MEMFD_LUO_ALL_SEALS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(memfd_luo_ser {
        pos,
        size,
        seals,
        flags: 0,
        nr_folios: 0,
        folios: kho_vmalloc::new_zeroed(),
    })
}

// ---------------------------------------------------------------------------------------------
// Generated: the macros.

/// The memfd-like handler written with `#[liveupdate_handler]`.
#[liveupdate_handler(compatible = "memfd-v2", abi = luo_generated::memfd::v2::memfd_luo_ser)]
pub struct GenMemfd;

#[liveupdate_handler]
impl FileHandler for GenMemfd {
    fn can_preserve(&self, file: &dyn File) -> bool {
        file.kind() == FileKind::Memfd
    }

    fn preserve(
        &self,
        _cx: &Ctx<'_, Self>,
        file: &dyn File,
    ) -> luo_abi::Result<(memfd_luo_ser, ())> {
        let f = file.downcast_ref::<BenchFile>().ok_or(Errno::EINVAL)?;
        Ok((ser_of(f.pos, f.size, f.seals)?, ()))
    }

    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {}

    fn retrieve(&self, _: &Ctx<'_, Self>, d: memfd_luo_ser) -> luo_abi::Result<FileRef> {
        Ok(Arc::new(BenchFile {
            pos: d.pos,
            size: d.size,
            seals: d.seals,
        }))
    }

    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {}
}

// ---------------------------------------------------------------------------------------------
// Hand-written Rust.

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

const HAND_RAW: liveupdate_file_handler = liveupdate_file_handler {
    ops: &HAND_OPS,
    compatible: luo_abi::abi::compat_bytes("memfd-v2"),
    depends_on: ptr::null(),
};

impl HandMemfd {
    /// The handler, run by `host`.
    pub fn new(host: Arc<dyn LuoHost>) -> Box<HandMemfd> {
        Box::new(HandMemfd {
            raw: HAND_RAW,
            host,
        })
    }

    /// The `struct liveupdate_file_handler *` to register.
    pub fn raw(&self) -> *mut liveupdate_file_handler {
        &self.raw as *const liveupdate_file_handler as *mut liveupdate_file_handler
    }
}

unsafe extern "C" fn hand_can_preserve(_h: *mut liveupdate_file_handler, f: *mut file) -> bool {
    // SAFETY: the core passes a live file cell.
    unsafe { luo_abi::file::FileHead::borrow(f.cast()) }
        .is_some_and(|f| f.kind() == FileKind::Memfd)
}

unsafe extern "C" fn hand_preserve(args: *mut liveupdate_file_op_args) -> c_int {
    // SAFETY: the core passes valid arguments whose handler is a `HandMemfd` (raw first).
    let a = unsafe { &mut *args };
    // SAFETY: as above.
    let h = unsafe { &*a.handler.cast::<HandMemfd>() };
    // SAFETY: the core passes a live file cell.
    let Some(file) = (unsafe { luo_abi::file::FileHead::borrow(a.file.cast()) }) else {
        return EBADF;
    };
    let Some(f) = file.downcast_ref::<BenchFile>() else {
        return EINVAL;
    };
    let ser = match ser_of(f.pos, f.size, f.seals) {
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
    // SAFETY: as in `hand_preserve`.
    let a = unsafe { &mut *args };
    // SAFETY: as above.
    let h = unsafe { &*a.handler.cast::<HandMemfd>() };
    let _ = h
        .host
        .kho()
        .unpreserve_free(luo_abi::PhysAddr::new(a.serialized_data));
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

/// Everything the three calls need, built once.
pub struct Dispatch {
    reg: Registration<GenMemfd>,
    hand: Box<HandMemfd>,
    rust_file: *mut c_void,
    c_file: Box<CFile>,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch::new()
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        // SAFETY: made by `FileCell::into_raw` in `new`, not used afterwards.
        unsafe { FileCell::drop_raw(self.rust_file) };
    }
}

impl Dispatch {
    /// Registers nothing (the caller is the core): builds the three handlers and a file.
    pub fn new() -> Dispatch {
        let host = host();
        Dispatch {
            reg: Registration::new(GenMemfd, host.clone(), ()),
            hand: HandMemfd::new(host),
            rust_file: FileCell::into_raw(Arc::new(BenchFile {
                pos: 4096,
                size: 1 << 30,
                seals: 0x5,
            })),
            c_file: Box::new(CFile {
                pos: 4096,
                size: 1 << 30,
                seals: 0x5,
            }),
        }
    }

    /// The handler and file pointers of `v`.
    pub fn target(&self, v: Variant) -> (*mut liveupdate_file_handler, *mut file) {
        match v {
            Variant::Generated => (self.reg.raw(), self.rust_file.cast()),
            Variant::HandRust => (self.hand.raw(), self.rust_file.cast()),
            Variant::C => (
                // Only its address is taken; the C side never changes it.
                ptr::addr_of_mut!(luo_bench_c_handler),
                (&*self.c_file as *const CFile as *mut CFile).cast(),
            ),
        }
    }

    /// One `preserve` through `handler->ops`, inputs through `black_box`; returns
    /// `serialized_data` (0 on error).
    #[inline(always)]
    pub fn preserve(&self, v: Variant) -> u64 {
        let (h, f) = self.target(v);
        // SAFETY: `h` is one of the three live handlers, `f` the file its variant expects.
        unsafe { call_preserve(black_box(h), black_box(f)) }
    }

    /// `n` calls of `v`; the sum of the handles (so nothing is optimised away).
    #[inline(never)]
    pub fn run(&self, v: Variant, n: u64) -> u64 {
        let (h, f) = self.target(v);
        let mut sum = 0u64;
        for _ in 0..n {
            // SAFETY: as in `preserve`.
            sum = sum.wrapping_add(unsafe { call_preserve(black_box(h), black_box(f)) });
        }
        sum
    }
}

/// What the core does at PRESERVE_FD, reduced to the call: fill the arguments and call
/// `handler->ops->preserve`.
///
/// # Safety
///
/// `h` is a live handler whose ops table is `'static`, `f` a file its handler accepts.
#[inline(always)]
pub unsafe fn call_preserve(h: *mut liveupdate_file_handler, f: *mut file) -> u64 {
    let mut a = liveupdate_file_op_args {
        handler: h,
        retrieve_status: 0,
        file: f,
        serialized_data: 0,
        private_data: ptr::null_mut(),
        session: ptr::null_mut(),
    };
    // SAFETY: caller contract.
    let op = unsafe { (*(*h).ops).preserve };
    let r = match op {
        // SAFETY: calling the op as C would.
        Some(op) => unsafe { op(&mut a) },
        None => EOPNOTSUPP,
    };
    if r == 0 { a.serialized_data } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_writes_the_same_struct() {
        let d = Dispatch::new();
        let mut seen = Vec::new();
        for v in Variant::ALL {
            let phys = d.preserve(v);
            assert_ne!(phys, 0, "{v:?}");
            let mut b = [0u8; 48];
            KHO.read_raw(phys, &mut b).unwrap();
            seen.push(b);
            assert_eq!(Variant::parse(v.name()), Some(v));
        }
        assert!(seen.iter().all(|b| *b == seen[0]));
        let ser: memfd_luo_ser = zerocopy::transmute!(seen[0]);
        assert_eq!(
            (ser.pos, ser.size, ser.seals, ser.flags),
            (4096, 1 << 30, 5, 0)
        );
        assert_ne!(d.run(Variant::C, 3), 0);
    }
}
