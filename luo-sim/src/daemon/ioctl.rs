// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The `/dev/liveupdate` and session ioctls a client sends, answered by the core: a session's
//! own connection, the memfd passed with PRESERVE_FD adopted.

use std::os::fd::{AsFd, OwnedFd};

use luo_abi::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::*;

impl Daemon {
    pub(super) fn open(&mut self, id: u64) -> Reply {
        let pid = self.conns.get(&id).map_or(0, |c| c.pid);
        if let Some(c) = self.conns.get(&id)
            && !matches!(c.kind, Kind::Fresh)
        {
            return err(Errno::EINVAL);
        }
        let r = self.kernel.open_dev();
        self.log(format_args!("pid {pid}: open /dev/liveupdate -> {r:?}"));
        match r {
            Ok(fd) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.kind = Kind::Dev(fd);
                }
                (0, Vec::new(), None)
            }
            Err(e) => err(e),
        }
    }

    pub(super) fn ioctl(&mut self, id: u64, msg: &[u8], passed: Option<OwnedFd>) -> Reply {
        let (core_fd, is_session, pid) = match self.conns.get(&id) {
            Some(Conn {
                kind: Kind::Dev(fd),
                pid,
                ..
            }) => (*fd, false, *pid),
            Some(Conn {
                kind: Kind::Session(fd),
                pid,
                ..
            }) => (*fd, true, *pid),
            _ => return err(Errno::EBADF),
        };
        if msg.len() < IOCTL_HDR {
            return err(Errno::EINVAL);
        }
        let cmd = u32_at(msg, 4);
        let flags = u32_at(msg, 8);
        let size = u32_at(msg, 12);
        let mut data: Vec<u8> = if flags & F_READABLE != 0 {
            msg[IOCTL_HDR..msg.len().min(IOCTL_HDR + MAX_DATA)].to_vec()
        } else {
            Vec::new()
        };
        self.serving = id;
        let r = self.ioctl_inner(
            core_fd, is_session, pid, cmd, flags, size, &mut data, passed,
        );
        if is_session && cmd == PRESERVE_FD && r.is_err() {
            // A refused preserve may have left a mirror of a file nothing preserves.
            self.prune(None);
        }
        let shown = match &r {
            Ok(x) => format!(
                "ok{}",
                x.as_ref().map_or(String::new(), |_| " (+fd)".into())
            ),
            Err(e) => format!("{e:?}"),
        };
        let what = self
            .kernel
            .file(core_fd)
            .map(|f| f.name().to_owned())
            .unwrap_or_default();
        self.log(format_args!(
            "pid {pid}: {what}: {} size={size} -> {shown}",
            cmd_name(cmd)
        ));
        match r {
            Ok(fd) => {
                let n = (size as usize).min(op_size(cmd)).min(data.len());
                data.truncate(n);
                (0, data, fd)
            }
            Err(e) => err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn ioctl_inner(
        &mut self,
        core_fd: i32,
        is_session: bool,
        pid: i32,
        cmd: u32,
        flags: u32,
        size: u32,
        data: &mut [u8],
        passed: Option<OwnedFd>,
    ) -> Result<Option<OwnedFd>, Errno> {
        let big = data.len() == MAX_DATA && size as usize > MAX_DATA;
        if big && flags & (F_TAIL_FAULT | F_TAIL_NONZERO) != 0 {
            // The dispatcher's checks (nr, cmd, minimum size) come first: a short buffer
            // gets past them to the EFAULT of reading the struct.
            return match self.kernel.ioctl(core_fd, cmd, &mut data.to_vec()) {
                Err(Errno::EFAULT) if flags & F_TAIL_FAULT == 0 => Err(Errno::E2BIG),
                Err(e) => Err(e),
                Ok(()) => Err(Errno::EFAULT),
            };
        }
        if big {
            // A zero tail past MAX_DATA changes nothing: show the core a MAX_DATA struct.
            data[..4].copy_from_slice(&(MAX_DATA as u32).to_ne_bytes());
        }
        let preserve = is_session && cmd == PRESERVE_FD && data.len() >= 8;
        let orig_fd = u32_at(data, 4) as i32;
        let mut temp = None;
        if preserve {
            let target = match passed {
                Some(f) => match self.adopt(f) {
                    Ok((fd, is_temp)) => {
                        if is_temp {
                            temp = Some(fd);
                        }
                        fd
                    }
                    Err(e) => return Err(e),
                },
                None => -1,
            };
            put_i32(data, 4, target);
        }
        let r = self.kernel.ioctl(core_fd, cmd, data);
        if preserve && r.is_ok() && temp.is_none() {
            let fd = u32_at(data, 4) as i32;
            let size = self.allocate_holes(fd);
            if let Some(m) = self.mirrors.values_mut().find(|m| m.core_fd == fd) {
                m.preserved_size = size;
            }
        }
        if let Some(t) = temp {
            let _ = self.kernel.close(t);
        }
        if big {
            data[..4].copy_from_slice(&size.to_ne_bytes());
        }
        if preserve {
            put_i32(data, 4, orig_fd);
        }
        r?;
        match (is_session, cmd) {
            (false, CREATE_SESSION | RETRIEVE_SESSION) => {
                let sfd = u32_at(data, 4) as i32;
                match self.session_conn(sfd, pid) {
                    Ok(client) => Ok(Some(client)),
                    Err(e) => {
                        let _ = self.kernel.close(sfd);
                        Err(e)
                    }
                }
            }
            (true, RETRIEVE_FD) => {
                let ffd = u32_at(data, 4) as i32;
                self.export_memfd(ffd).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A session connection: our end (bound to an abstract name the preload recognizes) is
    /// served, the other end goes to the program.
    pub(super) fn session_conn(&mut self, core_fd: i32, pid: i32) -> Result<OwnedFd, Errno> {
        let (mine, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(host_errno)?;
        self.pairs += 1;
        let name = format!(
            "{}{}:{}",
            String::from_utf8_lossy(SESSION_PREFIX),
            self.nonce,
            self.pairs
        );
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(host_errno)?;
        rustix::net::bind(&mine, &addr).map_err(host_errno)?;
        let id = self.next_id;
        self.next_id += 1;
        self.watch(mine.as_fd(), id).map_err(host_errno)?;
        self.conns.insert(
            id,
            Conn {
                sock: mine,
                kind: Kind::Session(core_fd),
                pid,
            },
        );
        Ok(theirs)
    }
}
