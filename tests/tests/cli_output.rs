// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The output convention of the `luo` CLI: every command's `--format json` is one JSON
//! document (JSON Lines for `simulate`), parsed here by serde_json and, when it is installed,
//! by `jq`; text output carries no JSON fragments; argument values are listed in `--help`;
//! errors name the path and the next step.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use luo_tests::cli::luo;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `jq` is installed (it is optional: serde_json always checks).
fn have_jq() -> bool {
    Command::new("jq")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `jq -c .` accepts `text` (a document or JSON Lines).
fn jq_accepts(text: &str) -> bool {
    let mut child = Command::new("jq")
        .args(["-c", "."])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jq");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to jq");
    child.wait().expect("jq").success()
}

/// Run `luo ARGS --format json`: exit code and the one JSON document it printed.
fn json_doc(args: &[&str]) -> (i32, serde_json::Value) {
    let mut argv = args.to_vec();
    argv.extend(["--format", "json"]);
    let (code, out, err) = luo(&argv);
    assert_eq!(
        out.lines().count(),
        1,
        "{args:?}: one document on one line:\n{out}{err}"
    );
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}:\n{out}\n{err}"));
    if have_jq() {
        assert!(jq_accepts(&out), "{args:?}: jq refused:\n{out}");
    }
    (code, v)
}

