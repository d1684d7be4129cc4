// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Running the `luo` binary from tests, through cargo so it is built first.

use std::path::Path;
use std::process::Command;

/// Run `luo ARGS` in the repository root: exit code, stdout, stderr.
pub fn luo(args: &[&str]) -> (i32, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "-q", "-p", "luo-cli", "--bin", "luo", "--"])
        .args(args)
        .current_dir(root)
        .output()
        .expect("cargo run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
