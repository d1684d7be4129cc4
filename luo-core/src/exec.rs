// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Kexec across processes: the handover's memory is host memfds, inherited through `execve`.
//!
//! The old kernel clears `FD_CLOEXEC` on the arena's memfd and on every region memfd, and
//! describes them in the environment variable [`HANDOVER_ENV`]:
//!
//! ```text
//! luo-handover-v1 arena=FD:BYTES blob=PHYS region=BASE:FD region=BASE:FD ...
//! ```
//!
//! The next binary (possibly another build) calls [`Handover::from_env`] and boots from it.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use luo_abi::Errno;
use rustix::io::FdFlags;

use crate::error::ImageError;
use crate::kernel::Handover;
use crate::kho::MemHandover;
use crate::mem::{BackingKind, ExtRegion, MmapBacking, REGION_BASE, REGION_SPAN, host_err};

/// The environment variable carrying the handover descriptor.
pub const HANDOVER_ENV: &str = "LUO_MODEL_HANDOVER";

/// Set when a kexec asks a program, before anything is frozen, whether it boots from a
/// handover ([`probe`]); such a program answers with [`PROBE_ANSWER`] and exits
/// ([`answer_probe`]).
pub const PROBE_ENV: &str = "LUO_MODEL_HANDOVER_PROBE";

/// The line a program that boots from handovers prints when probed.
pub const PROBE_ANSWER: &str = "luo-handover-v1: boots from a handover";

/// How long [`probe`] waits for the answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

const MAGIC: &str = "luo-handover-v1";

static TAKEN: AtomicBool = AtomicBool::new(false);

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::Descriptor(msg.into())
}

impl Handover {
    /// Clears `FD_CLOEXEC` on every fd of the handover and returns its descriptor.
    /// `EINVAL` for a heap-backed arena, which cannot cross `execve`.
    pub fn prepare_exec(&self) -> Result<String, Errno> {
        let arena = self.mem.arena.fd().ok_or(Errno::EINVAL)?;
        rustix::io::fcntl_setfd(arena, FdFlags::empty()).map_err(host_err)?;
        let mut d = format!(
            "{MAGIC} arena={}:{} blob={:#x}",
            arena.as_raw_fd(),
            self.mem.arena.len(),
            self.mem.blob
        );
        for r in &self.mem.regions {
            rustix::io::fcntl_setfd(r.fd(), FdFlags::empty()).map_err(host_err)?;
            d.push_str(&format!(" region={:#x}:{}", r.base(), r.fd().as_raw_fd()));
        }
        Ok(d)
    }

    /// `execve`s `program` with `args`, handing this handover over. Returns only on failure.
    pub fn exec(self, program: &Path, args: &[OsString], env: &[(String, String)]) -> Errno {
        self.exec_ref(program, args, env)
    }

    /// As [`Handover::exec`], but a failed `execve` hands the handover back, so the caller can
    /// still boot from it in this process (the luo-sim daemon must survive a failed kexec).
    pub fn try_exec(
        self,
        program: &Path,
        args: &[OsString],
        env: &[(String, String)],
    ) -> (Errno, Handover) {
        let e = self.exec_ref(program, args, env);
        (e, self)
    }

    fn exec_ref(&self, program: &Path, args: &[OsString], env: &[(String, String)]) -> Errno {
        let desc = match self.prepare_exec() {
            Ok(d) => d,
            Err(e) => return e,
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).env(HANDOVER_ENV, desc);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let err = cmd.exec();
        err.raw_os_error()
            .and_then(Errno::from_raw)
            .unwrap_or(Errno::EIO)
    }

    /// The handover this process was `execve`d with, if [`HANDOVER_ENV`] is set. Takes
    /// ownership of the inherited fds, so it succeeds at most once per process.
    pub fn from_env() -> Result<Option<Handover>, ImageError> {
        let Some(desc) = std::env::var_os(HANDOVER_ENV) else {
            return Ok(None);
        };
        let desc = desc
            .into_string()
            .map_err(|_| bad("descriptor is not UTF-8"))?;
        Handover::from_descriptor(&desc).map(Some)
    }

    /// Parses a descriptor and takes ownership of the fds it names (once per process).
    pub fn from_descriptor(desc: &str) -> Result<Handover, ImageError> {
        let parsed = parse(desc)?;
        // Validate every fd before taking any.
        for &fd in std::iter::once(&parsed.arena_fd).chain(parsed.regions.iter().map(|(_, f)| f)) {
            let st = rustix::fs::fstat(
                // SAFETY: only used for this call; `fd` is checked to be open by `fstat` itself
                // failing with EBADF otherwise.
                unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) },
            )
            .map_err(|e| bad(format!("fd {fd}: {e}")))?;
            if st.st_mode & 0o170000 != 0o100000 {
                return Err(bad(format!("fd {fd} is not a memfd")));
            }
        }
        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(bad("the handover was already taken"));
        }
        // SAFETY: the fds were inherited for exactly this purpose, are open (checked above),
        // appear once each in the descriptor (checked by `parse`), and nothing else in this
        // process owns them: `TAKEN` makes this the only place that wraps them.
        let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let arena_fd = own(parsed.arena_fd);
        let regions: Vec<(u64, OwnedFd)> =
            parsed.regions.iter().map(|&(b, fd)| (b, own(fd))).collect();
        // Set CLOEXEC again so they do not leak into unrelated children.
        let _ = rustix::io::fcntl_setfd(&arena_fd, FdFlags::CLOEXEC);
        for (_, fd) in &regions {
            let _ = rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC);
        }
        let arena = MmapBacking::from_fd(arena_fd, parsed.arena_len).map_err(ImageError::Host)?;
        Ok(Handover {
            mem: MemHandover {
                arena: Arc::new(arena),
                arena_kind: BackingKind::Memfd,
                regions: regions
                    .into_iter()
                    .map(|(b, fd)| Arc::new(ExtRegion::from_fd(b, fd)))
                    .collect(),
                blob: parsed.blob,
            },
        })
    }
}

