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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use luo_abi::Errno;
use luo_abi::file::ShmemFile;
use luo_core::{BackingKind, BootOptions, Handover, Kernel};
use rustix::event::epoll;
use rustix::io::FdFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

#[allow(missing_docs)]
pub mod boot_image;
pub mod inspect;
pub mod machine;
pub mod progress;
mod proto;
pub mod simulate;
pub mod size;
mod supervise;
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

fn cmd_name(cmd: u32) -> String {
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

fn op_size(cmd: u32) -> usize {
    match cmd {
        CREATE_SESSION | RETRIEVE_SESSION | GET_NAME => 72,
        PRESERVE_FD | RETRIEVE_FD => 16,
        _ => 8,
    }
}

enum Kind {
    Fresh,
    Dev(i32),
    Session(i32),
}

struct Conn {
    sock: OwnedFd,
    kind: Kind,
    pid: i32,
}

/// A core memfd standing for a host file the programs see.
struct Mirror {
    core_fd: i32,
    /// A duplicate of the program's fd (same open file description), read for its position:
    /// the preserved fd, or the file a first RETRIEVE_FD opened (later ones dup it).
    client: Option<OwnedFd>,
    /// For a retrieved file: the session connection it was retrieved through (the mirror
    /// lives as long as that session can hand out the file again).
    session: Option<u64>,
    /// The host file's size when it was preserved: the kernel's frozen inode cannot change
    /// size, so whatever a program did past the freeze (io_uring) is undone at the kexec.
    preserved_size: Option<u64>,
    /// Seals a program added while the file was frozen: the old kernel's inode has them, the
    /// record written at preserve time does not. Kept here, never on the host file (which the
    /// next boot adopts), until the file thaws.
    late_seals: u32,
}

/// Event-loop id of the listening socket (connection ids start at 1).
const LISTENER: u64 = 0;

struct Daemon {
    kernel: Kernel,
    /// The event loop: the listener and every connection, by id.
    epoll: OwnedFd,
    listener: OwnedFd,
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    mirrors: HashMap<(u64, u64), Mirror>,
    verbose: bool,
    nonce: String,
    pairs: u64,
    /// The connection whose request is being served.
    serving: u64,
    /// How the machine boots (again, in this process, after a failed re-exec).
    boot: BootOptions,
    /// A descriptor held in reserve, given up to refuse a connection when none is left.
    spare: Option<OwnedFd>,
    /// The seccomp listeners of the processes under the freeze supervision, by event-loop id.
    supervisors: BTreeMap<u64, OwnedFd>,
    /// Inodes handed out by RETRIEVE_FD in this boot, which the preload presents as the
    /// kernel's new files (mode 0777, no name). One entry per retrieve.
    retrieved: HashSet<(u64, u64)>,
}

fn spare_fd() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

type Reply = (i32, Vec<u8>, Option<OwnedFd>);

fn err(e: Errno) -> Reply {
    (e.to_neg(), Vec::new(), None)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])))
}

fn put_i32(b: &mut [u8], off: usize, v: i32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

/// `f_type` is `i64` on some targets and narrower on others.
#[allow(clippy::unnecessary_cast)]
fn is_tmpfs(s: &rustix::fs::StatFs) -> bool {
    s.f_type as i64 == TMPFS_MAGIC
}

fn host_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error()).unwrap_or(Errno::EIO)
}