#[test]
fn every_command_prints_one_json_document() {
    let (code, v) = json_doc(&["gen", "--check"]);
    assert_eq!(code, 0);
    assert_eq!(v["up_to_date"], true);
    assert!(v["files"].as_u64().is_some_and(|n| n > 10), "{v}");

    let (code, v) = json_doc(&["layout", "memfd_luo_folio_ser", "--arch", "arm64-64k"]);
    assert_eq!(code, 0);
    assert_eq!(
        (&v["size"], &v["target"]),
        (&16.into(), &"arm64-64k".into())
    );
    assert_eq!(v["fields"][0]["bits"]["width"], 52, "{v}");

    // Upstream's frozen kernels are exact-match; this tree's 7.3 reads what 6.19 writes.
    let (code, v) = json_doc(&["schema", "diff", "upstream:6.19", "upstream:7.3"]);
    assert_eq!((code, &v["compatible"]), (1, &false.into()));
    let (code, v) = json_doc(&["schema", "diff", "6.19", "7.3"]);
    assert_eq!((code, &v["live_update"]), (0, &true.into()));

    let (code, v) = json_doc(&["schema", "matrix"]);
    assert_eq!(code, 0);
    let kernels = v["kernels"].as_array().expect("kernels").len();
    assert_eq!(v["cells"].as_array().map(Vec::len), Some(kernels));
    assert!(v["about"]["date"].as_str().is_some_and(|d| d.len() == 10));

    let (code, v) = json_doc(&["schema", "check"]);
    assert_eq!((code, &v["compatible"]), (0, &true.into()));
    assert_eq!(v["checked"], v["kernels"].as_array().map_or(0, Vec::len));

    let (code, v) = json_doc(&["schema", "table", "7.3"]);
    assert_eq!(code, 0);
    assert!(
        v["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    // Fingerprints are hex strings: a number above 2^53 would lose bits in jq.
    let supp = v["entries"][0]["supp"].as_str().expect("hex string");
    assert!(supp.starts_with("0x") && supp.len() == 18, "{supp}");

    let (code, v) = json_doc(&["schema", "check-update", "/proc/self/exe", "/proc/self/exe"]);
    assert_eq!((code, &v["possible"]), (0, &true.into()));

    let (code, v) = json_doc(&["sim", "preload"]);
    assert_eq!(code, 0);
    assert!(v["preload"].as_str().is_some_and(|p| p.ends_with(".so")));

    // freeze writes under --root: a scratch root with a copy of the spec.
    let tmp = std::env::temp_dir().join(format!("luo-output-freeze-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    luo_testing::copy_dir(&root().join("spec"), &tmp.join("spec"));
    std::fs::copy(root().join("Cargo.toml"), tmp.join("Cargo.toml")).expect("Cargo.toml");
    let tmp_s = tmp.to_str().expect("utf8");
    let (code, v) = json_doc(&["--root", tmp_s, "schema", "freeze", "next"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["components"].as_array().is_some_and(|c| !c.is_empty()));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `luo simulate --format json | jq -c .` parses: JSON Lines, every record an `event`, the
/// report last; the exec is measured by the stage it starts; then `inspect` of the image.
#[test]
fn simulate_prints_json_lines_and_inspect_one_document() {
    let image = std::env::temp_dir().join(format!("luo-output-image-{}", std::process::id()));
    let image_s = image.to_str().expect("utf8");
    let (code, out, err) = luo(&[
        "simulate",
        "--format",
        "json",
        "--sessions",
        "2",
        "--files",
        "1",
        "--size",
        "64K",
        "--save-image",
        image_s,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    if have_jq() {
        assert!(jq_accepts(&out), "jq refused:\n{out}");
    }
    assert!(
        records[..records.len() - 1]
            .iter()
            .all(|r| r["event"] == "phase")
    );
    let report = &records.last().expect("records")["report"];
    assert_eq!(report["verified_bytes"], 2 * 65536, "--size 64K: {out}");
    let exec: Vec<_> = records.iter().filter(|r| r["phase"] == "exec").collect();
    assert_eq!(exec.len(), 1, "{out}");
    assert_eq!(exec[0]["stage"], 2, "timed by the stage the exec starts");
    assert!(exec[0]["micros"].as_u64().is_some_and(|m| m > 0), "{out}");

    let (code, v) = json_doc(&["inspect", image_s]);
    assert_eq!(code, 0);
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(2));
    let _ = std::fs::remove_file(&image);
}

/// The stage number keeps counting past 255 (it was a u8).
#[test]
fn stage_numbers_do_not_wrap() {
    let (code, out, err) = luo(&[
        "simulate",
        "--hops",
        "260",
        "--sessions",
        "1",
        "--files",
        "1",
        "--size",
        "4096",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[stage 261] finish"), "{out}");
    assert!(
        out.contains("live update verified: liveupdate_num 260"),
        "{out}"
    );
}

/// `--hops 0` is refused, not run as one hop; sizes take units and are refused with a hint.
#[test]
fn bad_arguments_are_refused_with_the_reason() {
    let (code, out, err) = luo(&["simulate", "--hops", "0"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("'0'") && err.contains("--hops"), "{err}");
    assert!(out.is_empty(), "nothing ran: {out}");
    let (code, _, err) = luo(&["simulate", "--size", "1X"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown unit `X`"), "{err}");
    let (code, _, err) = luo(&["layout", "luo_ser", "--arch", "sparc"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("[possible values: x86_64, i386, arm64, arm64-16k, arm64-64k]"),
        "{err}"
    );
    let (code, _, err) = luo(&["schema", "diff", "--format", "yaml", "6.19", "7.3"]);
    assert_eq!(code, 2);
    assert!(err.contains("[possible values: text, json]"), "{err}");
}

/// `--help` lists the values of `--format`, `--arch` and `--scenario`.
#[test]
fn help_lists_the_values() {
    let (_, out, _) = luo(&["layout", "--help"]);
    for v in ["text", "json", "x86_64", "i386", "arm64-16k", "arm64-64k"] {
        assert!(out.contains(v), "`{v}` not in layout --help:\n{out}");
    }
    let (_, out, _) = luo(&["simulate", "--help"]);
    for v in ["basic", "vm", "subsystem", "flb", "1G"] {
        assert!(out.contains(v), "`{v}` not in simulate --help:\n{out}");
    }
}

/// `schema check` text has no raw JSON in it (facts are described in words).
#[test]
fn schema_check_text_is_words() {
    let (code, out, _) = luo(&["schema", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("{\""), "raw JSON in text output:\n{out}");
    assert!(
        out.contains("LIVEUPDATE_DEPENDS_MAX: constant added"),
        "{out}"
    );
}

/// Errors name the path and what to do.
#[test]
fn errors_name_the_path_and_the_next_step() {
    let (code, _, err) = luo(&["inspect", "spec"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read spec: Is a directory") && err.contains("--save-image"),
        "{err}"
    );
    let (code, _, err) = luo(&[
        "simulate",
        "--save-image",
        "/nonexistent/luo.img",
        "--size",
        "4K",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot save the handover image to /nonexistent/luo.img")
            && err.contains("directory exists"),
        "{err}"
    );
    let (code, _, err) = luo(&["layout", "memfd_luo"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("did you mean") && err.contains("`memfd_luo_ser`"),
        "{err}"
    );
    let sock =
        std::env::temp_dir().join(format!("luo-output-nodaemon-{}.sock", std::process::id()));
    let sock_s = sock.to_str().expect("utf8");
    let (code, _, err) = luo(&["sim", "kexec", "--socket", sock_s]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("no daemon on {sock_s}")) && err.contains("luo sim serve"),
        "{err}"
    );
}

/// Completions and man pages come from the same argument definitions.
#[test]
fn completions_and_man_pages() {
    let (code, out, _) = luo(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("_luo()") && out.contains("simulate"), "{out}");
    let (code, out, _) = luo(&["man"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(".ie") || out.contains(".TH luo 1"), "{out}");
    let dir = std::env::temp_dir().join(format!("luo-output-man-{}", std::process::id()));
    let (code, _, err) = luo(&["man", "--dir", dir.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    for page in ["luo.1", "luo-simulate.1", "luo-schema-matrix.1"] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (code, _, err) = luo(&["completions", "bash", "--format", "json"]);
    assert_eq!(code, 2);
    assert!(err.contains("does not apply"), "{err}");
}

/// The HTML matrix as a real browser sees it (headless Chromium, when installed; Debian:
/// `apt-get install chromium`): the DOM it builds holds the legend and, in every red cell,
/// each blocking component with its rule; and it renders a screenshot, as README shows.
#[test]
fn matrix_html_in_a_real_browser() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        eprintln!(
            "note: no chromium; the HTML structure is checked without a browser in schema_diff.rs"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("luo-output-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let html = dir.join("matrix.html");
    let (code, _, err) = luo(&["schema", "matrix", "--html", html.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let (_, m) = json_doc(&["schema", "matrix"]);
    let browser = |extra: &[&str]| {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra)
            .arg(format!("file://{}", html.display()))
            .output()
            .expect("chromium")
    };
    let dom = browser(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("id=\"legend\""), "{dom}");
    let red: Vec<&serde_json::Value> = m["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .flat_map(|row| row.as_array().expect("row"))
        .filter(|c| c["ok"] == false)
        .collect();
    assert!(!red.is_empty());
    for c in red {
        let td = format!(
            "data-from=\"{}\" data-to=\"{}\"",
            c["from"].as_str().unwrap(),
            c["to"].as_str().unwrap()
        );
        let at = dom
            .find(&td)
            .unwrap_or_else(|| panic!("{td} not in the DOM"));
        let cell = &dom[at..at + dom[at..].find("</td>").expect("end of cell")];
        for v in c["components"]
            .as_array()
            .expect("components")
            .iter()
            .filter(|v| v["ok"] == false)
        {
            let li = format!(
                "data-component=\"{}\" data-rule=\"{}\"",
                v["component"].as_str().unwrap(),
                v["rule"].as_str().unwrap()
            );
            assert!(cell.contains(&li), "{td}: {li} not shown");
        }
    }
    let png = dir.join("matrix.png");
    let shot = browser(&[&format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A spec with errors under `--format json`: the document lists the diagnostics with their
/// places (one per mistake: a syntax error in memfd.toml is one error, not nine).
#[test]
fn spec_errors_as_json() {
    let tmp = std::env::temp_dir().join(format!("luo-output-badspec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    luo_testing::copy_dir(&root().join("spec"), &tmp.join("spec"));
    std::fs::copy(root().join("Cargo.toml"), tmp.join("Cargo.toml")).expect("Cargo.toml");
    let memfd = tmp.join("spec/memfd.toml");
    let text = std::fs::read_to_string(&memfd).expect("memfd.toml");
    std::fs::write(&memfd, text.replacen("abi = \"kho\"", "abi = \"kho", 1)).expect("write");
    let (code, v) = json_doc(&["--root", tmp.to_str().expect("utf8"), "gen", "--check"]);
    assert_eq!(code, 2);
    assert_eq!(v["errors"], 1, "{v}");
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "syntax", "{v}");
    assert!(
        d["at"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("spec/memfd.toml")),
        "{v}"
    );
    assert!(d["at"]["line"].as_u64().is_some_and(|l| l > 1), "{v}");
    let _ = std::fs::remove_dir_all(&tmp);
}
