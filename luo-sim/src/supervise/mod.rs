// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The freeze of a preserved memfd, enforced on the programs' own system calls.
//!
//! On the kernel a preserved memfd's shmem mapping is frozen (`mm/memfd_luo.c` sets it,
//! `mm/shmem.c` checks it) until the file is unpreserved: a size change, any `fallocate` and a
//! write whose end passes the size fail with `EPERM`; `F_SEAL_WRITE` waits in vain for the
//! pinned folios (`EBUSY`); other seals are added to the inode, enforced as usual, and not
//! carried over the kexec, since `memfd_luo_preserve` recorded the seals when the file was
//! preserved. Here the program's memfd is the host file the core adopted, which the host kernel
//! does not freeze, and on which a seal added now would cross the kexec with the file.
//!
//! So the preload library installs a seccomp filter in each process that opens
//! `/dev/liveupdate` (inherited by its children, across `execve` too) that turns into user
//! notifications, on fds above 2: the write family (`write`, `pwrite64`, `writev`, `pwritev`,
//! `pwritev2`), what writes a file from another (`copy_file_range`, `splice`, `sendfile`),
//! `ftruncate`, `fallocate`, `fchmod`, `fcntl(F_ADD_SEALS | F_GET_SEALS)`, shared writable
//! `mmap`; and by path (a memfd's only paths are `/proc/PID/fd/N` and `/dev/fd/N`):
//! `truncate` and opens with `O_TRUNC`. It sends the listener to the daemon. For each call the
//! daemon finds the inode ([`target`]), and unless it is a frozen memfd lets the host kernel
//! run the call ([`Answer::Continue`]); for a frozen one it answers as the kernel would
//! ([`judge`]), keeping seals added meanwhile as the daemon's own state ([`Frozen::late`]),
//! applied to the host file when the file thaws and dropped at the kexec.
//!
//! What this does not see: io_uring (its requests never pass seccomp), writes through a shared
//! mapping (the kernel allows them within the size too; past it they fault on both), a shared
//! read-only mapping made by a raw `mmap` after a late write seal (the kernel never lets it
//! write; the preload's `mmap` maps such a file through a read-only open), and processes that
//! never opened the device nor descend from one that did.

use std::os::fd::{AsRawFd, BorrowedFd};

use luo_abi::Errno;

#[cfg(test)]
mod tests;

/// The probe the preload's filter answers itself: `fcntl(PROBE_FD, PROBE_CMD)` is `ENOTUNIQ`
/// under it, `EBADF` elsewhere (csrc/preload.c).
const PROBE_FD: i32 = 0x7fff_fff0;
const PROBE_CMD: i32 = 0x4c55_4f53;

/// Whether this process runs under a preload's filter (it descends from a program that opened
/// the simulated device): a daemon there would wait for its own answers.
pub(crate) fn under_filter() -> bool {
    // SAFETY: fcntl of an fd that is not open with an unknown command touches no memory.
    let r = unsafe { libc::fcntl(PROBE_FD, PROBE_CMD) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTUNIQ)
}

/// One intercepted call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notif {
    /// The kernel's cookie for the answer.
    pub id: u64,
    /// The calling task (in the daemon's pid namespace).
    pub pid: u32,
    /// System call number (of the native ABI: the filter passes no other).
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

/// How the daemon answers a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The host kernel runs the call as made.
    Continue,
    /// The call fails with this errno.
    Fail(Errno),
    /// The call returns this value without running.
    Value(i64),
}

/// Receives one notification; `Err(ENOENT)` when its task went away meanwhile.
pub(crate) fn recv(listener: BorrowedFd<'_>) -> Result<Notif, Errno> {
    // SAFETY: seccomp_notif is plain data (integers); zero is a valid value, which
    // SECCOMP_IOCTL_NOTIF_RECV requires of the buffer it fills.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: `listener` is a seccomp listener fd and `n` a writable seccomp_notif, the
    // argument this ioctl expects.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
    if r != 0 {
        return Err(last_errno());
    }
    let mut args = [0u64; 6];
    args.copy_from_slice(&n.data.args);
    Ok(Notif {
        id: n.id,
        pid: n.pid,
        nr: i64::from(n.data.nr),
        args,
    })
}

