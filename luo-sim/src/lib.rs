// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! luo-sim: run unmodified `/dev/liveupdate` programs against the Rust LUO core.
//!
//! * [`serve`] runs the daemon: one simulated machine (a [`Kernel`] with a memfd-backed arena,
//!   so it can cross `execve`) behind a `SOCK_SEQPACKET` Unix socket ([`default_socket_path`]).
//! * [`PRELOAD`] is the `LD_PRELOAD` library (`libluo_sim_preload.so`, built from
//!   `csrc/preload.c`) that makes `/dev/liveupdate` appear to a program. Each device open is one
//!   connection to the daemon, each session fd one socketpair end, so `fork`, `dup` and the last
//!   close behave as with real fds.
//! * [`kexec`] asks the daemon for the reboot path: freeze and serialize (a freeze error is
//!   reported and the machine carries on), drop every connection, re-exec the daemon (or another
//!   build) booting from the preserved memory.
//!
//! Memfds: PRESERVE_FD receives the program's real memfd (SCM_RIGHTS) and the core adopts it
//! (`Kernel::memfd_adopt`): the preserved file *is* the program's, so size, data and seals are
//! its own and nothing is copied; only the file position is read from the program's open file
//! description before freezing. RETRIEVE_FD after the kexec sends back that same host memfd.
//! The freeze of a preserved memfd is the daemon's answer to the programs' own system calls,
//! which a seccomp filter forwards (`supervise`); the frozen state is the core's.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use luo_core::Kernel;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

#[allow(missing_docs)]
pub mod boot_image;
mod daemon;
pub mod inspect;
pub mod machine;
pub mod progress;
mod proto;
pub mod simulate;
pub mod size;
mod supervise;
use daemon::send_pkt;
pub use daemon::serve;
use proto::*;
pub use proto::{SOCKET_ENV, default_socket_path};

/// Path of the preload library built with this crate.
pub const PRELOAD: &str = env!("LUO_SIM_PRELOAD");

/// Environment variable a re-exec'd daemon finds its inherited listener and requester in.
pub const INHERIT_ENV: &str = "LUO_SIM_INHERIT";

const CREATE_SESSION: u32 = 0xBA00;
const RETRIEVE_SESSION: u32 = 0xBA01;
const PRESERVE_FD: u32 = 0xBA40;
const RETRIEVE_FD: u32 = 0xBA41;
const FINISH: u32 = 0xBA42;
const GET_NAME: u32 = 0xBA43;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Errors of the daemon and its client calls.
#[derive(Debug)]
pub enum SimError {
    /// A host call failed.
    Io(std::io::Error),
    /// The daemon refused or failed.
    Daemon(String),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::Io(e) => write!(f, "{e}"),
            SimError::Daemon(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<std::io::Error> for SimError {
    fn from(e: std::io::Error) -> Self {
        SimError::Io(e)
    }
}

impl From<rustix::io::Errno> for SimError {
    fn from(e: rustix::io::Errno) -> Self {
        SimError::Io(e.into())
    }
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The socket path.
    pub socket: PathBuf,
    /// Log each uAPI call to stderr.
    pub verbose: bool,
    /// Arena pages of the simulated machine (sparse).
    pub arena_pages: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            socket: default_socket_path(),
            verbose: true,
            arena_pages: 1 << 16,
        }
    }
}

/// Whether `program` can be exec'd: a path without NUL bytes naming an executable regular file
/// that starts like an ELF program or a script.
fn check_exec(program: &Path) -> Result<(), String> {
    if program.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("the path has a NUL byte".into());
    }
    let meta = std::fs::metadata(program).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    rustix::fs::access(program, rustix::fs::Access::EXEC_OK)
        .map_err(|e| format!("not executable: {e}"))?;
    let mut head = [0u8; 4];
    let f = std::fs::File::open(program).map_err(|e| e.to_string())?;
    let n = std::io::Read::read(&mut &f, &mut head).map_err(|e| e.to_string())?;
    if !(n == 4 && &head == b"\x7fELF" || n >= 2 && &head[..2] == b"#!") {
        return Err("not an ELF program or a script".into());
    }
    Ok(())
}

/// Opens and closes the device once, which deserializes the incoming sessions (the first open
/// does), so the kexec report can count them.
fn deserialize_now(k: &Kernel) {
    if let Ok(fd) = k.open_dev() {
        let _ = k.close(fd);
    }
}

fn connect(socket: &Path) -> Result<OwnedFd, SimError> {
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&s, &SocketAddrUnix::new(socket)?)?;
    Ok(s)
}

fn request(socket: &Path, msg: &[u8]) -> Result<String, SimError> {
    let s = connect(socket)?;
    send_pkt(s.as_fd(), msg, None)?;
    let mut buf = vec![0u8; MAX_PACKET];
    let n = loop {
        match rustix::io::read(&s, &mut buf) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    if n < 4 {
        return Err(SimError::Daemon("the daemon went away".into()));
    }
    let ret = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let text = String::from_utf8_lossy(&buf[4..n]).into_owned();
    if ret != 0 {
        return Err(SimError::Daemon(if text.is_empty() {
            format!("errno {}", -ret)
        } else {
            text
        }));
    }
    Ok(text)
}

/// `luo sim kexec [--into PATH]`: asks the daemon on `socket` for a live update and waits
/// until the next daemon has booted. Returns its report line.
pub fn kexec(socket: &Path, into: Option<&Path>) -> Result<String, SimError> {
    let mut msg = OP_KEXEC.to_ne_bytes().to_vec();
    if let Some(p) = into {
        let p = std::fs::canonicalize(p)?;
        msg.extend_from_slice(p.as_os_str().as_encoded_bytes());
    }
    request(socket, &msg)
}

/// Whether a daemon answers on `socket`.
pub fn ping(socket: &Path) -> bool {
    request(socket, &OP_PING.to_ne_bytes()).is_ok()
}

/// Waits until a daemon answers on `socket` (`false` on timeout).
pub fn wait_ready(socket: &Path, timeout: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if ping(socket) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}