/// Sends one packet, with at most one fd.
fn send_pkt(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> rustix::io::Result<()> {
    send_pkt_flags(sock, data, fd, SendFlags::NOSIGNAL)
}

fn send_pkt_flags(
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
struct Trunc {
    /// The bytes (a packet longer than any request).
    data: bool,
    /// The passed descriptors (the kernel sets it when the receiver is out of descriptors).
    control: bool,
}

/// A received packet: bytes, passed fds, what was truncated.
type Packet = (Vec<u8>, Vec<OwnedFd>, Trunc);

/// Receives one packet and the fds it carries: `None` at end of stream.
fn recv_pkt(sock: BorrowedFd<'_>) -> rustix::io::Result<Option<Packet>> {
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

fn raise_nofile() {
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

fn bind_listener(path: &Path) -> Result<OwnedFd, SimError> {
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
    fn log(&self, args: std::fmt::Arguments<'_>) {
        if self.verbose {
            // A closed log reader must not take the machine down: the error is dropped.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("[luo-sim] {args}\n"),
            );
        }
    }

    fn run(&mut self) -> Result<(), SimError> {
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
    fn watch(&self, sock: BorrowedFd<'_>, id: u64) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            sock,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN,
        )
    }

    fn accept(&mut self) {
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

    fn drop_conn(&mut self, id: u64) {
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

    fn serve_conn(&mut self, id: u64) {
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

    fn open(&mut self, id: u64) -> Reply {
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

    fn ioctl(&mut self, id: u64, msg: &[u8], passed: Option<OwnedFd>) -> Reply {
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
    fn ioctl_inner(
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
    fn session_conn(&mut self, core_fd: i32, pid: i32) -> Result<OwnedFd, Errno> {
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

    /// The core fd standing for a program's file (PRESERVE_FD): a core memfd mirroring a
    /// shmem file (refreshed now unless preserved), else a temporary `/dev/null` (ENOENT).
    fn adopt(&mut self, f: OwnedFd) -> Result<(i32, bool), Errno> {
        let st = rustix::fs::fstat(&f).map_err(host_errno)?;
        let shmem = rustix::fs::fstatfs(&f).is_ok_and(|s| is_tmpfs(&s))
            && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && st.st_nlink == 0;
        if !shmem {
            return Ok((self.kernel.open_null()?, true));
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(m) = self.mirrors.get(&key) {
            if m.client.is_some() {
                self.sync(m);
            }
            return Ok((m.core_fd, false));
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = link
            .strip_prefix("/memfd:")
            .map(|s| s.strip_suffix(" (deleted)").unwrap_or(s))
            .unwrap_or("shmem")
            .to_owned();
        let pos_fd = rustix::io::fcntl_dupfd_cloexec(&f, 0).map_err(host_errno)?;
        let core_fd = self.kernel.memfd_adopt(f, &name)?;
        let m = Mirror {
            core_fd,
            client: Some(pos_fd),
            session: None,
            preserved_size: None,
            late_seals: 0,
        };
        self.sync(&m);
        self.mirrors.insert(key, m);
        Ok((core_fd, false))
    }

    /// The kernel's memfd preserve pins every folio, which allocates the holes, and zeroes
    /// the folios that are not up to date: after the live update a sparse file reads back as
    /// data everywhere (SEEK_HOLE at its end; 7.2.13, tests/c/conformance/memfd.c). So the
    /// holes are written with zeros here (an fallocate'd page still counts as a hole to
    /// SEEK_HOLE on tmpfs). Best effort: a failure leaves holes, which read as zeros anyway.
    /// Returns the file's size.
    fn allocate_holes(&self, core_fd: i32) -> Option<u64> {
        let file = self.kernel.file(core_fd).ok()?;
        let mf = file.memfd()?;
        mf.with_host_fd(|h| {
            use rustix::fs::SeekFrom;
            let size = rustix::fs::fstat(h).ok()?.st_size as u64;
            // `h` shares the program's open file description: its position is put back.
            let saved = rustix::fs::seek(h, SeekFrom::Current(0));
            let zeros = vec![0u8; 1 << 16];
            let mut off = 0;
            while off < size {
                let Ok(hole) = rustix::fs::seek(h, SeekFrom::Hole(off)) else {
                    break;
                };
                if hole >= size {
                    break;
                }
                let end = rustix::fs::seek(h, SeekFrom::Data(hole)).map_or(size, |d| d.min(size));
                let mut at = hole;
                while at < end {
                    let n = ((end - at) as usize).min(zeros.len());
                    match rustix::io::pwrite(h, &zeros[..n], at) {
                        Ok(w) if w > 0 => at += w as u64,
                        _ => break,
                    }
                }
                off = end.max(at);
            }
            if let Ok(p) = saved {
                let _ = rustix::fs::seek(h, SeekFrom::Start(p));
            }
            Some(size)
        })
        .ok()
        .flatten()
    }

    /// Puts a preserved file back to its preserved size if a program changed it behind the
    /// preload's freeze, so the kexec's work (and memory) is bounded by what was preserved.
    fn restore_preserved_size(&self, m: &Mirror) {
        let Some(want) = m.preserved_size else { return };
        let Ok(file) = self.kernel.file(m.core_fd) else {
            return;
        };
        let Some(mf) = file.memfd() else { return };
        if !mf.is_frozen() {
            return;
        }
        let _ = mf.with_host_fd(|h| {
            let size = rustix::fs::fstat(h).map_or(want, |st| st.st_size as u64);
            if size != want {
                let _ = rustix::fs::ftruncate(h, want);
                self.log(format_args!(
                    "a preserved memfd was resized behind the freeze ({size} bytes): back to \
                     its preserved {want} bytes"
                ));
            }
        });
    }

    /// Reads the program's file position into the core memfd (the pages, size and seals are
    /// shared: the core adopted the program's memfd).
    fn sync(&self, m: &Mirror) {
        let Some(client) = &m.client else { return };
        let Ok(file) = self.kernel.file(m.core_fd) else {
            return;
        };
        let Some(mf) = file.memfd() else { return };
        if let Ok(pos) = rustix::fs::seek(client, rustix::fs::SeekFrom::Current(0)) {
            mf.set_pos(pos);
        }
    }

    /// Lets go of the files nothing can reach through the daemon any more, so its descriptors
    /// and the host memfds return to where they were once the sessions are gone: files that are
    /// not preserved (unpreserved by a session's close, or whose preserve failed) and files
    /// retrieved through the session connection `closed`.
    fn prune(&mut self, closed: Option<u64>) {
        let kernel = &self.kernel;
        let frozen = |m: &Mirror| {
            kernel
                .file(m.core_fd)
                .ok()
                .and_then(|f| f.memfd().map(|mf| mf.is_frozen()))
                .unwrap_or(false)
        };
        let mut gone = Vec::new();
        self.mirrors.retain(|_, m| {
            let keep = match m.session {
                Some(s) if Some(s) != closed => true,
                // A retrieved file preserved again outlives the session it came from: it is
                // a preserved file now, frozen until its new session lets it go.
                Some(_) if frozen(m) => {
                    m.session = None;
                    true
                }
                Some(_) => false,
                None => frozen(m),
            };
            if !keep {
                // Thawed: the seals added while frozen are the file's from now on, as on the
                // kernel's inode.
                if m.late_seals != 0
                    && let Some(c) = &m.client
                {
                    let _ = rustix::fs::fcntl_add_seals(
                        c,
                        rustix::fs::SealFlags::from_bits_retain(m.late_seals),
                    );
                }
                gone.push(m.core_fd);
            }
            keep
        });
        for fd in gone {
            let _ = self.kernel.close(fd);
        }
    }

    /// RETRIEVE_FD: the program gets the core memfd's host file itself.
    fn export_memfd(&mut self, core_fd: i32) -> Result<OwnedFd, Errno> {
        let file = self.kernel.file(core_fd)?;
        let Some(mf) = file.memfd() else {
            let _ = self.kernel.close(core_fd);
            return Err(Errno::EINVAL);
        };
        mf.settle()?;
        let pos = mf.pos();
        let st = mf
            .with_host_fd(|h| rustix::fs::fstat(h))?
            .map_err(host_errno)?;
        let key = (st.st_dev, st.st_ino);
        // A later RETRIEVE_FD of the same token gives another fd for the same struct file
        // (shared position): a dup of the first one's open file description.
        if let Some(Mirror {
            client: Some(ofd), ..
        }) = self.mirrors.get(&key)
        {
            let again = rustix::io::fcntl_dupfd_cloexec(ofd, 0).map_err(host_errno)?;
            let _ = self.kernel.close(core_fd);
            return Ok(again);
        }
        // The first: a new open file description of the same inode, as the kernel's retrieve
        // opens a new file (O_RDWR | O_LARGEFILE, its own position); a dup of the host fd
        // would share the flags (O_APPEND) and position of the program's preserved file.
        let host = mf
            .with_host_fd(|h| {
                rustix::fs::open(
                    format!("/proc/self/fd/{}", h.as_raw_fd()),
                    rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
            })?
            .map_err(host_errno)?;
        let _ = rustix::fs::seek(&host, rustix::fs::SeekFrom::Start(pos));
        // The kernel's retrieve makes a new file (memfd_alloc_file("") in mm/memfd_luo.c): mode
        // 0777 and an empty name, where this host file keeps the program's (an MFD_NOEXEC_SEAL
        // memfd is 0666 and cannot be chmod'ed back). The preload asks (OP_RETRIEVED) so as to
        // answer fstat and readlink of /proc/self/fd/N as for the kernel's file.
        self.retrieved.insert(key);
        let mine = rustix::io::fcntl_dupfd_cloexec(&host, 0).map_err(host_errno)?;
        if let Some(old) = self.mirrors.insert(
            key,
            Mirror {
                core_fd,
                client: Some(mine),
                session: Some(self.serving),
                preserved_size: None,
                late_seals: 0,
            },
        ) && old.core_fd != core_fd
        {
            let _ = self.kernel.close(old.core_fd);
        }
        Ok(host)
    }

    /// Takes the seccomp listener of a process that opened the device (see `supervise`):
    /// its filtered calls are answered here until every task under the filter has exited.
    fn supervise(&mut self, listener: OwnedFd) -> Result<(), Errno> {
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
    fn serve_notification(&mut self, id: u64, flags: epoll::EventFlags) {
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
    fn judge_call(&mut self, l: BorrowedFd<'_>, n: &supervise::Notif) -> supervise::Answer {
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

    fn kexec(&mut self, id: u64, into: Option<PathBuf>) {
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
