// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Building the C programs of tests/c/ against the generated headers and the core's static
//! library (shared by the C handler tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test>-HASH → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The core's static library: `cargo build` puts it in target/<profile>,
/// `cargo test` only in target/<profile>/deps with a hash; take the newest.
pub fn static_lib() -> PathBuf {
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

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Compiles `sources` (in tests/c/) with gcc `-Wall -Wextra -Werror`, against
/// generated/include first and then `extra_includes` (below generated/), links them with the
/// core and runs the program: its output (the binary is removed).
pub fn build_and_run(name: &str, sources: &[&str], extra_includes: &[&str]) -> Output {
    let lib = static_lib();
    let c = root().join("tests/c");
    let out = std::env::temp_dir().join(format!("luo-{name}-{}", std::process::id()));
    let mut gcc = Command::new("gcc");
    gcc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(root().join("generated/include"));
    for inc in extra_includes {
        gcc.arg("-I").arg(root().join("generated").join(inc));
    }
    gcc.arg("-I").arg(&c);
    for s in sources {
        gcc.arg(c.join(s));
    }
    let gcc = gcc
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
    run
}
