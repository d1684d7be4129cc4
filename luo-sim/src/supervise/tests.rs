// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Unit tests of the supervision: decoding calls and judging them as 7.2.13 does.

use super::*;

#[test]
fn paths_of_fds_are_the_callers() {
    assert_eq!(fd_path(7, b"/proc/self/fd/5"), Some("/proc/7/fd/5".into()));
    assert_eq!(fd_path(7, b"/dev/fd/12"), Some("/proc/7/fd/12".into()));
    assert_eq!(
        fd_path(7, b"/proc/thread-self/fd/3"),
        Some("/proc/7/fd/3".into())
    );
    assert_eq!(fd_path(7, b"/proc/99/fd/3"), Some("/proc/99/fd/3".into()));
    for other in [
        &b"/tmp/x"[..],
        b"fd/3",
        b"/proc/self/fd/",
        b"/proc/self/fd/3/..",
        b"/proc/self/cwd/x",
        b"/proc/99/root/proc/self/fd/3",
    ] {
        assert_eq!(
            fd_path(7, other),
            None,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn truncating_opens_mappings_and_exec_bits() {
    let f = frozen();
    assert_eq!(
        judge(Call::OpenTruncate, &f, &RW).0,
        Answer::Fail(Errno::EPERM)
    );
    let empty = Frozen {
        size: 0,
        ..frozen()
    };
    assert_eq!(judge(Call::OpenTruncate, &empty, &RW).0, Answer::Continue);
    assert_eq!(judge(Call::MapShared, &f, &RW).0, Answer::Continue);
    let sealed = Frozen {
        late: F_SEAL_FUTURE_WRITE,
        ..frozen()
    };
    assert_eq!(
        judge(Call::MapShared, &sealed, &RW).0,
        Answer::Fail(Errno::EPERM)
    );
    let exec = Frozen {
        late: F_SEAL_EXEC,
        mode: 0o600,
        ..frozen()
    };
    assert_eq!(
        judge(Call::Chmod { mode: 0o700 }, &exec, &RW).0,
        Answer::Fail(Errno::EPERM)
    );
    assert_eq!(
        judge(Call::Chmod { mode: 0o640 }, &exec, &RW).0,
        Answer::Continue
    );
    assert_eq!(
        judge(Call::Chmod { mode: 0o700 }, &f, &RW).0,
        Answer::Continue
    );
}

/// A caller whose source files hold `avail` bytes.
struct Fake {
    avail: Option<u64>,
}

impl Peer for Fake {
    fn iov_len(&self, _: u64, count: u64) -> Option<u64> {
        Some(count * 10)
    }
    fn read_u64(&self, addr: u64) -> Option<u64> {
        Some(addr * 2)
    }
    fn read_path(&self, _: u64) -> Option<Vec<u8>> {
        Some(b"/proc/self/fd/9".to_vec())
    }
    fn available(&self, _: i32, _: Option<u64>) -> Option<u64> {
        self.avail
    }
    fn pid(&self) -> u32 {
        42
    }
    fn dir(&self, _: i32) -> Option<Vec<u8>> {
        Some(b"/proc/42/fd".to_vec())
    }
}

#[test]
fn copies_are_writes_of_what_the_source_has() {
    let n = |nr, args| Notif {
        id: 0,
        pid: 42,
        nr,
        args,
    };
    let copy = n(libc::SYS_copy_file_range, [3, 0, 5, 100, 1000, 0]);
    let short = Fake { avail: Some(10) };
    assert_eq!(target(&copy, &short), Some(Target::Fd(5)));
    assert_eq!(
        decode(&copy, &short),
        Some(Call::Write {
            at: Some(200),
            len: 10,
            append: false
        })
    );
    let unknown = Fake { avail: None };
    let send = n(libc::SYS_sendfile, [5, 3, 0, 64, 0, 0]);
    assert_eq!(
        decode(&send, &unknown),
        Some(Call::Write {
            at: None,
            len: 64,
            append: false
        })
    );
    let trunc = n(libc::SYS_openat, [u64::MAX, 1, O_TRUNC | 2, 0, 0, 0]);
    assert_eq!(
        target(&trunc, &unknown),
        Some(Target::Path("/proc/42/fd/9".into()))
    );
    let plain = n(libc::SYS_openat, [u64::MAX, 1, 2, 0, 0, 0]);
    assert_eq!(target(&plain, &unknown), None);
    // A relative path from an open /proc/PID/fd.
    struct Rel;
    impl Peer for Rel {
        fn iov_len(&self, _: u64, _: u64) -> Option<u64> {
            None
        }
        fn read_u64(&self, _: u64) -> Option<u64> {
            None
        }
        fn read_path(&self, _: u64) -> Option<Vec<u8>> {
            Some(b"7".to_vec())
        }
        fn available(&self, _: i32, _: Option<u64>) -> Option<u64> {
            None
        }
        fn pid(&self) -> u32 {
            42
        }
        fn dir(&self, dirfd: i32) -> Option<Vec<u8>> {
            (dirfd == 4).then(|| b"/proc/42/fd".to_vec())
        }
    }
    let rel = n(libc::SYS_openat, [4, 1, O_TRUNC | 2, 0, 0, 0]);
    assert_eq!(
        target(&rel, &Rel),
        Some(Target::Path("/proc/42/fd/7".into()))
    );
    let elsewhere = n(libc::SYS_openat, [5, 1, O_TRUNC | 2, 0, 0, 0]);
    assert_eq!(target(&elsewhere, &Rel), None);
}

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