/// Whether the notification `id` is still pending (its task alive and waiting): what was read
/// of `/proc/PID` after receiving it belongs to that task, not to a reused pid.
pub(crate) fn still_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64 from the pointer.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut id,
        ) == 0
    }
}

/// Sends the answer to notification `id` (an error means its task is gone: nothing to do).
pub(crate) fn respond(listener: BorrowedFd<'_>, id: u64, a: Answer) {
    let (val, error, flags) = match a {
        Answer::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
        Answer::Fail(e) => (0, e.to_neg(), 0),
        Answer::Value(v) => (v, 0, 0),
    };
    let mut r = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    // SAFETY: `listener` is a seccomp listener fd and `r` the seccomp_notif_resp this ioctl
    // reads.
    unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut r) };
}

fn last_errno() -> Errno {
    Errno::from_raw(std::io::Error::last_os_error().raw_os_error().unwrap_or(5))
        .unwrap_or(Errno::EIO)
}

const F_ADD_SEALS: u64 = 1033;
const F_GET_SEALS: u64 = 1034;
const F_SEAL_SEAL: u32 = 0x1;
const F_SEAL_SHRINK: u32 = 0x2;
const F_SEAL_GROW: u32 = 0x4;
const F_SEAL_WRITE: u32 = 0x8;
const F_SEAL_FUTURE_WRITE: u32 = 0x10;
const F_SEAL_EXEC: u32 = 0x20;
const F_ALL_SEALS: u32 =
    F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC;
const FALLOC_FL_KEEP_SIZE: u64 = 0x1;
const FALLOC_FL_PUNCH_HOLE: u64 = 0x2;
const RWF_APPEND: u64 = 0x10;
const O_ACCMODE: u32 = 0o3;
const O_APPEND: u32 = 0o2000;

/// A call the filter sends, decoded; `None` for any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `ftruncate(fd, len)`, `truncate(path, len)`.
    Truncate { len: i64 },
    /// `fallocate(fd, mode, off, len)`.
    Fallocate { mode: u64, off: i64, len: i64 },
    /// A write of `len` bytes at `at` (`None`: the file position, or the end with `O_APPEND`);
    /// `append`: `RWF_APPEND`. Also what `copy_file_range`, `splice` and `sendfile` would
    /// write (their length cut to what the source has).
    Write {
        at: Option<i64>,
        len: u64,
        append: bool,
    },
    /// An open with `O_TRUNC`.
    OpenTruncate,
    /// A shared writable mapping (`mmap` with `MAP_SHARED` and `PROT_WRITE`).
    MapShared,
    /// `fchmod(fd, mode)`.
    Chmod { mode: u32 },
    /// `fcntl(fd, F_ADD_SEALS, seals)`.
    AddSeals(u32),
    /// `fcntl(fd, F_GET_SEALS)`.
    GetSeals,
}

/// What a call is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One of the caller's fds.
    Fd(i32),
    /// A path that names one of a process's fds (`/proc/PID/fd/N`), in the daemon's view.
    Path(String),
}

/// The caller's memory and files, as far as decoding needs them.
pub(crate) trait Peer {
    /// The total length of an iovec array (`None`: unreadable, the host kernel's `EFAULT`).
    fn iov_len(&self, addr: u64, count: u64) -> Option<u64>;
    /// A `loff_t` the caller points at.
    fn read_u64(&self, addr: u64) -> Option<u64>;
    /// A NUL-terminated path the caller points at.
    fn read_path(&self, addr: u64) -> Option<Vec<u8>>;
    /// How many bytes reading `fd` from `off` (`None`: its position) can give: what a regular
    /// file holds past it, what a pipe holds; `None` if unknown.
    fn available(&self, fd: i32, off: Option<u64>) -> Option<u64>;
    /// The caller's pid (paths through `/proc/self` name it).
    fn pid(&self) -> u32;
    /// The directory a relative path starts from: the caller's `dirfd`, or its working
    /// directory for `AT_FDCWD`.
    fn dir(&self, dirfd: i32) -> Option<Vec<u8>>;
}

const O_TRUNC: u64 = 0o1000;

