// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `macro_compile`: compile time of a crate with 50 handlers written with
//! `#[liveupdate_handler]` against the same 50 handlers written by hand (a `#[repr(C)]`
//! handler struct, a hand-filled `liveupdate_file_ops` table and `unsafe extern "C"`
//! callbacks doing what the runtime does: write the struct to KHO memory on preserve, free it
//! on unpreserve, read and check it on retrieve, free it on finish).
//!
//! [`write_workspace`] writes both crates into a scratch workspace whose dependencies are
//! this repository's `luo-abi`, `luo-derive` and `luo-generated` (by path) with this
//! repository's `Cargo.lock`; [`time_builds`] builds the dependencies once, then times
//! `cargo build --offline -p <crate>` of each crate in alternation after touching its source,
//! with incremental compilation off so each build compiles the whole crate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

/// Handlers per crate.
pub const HANDLERS: usize = 50;

/// The crate with generated handlers.
pub const GEN_CRATE: &str = "luo-bench-gen50";
/// The crate with hand-written handlers.
pub const HAND_CRATE: &str = "luo-bench-hand50";

const PRELUDE: &str = r#"#![allow(missing_docs, dead_code, non_camel_case_types)]
use std::sync::Arc;

use luo_abi::file::{File, FileId, FileKind, FileRef};
use luo_abi::Errno;
use luo_generated::kho::kho_vmalloc;
use luo_generated::memfd::v2::{memfd_luo_ser, MEMFD_LUO_ALL_SEALS};
use zerocopy::FromZeros;

pub struct BenchFile {
    pub pos: u64,
    pub size: u64,
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

fn ser_of(f: &BenchFile, i: u64) -> luo_abi::Result<memfd_luo_ser> {
    if u64::from(f.seals) & !MEMFD_LUO_ALL_SEALS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(memfd_luo_ser {
        pos: f.pos + i,
        size: f.size,
        seals: f.seals,
        flags: 0,
        nr_folios: 0,
        folios: kho_vmalloc::new_zeroed(),
    })
}

fn file_of(d: &memfd_luo_ser) -> FileRef {
    Arc::new(BenchFile { pos: d.pos, size: d.size, seals: d.seals })
}
"#;

/// The source of the crate with `n` generated handlers.
pub fn gen_source(n: usize) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(
        "use luo_abi::handler::{Ctx, FileHandler, Finish, RetrieveStatus};\nuse luo_derive::liveupdate_handler;\n",
    );
    for i in 0..n {
        let _ = write!(
            s,
            r#"
#[liveupdate_handler(compatible = "bench-{i}-v2", abi = luo_generated::memfd::v2::memfd_luo_ser)]
pub struct Handler{i};

#[liveupdate_handler]
impl FileHandler for Handler{i} {{
    fn can_preserve(&self, file: &dyn File) -> bool {{
        file.kind() == FileKind::Memfd
    }}
    fn preserve(&self, _cx: &Ctx<'_, Self>, file: &dyn File) -> luo_abi::Result<(memfd_luo_ser, ())> {{
        let f = file.downcast_ref::<BenchFile>().ok_or(Errno::EINVAL)?;
        Ok((ser_of(f, {i})?, ()))
    }}
    fn unpreserve(&self, _: &Ctx<'_, Self>, _: &dyn File, _: memfd_luo_ser, _: ()) {{}}
    fn retrieve(&self, _: &Ctx<'_, Self>, d: memfd_luo_ser) -> luo_abi::Result<FileRef> {{
        Ok(file_of(&d))
    }}
    fn finish(&self, _: &Ctx<'_, Self>, _: Finish<'_, memfd_luo_ser>) {{}}
}}
"#
        );
    }
    s
}

