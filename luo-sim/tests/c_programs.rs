//! Unmodified C programs (tests/c/sim) against the daemon, through the preload library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