/// `path` if it names a process's fd, rewritten for the daemon (`/proc/self` is the caller's).
fn fd_path(pid: u32, path: &[u8]) -> Option<String> {
    let path = std::str::from_utf8(path).ok()?;
    let rest = if let Some(r) = path.strip_prefix("/proc/self/fd/") {
        r
    } else if let Some(r) = path.strip_prefix("/proc/thread-self/fd/") {
        r
    } else if let Some(r) = path.strip_prefix("/dev/fd/") {
        r
    } else {
        let p = path.strip_prefix("/proc/")?;
        let (who, r) = p.split_once('/')?;
        if !who.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return r
            .strip_prefix("fd/")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|_| path.to_owned());
    };
    (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("/proc/{pid}/fd/{rest}"))
}

/// The file `n` is about; `None` when it cannot be a memfd (a path not through an fd, an open
/// without `O_TRUNC`) or the call is not one the filter sends.
pub(crate) fn target(n: &Notif, peer: &dyn Peer) -> Option<Target> {
    let a = n.args;
    // A path from `dirfd` (a memfd is reached relative to an open /proc/PID/fd, too).
    let path = |dirfd: i32, addr: u64| {
        let mut p = peer.read_path(addr)?;
        if p.first() != Some(&b'/') {
            let mut d = peer.dir(dirfd)?;
            d.push(b'/');
            d.append(&mut p);
            p = d;
        }
        fd_path(peer.pid(), &p).map(Target::Path)
    };
    match n.nr {
        libc::SYS_copy_file_range | libc::SYS_splice => Some(Target::Fd(a[2] as i32)),
        libc::SYS_mmap => Some(Target::Fd(a[4] as i32)),
        libc::SYS_truncate => path(libc::AT_FDCWD, a[0]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open if a[1] & O_TRUNC != 0 => path(libc::AT_FDCWD, a[0]),
        libc::SYS_openat if a[2] & O_TRUNC != 0 => path(a[0] as i32, a[1]),
        libc::SYS_openat2 if peer.read_u64(a[2]).is_some_and(|f| f & O_TRUNC != 0) => {
            path(a[0] as i32, a[1])
        }
        libc::SYS_write
        | libc::SYS_pwrite64
        | libc::SYS_writev
        | libc::SYS_pwritev
        | libc::SYS_pwritev2
        | libc::SYS_sendfile
        | libc::SYS_ftruncate
        | libc::SYS_fallocate
        | libc::SYS_fchmod
        | libc::SYS_fcntl => Some(Target::Fd(a[0] as i32)),
        _ => None,
    }
}

/// Decodes `n` (after [`target`] named a frozen memfd); `None` leaves the call to the host
/// kernel (an unreadable argument is its `EFAULT`).
pub(crate) fn decode(n: &Notif, peer: &dyn Peer) -> Option<Call> {
    let a = n.args;
    // An optional `loff_t *`: absent is `Some(None)`, unreadable `None`.
    let off = |p: u64| match p {
        0 => Some(None),
        p => peer.read_u64(p).map(Some),
    };
    // A length cut to what the source `fd` has from `from`.
    let cut = |len: u64, fd: u64, from: Option<u64>| {
        peer.available(fd as i32, from).map_or(len, |n| len.min(n))
    };
    Some(match n.nr {
        libc::SYS_ftruncate | libc::SYS_truncate => Call::Truncate { len: a[1] as i64 },
        libc::SYS_fallocate => Call::Fallocate {
            mode: a[1] & 0xffff_ffff,
            off: a[2] as i64,
            len: a[3] as i64,
        },
        libc::SYS_write => Call::Write {
            at: None,
            len: a[2],
            append: false,
        },
        libc::SYS_pwrite64 => Call::Write {
            at: Some(a[3] as i64),
            len: a[2],
            append: false,
        },
        libc::SYS_writev => Call::Write {
            at: None,
            len: peer.iov_len(a[1], a[2])?,
            append: false,
        },
        libc::SYS_pwritev => Call::Write {
            at: Some(a[3] as i64),
            len: peer.iov_len(a[1], a[2])?,
            append: false,
        },
        libc::SYS_pwritev2 => Call::Write {
            // An offset of -1 is the file position (preadv2(2)).
            at: Some(a[3] as i64).filter(|&o| o != -1),
            len: peer.iov_len(a[1], a[2])?,
            append: a[5] & RWF_APPEND != 0,
        },
        // copy_file_range(fd_in, off_in, fd_out, off_out, len, flags), and splice with the
        // same arguments: the kernel cuts the length to what the source has.
        libc::SYS_copy_file_range | libc::SYS_splice => Call::Write {
            at: off(a[3])?.map(|o| o as i64),
            len: cut(a[4], a[0], off(a[1])?),
            append: false,
        },
        // sendfile(out_fd, in_fd, offset, count).
        libc::SYS_sendfile => Call::Write {
            at: None,
            len: cut(a[3], a[1], off(a[2])?),
            append: false,
        },
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => Call::OpenTruncate,
        libc::SYS_openat | libc::SYS_openat2 => Call::OpenTruncate,
        libc::SYS_mmap => Call::MapShared,
        libc::SYS_fchmod => Call::Chmod {
            mode: a[1] as u32 & 0o7777,
        },
        libc::SYS_fcntl if a[1] & 0xffff_ffff == F_ADD_SEALS => Call::AddSeals(a[2] as u32),
        libc::SYS_fcntl if a[1] & 0xffff_ffff == F_GET_SEALS => Call::GetSeals,
        _ => return None,
    })
}

/// The [`Peer`] of a live task, read through `/proc` and `process_vm_readv`.
pub(crate) struct Task(pub u32);

impl Task {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let len = buf.len();
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` is `buf`, writable for its length; the remote range is only read,
        // and the kernel checks it against the task's memory.
        let n = unsafe { libc::process_vm_readv(self.0 as libc::pid_t, &local, 1, &remote, 1, 0) };
        n == len as isize
    }
}

impl Peer for Task {
    fn iov_len(&self, addr: u64, count: u64) -> Option<u64> {
        // UIO_MAXIOV: the kernel refuses more (EINVAL), which it is left to say.
        if count > 1024 {
            return None;
        }
        let mut raw = vec![0u8; count as usize * 16];
        if !self.read(addr, &mut raw) {
            return None;
        }
        raw.chunks_exact(16).try_fold(0u64, |t, c| {
            let len = u64::from_ne_bytes(c[8..16].try_into().ok()?);
            t.checked_add(len)
        })
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_ne_bytes(b))
    }

    fn read_path(&self, addr: u64) -> Option<Vec<u8>> {
        // Page by page up to the NUL (PATH_MAX at most): a page past the string may be
        // unmapped.
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < 4096 {
            let chunk = (4096 - at % 4096) as usize;
            let mut b = vec![0u8; chunk];
            if !self.read(at, &mut b) {
                return None;
            }
            if let Some(end) = b.iter().position(|&c| c == 0) {
                out.extend_from_slice(&b[..end]);
                return Some(out);
            }
            out.extend_from_slice(&b);
            at += chunk as u64;
        }
        None
    }

    fn available(&self, fd: i32, off: Option<u64>) -> Option<u64> {
        use rustix::fs::FileType;
        let st = rustix::fs::stat(format!("/proc/{}/fd/{fd}", self.0)).ok()?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let from = match off {
                    Some(o) => o,
                    None => open_file(self.0, fd)?.pos,
                };
                Some((st.st_size as u64).saturating_sub(from))
            }
            FileType::Fifo => {
                let pid = rustix::process::Pid::from_raw(self.0 as i32)?;
                let pidfd =
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
                let pipe = rustix::process::pidfd_getfd(
                    &pidfd,
                    fd,
                    rustix::process::PidfdGetfdFlags::empty(),
                )
                .ok()?;
                rustix::io::ioctl_fionread(&pipe).ok()
            }
            _ => None,
        }
    }

    fn pid(&self) -> u32 {
        self.0
    }

    fn dir(&self, dirfd: i32) -> Option<Vec<u8>> {
        let link = if dirfd == libc::AT_FDCWD {
            format!("/proc/{}/cwd", self.0)
        } else {
            format!("/proc/{}/fd/{dirfd}", self.0)
        };
        rustix::fs::readlink(link, Vec::new())
            .ok()
            .map(|t| t.into_bytes())
    }
}

/// The caller's open file: from `/proc/PID/fdinfo/N`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OpenFile {
    /// The file position.
    pub pos: u64,
    /// The open flags (`O_ACCMODE`, `O_APPEND`, ...).
    pub flags: u32,
}

impl OpenFile {
    fn writable(&self) -> bool {
        matches!(self.flags & O_ACCMODE, 1 | 2)
    }
}

/// Position and flags of fd `fd` of task `pid`.
pub(crate) fn open_file(pid: u32, fd: i32) -> Option<OpenFile> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    Some(OpenFile {
        pos: field("pos:")?.parse().ok()?,
        flags: u32::from_str_radix(field("flags:")?, 8).ok()?,
    })
}

/// A frozen memfd as the old kernel shows it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Frozen {
    /// Its size (which the freeze holds).
    pub size: u64,
    /// The host file's seals (those recorded at preserve time).
    pub seals: u32,
    /// Seals added while frozen: the inode's for the old kernel, never the host file's.
    pub late: u32,
    /// Its mode bits.
    pub mode: u32,
}

/// What the kernel answers `call` on a frozen memfd opened as `of` (`mm/shmem.c`,
/// `mm/memfd.c`): the answer, and the late seals after it. Calls the host kernel refuses
/// the same way (bad arguments, fds not open for writing) are left to it.
pub(crate) fn judge(call: Call, f: &Frozen, of: &OpenFile) -> (Answer, u32) {
    let seals = f.seals | f.late;
    let fail = |e| (Answer::Fail(e), f.late);
    let go = (Answer::Continue, f.late);
    match call {
        Call::Truncate { len } => {
            // shmem_setattr: the seals, then the freeze; the same size changes nothing.
            if len < 0 || !of.writable() || len as u64 == f.size {
                go
            } else {
                fail(Errno::EPERM)
            }
        }
        Call::Fallocate { mode, off, len } => {
            // vfs_fallocate checks the arguments, shmem_fallocate the modes, then the freeze.
            if off < 0
                || len <= 0
                || !of.writable()
                || mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0
            {
                go
            } else {
                fail(Errno::EPERM)
            }
        }
        Call::Write { at, len, append } => {
            if len == 0 || !of.writable() {
                return go;
            }
            // shmem_write_begin: a late write seal first, then the end against the size.
            if f.late & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0 {
                return fail(Errno::EPERM);
            }
            let start = if append || (at.is_none() && of.flags & O_APPEND != 0) {
                f.size
            } else {
                match at {
                    Some(o) if o < 0 => return go,
                    Some(o) => o as u64,
                    None => of.pos,
                }
            };
            if start.checked_add(len).is_none_or(|end| end > f.size) {
                fail(Errno::EPERM)
            } else {
                go
            }
        }
        // do_open's truncate: the size change of shmem_setattr.
        Call::OpenTruncate if f.size != 0 => fail(Errno::EPERM),
        Call::OpenTruncate => go,
        // A late write seal refuses new shared writable mappings (memfd_check_seals_mmap).
        Call::MapShared if f.late & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0 => fail(Errno::EPERM),
        Call::MapShared => go,
        // F_SEAL_EXEC keeps the exec bits (shmem_setattr).
        Call::Chmod { mode } if seals & F_SEAL_EXEC != 0 && (mode ^ f.mode) & 0o111 != 0 => {
            fail(Errno::EPERM)
        }
        Call::Chmod { .. } => go,
        Call::GetSeals => (Answer::Value(i64::from(seals)), f.late),
        Call::AddSeals(add) => {
            // memfd_add_seals, in its order.
            if !of.writable() || add & !F_ALL_SEALS != 0 {
                return go;
            }
            if seals & F_SEAL_SEAL != 0 {
                return fail(Errno::EPERM);
            }
            let mut add = add;
            if add & F_SEAL_EXEC != 0 && f.mode & 0o111 != 0 {
                add |= F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
            }
            // The write seal waits for the pinned folios (memfd_wait_for_pins).
            if add & F_SEAL_WRITE != 0 && seals & F_SEAL_WRITE == 0 {
                return fail(Errno::EBUSY);
            }
            (Answer::Value(0), f.late | (add & !f.seals))
        }
    }
}
