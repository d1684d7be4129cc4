// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The wire protocol between the preload library and the daemon (shared source file).
//!
//! Every message is one `SOCK_SEQPACKET` packet, native endian. A request starts with an
//! operation word; a reply starts with `0` or `-errno`, followed by the bytes to copy back to
//! the caller's argument struct. A file descriptor, when one travels, rides as `SCM_RIGHTS`.

#![allow(dead_code)]

use std::path::PathBuf;

/// Environment variable naming the daemon socket (read by the daemon and the preload).
pub const SOCKET_ENV: &str = "LUO_SIM_SOCKET";

/// `open("/dev/liveupdate")`: `[OP_OPEN]`.
pub const OP_OPEN: u32 = 1;
/// `ioctl`: `[OP_IOCTL, cmd, flags, size, data...]`, with the target fd of PRESERVE_FD.
pub const OP_IOCTL: u32 = 2;
/// Simulated kexec: `[OP_KEXEC, into path bytes...]`.
pub const OP_KEXEC: u32 = 3;
/// Liveness check: `[OP_PING]`.
pub const OP_PING: u32 = 4;

/// The 4-byte `size` field could be read; `data` holds what could be read of the struct.
pub const F_READABLE: u32 = 1;
/// The struct extends past [`MAX_DATA`] and its tail faulted.
pub const F_TAIL_FAULT: u32 = 2;
/// The struct extends past [`MAX_DATA`] and its tail is not all zero.
pub const F_TAIL_NONZERO: u32 = 4;

/// Most bytes of an argument struct that travel; a longer struct's tail is summarized.
pub const MAX_DATA: usize = 4096;
/// Header bytes of an ioctl request.
pub const IOCTL_HDR: usize = 16;
/// Largest packet either side sends.
pub const MAX_PACKET: usize = IOCTL_HDR + MAX_DATA + 256;

/// Prefix of the abstract socket names of session connections.
pub const SESSION_PREFIX: &[u8] = b"luo-sim:";

/// The socket path: `$LUO_SIM_SOCKET`, else `$XDG_RUNTIME_DIR/luo-sim.sock`, else
/// `<temp dir>/luo-sim-<uid>.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(d).join("luo-sim.sock");
    }
    let uid = rustix::process::getuid().as_raw();
    std::env::temp_dir().join(format!("luo-sim-{uid}.sock"))
}