/// The source of the crate with the same `n` handlers written by hand.
pub fn hand_source(n: usize) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(
        r#"use std::ffi::c_int;
use std::ptr;

use luo_abi::abi::AbiType;
use luo_abi::host::LuoHost;
use luo_abi::kho::KhoExt;
use luo_abi::{Phys, PhysAddr};
use luo_generated::liveupdate::{file, liveupdate_file_handler, liveupdate_file_op_args, liveupdate_file_ops};

/// The raw struct first: the core's pointer is the handler's.
#[repr(C)]
pub struct HandHandler {
    raw: liveupdate_file_handler,
    host: Arc<dyn LuoHost>,
}

impl HandHandler {
    pub fn raw(&self) -> *mut liveupdate_file_handler {
        &self.raw as *const liveupdate_file_handler as *mut liveupdate_file_handler
    }
}

unsafe fn handler<'a>(a: *mut liveupdate_file_op_args) -> (&'a mut liveupdate_file_op_args, &'a HandHandler) {
    // SAFETY: the core passes valid arguments whose handler is a `HandHandler`.
    unsafe {
        let a = &mut *a;
        let h = &*a.handler.cast::<HandHandler>();
        (a, h)
    }
}
"#,
    );
    for i in 0..n {
        let _ = write!(
            s,
            r#"
pub mod handler{i} {{
    use super::*;

    const OPS: liveupdate_file_ops = liveupdate_file_ops {{
        can_preserve: Some(can_preserve),
        preserve: Some(preserve),
        unpreserve: Some(unpreserve),
        freeze: None,
        unfreeze: None,
        retrieve: Some(retrieve),
        can_finish: None,
        finish: Some(finish),
        get_id: None,
        owner: ptr::null_mut(),
    }};

    pub fn new(host: Arc<dyn LuoHost>) -> Box<HandHandler> {{
        Box::new(HandHandler {{
            raw: liveupdate_file_handler {{
                ops: &OPS,
                compatible: luo_abi::abi::compat_bytes("bench-{i}-v2"),
                depends_on: ptr::null(),
            }},
            host,
        }})
    }}

    unsafe extern "C" fn can_preserve(_h: *mut liveupdate_file_handler, f: *mut file) -> bool {{
        // SAFETY: the core passes a live file.
        unsafe {{ luo_abi::file::FileHead::borrow(f.cast()) }}.is_some_and(|f| f.kind() == FileKind::Memfd)
    }}

    unsafe extern "C" fn preserve(args: *mut liveupdate_file_op_args) -> c_int {{
        // SAFETY: core contract.
        let (a, h) = unsafe {{ handler(args) }};
        // SAFETY: the core passes a live file.
        let Some(file) = (unsafe {{ luo_abi::file::FileHead::borrow(a.file.cast()) }}) else {{
            return Errno::EBADF.to_neg();
        }};
        let Some(f) = file.downcast_ref::<BenchFile>() else {{
            return Errno::EINVAL.to_neg();
        }};
        let ser = match ser_of(f, {i}) {{
            Ok(s) => s,
            Err(e) => return e.to_neg(),
        }};
        match h.host.kho().alloc_preserve_obj(&ser) {{
            Ok(p) => {{
                a.serialized_data = p.addr().as_u64();
                a.private_data = ptr::null_mut();
                0
            }}
            Err(e) => e.to_neg(),
        }}
    }}

    unsafe extern "C" fn unpreserve(args: *mut liveupdate_file_op_args) {{
        // SAFETY: core contract.
        let (a, h) = unsafe {{ handler(args) }};
        let _ = h.host.kho().unpreserve_free(PhysAddr::new(a.serialized_data));
    }}

    unsafe extern "C" fn retrieve(args: *mut liveupdate_file_op_args) -> c_int {{
        // SAFETY: core contract.
        let (a, h) = unsafe {{ handler(args) }};
        if a.serialized_data == 0 {{
            return Errno::EINVAL.to_neg();
        }}
        let ser = match h.host.kho().read_obj(Phys::<memfd_luo_ser>::new(PhysAddr::new(a.serialized_data))) {{
            Ok(s) => s,
            Err(e) => return e.to_neg(),
        }};
        if ser.check_reserved().is_err() {{
            return Errno::EINVAL.to_neg();
        }}
        match h.host.file_into_raw(file_of(&ser)) {{
            Ok(f) => {{
                a.file = f.cast();
                0
            }}
            Err(e) => e.to_neg(),
        }}
    }}

    unsafe extern "C" fn finish(args: *mut liveupdate_file_op_args) {{
        // SAFETY: core contract.
        let (a, h) = unsafe {{ handler(args) }};
        if a.serialized_data != 0 {{
            let _ = h.host.kho().restore_free(PhysAddr::new(a.serialized_data));
        }}
    }}
}}
"#
        );
    }
    s
}

