// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! No panic or abort from a corrupt image or a closed standard output: `luo inspect` and
//! `luo boot` of images whose `"LUO"` subtree claims more than was preserved, and output
//! commands whose reader has gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn luo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luo"))
        .arg("--root")
        .arg(root())
        .args(args)
        .output()
        .expect("run luo")
}

fn scratch(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// An image saved by `luo simulate --from KERNEL`.
fn saved_image(dir: &Path, kernel: &str) -> PathBuf {
    let img = dir.join(format!("img-{kernel}"));
    let o = luo(&[
        "simulate",
        "--from",
        kernel,
        "--sessions",
        "2",
        "--files",
        "1",
        "--size",
        "8192",
        "--save-image",
        img.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    img
}

/// Sets the size of the KHO subtree entry `name` in the image file's blob.
fn patch_subtree_size(image: &[u8], name: &str, size: u64) -> Vec<u8> {
    // Image: "LUOIMG01", 4 u64 counts, then the blob: magic, nr_ranges, nr_subtrees,
    // arena_pages; 16-byte ranges; 80-byte subtrees (name[64], phys, size).
    let word = |at: usize| u64::from_ne_bytes(image[at..at + 8].try_into().expect("8 bytes"));
    let blob = 40;
    let (nr_ranges, nr_subtrees) = (word(blob + 8) as usize, word(blob + 16) as usize);
    let subtrees = blob + 32 + nr_ranges * 16;
    let entry = (0..nr_subtrees)
        .map(|i| subtrees + i * 80)
        .find(|&e| image[e..].starts_with(name.as_bytes()) && image[e + name.len()] == 0)
        .expect("subtree entry");
    let mut out = image.to_vec();
    out[entry + 72..entry + 80].copy_from_slice(&size.to_ne_bytes());
    out
}

fn assert_no_panic(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{what}: {err}"
    );
    assert_ne!(o.status.code(), Some(101), "{what}: {err}");
}

#[test]
fn inspect_and_boot_refuse_a_subtree_size_beyond_preserved_memory() {
    let dir = scratch("corrupt-size");
    for kernel in ["6.19", "7.0"] {
        let good = saved_image(&dir, kernel);
        let bytes = std::fs::read(&good).expect("image");
        for size in [u64::MAX, 1 << 44] {
            let bad = dir.join(format!("bad-{kernel}-{size:x}"));
            std::fs::write(&bad, patch_subtree_size(&bytes, "LUO", size)).expect("write");
            let bad_s = bad.to_str().expect("utf-8");
            for args in [&["inspect", bad_s][..], &["boot", bad_s][..]] {
                let o = luo(args);
                let what = format!("luo {} ({kernel}, size {size:#x})", args[0]);
                assert_no_panic(&o, &what);
                let err = String::from_utf8_lossy(&o.stderr);
                assert_eq!(o.status.code(), Some(2), "{what}: {err}");
                assert!(
                    err.contains(&format!("claims {size} bytes"))
                        && err.contains("more than the memory preserved"),
                    "{what}: {err}"
                );
                assert!(
                    err.contains(bad_s) && err.contains("--save-image"),
                    "{what}: {err}"
                );
            }
        }
        // The intact image boots and every file is retrieved.
        let o = luo(&["boot", good.to_str().expect("utf-8")]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            out.matches("1 of 1 file(s) retrieved, finish ok").count(),
            2,
            "{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory or a missing file given as the image: an error naming the path and what it
/// is, not an errno number.
#[test]
fn an_image_that_is_not_a_file_is_named() {
    let dir = scratch("not-a-file");
    let d = dir.to_str().expect("utf-8");
    let missing = dir.join("missing");
    let m = missing.to_str().expect("utf-8");
    for (args, want) in [
        (["inspect", d], "Is a directory"),
        (["boot", d], "Is a directory"),
        (["inspect", m], "No such file or directory"),
    ] {
        let o = luo(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(args[1]) && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("E?"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `luo boot --kernel K` boots kernel K: one that does not read the image's format refuses
/// with a typed error naming the formats it reads.
#[test]
fn boot_names_the_kernel_and_the_formats_it_reads() {
    let dir = scratch("boot-kernel");
    let img = saved_image(&dir, "6.19");
    let o = luo(&["boot", img.to_str().expect("utf-8"), "--kernel", "7.0"]);
    assert_no_panic(&o, "boot --kernel 7.0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("kernel 7.0 refused to boot") && err.contains("luo-flb-v1"),
        "{err}"
    );
    // The vm scenario's image: kernel next runs its handlers, so every file comes back;
    // FINISH waits for the iommufd's HWPTs to be restored, which only a user of them does.
    let vm = dir.join("vm.img");
    let o = luo(&[
        "simulate",
        "--scenario",
        "vm",
        "--save-image",
        vm.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = luo(&["boot", vm.to_str().expect("utf-8")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("8 of 8 file(s) retrieved, finish EBUSY"),
        "{out}"
    );
    let o = luo(&[
        "boot",
        img.to_str().expect("utf-8"),
        "--kernel",
        "7.3",
        "--format",
        "json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["kernel"], "7.3");
    assert_eq!(v["format"], "luo-v1");
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `luo ARGS` with standard output a pipe whose reader is already closed: the first
/// write fails with EPIPE.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_luo"))
        .arg("--root")
        .arg(root())
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run luo")
}

/// `luo schema check | head -1`, `luo layout luo_ser | head -1` and the other output
/// commands end quietly when their reader goes away: no panic message, killed by SIGPIPE as
/// a Unix filter is.
#[test]
fn a_closed_standard_output_ends_output_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("epipe");
    let img = saved_image(&dir, "7.3");
    let img = img.to_str().expect("utf-8");
    let uapi_c = root()
        .join("tests/c/conformance/uapi.c")
        .display()
        .to_string();
    for args in [
        &["schema", "check"][..],
        &["layout", "luo_ser"],
        &["schema", "diff", "6.19", "7.3"],
        &["schema", "matrix"],
        &["inspect", img],
        &["boot", img],
        &[
            "simulate",
            "--sessions",
            "1",
            "--files",
            "1",
            "--size",
            "4096",
        ],
        &["vmtest", "--sim", &uapi_c],
    ] {
        let o = with_closed_stdout(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.is_empty(), "luo {}: {err}", args.join(" "));
        assert_eq!(
            o.status.signal(),
            Some(SIGPIPE),
            "luo {}: {:?}",
            args.join(" "),
            o.status
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGPIPE on Linux.
const SIGPIPE: i32 = 13;

/// The daemon logs each call to standard error: a log reader that went away does not take
/// the simulated machine down, and `luo sim kexec` with a closed standard output ends
/// quietly as the other output commands do.
#[test]
fn the_daemon_outlives_a_closed_log() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("closed-log");
    let socket = dir.join("sim.sock");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_luo"))
        .args(["sim", "serve", "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .expect("start the daemon");
    assert!(luo_sim::wait_ready(
        &socket,
        std::time::Duration::from_secs(10)
    ));
    // Each of these is logged.
    for _ in 0..3 {
        assert!(luo_sim::ping(&socket));
    }
    let o = with_closed_stdout(&["sim", "kexec", "--socket", socket.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&o.stderr).is_empty(), "{o:?}");
    assert_eq!(o.status.signal(), Some(SIGPIPE), "{o:?}");
    assert!(luo_sim::ping(&socket), "the daemon died");
    assert!(
        daemon.try_wait().expect("wait").is_none(),
        "the daemon exited"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
