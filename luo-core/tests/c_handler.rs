//! A file handler written in C (tests/c/), compiled with gcc against the generated
//! `<linux/liveupdate.h>` and linked with the core's static library, preserves and restores
//! its state across a simulated kexec.

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    // target/<profile>/deps/c_handler-HASH → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The core's static library: `cargo build` puts it in target/<profile>,
/// `cargo test` only in target/<profile>/deps with a hash; take the newest.
fn static_lib() -> PathBuf {
    let dir = target_dir();
    let mut candidates: Vec<PathBuf> = std::iter::once(dir.join("libluo_core.a"))
        .chain(
            std::fs::read_dir(dir.join("deps"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libluo_core-") && n.ends_with(".a"))
                }),
        )
        .filter(|p| p.exists())
        .collect();
    candidates.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    candidates
        .pop()
        .unwrap_or_else(|| panic!("libluo_core.a not built under {}", dir.display()))
}

#[test]
fn c_handler_across_kexec() {
    let lib = static_lib();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let c = root.join("tests/c");
    let out = std::env::temp_dir().join(format!("luo-c-handler-test-{}", std::process::id()));
    let gcc = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(root.join("generated/include"))
        .arg("-I")
        .arg(&c)
        .arg(c.join("handler_test.c"))
        .arg(c.join("test_handler.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out)
        .output()
        .expect("gcc");
    assert!(
        gcc.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let run = Command::new(&out).output().unwrap();
    let _ = std::fs::remove_file(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("c handler test: ok"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