/// In a program that boots from handovers, at the start of the code a kexec runs (with the
/// arguments it runs it with): if this run is a [`probe`], prints [`PROBE_ANSWER`] and exits 0.
/// Otherwise returns at once.
pub fn answer_probe() {
    if std::env::var_os(PROBE_ENV).is_some() {
        println!("{PROBE_ANSWER}");
        std::process::exit(0);
    }
}

/// Whether `program`, run with `args` as a kexec would run it, boots from a handover: it is
/// run once with [`PROBE_ENV`] set (no handover, standard input closed) and must print
/// [`PROBE_ANSWER`] within 20 seconds. Upstream's kexec loads the next image and checks it
/// before the reboot path freezes anything; this is the model's check, so a program that is
/// not a luo binary (`/bin/true` would exit 0 having verified nothing) is refused while the
/// machine can still carry on. The error says what the program did instead.
pub fn probe(program: &Path, args: &[OsString]) -> Result<(), String> {
    use std::io::Read;
    let mut child = std::process::Command::new(program)
        .args(args)
        .env(PROBE_ENV, "1")
        .env_remove(HANDOVER_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it did not answer the handover probe within {} s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if status.success() && out.lines().next() == Some(PROBE_ANSWER) {
        return Ok(());
    }
    Err(format!(
        "it is not a luo binary: run as the kexec would run it, it {} without answering \
         the handover probe ({PROBE_ENV})",
        match status.code() {
            Some(c) => format!("exited {c}"),
            None => "was killed".to_owned(),
        }
    ))
}

struct Parsed {
    arena_fd: RawFd,
    arena_len: u64,
    blob: u64,
    regions: Vec<(u64, RawFd)>,
}

fn num(s: &str) -> Result<u64, ImageError> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| bad(format!("bad number {s:?}")))
}

fn fd_num(s: &str) -> Result<RawFd, ImageError> {
    let n = num(s)?;
    let fd = RawFd::try_from(n).map_err(|_| bad(format!("bad fd {s:?}")))?;
    if fd < 3 {
        return Err(bad(format!("fd {fd} is a standard stream")));
    }
    Ok(fd)
}

fn parse(desc: &str) -> Result<Parsed, ImageError> {
    let mut words = desc.split_ascii_whitespace();
    if words.next() != Some(MAGIC) {
        return Err(bad(format!("not a {MAGIC} descriptor")));
    }
    let mut arena = None;
    let mut blob = None;
    let mut regions = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| bad(format!("bad word {w:?}")))?;
        let (a, b) = v.split_once(':').unwrap_or((v, ""));
        match k {
            "arena" => arena = Some((fd_num(a)?, num(b)?)),
            "blob" => blob = Some(num(v)?),
            "region" => {
                let base = num(a)?;
                if base < REGION_BASE
                    || !(base - REGION_BASE).is_multiple_of(REGION_SPAN)
                    || base.checked_add(REGION_SPAN).is_none()
                {
                    return Err(bad(format!("bad region base {base:#x}")));
                }
                regions.push((base, fd_num(b)?));
            }
            _ => return Err(bad(format!("unknown key {k:?}"))),
        }
    }
    let (arena_fd, arena_len) = arena.ok_or_else(|| bad("no arena"))?;
    let blob = blob.ok_or_else(|| bad("no blob"))?;
    let mut fds: Vec<RawFd> = regions.iter().map(|&(_, f)| f).collect();
    fds.push(arena_fd);
    fds.sort_unstable();
    fds.dedup();
    let mut bases: Vec<u64> = regions.iter().map(|&(b, _)| b).collect();
    bases.sort_unstable();
    bases.dedup();
    if fds.len() != regions.len() + 1 || bases.len() != regions.len() {
        return Err(bad("an fd or region appears twice"));
    }
    Ok(Parsed {
        arena_fd,
        arena_len,
        blob,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_validated() {
        assert!(parse("luo-handover-v1 arena=5:4096 blob=0x100000").is_ok());
        for bad_desc in [
            "",
            "luo-handover-v2 arena=5:4096 blob=1",
            "luo-handover-v1 blob=1",
            "luo-handover-v1 arena=5:4096",
            "luo-handover-v1 arena=1:4096 blob=1",
            "luo-handover-v1 arena=5:4096 blob=1 region=0x10000000000:5",
            "luo-handover-v1 arena=5:4096 blob=1 region=0x1234:6",
            "luo-handover-v1 arena=5:x blob=1",
            "luo-handover-v1 arena=5:4096 blob=1 what=2",
        ] {
            assert!(parse(bad_desc).is_err(), "{bad_desc:?}");
        }
    }
}
