// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo simulate` and `luo inspect` end to end through the CLI: a live update
//! across two processes (execve of the luo binary itself), every byte
//! verified, nothing left preserved; then the saved image decoded.

use luo_tests::cli::luo;

#[test]
fn simulate_then_inspect() {
    let image = std::env::temp_dir().join(format!("luo-sim-image-{}", std::process::id()));
    let image = image.to_str().expect("utf8");
    let (code, out, err) = luo(&[
        "simulate",
        "--sessions",
        "3",
        "--files",
        "2",
        "--size",
        "8192",
        "--save-image",
        image,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report = report(&out);
    assert_eq!(report["sessions"], 3);
    assert_eq!(report["files"], 6);
    assert_eq!(report["verified_bytes"], 3 * 2 * 8192);
    assert_eq!(report["preserved_pages_left"], 0);
    assert!(
        out.contains("\"stage\":2"),
        "the second stage ran in a new process:\n{out}"
    );

    let (code, out, err) = luo(&["inspect", image, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let decoded: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    assert_eq!(
        decoded["sessions"].as_array().map(Vec::len),
        Some(3),
        "{out}"
    );
    let _ = std::fs::remove_file(image);

    let (code, _, err) = luo(&["inspect", "Cargo.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a luo handover image"), "{err}");
}

/// The phases of `luo simulate --scenario vm`, stage by stage, in order.
const VM_PHASES: [(u8, &str); 31] = [
    (1, "boot"),
    (1, "register"),
    (1, "create"),
    (1, "preserve memfd"),
    (1, "preserve huge-memfd"),
    (1, "preserve kvm"),
    (1, "preserve guest_memfd"),
    (1, "preserve iommufd"),
    (1, "preserve vfio-pci"),
    (1, "freeze (irqs on)"),
    (1, "irqs off"),
    (1, "reboot"),
    (2, "exec"),
    (2, "boot"),
    (2, "register"),
    (2, "retrieve session"),
    (2, "retrieve guest_memfd"),
    (2, "retrieve kvm"),
    (2, "retrieve vfio-pci"),
    (2, "retrieve iommufd"),
    (2, "restore hwpts"),
    (2, "retrieve huge-memfd"),
    (2, "retrieve memfd"),
    (2, "verify memfd"),
    (2, "verify huge-memfd"),
    (2, "verify kvm"),
    (2, "verify guest_memfd"),
    (2, "verify iommufd"),
    (2, "verify vfio-pci"),
    (2, "verify hugetlb"),
    (2, "finish"),
];

/// The report of `--format json` output: every line is a JSON object with an `event`, the
/// last one the report.
fn report(out: &str) -> serde_json::Value {
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(records.iter().all(|r| r["event"].is_string()), "{out}");
    let last = records.last().expect("output");
    assert_eq!(last["event"], "report", "the report comes last: {out}");
    last["report"].clone()
}

/// One VM's files across the kexec, with the HugeTLB pools crossing both ways: every phase
/// on the timeline in order, every file verified by stage 2, nothing left preserved.
#[test]
fn simulate_vm_scenario() {
    const RAM: u64 = 65536;
    for form in ["subsystem", "flb"] {
        let (code, out, err) = luo(&[
            "simulate",
            "--scenario",
            "vm",
            "--hugetlb-form",
            form,
            "--size",
            &RAM.to_string(),
            "--json",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let phases: Vec<(u8, String)> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON Lines"))
            .filter(|v| v["event"] == "phase")
            .map(|v| {
                let stage = v["stage"].as_u64().expect("stage") as u8;
                (stage, v["phase"].as_str().expect("phase").to_string())
            })
            .collect();
        let want: Vec<(u8, String)> = VM_PHASES.iter().map(|(s, p)| (*s, p.to_string())).collect();
        assert_eq!(phases, want, "{out}");
        let r = report(&out);
        assert_eq!(r["preserved_pages_left"], 0, "{out}");
        assert_eq!(r["files"], 8);
        let vm = &r["vm"];
        assert_eq!(vm["hugetlb_form"], form);
        // Guest RAM, two 2 MiB pages of HugeTLB memfd, a 64-page guest_memfd and two 2 MiB
        // pages of HugeTLB guest_memfd, every byte read back.
        let huge = 2 * (2 << 20);
        assert_eq!(vm["memfd_bytes"], RAM);
        assert_eq!(vm["huge_memfd_bytes"], huge);
        assert_eq!(vm["guest_memfd_bytes"], 64 * 4096 + huge);
        assert_eq!(r["verified_bytes"], RAM + 2 * huge + 64 * 4096);
        assert_eq!(
            vm["hwpts"]
                .as_object()
                .map(|m| m.values().cloned().collect::<Vec<_>>()),
            Some(vec![serde_json::json!([[0, RAM], [1u64 << 32, RAM]])]),
            "{out}"
        );
        assert_eq!(
            vm["pci_refcounts"],
            serde_json::json!({"0000:00:01.0": 2, "0000:01:00.0": 2,
                               "0000:02:00.0": 1, "0000:02:01.0": 1})
        );
        assert_eq!(
            (&vm["hugetlb_pages"], &vm["hugetlb_free"]),
            (&8.into(), &4.into())
        );
    }

    // Text: the same timeline, one line per phase.
    let (code, out, err) = luo(&["simulate", "--scenario", "vm", "--size", "8192"]);
    assert_eq!(code, 0, "{out}{err}");
    for (stage, phase) in VM_PHASES {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("[stage {stage}] {phase} "))),
            "no `{phase}` in stage {stage}:\n{out}"
        );
    }
    assert!(
        out.contains("live update verified: liveupdate_num 1, 1 sessions, 8 files")
            && out.contains("0 preserved pages left")
            && out.contains("HugeTLB (subsystem)"),
        "the text report: {out}"
    );
}

/// What the vm scenario cannot run is refused before anything is preserved, and a plan
/// stage 2 cannot read is refused cleanly.
#[test]
fn simulate_vm_scenario_refusals() {
    for args in [
        &["--from", "7.3"][..],
        &["--to", "6.19"],
        &["--hops", "2"],
        &["--size", "100"],
    ] {
        let mut argv = vec!["simulate", "--scenario", "vm"];
        argv.extend_from_slice(args);
        let (code, out, err) = luo(&argv);
        assert_eq!(code, 2, "usage errors exit 2: {args:?}: {out}{err}");
        assert!(err.contains("the vm scenario"), "{args:?}: {err}");
        assert!(!out.contains("preserve"), "{args:?}: refused before: {out}");
    }
    let (code, _, err) = luo(&["simulate", "--scenario", "nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid value 'nope'") && err.contains("[possible values: basic, vm]"),
        "{err}"
    );
    // The basic scenario's shape is refused with vm, not ignored.
    for flag in ["--sessions", "--files"] {
        let (code, out, err) = luo(&["simulate", "--scenario", "vm", flag, "2"]);
        assert_eq!(code, 2, "{flag}: {out}{err}");
        assert!(
            err.contains("--scenario vm hands over one VM"),
            "{flag}: {err}"
        );
        assert!(out.is_empty(), "refused before anything ran: {out}");
    }

    // Stage 2 run by hand with a corrupted plan: a clean error, no panic.
    for (plan, want) in [
        ("4 4 8192 1 0 1 1 vmm subsystem", "unknown scenario `vmm`"),
        ("4 4 8192 1 0 1 1 vm hugepages", "unknown HugeTLB form"),
        ("4 4 8192 1 0 1", "7 numbers expected"),
        ("4 4 8192 1 0 1 1 vm", "not a number"),
        ("4 4 x 1 0 1 1 vm flb", "not a number"),
    ] {
        let (code, out, err) = luo_stage2(plan);
        assert_eq!(code, 1, "{plan}: {out}{err}");
        assert!(err.contains(want), "{plan}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `luo simulate --stage2` with `plan` in the plan variable and no handover.
fn luo_stage2(plan: &str) -> (i32, String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["run", "-q", "-p", "luo-cli", "--bin", "luo", "--"])
        .args(["simulate", "--stage2"])
        .env(luo_sim::simulate::PLAN_ENV, plan)
        .env(luo_sim::simulate::KERNELS_ENV, "next")
        .current_dir(root)
        .output()
        .expect("cargo run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
