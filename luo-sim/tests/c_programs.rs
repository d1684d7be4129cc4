// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Unmodified C programs (tests/c/sim) against the daemon, through the preload library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// SIGTERM to a holder process a program left behind (no `kill` binary needed:
/// procps is not on every machine).
fn terminate(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("luo-sim-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles `tests/c/sim/NAME.c` into `dir`.
fn build(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let src = root().join(format!("tests/c/sim/{name}.c"));
    let st = Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror", "-I"])
        .arg(root().join("generated/include/uapi"))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc {}", src.display());
    out
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let socket = dir.join("sim.sock");
        let log = dir.join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_luo-sim-daemon"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            luo_sim::wait_ready(&socket, Duration::from_secs(10)),
            "daemon did not come up"
        );
        Daemon { child, socket, log }
    }

    fn run(&self, prog: &Path, args: &[&str]) -> std::process::Output {
        Command::new(prog)
            .args(args)
            .env("LD_PRELOAD", luo_sim::PRELOAD)
            .env("LUO_SIM_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run_ok(&self, prog: &Path, args: &[&str]) -> String {
        let o = self.run(prog, args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{} {args:?} failed: {}\nstdout: {out}\nstderr: {}\ndaemon log tail: {}",
            prog.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        out
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn basic_uapi_behaviours() {
    let dir = scratch("basic");
    let prog = build(&dir, "basic");
    let d = Daemon::start(&dir);
    let out = d.run_ok(&prog, &[]);
    assert!(out.contains("basic: ok"), "{out}");
    // The daemon logged the calls.
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("CREATE_SESSION"), "{log}");
}

#[test]
fn no_daemon_means_no_device() {
    let dir = scratch("nodaemon");
    let prog = build(&dir, "nodev");
    let o = Command::new(&prog)
        .env("LD_PRELOAD", luo_sim::PRELOAD)
        .env("LUO_SIM_SOCKET", dir.join("absent.sock"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn two_stage(d: &Daemon, dir: &Path, nsess: u32, nfiles: u32) {
    let s1 = build(dir, "stage1");
    let s2 = build(dir, "stage2");
    let (ns, nf) = (nsess.to_string(), nfiles.to_string());
    let out = d.run_ok(&s1, &[&ns, &nf]);
    let child: i32 = out.trim().parse().expect("child pid");
    let report =
        luo_sim::kexec(&d.socket, None).unwrap_or_else(|e| panic!("kexec: {e}\n{}", d.log_tail()));
    assert!(report.contains("kexec done"), "{report}");
    let out = d.run_ok(&s2, &[&ns, &nf]);
    assert!(out.contains("stage2: ok"), "{out}");
    terminate(child);
}

#[test]
fn two_stage_kexec() {
    let dir = scratch("twostage");
    let d = Daemon::start(&dir);
    two_stage(&d, &dir, 1, 1);
    two_stage(&d, &dir, 5, 20);
    two_stage(&d, &dir, 2000, 500);
}

#[test]
fn fuzz_and_crashes_leave_the_daemon_working() {
    let dir = scratch("fuzz");
    let d = Daemon::start(&dir);
    let fuzz = build(&dir, "fuzz");
    let basic = build(&dir, "basic");
    let out = d.run_ok(&fuzz, &["10000", "12345"]);
    assert!(out.contains("survived"), "{out}");
    // A client killed in the middle of its calls.
    let mut c = Command::new(&fuzz)
        .args(["100000000", "7"])
        .env("LD_PRELOAD", luo_sim::PRELOAD)
        .env("LUO_SIM_SOCKET", &d.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.kill().unwrap();
    c.wait().unwrap();
    // Garbage packets straight to the socket get an errno, not a crash.
    for len in [0usize, 1, 3, 4, 15, 16, 17, 100, 5000] {
        let s = std::os::unix::net::UnixStream::connect(&d.socket);
        drop(s); // wrong socket type: refused or dropped
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            None,
        )
        .unwrap();
        rustix::net::connect(&sock, &rustix::net::SocketAddrUnix::new(&d.socket).unwrap()).unwrap();
        let junk: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
        let _ = rustix::net::send(&sock, &junk, rustix::net::SendFlags::empty());
        let mut b = [0u8; 64];
        let _ = rustix::io::read(&sock, &mut b);
    }
    assert!(luo_sim::ping(&d.socket));
    let out = d.run_ok(&basic, &[]);
    assert!(out.contains("basic: ok"), "{out}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The daemon's descriptor count once it has handled the hang-ups of our last connections
/// (it sees them asynchronously): the count when it has not changed for 100 ms.
fn settled_fds(pid: u32) -> usize {
    let mut last = open_fds(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let n = open_fds(pid);
        if n == last {
            return n;
        }
        last = n;
    }
    last
}

/// The daemon let go of every descriptor a session's files took once the sessions are gone:
/// closed outgoing sessions, refused preserves, and retrieved files of a finished and closed
/// incoming session (it kept two descriptors and the memfd per preserved memfd until the next
/// kexec, and ran out of descriptors after ~19 runs of upstream's `liveupdate`).
#[test]
fn daemon_descriptors_return_to_their_starting_count() {
    let dir = scratch("fds");
    let prog = build(&dir, "sessions_close");
    let d = Daemon::start(&dir);
    let pid = d.child.id();
    let base = settled_fds(pid);
    for round in 0..40 {
        let how = if round % 2 == 0 { "close" } else { "refused" };
        let out = d.run_ok(&prog, &[how]);
        assert!(out.contains("ok"), "{out}");
        assert_eq!(
            settled_fds(pid),
            base,
            "after run {round} ({how})\n{}",
            d.log_tail()
        );
    }
    let out = d.run_ok(&prog, &["hold"]);
    let child: i32 = out.trim().parse().expect("child pid");
    let report = luo_sim::kexec(&d.socket, None).unwrap();
    assert!(report.contains("kexec done"), "{report}");
    terminate(child);
    let out = d.run_ok(&prog, &["retrieve"]);
    assert!(out.contains("retrieve: ok"), "{out}");
    // The re-exec'd daemon may hold the listener and its arena differently; its count after
    // the retrieved session is gone must equal its count on a fresh round.
    let after = settled_fds(pid);
    for _ in 0..5 {
        d.run_ok(&prog, &["close"]);
        assert_eq!(settled_fds(pid), after, "{}", d.log_tail());
    }
    // No host memfd of a finished session is left open.
    let memfds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("/memfd:m "))
        .count();
    assert_eq!(memfds, 0);
}

/// Sends OP_KEXEC (3) with raw path bytes; the daemon's answer: (ret, text).
fn raw_kexec(socket: &Path, path: &[u8]) -> (i32, String) {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    rustix::net::connect(&sock, &rustix::net::SocketAddrUnix::new(socket).unwrap()).unwrap();
    let mut msg = 3u32.to_ne_bytes().to_vec();
    msg.extend_from_slice(path);
    rustix::net::send(&sock, &msg, rustix::net::SendFlags::empty()).unwrap();
    let mut b = [0u8; 4096];
    let n = rustix::io::read(&sock, &mut b).unwrap();
    assert!(n >= 4, "no answer");
    (
        i32::from_ne_bytes(b[..4].try_into().unwrap()),
        String::from_utf8_lossy(&b[4..n]).into_owned(),
    )
}

/// A kexec whose next binary cannot run leaves the machine and its sessions as they were (it
/// used to freeze, fail the re-exec and exit, losing every session): missing, not executable,
/// not a program, a NUL byte, non-UTF-8 bytes. A binary that passes the checks and still fails
/// to exec (a script whose interpreter is missing) boots the machine from the handover in the
/// daemon's own process instead: the sessions crossed.
#[test]
fn failed_kexec_leaves_the_machine_and_its_sessions() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("failkexec");
    let d = Daemon::start(&dir);
    let s1 = build(&dir, "stage1");
    let s2 = build(&dir, "stage2");
    let out = d.run_ok(&s1, &["3", "4"]);
    let child: i32 = out.trim().parse().expect("child pid");
    let plain = dir.join("plain");
    std::fs::write(&plain, b"not a program").unwrap();
    let noexec = dir.join("noexec");
    std::fs::copy(&s1, &noexec).unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut bad: Vec<Vec<u8>> = vec![
        b"/nonexistent/luo".to_vec(),
        plain.as_os_str().as_encoded_bytes().to_vec(),
        noexec.as_os_str().as_encoded_bytes().to_vec(),
        b"/bin/true\0/x".to_vec(),
        b"/tmp/\xff\xfe-luo".to_vec(),
    ];
    bad.push(dir.as_os_str().as_encoded_bytes().to_vec());
    for p in &bad {
        let (ret, text) = raw_kexec(&d.socket, p);
        assert!(ret < 0, "{}: {text}", String::from_utf8_lossy(p));
        assert!(text.contains("nothing was frozen"), "{text}");
        assert!(luo_sim::ping(&d.socket), "the daemon went away");
    }
    // Still the first boot: the sessions are outgoing and cross a real kexec.
    let report = luo_sim::kexec(&d.socket, None).unwrap();
    assert!(
        report.contains("liveupdate_num 1, 3 incoming sessions"),
        "{report}"
    );
    terminate(child);
    let out = d.run_ok(&s2, &["3", "4"]);
    assert!(out.contains("stage2: ok"), "{out}");

    // Checks passed, exec failed: the machine boots from the handover in place. The script
    // answers the handover probe, then turns itself into one whose interpreter is missing,
    // so the exec after the freeze fails.
    let out = d.run_ok(&s1, &["2", "2"]);
    let child: i32 = out.trim().parse().expect("child pid");
    let script = dir.join("script");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho '{}'\nprintf '#!/nonexistent/interpreter\\n' > \"$0\"\n",
            luo_core::exec::PROBE_ANSWER
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ret, text) = raw_kexec(&d.socket, script.as_os_str().as_encoded_bytes());
    assert!(ret < 0, "{text}");
    assert!(
        text.contains("booted from the handover in this process"),
        "{text}"
    );
    assert!(
        text.contains("liveupdate_num 2, 2 incoming sessions"),
        "{text}"
    );
    terminate(child);
    let out = d.run_ok(&s2, &["2", "2"]);
    assert!(out.contains("stage2: ok"), "{out}");
}

/// A preserved memfd grown behind the freeze (a raw ftruncate the preload cannot see) is put
/// back to its preserved size at the kexec: the kexec's work and memory are bounded by what
/// was preserved (4 GiB of growth used to cost 4 GiB of host memory and seconds), and the file
/// comes back as the kernel would have kept it.
#[test]
fn growth_behind_the_freeze_is_undone_at_kexec() {
    let dir = scratch("grow");
    let d = Daemon::start(&dir);
    let prog = build(&dir, "grow_behind");
    let out = d.run_ok(&prog, &["1"]);
    let child: i32 = out.trim().parse().expect("child pid");
    let t = std::time::Instant::now();
    let report = luo_sim::kexec(&d.socket, None).unwrap();
    let took = t.elapsed();
    terminate(child);
    assert!(report.contains("kexec done"), "{report}");
    assert!(
        std::fs::read_to_string(&d.log)
            .unwrap()
            .contains("resized behind the freeze (4294967296 bytes): back to its preserved 5000"),
        "{}",
        d.log_tail()
    );
    assert!(took < Duration::from_secs(3), "kexec took {took:?}");
    let out = d.run_ok(&prog, &["2"]);
    assert!(out.contains("grow: ok"), "{out}");
}

/// `luo sim kexec` after the daemon's binary was replaced on disk (a rebuild): the re-exec goes
/// through /proc/self/exe, which still names the running binary, so the machine and its
/// sessions cross (it used to exec the "(deleted)" path, fail after the freeze and exit).
#[test]
fn kexec_after_the_binary_was_deleted() {
    let dir = scratch("deleted");
    let bin = dir.join("luo-sim-daemon-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_luo-sim-daemon"), &bin).unwrap();
    let socket = dir.join("sim.sock");
    let log = dir.join("daemon.log");
    let child = Command::new(&bin)
        .args(["serve", "--socket"])
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon { child, socket, log };
    assert!(luo_sim::wait_ready(&d.socket, Duration::from_secs(10)));
    std::fs::remove_file(&bin).unwrap();
    let s1 = build(&dir, "stage1");
    let s2 = build(&dir, "stage2");
    let out = d.run_ok(&s1, &["2", "3"]);
    let holder: i32 = out.trim().parse().expect("child pid");
    let report =
        luo_sim::kexec(&d.socket, None).unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    terminate(holder);
    assert!(
        report.contains("liveupdate_num 1, 2 incoming sessions"),
        "{report}"
    );
    let out = d.run_ok(&s2, &["2", "3"]);
    assert!(out.contains("stage2: ok"), "{out}");
}
