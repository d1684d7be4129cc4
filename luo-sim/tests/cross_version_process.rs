// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Cross-version live updates with real binaries: `luo-sim simulate --from K --to K…`
//! preserves memfds in a process playing one kernel and `execve`s a process playing the next,
//! which checks every byte. 6.19 → 7.3, 7.0 → 7.3, 7.3 → next and 6.19 → 7.3 → next succeed;
//! the reverse directions stop at boot with an error naming the format (upstream: panic).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_luo-sim");

fn run(kernels: &[&str], hops: u32) -> Output {
    let mut c = Command::new(BIN);
    c.args([
        "simulate",
        "--sessions",
        "2",
        "--files",
        "3",
        "--size",
        "40000",
        "--json",
    ]);
    c.args(["--hops", &hops.to_string(), "--from", kernels[0]]);
    for k in &kernels[1..] {
        c.args(["--to", k]);
    }
    c.output().unwrap()
}

fn ok(kernels: &[&str]) {
    let hops = kernels.len() as u32 - 1;
    let out = run(kernels, hops);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{kernels:?}\n{stdout}\n{stderr}");
    // JSON Lines: every line parses; the boot of each stage names its kernel.
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON Lines record"))
        .collect();
    for (i, k) in kernels.iter().enumerate() {
        let needle = if i == 0 {
            format!("fresh kernel luo:{k}")
        } else {
            format!("kernel luo:{k}; liveupdate_num {i}")
        };
        assert!(
            records.iter().any(|r| r["phase"] == "boot"
                && r["stage"] == i + 1
                && r["detail"].as_str().is_some_and(|d| d.contains(&needle))),
            "{needle}:\n{stdout}"
        );
    }
    let v = records
        .iter()
        .find(|r| r["event"] == "report")
        .map(|r| r["report"].clone())
        .expect("a report record");
    assert_eq!(v["liveupdate_num"], hops);
    assert_eq!(v["verified_bytes"], 6 * 40000);
    assert_eq!(v["preserved_pages_left"], 0);
}

fn refused(from: &str, to: &str, format: &str) {
    let out = run(&[from, to], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("kernel luo:{to} refused the handover at boot"))
            && stderr.contains(&format!("format {format}")),
        "{from} → {to}: {stderr}"
    );
}

#[test]
fn from_6_19_to_7_3() {
    ok(&["6.19", "7.3"]);
}

#[test]
fn from_7_0_to_7_3() {
    ok(&["7.0", "7.3"]);
}

#[test]
fn from_7_3_to_next() {
    ok(&["7.3", "next"]);
}

#[test]
fn hops_6_19_to_7_3_to_next() {
    ok(&["6.19", "7.3", "next"]);
}

#[test]
fn reverse_directions_fail_cleanly() {
    refused("7.3", "6.19", "luo-v5");
    refused("next", "7.3", "next");
    refused("7.3", "7.0", "luo-v5");
}
