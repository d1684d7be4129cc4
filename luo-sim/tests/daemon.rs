// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The daemon against hostile or careless clients: who may connect, a client that never reads
//! its replies, a daemon out of descriptors.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("luo-sim-daemon-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(socket: &Path, nofile: Option<u64>) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_luo-sim-daemon"));
    cmd.args(["serve", "--quiet", "--socket"])
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(n) = nofile {
        // SAFETY: between fork and exec only setrlimit runs, an async-signal-safe syscall.
        unsafe {
            cmd.pre_exec(move || {
                let l = rustix::process::Rlimit {
                    current: Some(n),
                    maximum: Some(n),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, l)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let d = Daemon(cmd.spawn().unwrap());
    assert!(luo_sim::wait_ready(socket, Duration::from_secs(10)));
    d
}

fn raw_conn(socket: &Path) -> rustix::io::Result<rustix::fd::OwnedFd> {
    let s = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )?;
    rustix::net::connect(&s, &rustix::net::SocketAddrUnix::new(socket)?)?;
    Ok(s)
}

/// `ping` on another thread, with a deadline: whether it answered, or `None` if it hung.
fn ping_within(socket: &Path, secs: u64) -> Option<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    let s = socket.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(luo_sim::ping(&s));
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn socket_is_reachable_by_its_owner_only() {
    let dir = scratch("mode");
    let socket = dir.join("sim.sock");
    let _d = start(&socket, None);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// A client that sends requests and never reads the replies is dropped once its socket is
/// full; every other client is served meanwhile (the daemon used to block in sendmsg).
#[test]
fn a_client_that_never_reads_cannot_stall_others() {
    let dir = scratch("noread");
    let socket = dir.join("sim.sock");
    let _d = start(&socket, None);
    let flood = raw_conn(&socket).unwrap();
    let ping = 4u32.to_ne_bytes();
    let mut sent = 0u32;
    let mut dropped = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        match rustix::net::send(&flood, &ping, rustix::net::SendFlags::DONTWAIT) {
            Ok(_) => sent += 1,
            Err(rustix::io::Errno::AGAIN) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => {
                dropped = true;
                break;
            }
        }
        if sent.is_multiple_of(100) {
            assert_eq!(
                ping_within(&socket, 5),
                Some(true),
                "stalled after {sent} requests"
            );
        }
    }
    assert!(
        dropped,
        "the flooding client was never dropped ({sent} requests)"
    );
    assert_eq!(ping_within(&socket, 5), Some(true));
}

/// Out of descriptors, the daemon refuses new connections at once instead of spinning on
/// accept (and a client's open no longer hangs); it serves again once descriptors free up.
#[test]
fn out_of_descriptors_refuses_without_spinning() {
    let dir = scratch("nofile");
    let socket = dir.join("sim.sock");
    let d = start(&socket, Some(48));
    let pid = d.0.id();
    let mut conns = Vec::new();
    for _ in 0..120 {
        if let Ok(c) = raw_conn(&socket) {
            conns.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 20,
        "the daemon used {used} ticks of CPU in 1 s while idle"
    );
    assert_eq!(
        ping_within(&socket, 10),
        Some(false),
        "a full daemon must refuse, not hang"
    );
    drop(conns);
    let start = Instant::now();
    while ping_within(&socket, 10) != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not recover"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
