// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Nothing destroyed, written or reported as done that the user did not ask for: each case
//! is refused with an error naming the path or value and the next step, before any effect.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// A fresh directory outside the repository (the system's temporary directory: the
/// target directory is inside the repository, where `luo` would find it).
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("refusals-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// `luo ARGS` run in `cwd`.
fn luo_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luo"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run luo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[test]
fn simulate_next_that_is_not_luo_is_refused_before_anything_is_preserved() {
    let o = luo_in(&root(), &["simulate", "--next", "/bin/true"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "exit 0 with nothing verified: {err}");
    assert!(
        err.contains("--next /bin/true")
            && err.contains("not a luo binary")
            && err.contains("nothing was preserved"),
        "{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // This binary itself passes the check and verifies every byte.
    let o = luo_in(
        &root(),
        &[
            "simulate",
            "--next",
            env!("CARGO_BIN_EXE_luo"),
            "--sessions",
            "1",
            "--files",
            "1",
            "--size",
            "8K",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("8192 bytes checked"), "{out}");
}

#[test]
fn simulate_size_beyond_memory_is_refused_up_front() {
    for args in [
        &["simulate", "--size", "18446744073709551615"][..],
        &[
            "simulate",
            "--size",
            "16T",
            "--sessions",
            "1",
            "--files",
            "1",
        ],
        &["simulate", "--scenario", "vm", "--size", "16T"],
    ] {
        let o = luo_in(&root(), args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("more than") && err.contains("give a smaller --size"),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: started anyway");
    }
    let o = luo_in(&root(), &["simulate", "--size", "1X"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown unit"), "{}", stderr(&o));
}

#[test]
fn gen_outside_the_repository_writes_nothing() {
    let dir = scratch("gen-outside");
    for args in [&["gen"][..], &["layout", "luo_ser"], &["schema", "check"]] {
        let o = luo_in(&dir, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&dir.display().to_string()) && err.contains("--root"),
            "{args:?}: {err}"
        );
    }
    let o = luo_in(&dir, &["--root", dir.to_str().expect("utf-8"), "gen"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--root") && err.contains("spec/kernels"),
        "{err}"
    );
    assert!(entries(&dir).is_empty(), "written: {:?}", entries(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gen_in_a_subdirectory_finds_the_repository() {
    let o = luo_in(&root().join("luo-cli/src"), &["gen", "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!root().join("luo-cli/src/generated").exists());
}

#[test]
fn git_revisions_are_validated_and_leave_no_temporaries() {
    let dir = scratch("git-rev");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"keep me").expect("victim");
    let diff = |old: &str| {
        Command::new(env!("CARGO_BIN_EXE_luo"))
            .args(["schema", "diff", old, "current"])
            .current_dir(root())
            .env("TMPDIR", &tmp)
            .output()
            .expect("run luo")
    };
    let opt = format!("git:--output={}", victim.display());
    for (arg, want) in [
        (opt.as_str(), "starting with `-`"),
        ("git:-p", "starting with `-`"),
        ("git:", "starting with `-`"),
        ("git:no-such-revision-anywhere", "no such commit"),
    ] {
        let o = diff(arg);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{arg}: {err}");
        assert!(
            err.contains(want) && (err.contains("git:HEAD~1") || err.contains("git log")),
            "{arg}: {err}"
        );
        assert!(entries(&tmp).is_empty(), "{arg} left {:?}", entries(&tmp));
    }
    assert_eq!(std::fs::read(&victim).expect("victim"), b"keep me");
    // A real revision: compared, and its export removed.
    let o = diff("git:HEAD");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        entries(&tmp).is_empty(),
        "git:HEAD left {:?}",
        entries(&tmp)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `luo sim serve --socket FILE` keeps FILE; `luo sim kexec --into /bin/true` leaves the
/// machine running.
#[test]
fn sim_serve_keeps_files_and_sim_kexec_into_a_foreign_program_keeps_the_machine() {
    let dir = scratch("sim");
    let file = dir.join("notes.txt");
    std::fs::write(&file, b"keep me").expect("file");
    let o = luo_in(
        &dir,
        &[
            "sim",
            "serve",
            "--quiet",
            "--socket",
            file.to_str().expect("utf-8"),
        ],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("a regular file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).expect("file"), b"keep me");

    let socket = dir.join("sim.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_luo"))
        .args(["sim", "serve", "--quiet", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon");
    assert!(luo_sim::wait_ready(
        &socket,
        std::time::Duration::from_secs(10)
    ));
    let s = socket.to_str().expect("utf-8");
    let o = luo_in(
        &dir,
        &["sim", "kexec", "--socket", s, "--into", "/bin/true"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/bin/true") && err.contains("not a luo binary") && err.contains("--into"),
        "{err}"
    );
    assert!(luo_sim::ping(&socket), "the machine is gone");
    let o = luo_in(&dir, &["sim", "kexec", "--socket", s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("liveupdate_num 1"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
