// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The daemon's end of the seccomp supervision: a process's listener registered, its
//! notifications answered for frozen memfds (the mechanism is `crate::supervise`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use luo_abi::Errno;
use luo_abi::file::ShmemFile;
use rustix::event::epoll;

use super::*;

impl Daemon {
    /// Takes the seccomp listener of a process that opened the device (see `supervise`):
    /// its filtered calls are answered here until every task under the filter has exited.
    pub(super) fn supervise(&mut self, listener: OwnedFd) -> Result<(), Errno> {
        // Only a seccomp listener: anything else would sit in the event loop for good.
        let link = rustix::fs::readlink(
            format!("/proc/self/fd/{}", listener.as_raw_fd()),
            Vec::new(),
        )
        .map_err(host_errno)?;
        if link.as_bytes() != b"anon_inode:seccomp notify" {
            return Err(Errno::EINVAL);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.watch(listener.as_fd(), id).map_err(host_errno)?;
        self.supervisors.insert(id, listener);
        Ok(())
    }

    /// Answers one call a process's filter forwarded; drops the listener once no task is
    /// left under its filter (a hang-up).
    pub(super) fn serve_notification(&mut self, id: u64, flags: epoll::EventFlags) {
        let Some(l) = self.supervisors.get(&id) else {
            return;
        };
        // SAFETY: the listener stays in `supervisors` for the use below; it is removed only
        // on the hang-up path, which returns without using it further.
        let l = unsafe { BorrowedFd::borrow_raw(l.as_raw_fd()) };
        if flags.contains(epoll::EventFlags::HUP) && !flags.contains(epoll::EventFlags::IN) {
            self.supervisors.remove(&id);
            return;
        }
        let n = match supervise::recv(l) {
            Ok(n) => n,
            // The caller was killed while its call waited: nothing to answer.
            Err(Errno::ENOENT) | Err(Errno::EINTR) => return,
            Err(_) => {
                self.supervisors.remove(&id);
                return;
            }
        };
        let answer = self.judge_call(l, &n);
        supervise::respond(l, n.id, answer);
    }

    /// The answer to a forwarded call: the kernel's if it is about a frozen memfd, else the
    /// host kernel runs it.
    pub(super) fn judge_call(
        &mut self,
        l: BorrowedFd<'_>,
        n: &supervise::Notif,
    ) -> supervise::Answer {
        use supervise::{Answer, Target};
        let peer = supervise::Task(n.pid);
        let (link, fd) = match supervise::target(n, &peer) {
            Some(Target::Fd(fd)) => (format!("/proc/{}/fd/{fd}", n.pid), Some(fd)),
            Some(Target::Path(p)) => (p, None),
            None => return Answer::Continue,
        };
        // Only an unlinked file can be a preserved memfd. The link text comes from the dentry
        // alone; a stat would ask the file's filesystem (a FUSE server could be the caller).
        if !rustix::fs::readlink(&link, Vec::new())
            .is_ok_and(|t| t.as_bytes().ends_with(b" (deleted)"))
        {
            return Answer::Continue;
        }
        let Ok(st) = rustix::fs::stat(&link) else {
            return Answer::Continue;
        };
        let key = (st.st_dev, st.st_ino);
        let Some((core_fd, late_before)) =
            self.mirrors.get(&key).map(|m| (m.core_fd, m.late_seals))
        else {
            return Answer::Continue;
        };
        let Ok(file) = self.kernel.file(core_fd) else {
            return Answer::Continue;
        };
        let Some(mf) = file.memfd() else {
            return Answer::Continue;
        };
        if !mf.is_frozen() {
            return Answer::Continue;
        }
        let Some(call) = supervise::decode(n, &peer) else {
            return Answer::Continue;
        };
        // A path names the file, not an open of it: as the kernel's, its checks are the
        // inode's (a path truncate needs write permission, which an open for writing shows).
        let of = match fd {
            Some(fd) => match supervise::open_file(n.pid, fd) {
                Some(of) => of,
                None => return Answer::Continue,
            },
            None => supervise::OpenFile {
                pos: 0,
                flags: rustix::fs::OFlags::RDWR.bits(),
            },
        };
        // What was read of /proc/PID is the caller's only if its call is still waiting.
        if !supervise::still_valid(l, n.id) {
            return Answer::Continue;
        }
        let Ok(Ok(host)) = mf.with_host_fd(|h| {
            rustix::fs::fcntl_get_seals(h).map(|s| (s.bits(), rustix::fs::fstat(h)))
        }) else {
            return Answer::Continue;
        };
        let (seals, Ok(hst)) = host else {
            return Answer::Continue;
        };
        let frozen = supervise::Frozen {
            size: hst.st_size as u64,
            seals,
            late: late_before,
            mode: hst.st_mode,
        };
        let (answer, late) = supervise::judge(call, &frozen, &of);
        if late != late_before {
            self.log(format_args!(
                "pid {}: seals {:#x} added to a frozen memfd: kept for this boot",
                n.pid,
                late & !late_before
            ));
        }
        if let Some(m) = self.mirrors.get_mut(&key) {
            m.late_seals = late;
        }
        answer
    }
}
