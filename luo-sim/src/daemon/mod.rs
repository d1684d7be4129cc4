// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The daemon that plays `/dev/liveupdate` for unmodified programs: its connections, the
//! mirror of each preserved memfd, its event loop, and the simulated kexec that re-executes
//! it with the machine's memory. `ioctl` answers the uAPI, `memfd` keeps host files and the
//! core's files in step, `supervision` answers the frozen memfds' system calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use luo_abi::Errno;
use luo_core::{BackingKind, BootOptions, Handover, Kernel};
use rustix::event::epoll;
use rustix::io::FdFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

mod ioctl;
mod memfd;
mod supervision;

use super::*;

pub(super) fn cmd_name(cmd: u32) -> String {
    match cmd {
        CREATE_SESSION => "CREATE_SESSION".into(),
        RETRIEVE_SESSION => "RETRIEVE_SESSION".into(),
        PRESERVE_FD => "SESSION_PRESERVE_FD".into(),
        RETRIEVE_FD => "SESSION_RETRIEVE_FD".into(),
        FINISH => "SESSION_FINISH".into(),
        GET_NAME => "SESSION_GET_NAME".into(),
        c => format!("{c:#x}"),
    }
}

pub(super) fn op_size(cmd: u32) -> usize {
    match cmd {
        CREATE_SESSION | RETRIEVE_SESSION | GET_NAME => 72,
        PRESERVE_FD | RETRIEVE_FD => 16,
        _ => 8,
    }
}

pub(super) enum Kind {
    Fresh,
    Dev(i32),
    Session(i32),
}

pub(super) struct Conn {
    pub(super) sock: OwnedFd,
    pub(super) kind: Kind,
    pub(super) pid: i32,
}

/// A core memfd standing for a host file the programs see.
pub(super) struct Mirror {
    pub(super) core_fd: i32,
    /// A duplicate of the program's fd (same open file description), read for its position:
    /// the preserved fd, or the file a first RETRIEVE_FD opened (later ones dup it).
    pub(super) client: Option<OwnedFd>,
    /// For a retrieved file: the session connection it was retrieved through (the mirror
    /// lives as long as that session can hand out the file again).
    pub(super) session: Option<u64>,
    /// The host file's size when it was preserved: the kernel's frozen inode cannot change
    /// size, so whatever a program did past the freeze (io_uring) is undone at the kexec.
    pub(super) preserved_size: Option<u64>,
    /// Seals a program added while the file was frozen: the old kernel's inode has them, the
    /// record written at preserve time does not. Kept here, never on the host file (which the
    /// next boot adopts), until the file thaws.
    pub(super) late_seals: u32,
}

/// Event-loop id of the listening socket (connection ids start at 1).
pub(super) const LISTENER: u64 = 0;

pub(super) struct Daemon {
    pub(super) kernel: Kernel,
    /// The event loop: the listener and every connection, by id.
    pub(super) epoll: OwnedFd,
    pub(super) listener: OwnedFd,
    pub(super) conns: BTreeMap<u64, Conn>,
    pub(super) next_id: u64,
    pub(super) mirrors: HashMap<(u64, u64), Mirror>,
    pub(super) verbose: bool,
    pub(super) nonce: String,
    pub(super) pairs: u64,
    /// The connection whose request is being served.
    pub(super) serving: u64,
    /// How the machine boots (again, in this process, after a failed re-exec).
    pub(super) boot: BootOptions,
    /// A descriptor held in reserve, given up to refuse a connection when none is left.
    pub(super) spare: Option<OwnedFd>,
    /// The seccomp listeners of the processes under the freeze supervision, by event-loop id.
    pub(super) supervisors: BTreeMap<u64, OwnedFd>,
    /// Inodes handed out by RETRIEVE_FD in this boot, which the preload presents as the
    /// kernel's new files (mode 0777, no name). One entry per retrieve.
    pub(super) retrieved: HashSet<(u64, u64)>,
}

pub(super) fn spare_fd() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

pub(super) type Reply = (i32, Vec<u8>, Option<OwnedFd>);

pub(super) fn err(e: Errno) -> Reply {
    (e.to_neg(), Vec::new(), None)
}

pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])))
}

