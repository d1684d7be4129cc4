// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The daemon destroys nothing it was not asked to: a `--socket` path that names anything but
//! a socket is left alone, and `luo sim kexec --into` a program that is not a luo binary is
//! refused before anything is frozen, the machine and its sessions carrying on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn scratch(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("daemon-refusals-{}-{tag}", std::process::id()));
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

fn daemon(socket: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_luo-sim-daemon"));
    cmd.args(["serve", "--quiet", "--socket"]).arg(socket);
    cmd
}

#[test]
fn an_existing_non_socket_at_the_socket_path_is_left_alone() {
    let dir = scratch("nonsocket");
    let file = dir.join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let subdir = dir.join("a-dir");
    std::fs::create_dir(&subdir).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for (path, kind) in [
        (&file, "a regular file"),
        (&subdir, "a directory"),
        (&link, "a symbolic link"),
    ] {
        let o = daemon(path).stdout(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: {err}", path.display());
        assert!(
            err.contains(&path.display().to_string())
                && err.contains(kind)
                && err.contains("--socket"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert!(subdir.is_dir());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A socket left behind by a daemon that died is still replaced.
#[test]
fn a_stale_socket_is_replaced() {
    let dir = scratch("stale");
    let socket = dir.join("sim.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let _d = Daemon(daemon(&socket).stdout(Stdio::null()).spawn().unwrap());
    assert!(luo_sim::wait_ready(&socket, Duration::from_secs(10)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kexec_into_a_program_that_is_not_luo_is_refused_before_the_freeze() {
    let dir = scratch("into");
    let socket = dir.join("sim.sock");
    let _d = Daemon(daemon(&socket).stdout(Stdio::null()).spawn().unwrap());
    assert!(luo_sim::wait_ready(&socket, Duration::from_secs(10)));
    // An ELF executable that exits 0 having done nothing, and a script that prints the wrong
    // answer.
    let script = dir.join("liar.sh");
    std::fs::write(&script, "#!/bin/sh\necho yes\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for into in [Path::new("/bin/true"), &script] {
        let e = luo_sim::kexec(&socket, Some(into)).unwrap_err().to_string();
        assert!(
            e.contains("not a luo binary") && e.contains("nothing was frozen"),
            "{}: {e}",
            into.display()
        );
        assert!(
            luo_sim::ping(&socket),
            "the daemon is gone after {}",
            into.display()
        );
    }
    // The machine never rebooted: the first real kexec is its first.
    let report = luo_sim::kexec(&socket, None).unwrap();
    assert!(report.contains("liveupdate_num 1"), "{report}");
    // And the daemon binary itself is accepted as the next kernel.
    let report = luo_sim::kexec(
        &socket,
        Some(Path::new(env!("CARGO_BIN_EXE_luo-sim-daemon"))),
    )
    .unwrap();
    assert!(report.contains("liveupdate_num 2"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
