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
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report = out
        .lines()
        .find_map(|l| l.strip_prefix("report "))
        .expect("a report line");
    let report: serde_json::Value = serde_json::from_str(report).expect("report JSON");
    assert_eq!(report["sessions"], 3);
    assert_eq!(report["files"], 6);
    assert_eq!(report["verified_bytes"], 3 * 2 * 8192);
    assert_eq!(report["preserved_pages_left"], 0);
    assert!(
        out.contains("[stage 2]"),
        "the second stage ran in a new process:\n{out}"
    );

    let (code, out, err) = luo(&["inspect", image, "--json"]);
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
