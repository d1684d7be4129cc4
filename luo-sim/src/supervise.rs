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
//! `/dev/liveupdate` (inherited by its children, across `execve` too) that turns `ftruncate`,
//! `fallocate`, `write`, `pwrite64`, `writev`, `pwritev`, `pwritev2` and
//! `fcntl(F_ADD_SEALS | F_GET_SEALS)` on fds above 2 into user notifications, and sends the
//! listener to the daemon. For each call the daemon finds the inode behind the caller's fd
//! (`/proc/PID/fd/N`), and unless it is a frozen memfd lets the host kernel run the call
//! ([`Answer::Continue`]); for a frozen one it answers as the kernel would ([`judge`]), keeping
//! seals added meanwhile as the daemon's own state ([`Frozen::late`]), applied to the host file
//! when the file thaws and dropped at the kexec.
//!
//! What this does not see: io_uring (its requests never pass seccomp), writes through a shared
//! mapping (the kernel allows them within the size too; past it they fault on both), and
//! processes that never opened the device nor descend from one that did.

use std::os::fd::{AsRawFd, BorrowedFd};

use luo_abi::Errno;

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
    /// `ftruncate(fd, len)`.
    Truncate { len: i64 },
    /// `fallocate(fd, mode, off, len)`.
    Fallocate { mode: u64, off: i64, len: i64 },
    /// A write of `len` bytes at `at` (`None`: the file position, or the end with `O_APPEND`);
    /// `append`: `RWF_APPEND`.
    Write {
        at: Option<i64>,
        len: u64,
        append: bool,
    },
    /// `fcntl(fd, F_ADD_SEALS, seals)`.
    AddSeals(u32),
    /// `fcntl(fd, F_GET_SEALS)`.
    GetSeals,
}

/// The fd a notification is about (the filter only sends calls on fds above 2).
pub(crate) fn fd_of(n: &Notif) -> i32 {
    n.args[0] as i32
}

/// Decodes `n`; `iov_len(addr, count)` reads the total length of a vector in the caller's
/// memory (`None`: unreadable, and the host kernel's `EFAULT` is left to it).
pub(crate) fn decode(n: &Notif, iov_len: impl Fn(u64, u64) -> Option<u64>) -> Option<Call> {
    let a = n.args;
    Some(match n.nr {
        libc::SYS_ftruncate => Call::Truncate { len: a[1] as i64 },
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
            len: iov_len(a[1], a[2])?,
            append: false,
        },
        libc::SYS_pwritev => Call::Write {
            at: Some(a[3] as i64),
            len: iov_len(a[1], a[2])?,
            append: false,
        },
        libc::SYS_pwritev2 => Call::Write {
            // An offset of -1 is the file position (preadv2(2)).
            at: Some(a[3] as i64).filter(|&o| o != -1),
            len: iov_len(a[1], a[2])?,
            append: a[5] & RWF_APPEND != 0,
        },
        libc::SYS_fcntl if a[1] & 0xffff_ffff == F_ADD_SEALS => Call::AddSeals(a[2] as u32),
        libc::SYS_fcntl if a[1] & 0xffff_ffff == F_GET_SEALS => Call::GetSeals,
        _ => return None,
    })
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

