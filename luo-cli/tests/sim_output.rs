// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo sim` and `luo gen` with `--format json`: one JSON document each, like every command
//! (the others are in tests/tests/cli_output.rs); `sim serve` refuses it (it is a daemon).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LUO: &str = env!("CARGO_BIN_EXE_luo");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = Command::new(LUO)
        .args(args)
        .args(["--format", "json"])
        .current_dir(root())
        .output()
        .expect("run luo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.lines().count(), 1, "{args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn sim_kexec_and_gen_print_json() {
    let dir = std::env::temp_dir().join(format!("luo-cli-sim-output-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp");
    let socket = dir.join("sim.sock");
    let sock = socket.to_str().expect("utf8");
    let _daemon = Daemon(
        Command::new(LUO)
            .args(["sim", "serve", "--quiet", "--socket", sock])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("luo sim serve"),
    );
    assert!(luo_sim::wait_ready(&socket, Duration::from_secs(20)));
    let v = json(&["sim", "kexec", "--socket", sock]);
    assert_eq!(v["socket"], sock);
    assert!(v["result"].as_str().is_some_and(|r| !r.is_empty()), "{v}");

    // `luo gen` into a scratch root holding a copy of the spec: every file added.
    let scratch = dir.join("root");
    luo_testing::copy_dir(&root().join("spec"), &scratch.join("spec"));
    std::fs::copy(root().join("Cargo.toml"), scratch.join("Cargo.toml")).expect("Cargo.toml");
    let v = json(&["--root", scratch.to_str().expect("utf8"), "gen"]);
    // Every generated file is new there (spec/spec.schema.json came with the copy).
    assert_eq!(
        v["added"].as_u64(),
        v["files"].as_u64().map(|n| n - 1),
        "{v}"
    );
    assert!(
        v["changes"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );

    let o = Command::new(LUO)
        .args(["sim", "serve", "--socket", sock, "--format", "json"])
        .output()
        .expect("run luo");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not apply"));
    let _ = std::fs::remove_dir_all(&dir);
}