fn manifest(name: &str, root: &Path) -> String {
    let dep = |c: &str| root.join(c).display().to_string();
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
path = "src/lib.rs"

[dependencies]
luo-abi = {{ path = "{abi}", features = ["std"] }}
luo-derive = {{ path = "{derive}" }}
luo-generated = {{ path = "{generated}" }}
zerocopy = {{ version = "0.8", features = ["derive"] }}
"#,
        abi = dep("luo-abi"),
        derive = dep("luo-derive"),
        generated = dep("generated"),
    )
}

/// Writes the scratch workspace with both crates under `dir`; `repo` is this repository.
pub fn write_workspace(dir: &Path, repo: &Path, n: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[workspace]\nresolver = \"3\"\nmembers = [\"{GEN_CRATE}\", \"{HAND_CRATE}\"]\n"),
    )?;
    if let Ok(lock) = std::fs::read(repo.join("Cargo.lock")) {
        std::fs::write(dir.join("Cargo.lock"), lock)?;
    }
    for (name, src) in [(GEN_CRATE, gen_source(n)), (HAND_CRATE, hand_source(n))] {
        let c = dir.join(name);
        std::fs::create_dir_all(c.join("src"))?;
        std::fs::write(c.join("Cargo.toml"), manifest(name, repo))?;
        std::fs::write(c.join("src/lib.rs"), src)?;
    }
    Ok(())
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Result<f64, String> {
    let t = Instant::now();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_INCREMENTAL", "0")
        .env_remove("RUSTFLAGS")
        .args(args)
        .output()
        .map_err(|e| format!("cargo: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(format!(
            "cargo {} failed:\n{}",
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(secs)
}

/// Build times of the two crates.
#[derive(Clone, Debug)]
pub struct CompileTimes {
    /// Seconds per build of the generated crate, one per round.
    pub generated: Vec<f64>,
    /// Seconds per build of the hand-written crate, one per round.
    pub hand: Vec<f64>,
    /// Lines of the two sources (generated, hand-written).
    pub lines: (usize, usize),
}

/// Writes the workspace under `dir`, builds its dependencies, then times `rounds` debug
/// builds of each crate in alternation.
pub fn time_builds(dir: &Path, repo: &Path, rounds: usize) -> Result<CompileTimes, String> {
    write_workspace(dir, repo, HANDLERS).map_err(|e| format!("writing {}: {e}", dir.display()))?;
    let target = dir.join("target");
    // Dependencies and a first build of each crate (also proves both compile).
    cargo(dir, &target, &["build", "--offline", "--workspace", "-q"])?;
    let mut t = CompileTimes {
        generated: Vec::new(),
        hand: Vec::new(),
        lines: (
            gen_source(HANDLERS).lines().count(),
            hand_source(HANDLERS).lines().count(),
        ),
    };
    for _ in 0..rounds {
        for (name, out) in [(GEN_CRATE, &mut t.generated), (HAND_CRATE, &mut t.hand)] {
            touch(&dir.join(name).join("src/lib.rs"))?;
            out.push(cargo(
                dir,
                &target,
                &["build", "--offline", "-q", "-p", name],
            )?);
        }
    }
    Ok(t)
}

fn touch(p: &Path) -> Result<(), String> {
    std::fs::File::options()
        .append(true)
        .open(p)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(|e| format!("touch {}: {e}", p.display()))
}

/// The scratch directory (under the target directory, so `cargo clean` removes it).
pub fn scratch_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("luo-bench-macro-compile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_have_one_handler_each() {
        let g = gen_source(3);
        let h = hand_source(3);
        assert_eq!(g.matches("#[liveupdate_handler(").count(), 3);
        assert_eq!(h.matches("pub mod handler").count(), 3);
        assert!(h.contains("bench-2-v2") && g.contains("bench-2-v2"));
    }
}