/// The total length of an iovec array in task `pid`'s memory.
pub(crate) fn iov_len(pid: u32, addr: u64, count: u64) -> Option<u64> {
    // UIO_MAXIOV: the kernel refuses more (EINVAL), which it is left to say.
    if count > 1024 {
        return None;
    }
    let mut raw = vec![0u8; count as usize * 16];
    let local = [std::io::IoSliceMut::new(&mut raw)];
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: count as usize * 16,
    };
    // SAFETY: `local` is one writable buffer of exactly the length asked for; the remote
    // range is only read by the kernel, which checks it against the target's memory.
    let n = unsafe {
        libc::process_vm_readv(pid as libc::pid_t, local.as_ptr().cast(), 1, &remote, 1, 0)
    };
    if n != raw.len() as isize {
        return None;
    }
    raw.chunks_exact(16).try_fold(0u64, |t, c| {
        let len = u64::from_ne_bytes(c[8..16].try_into().ok()?);
        t.checked_add(len)
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

#[cfg(test)]
mod tests {
    use super::*;

    const RW: OpenFile = OpenFile { pos: 0, flags: 2 };

    fn frozen() -> Frozen {
        Frozen {
            size: 4096,
            seals: 0,
            late: 0,
            mode: 0o600,
        }
    }

    #[test]
    fn size_changes_and_writes_past_the_end_are_refused() {
        let f = frozen();
        let t = |len| judge(Call::Truncate { len }, &f, &RW).0;
        assert_eq!(t(8192), Answer::Fail(Errno::EPERM));
        assert_eq!(t(0), Answer::Fail(Errno::EPERM));
        assert_eq!(t(4096), Answer::Continue);
        let w = |at, len| {
            judge(
                Call::Write {
                    at,
                    len,
                    append: false,
                },
                &f,
                &RW,
            )
            .0
        };
        assert_eq!(w(Some(4000), 96), Answer::Continue);
        assert_eq!(w(Some(4000), 97), Answer::Fail(Errno::EPERM));
        assert_eq!(w(Some(8192), 0), Answer::Continue);
        assert_eq!(w(None, 4096), Answer::Continue);
        let end = OpenFile {
            pos: 0,
            flags: 2 | O_APPEND,
        };
        let appended = Call::Write {
            at: None,
            len: 1,
            append: false,
        };
        assert_eq!(judge(appended, &f, &end).0, Answer::Fail(Errno::EPERM));
        let fa = |mode| {
            judge(
                Call::Fallocate {
                    mode,
                    off: 0,
                    len: 1,
                },
                &f,
                &RW,
            )
            .0
        };
        assert_eq!(fa(0), Answer::Fail(Errno::EPERM));
        assert_eq!(
            fa(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE),
            Answer::Fail(Errno::EPERM)
        );
        // An unsupported mode is the host's EOPNOTSUPP, as on the kernel.
        assert_eq!(fa(0x8), Answer::Continue);
    }

    #[test]
    fn late_seals_are_kept_enforced_and_reported() {
        let mut f = frozen();
        let (a, late) = judge(Call::AddSeals(F_SEAL_GROW), &f, &RW);
        assert_eq!((a, late), (Answer::Value(0), F_SEAL_GROW));
        f.late = late;
        assert_eq!(
            judge(Call::GetSeals, &f, &RW).0,
            Answer::Value(i64::from(F_SEAL_GROW))
        );
        assert_eq!(
            judge(Call::AddSeals(F_SEAL_WRITE), &f, &RW).0,
            Answer::Fail(Errno::EBUSY)
        );
        let (_, late) = judge(Call::AddSeals(F_SEAL_FUTURE_WRITE), &f, &RW);
        f.late = late;
        let w = Call::Write {
            at: Some(0),
            len: 1,
            append: false,
        };
        assert_eq!(judge(w, &f, &RW).0, Answer::Fail(Errno::EPERM));
        let (_, late) = judge(Call::AddSeals(F_SEAL_SEAL), &f, &RW);
        f.late = late;
        assert_eq!(
            judge(Call::AddSeals(F_SEAL_SHRINK), &f, &RW).0,
            Answer::Fail(Errno::EPERM)
        );
        // F_SEAL_EXEC on an executable file implies the write seal: EBUSY while frozen.
        let x = Frozen {
            mode: 0o777,
            ..frozen()
        };
        assert_eq!(
            judge(Call::AddSeals(F_SEAL_EXEC), &x, &RW).0,
            Answer::Fail(Errno::EBUSY)
        );
        // Unknown bits and read-only fds are the host kernel's to refuse.
        assert_eq!(judge(Call::AddSeals(0x100), &f, &RW).0, Answer::Continue);
        let ro = OpenFile { pos: 0, flags: 0 };
        assert_eq!(
            judge(Call::AddSeals(F_SEAL_GROW), &frozen(), &ro).0,
            Answer::Continue
        );
    }
}