pub(super) fn put_i32(b: &mut [u8], off: usize, v: i32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

/// `f_type` is `i64` on some targets and narrower on others.
#[allow(clippy::unnecessary_cast)]
pub(super) fn is_tmpfs(s: &rustix::fs::StatFs) -> bool {
    s.f_type as i64 == TMPFS_MAGIC
}

pub(super) fn host_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error()).unwrap_or(Errno::EIO)
}

/// Sends one packet, with at most one fd.
pub(super) fn send_pkt(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> rustix::io::Result<()> {
    send_pkt_flags(sock, data, fd, SendFlags::NOSIGNAL)
}

pub(super) fn send_pkt_flags(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
    flags: SendFlags,
) -> rustix::io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(f) = fd {
        fds = [f];
        cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(sock, &[std::io::IoSlice::new(data)], &mut cmsg, flags)?;
    Ok(())
}

/// What of a received packet was cut off.
#[derive(Clone, Copy)]
pub(super) struct Trunc {
    /// The bytes (a packet longer than any request).
    pub(super) data: bool,
    /// The passed descriptors (the kernel sets it when the receiver is out of descriptors).
    pub(super) control: bool,
}

/// A received packet: bytes, passed fds, what was truncated.
pub(super) type Packet = (Vec<u8>, Vec<OwnedFd>, Trunc);

/// Receives one packet and the fds it carries: `None` at end of stream.
pub(super) fn recv_pkt(sock: BorrowedFd<'_>) -> rustix::io::Result<Option<Packet>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if r.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(r.bytes);
    let trunc = Trunc {
        data: r.flags.contains(rustix::net::ReturnFlags::TRUNC),
        control: r.flags.contains(rustix::net::ReturnFlags::CTRUNC),
    };
    Ok(Some((buf, fds, trunc)))
}

pub(super) fn raise_nofile() {
    if let Ok(l) = Some(rustix::process::getrlimit(
        rustix::process::Resource::Nofile,
    ))
    .ok_or(())
        && let Some(max) = l.maximum
    {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}

pub(super) fn bind_listener(path: &Path) -> Result<OwnedFd, SimError> {
    let addr = SocketAddrUnix::new(path)?;
    // Only a socket is ever replaced: the path may name a user's file (`--socket ~/notes`).
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if !t.is_socket() {
            let kind = if t.is_dir() {
                "a directory"
            } else if t.is_symlink() {
                "a symbolic link"
            } else if t.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            return Err(SimError::Daemon(format!(
                "refusing to put the socket at {}: it exists and is {kind}; remove it or give \
                 another path with --socket",
                path.display()
            )));
        }
        let probe = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        if rustix::net::connect(&probe, &addr).is_ok() {
            return Err(SimError::Daemon(format!(
                "a luo-sim daemon already listens on {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&l, &addr)?;
    // Only the owner may reach the machine: any client can end sessions or ask for a kexec.
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600))?;
    rustix::net::listen(&l, 128)?;
    Ok(l)
}

/// Runs the daemon until killed. When started by [`kexec`]'s re-exec, boots from the handover
/// and keeps the inherited listening socket.
pub fn serve(opts: &ServeOptions) -> Result<(), SimError> {
    // A daemon asked whether this program can be its next kernel: yes, before anything else.
    luo_core::exec::answer_probe();
    if supervise::under_filter() {
        return Err(SimError::Daemon(
            "this process runs under the freeze supervision of a program that opened the \
             simulated /dev/liveupdate (its seccomp filter is inherited): the daemon would wait \
             for its own answers; start it from a shell that did not open the device"
                .into(),
        ));
    }
    raise_nofile();
    let boot = BootOptions {
        backing: BackingKind::Memfd,
        arena_pages: opts.arena_pages,
        ..crate::machine::default_options()
    };
    let inherit = std::env::var(INHERIT_ENV).ok().filter(|s| !s.is_empty());
    let (listener, requester, supervisors) = match &inherit {
        Some(s) => {
            let fds: Vec<RawFd> = s
                .split_ascii_whitespace()
                .map(str::parse::<RawFd>)
                .collect::<Result<_, _>>()
                .map_err(|_| SimError::Daemon(format!("bad {INHERIT_ENV}={s:?}")))?;
            let [l, r, sup @ ..] = &fds[..] else {
                return Err(SimError::Daemon(format!("bad {INHERIT_ENV}={s:?}")));
            };
            // SAFETY: the previous daemon cleared CLOEXEC on exactly these fds for us (the
            // listener, the requester, the seccomp listeners) and nothing else in this fresh
            // process owns them.
            let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
            let (l, r) = (own(*l), own(*r));
            let sup: Vec<OwnedFd> = sup.iter().map(|&fd| own(fd)).collect();
            for f in [&l, &r].into_iter().chain(&sup) {
                rustix::io::fcntl_setfd(f, FdFlags::CLOEXEC)?;
            }
            (l, Some(r), sup)
        }
        None => (bind_listener(&opts.socket)?, None, Vec::new()),
    };
    let handover = if inherit.is_some() {
        Handover::from_env().map_err(|e| SimError::Daemon(format!("handover: {e}")))?
    } else {
        None
    };
    let booted = Kernel::boot(&boot, handover);
    let kernel = match booted {
        Ok(k) => k,
        Err(e) => {
            let msg = format!("boot from the preserved memory failed: {e}");
            if let Some(r) = &requester {
                let mut b = Errno::EIO.to_neg().to_ne_bytes().to_vec();
                b.extend_from_slice(msg.as_bytes());
                let _ = send_pkt(r.as_fd(), &b, None);
            }
            return Err(SimError::Daemon(msg));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        &listener,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )?;
    let mut d = Daemon {
        kernel,
        epoll: ep,
        listener,
        conns: BTreeMap::new(),
        next_id: 1,
        mirrors: HashMap::new(),
        verbose: opts.verbose,
        nonce: format!("{}:{now:x}", std::process::id()),
        pairs: 0,
        serving: 0,
        boot: boot.clone(),
        spare: spare_fd(),
        supervisors: BTreeMap::new(),
        retrieved: HashSet::new(),
    };
    for l in supervisors {
        // A listener that cannot be watched any more leaves its processes' filtered calls
        // failing with ENOSYS: said in the log.
        if let Err(e) = d.supervise(l) {
            d.log(format_args!(
                "an inherited seccomp listener was dropped: {e:?}"
            ));
        }
    }
    let num = d.kernel.liveupdate_num();
    d.log(format_args!(
        "machine up (kernel {}, liveupdate_num {num}), listening on {}",
        d.boot.version,
        opts.socket.display()
    ));
    if let Some(r) = requester {
        deserialize_now(&d.kernel);
        let mut b = 0i32.to_ne_bytes().to_vec();
        let st = d.kernel.stats();
        b.extend_from_slice(
            format!(
                "kexec done: liveupdate_num {num}, {} incoming sessions",
                st.incoming_sessions
            )
            .as_bytes(),
        );
        let _ = send_pkt(r.as_fd(), &b, None);
    }
    d.run()
}

impl Daemon {
    pub(super) fn log(&self, args: std::fmt::Arguments<'_>) {
        if self.verbose {
            // A closed log reader must not take the machine down: the error is dropped.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("[luo-sim] {args}\n"),
            );
        }
    }

    pub(super) fn run(&mut self) -> Result<(), SimError> {
        // epoll, not poll: with thousands of session connections open (upstream's selftests
        // create 2,000 sessions), rebuilding and scanning a poll set per request made every
        // call O(connections).
        let mut events = Vec::with_capacity(256);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<(u64, epoll::EventFlags)> =
                events.iter().map(|e| (e.data.u64(), e.flags)).collect();
            // Hang-ups first: a program's close happened before any request it sent after.
            let (hup, rest): (Vec<_>, Vec<_>) = ready.into_iter().partition(|(id, f)| {
                *id != LISTENER && f.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR)
            });
            for (id, f) in hup.into_iter().chain(rest) {
                if id == LISTENER {
                    self.accept();
                } else if self.supervisors.contains_key(&id) {
                    self.serve_notification(id, f);
                } else {
                    self.serve_conn(id);
                }
            }
        }
    }

    /// Registers a connection's socket with the event loop under its id.
    pub(super) fn watch(&self, sock: BorrowedFd<'_>, id: u64) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            sock,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN,
        )
    }

    pub(super) fn accept(&mut self) {
        let s = match rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC) {
            Ok(s) => s,
            Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => {
                // Out of descriptors: the pending connection would keep the listener readable
                // and poll would spin. Give up the spare descriptor to accept it and hang it
                // up at once (the client's open fails instead of waiting), then take the
                // spare back.
                self.spare = None;
                if let Ok(c) = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC) {
                    drop(c);
                    self.log(format_args!("out of descriptors: a connection was refused"));
                }
                self.spare = spare_fd();
                return;
            }
            Err(_) => return,
        };
        let pid =
            rustix::net::sockopt::socket_peercred(&s).map_or(0, |c| c.pid.as_raw_nonzero().get());
        let id = self.next_id;
        self.next_id += 1;
        if self.watch(s.as_fd(), id).is_err() {
            return;
        }
        self.conns.insert(
            id,
            Conn {
                sock: s,
                kind: Kind::Fresh,
                pid,
            },
        );
    }

    pub(super) fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            match c.kind {
                Kind::Dev(fd) => {
                    let _ = self.kernel.close(fd);
                    self.log(format_args!("pid {}: close /dev/liveupdate", c.pid));
                }
                Kind::Session(fd) => {
                    let name = self.kernel.file(fd).map(|f| f.name().to_owned());
                    let _ = self.kernel.close(fd);
                    self.log(format_args!(
                        "pid {}: last close of {}",
                        c.pid,
                        name.unwrap_or_default()
                    ));
                    self.prune(Some(id));
                }
                Kind::Fresh => {}
            }
        }
    }

    pub(super) fn serve_conn(&mut self, id: u64) {
        let sock = match self.conns.get(&id) {
            Some(c) => c.sock.as_fd().as_raw_fd(),
            None => return,
        };
        // SAFETY: the connection (and its fd) stays in `conns` for this borrow's use below.
        let sock = unsafe { BorrowedFd::borrow_raw(sock) };
        let (msg, mut fds, trunc) = match recv_pkt(sock) {
            Ok(Some(m)) => m,
            Err(rustix::io::Errno::AGAIN) => return,
            Ok(None) | Err(_) => return self.drop_conn(id),
        };
        let op = u32_at(&msg, 0);
        let passed = if fds.is_empty() {
            None
        } else {
            Some(fds.swap_remove(0))
        };
        drop(fds);
        let (ret, data, fd) = if trunc.data || msg.len() < 4 {
            err(Errno::EINVAL)
        } else if trunc.control {
            // The request was whole but its descriptor could not be received: this daemon is
            // out of descriptors.
            err(Errno::EMFILE)
        } else {
            match op {
                OP_OPEN => self.open(id),
                OP_IOCTL => self.ioctl(id, &msg, passed),
                OP_KEXEC => {
                    // The path's bytes as they are (no lossy conversion: a non-UTF-8 path must
                    // name the same file, or fail the checks before the freeze).
                    use std::os::unix::ffi::OsStringExt as _;
                    let into = OsString::from_vec(msg[4..].to_vec());
                    return self.kexec(id, (!into.is_empty()).then(|| PathBuf::from(into)));
                }
                OP_PING => (0, Vec::new(), None),
                OP_SUPERVISE => match passed.map(|l| self.supervise(l)) {
                    Some(Ok(())) => (0, Vec::new(), None),
                    Some(Err(e)) => err(e),
                    None => err(Errno::EBADF),
                },
                OP_RETRIEVED if msg.len() >= 20 => {
                    let word = |i| u64::from(u32_at(&msg, i));
                    let key = (word(4) | word(8) << 32, word(12) | word(16) << 32);
                    (i32::from(self.retrieved.contains(&key)), Vec::new(), None)
                }
                _ => err(Errno::EINVAL),
            }
        };
        let mut out = ret.to_ne_bytes().to_vec();
        out.extend_from_slice(&data);
        // Never block on one client: one that sends requests without reading the replies
        // fills its socket and is dropped instead of stalling every other client.
        if send_pkt_flags(
            sock,
            &out,
            fd.as_ref().map(|f| f.as_fd()),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )
        .is_err()
        {
            self.log(format_args!(
                "connection {id}: the reply could not be sent; dropped"
            ));
            self.drop_conn(id);
        }
    }

    pub(super) fn kexec(&mut self, id: u64, into: Option<PathBuf>) {
        let Some(req) = self.conns.remove(&id) else {
            return;
        };
        for m in self.mirrors.values() {
            self.sync(m);
            self.restore_preserved_size(m);
        }
        self.log(format_args!("kexec requested (pid {})", req.pid));
        // The next "kernel" must be runnable before anything is frozen: a kexec that cannot
        // start leaves the machine and its sessions as they were (the kernel loads the next
        // image before the reboot path runs). The default is this very binary through
        // /proc/self/exe, which still names it after a rebuild replaced the file on disk.
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let checked = match &into {
            // Another program must show it boots from a handover (run as the re-exec will
            // run it): `/bin/true` would take the frozen machine with it.
            Some(p) => check_exec(p).and_then(|()| luo_core::exec::probe(p, &args)),
            None => Ok(()),
        };
        let program = into.unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        if let Err(why) = checked.and_then(|()| check_exec(&program)) {
            let msg = format!(
                "cannot kexec into {}: {why}; nothing was frozen, the machine carries on \
                 (--into takes a luo or luo-sim-daemon binary)",
                program.display()
            );
            self.log(format_args!("{msg}"));
            let mut b = Errno::from_raw(8)
                .unwrap_or(Errno::EINVAL)
                .to_neg()
                .to_ne_bytes()
                .to_vec(); // ENOEXEC
            b.extend_from_slice(msg.as_bytes());
            let _ = send_pkt(req.sock.as_fd(), &b, None);
            self.conns.insert(id, req);
            return;
        }
        let h = match self.kernel.kexec() {
            Ok(h) => h,
            Err(e) => {
                let msg = format!("reboot failed: {e:?}; the machine carries on");
                self.log(format_args!("{msg}"));
                let mut b = e.to_neg().to_ne_bytes().to_vec();
                b.extend_from_slice(msg.as_bytes());
                let _ = send_pkt(req.sock.as_fd(), &b, None);
                self.conns.insert(id, req);
                return;
            }
        };
        self.conns.clear();
        self.mirrors.clear();
        self.retrieved.clear();
        // The seccomp listeners go along: the processes under them outlive the simulated
        // kexec, and a filter whose listener is closed fails their calls with ENOSYS.
        let inherited: Vec<BorrowedFd<'_>> = [self.listener.as_fd(), req.sock.as_fd()]
            .into_iter()
            .chain(self.supervisors.values().map(|l| l.as_fd()))
            .collect();
        let ok = inherited
            .iter()
            .all(|f| rustix::io::fcntl_setfd(f, FdFlags::empty()).is_ok());
        let e = if ok {
            let list: Vec<String> = inherited
                .iter()
                .map(|f| f.as_raw_fd().to_string())
                .collect();
            let env = [(INHERIT_ENV.to_owned(), list.join(" "))];
            self.log(format_args!("re-exec {}", program.display()));
            h.try_exec(&program, &args, &env)
        } else {
            (Errno::EIO, h)
        };
        let (e, h) = e;
        for f in &inherited {
            let _ = rustix::io::fcntl_setfd(f, FdFlags::CLOEXEC);
        }
        drop(inherited);
        // The exec failed after the freeze (checked above, so the file changed meanwhile): the
        // machine lives on in this process, booted from the handover, as after a kexec.
        let msg = match Kernel::boot(&self.boot, Some(h)) {
            Ok(k) => {
                self.kernel = k;
                deserialize_now(&self.kernel);
                let n = self.kernel.stats().incoming_sessions;
                format!(
                    "re-exec of {} failed: {e:?}; booted from the handover in this process \
                     instead (liveupdate_num {}, {n} incoming sessions)",
                    program.display(),
                    self.kernel.liveupdate_num()
                )
            }
            Err(b) => {
                let msg = format!(
                    "re-exec of {} failed: {e:?}, and booting from the handover here failed: {b}",
                    program.display()
                );
                let mut out = Errno::EIO.to_neg().to_ne_bytes().to_vec();
                out.extend_from_slice(msg.as_bytes());
                let _ = send_pkt(req.sock.as_fd(), &out, None);
                eprintln!("[luo-sim] {msg}");
                std::process::exit(1);
            }
        };
        self.log(format_args!("{msg}"));
        let mut b = Errno::EIO.to_neg().to_ne_bytes().to_vec();
        b.extend_from_slice(msg.as_bytes());
        let _ = send_pkt(req.sock.as_fd(), &b, None);
    }
}
