// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Kexec across processes: stage 1 preserves sessions of memfds with known data and
//! `execve`s stage 2, which retrieves every file, checks every byte and finishes; afterwards
//! no preserved page remains.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_luo-sim");

/// The report record of `--json` output, checking that every line is JSON.
fn report(stdout: &str) -> serde_json::Value {
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON Lines record"))
        .collect();
    let last = records.last().expect("output");
    assert_eq!(last["event"], "report", "the report comes last: {stdout}");
    last["report"].clone()
}

#[test]
fn two_process_live_update() {
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--sessions",
            "5",
            "--files",
            "3",
            "--size",
            "70001",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Every phase of both stages reported, as JSON lines.
    for (stage, phase) in [
        (1, "boot"),
        (1, "populate"),
        (1, "preserve"),
        (1, "reboot"),
        (2, "exec"),
        (2, "boot"),
        (2, "retrieve"),
        (2, "verify"),
        (2, "finish"),
    ] {
        let needle = format!("\"phase\":\"{phase}\"");
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&needle) && l.contains(&format!("\"stage\":{stage}"))),
            "missing stage {stage} {phase}:\n{stdout}"
        );
    }
    let v = report(&stdout);
    assert_eq!(v["liveupdate_num"], 1);
    assert_eq!(v["sessions"], 5);
    assert_eq!(v["files"], 15);
    assert_eq!(v["verified_bytes"], 15 * 70001);
    assert_eq!(v["preserved_pages_left"], 0);
}

#[test]
fn stage2_refuses_a_bad_handover() {
    let out = Command::new(BIN)
        .arg("stage2")
        .env("LUO_SIM_PLAN", "1 1 10 1 0 1 1")
        .env("LUO_MODEL_HANDOVER", "luo-handover-v1 arena=0:4096 blob=1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("standard stream"), "{stderr}");

    let out = Command::new(BIN).arg("stage2").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LUO_SIM_PLAN"));
}

#[test]
fn saved_image_inspects() {
    let img = std::env::temp_dir().join(format!("luo-sim-{}.img", std::process::id()));
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--sessions",
            "2",
            "--files",
            "2",
            "--size",
            "9000",
        ])
        .arg("--save-image")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = Command::new(BIN).arg("inspect").arg(&img).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("\"sim-session-1\": 2 files"), "{text}");
    assert!(text.contains("memfd-v2"), "{text}");
    let json = Command::new(BIN)
        .arg("inspect")
        .arg(&img)
        .arg("--json")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&img);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["liveupdate_num"], 0);
    assert_eq!(v["sessions"][0]["files"][1]["memfd"]["size"], 9000);
    assert_eq!(v["preserved"]["regions"], 4);
    let bad = Command::new(BIN)
        .args(["inspect", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn three_live_updates_in_a_row_across_processes() {
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--sessions",
            "2",
            "--files",
            "2",
            "--size",
            "12345",
            "--hops",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in 1..=4 {
        assert!(
            stdout.contains(&format!("[stage {stage}] boot")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("[stage 4] verify"), "{stdout}");
    assert!(
        stdout.contains("live update verified: liveupdate_num 3, 2 sessions, 4 files"),
        "the text summary: {stdout}"
    );
    assert!(
        stdout.contains("49380 bytes (48.2K) checked, 0 preserved pages left"),
        "{stdout}"
    );
}

/// The standalone binary runs the vm scenario too (kernel next by default), with either
/// HugeTLB form, and its report says what crossed.
#[test]
fn vm_scenario_across_processes() {
    for form in ["subsystem", "flb"] {
        let out = Command::new(BIN)
            .args([
                "simulate",
                "--scenario",
                "vm",
                "--hugetlb-form",
                form,
                "--json",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        let v = report(&stdout);
        let report = &stdout;
        assert_eq!(v["files"], 8, "{report}");
        assert_eq!(v["preserved_pages_left"], 0, "{report}");
        assert_eq!(v["vm"]["hugetlb_form"], form, "{report}");
    }
    // Another kernel is refused before anything is preserved.
    let out = Command::new(BIN)
        .args(["simulate", "--scenario", "vm", "--from", "7.3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
