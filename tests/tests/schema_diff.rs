// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Schema diffing: the corpus in `tests/schema/` (one directory per case:
//! `old.toml` and `new.toml` spec components, `case.toml` with the expected
//! rule IDs and exit code), the real history of the upstream ABIs, the
//! matrix (also parsed back from its HTML), and bad inputs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use luo_schema::diff::{
    self, Severity, diff_component, diff_sets, matrix, policy, report, sets_from_spec,
};
use luo_spec::ir::Ir;
use luo_spec::layout::Layouts;
use luo_spec::model::{Origin, Scope, load_texts};
use luo_spec::render::schema::{ComponentSnapshot, snapshot};
use luo_tests::cli::luo;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Snapshot of a one-component spec as a kernel writing its last version
/// (reading `reads`, default: that version) would produce.
fn snapshot_of(text: &str, kernel: &str, reads: &[String], drops: &[String]) -> ComponentSnapshot {
    let (probe, _) = load_texts(&[("spec/demo.toml", text)]);
    let comp = probe.components.first().expect("a component");
    let list = |v: &[String]| {
        v.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kernel_text = match comp.versions.last() {
        Some(last) => {
            let reads = if reads.is_empty() {
                vec![last.id.clone()]
            } else {
                reads.to_vec()
            };
            format!(
                "name = \"{kernel}\"\ndefault = true\nwrites = {{ demo = \"{}\" }}\nreads = {{ demo = [{}] }}\ndrops = {{ demo = [{}] }}\n",
                last.id,
                list(&reads),
                list(drops)
            )
        }
        None => format!("name = \"{kernel}\"\ndefault = true\nwrites = {{}}\n"),
    };
    let (spec, _) = load_texts(&[("spec/demo.toml", text), ("kernels/k.toml", &kernel_text)]);
    let layouts = Layouts::new();
    let k = spec.kernels.first().expect("kernel");
    let comp = &spec.components[0];
    let ver = spec.rendered_version(k, comp).expect("rendered");
    snapshot(
        Scope {
            spec: &spec,
            origin: Origin { comp: 0, ver },
        },
        k,
        &Ir::build(&spec, &layouts),
    )
}

struct Case {
    name: String,
    expect: BTreeSet<String>,
    exit: u8,
    rules: BTreeSet<String>,
    judged: BTreeSet<String>,
    code: u8,
}

fn strings(v: Option<&toml::Value>) -> Vec<String> {
    v.and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn run_corpus() -> Vec<Case> {
    let dir = root().join("tests/schema");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/schema")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|d| {
            let meta: toml::Table = std::fs::read_to_string(d.join("case.toml"))
                .expect("case.toml")
                .parse()
                .expect("case.toml parses");
            let old = std::fs::read_to_string(d.join("old.toml")).expect("old.toml");
            let new = std::fs::read_to_string(d.join("new.toml")).expect("new.toml");
            let old = snapshot_of(&old, "old", &[], &[]);
            let new = snapshot_of(
                &new,
                "new",
                &strings(meta.get("reads")),
                &strings(meta.get("drops")),
            );
            let diff = diff_component(&old, &new);
            Case {
                name: d
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                expect: strings(meta.get("expect")).into_iter().collect(),
                exit: meta
                    .get("exit")
                    .and_then(toml::Value::as_integer)
                    .and_then(|i| u8::try_from(i).ok())
                    .expect("exit"),
                rules: diff.findings.iter().map(|f| f.rule.to_string()).collect(),
                judged: diff
                    .findings
                    .iter()
                    .filter(|f| f.severity >= Severity::Compatible)
                    .map(|f| f.rule.to_string())
                    .collect(),
                code: report::exit_code(std::slice::from_ref(&diff)),
            }
        })
        .collect()
}

#[test]
fn corpus_gives_the_expected_rules_and_exit_codes() {
    let cases = run_corpus();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let missing: Vec<_> = c.expect.difference(&c.rules).collect();
        let unexpected: Vec<_> = c.judged.difference(&c.expect).collect();
        if !missing.is_empty() || !unexpected.is_empty() || c.code != c.exit {
            failures.push(format!(
                "{}: missing {missing:?}, unexpected {unexpected:?}, exit {} (expected {}); all rules {:?}",
                c.name, c.code, c.exit, c.rules
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_and_history_cover_every_rule() {
    let mut covered: BTreeSet<String> = run_corpus().into_iter().flat_map(|c| c.expect).collect();
    covered.extend(["COMPONENT_ADDED", "COMPONENT_REMOVED"].map(String::from)); // real_history_kernel_sets
    let missing: Vec<_> = policy::RULES
        .iter()
        .map(|(r, _)| r.to_string())
        .filter(|r| !covered.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a corpus case: {missing:?}"
    );
}

fn real_sets() -> Vec<diff::KernelSet> {
    sets_from_spec(&root().join("spec")).expect("spec")
}

fn set<'a>(sets: &'a [diff::KernelSet], k: &str) -> &'a diff::KernelSet {
    sets.iter().find(|s| s.kernel == k).expect("kernel")
}

fn rules_of(diffs: &[diff::ComponentDiff], component: &str) -> BTreeSet<&'static str> {
    diffs
        .iter()
        .filter(|d| d.component == component)
        .flat_map(|d| d.findings.iter().map(|f| f.rule))
        .collect()
}

/// Upstream's view of a released kernel: its frozen snapshots.
fn released(k: &str) -> diff::KernelSet {
    diff::upstream_set(&root(), k).expect("frozen snapshots")
}

#[test]
fn real_history_verdicts() {
    // Upstream (frozen, exact-match readers): memfd-v1 -> memfd-v2 and the
    // luo-v1 FDT -> luo-v5 are bumped, and 7.3 reads only its own versions,
    // so a 6.19 image cannot be read.
    let d = diff_sets(&released("6.19"), &released("7.3"));
    for c in ["memfd", "luo"] {
        let r = rules_of(&d, c);
        assert!(
            r.contains("COMPAT_BUMPED") && r.contains("READER_NOT_KEPT"),
            "{c}: {r:?}"
        );
        assert!(!r.contains("COMPAT_NOT_BUMPED"), "{c}: {r:?}");
    }
    assert!(rules_of(&d, "memfd").contains("FIELD_ADDED"));
    // GET_NAME is additive for userspace.
    let u = rules_of(&d, "uapi");
    assert!(
        u.contains("IOCTL_ADDED") && u.contains("STRUCT_ADDED"),
        "{u:?}"
    );
    assert!(
        d.iter()
            .filter(|x| x.component == "uapi")
            .all(|x| x.findings.iter().all(|f| f.severity < Severity::Breaking))
    );
    assert!(rules_of(&d, "block").contains("COMPONENT_ADDED"));
    assert!(
        rules_of(&diff_sets(&released("7.3"), &released("6.19")), "block")
            .contains("COMPONENT_REMOVED")
    );
    // 6.19 -> 7.0 adds luo-flb-v1 to the FDT.
    let r = rules_of(&diff_sets(&released("6.19"), &released("7.0")), "luo");
    assert!(
        r.contains("COMPAT_BUMPED") && r.contains("FDT_CHANGED"),
        "{r:?}"
    );

    // This tree's kernels keep readers of the older versions.
    let sets = real_sets();
    let d = diff_sets(set(&sets, "6.19"), set(&sets, "7.3"));
    for c in ["memfd", "luo"] {
        let r = rules_of(&d, c);
        assert!(
            r.contains("COMPAT_BUMPED") && r.contains("READER_KEPT"),
            "{c}: {r:?}"
        );
    }
    // luo-v5 -> feature-negotiated luo_ser, memfd-v2 -> versionless memfd.
    let d = diff_sets(set(&sets, "7.3"), set(&sets, "next"));
    for c in ["memfd", "luo"] {
        let r = rules_of(&d, c);
        assert!(
            r.contains("NEGOTIATION_CHANGED") && r.contains("READER_KEPT"),
            "{c}: {r:?}"
        );
    }
    // Going back is never possible: 7.3 does not read next.
    let r = rules_of(&diff_sets(set(&sets, "next"), set(&sets, "7.3")), "memfd");
    assert!(r.contains("READER_NOT_KEPT"), "{r:?}");
}

#[test]
fn luo_session_v1_to_v2_is_a_bumped_layout_change() {
    // The two session formats of luo.h (7.2 and the version before): 88-byte entries with files,
    // pgcnt, count, then 80-byte entries with a luo_file_set_ser.
    let (spec, diags) = luo_spec::model::load(&root().join("spec"));
    assert!(!diags.has_errors());
    let layouts = Layouts::new();
    let ir = Ir::build(&spec, &layouts);
    let (ci, comp) = spec.component("luo").expect("luo");
    let k = spec.default_kernel().expect("default");
    let snap = |id: &str| {
        let vi = comp
            .versions
            .iter()
            .position(|v| v.id == id)
            .expect("version");
        snapshot(
            Scope {
                spec: &spec,
                origin: Origin {
                    comp: ci,
                    ver: Some(vi),
                },
            },
            k,
            &ir,
        )
    };
    let d = diff_component(&snap("session_v1"), &snap("v1"));
    let r: BTreeSet<_> = d.findings.iter().map(|f| f.rule).collect();
    assert!(r.contains("COMPAT_BUMPED"), "{r:?}");
    assert!(r.contains("STRUCT_SIZE_CHANGED"), "{r:?}");
    let sizes: Vec<_> = d
        .facts
        .iter()
        .filter_map(|f| match f {
            diff::facts::Fact::StructSize { strukt, old, new } if strukt == "luo_session_ser" => {
                Some((*old, *new))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![(88, 80)]);
}

#[test]
fn matrix_verdicts_and_html() {
    let sets = real_sets();
    let m = matrix::matrix(&sets);
    let cell = |a: &str, b: &str| {
        m.iter()
            .flatten()
            .find(|c| c.from == format!("luo:{a}") && c.to == format!("luo:{b}"))
            .expect("cell")
            .clone()
    };
    for k in ["6.19", "7.0", "7.3", "next"] {
        assert!(cell(k, k).ok, "{k} -> {k}: {:?}", cell(k, k).components);
    }
    // This tree's kernels: forward with our readers, never backward.
    assert!(
        cell("6.19", "7.3").ok,
        "{:?}",
        cell("6.19", "7.3").components
    );
    assert!(
        cell("7.3", "next").ok,
        "{:?}",
        cell("7.3", "next").components
    );
    assert!(cell("6.19", "next").ok);
    assert!(!cell("7.3", "6.19").ok);
    assert!(!cell("next", "7.3").ok);
    assert!(!cell("6.19", "7.0").ok, "7.0 is exact-match");
    let reason = cell("7.3", "6.19")
        .components
        .iter()
        .find(|c| c.component == "memfd")
        .expect("memfd")
        .reason
        .clone();
    assert!(
        reason.contains("memfd-v1") && reason.contains("memfd-v2"),
        "{reason}"
    );

    // Parse the HTML back: one cell per pair, classes match the verdicts.
    let about = matrix::About {
        date: "2026-12-08".into(),
        build: "v1-test".into(),
        luo: "0.1.0".into(),
    };
    let html = matrix::render_html(&sets, &m, &about);
    let by_kernel = table_of(&html, "matrix");
    let mut parsed = 0;
    for td in by_kernel.split("<td ").skip(1) {
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            let start = td.find(&key).expect("attribute") + key.len();
            td[start..start + td[start..].find('"').expect("closing quote")].to_string()
        };
        let (from, to, ok, class) = (
            attr("data-from"),
            attr("data-to"),
            attr("data-ok"),
            attr("class"),
        );
        let bare = |l: &str| l.strip_prefix("luo:").expect("luo view").to_string();
        assert_eq!(ok == "true", cell(&bare(&from), &bare(&to)).ok);
        assert_eq!(class, if ok == "true" { "ok" } else { "bad" });
        assert!(!attr("title").is_empty(), "reasons on hover");
        // Every red cell shows, without a click, each blocking component with its rule
        // and reason.
        let c = cell(&bare(&from), &bare(&to));
        let blockers: Vec<&str> = td.split("<li class=\"blocker\" ").skip(1).collect();
        for v in c.components.iter().filter(|v| !v.ok) {
            let li = blockers
                .iter()
                .find(|li| li.starts_with(&format!("data-component=\"{}\"", v.component)))
                .unwrap_or_else(|| panic!("{from} -> {to}: {} not shown:\n{td}", v.component));
            // What a reader sees: the text without tags.
            let text = text_of(li);
            let want = format!(
                "{} {}{}",
                v.component,
                v.rule.id(),
                v.reason.replace('`', "")
            );
            assert!(
                text.starts_with(&want),
                "{from} -> {to}: `{want}` not in `{text}`"
            );
        }
        assert_eq!(
            td.matches("<li class=\"blocker\"").count(),
            c.components.iter().filter(|v| !v.ok).count()
        );
        assert!(!td.contains("<details"), "nothing hidden behind a click");
        parsed += 1;
    }
    assert_eq!(parsed, sets.len() * sets.len());

    // A legend naming every rule; the date and the tree.
    let legend = table_of(&html, "legend");
    for r in matrix::Rule::ALL {
        assert!(
            legend.contains(r.id()) && legend.contains(&esc(r.meaning())),
            "{r:?}"
        );
    }
    assert!(html.contains("<time>2026-12-08</time>") && html.contains("<code>v1-test</code>"));

    // Per component: one row per (component, from kernel), a cell per to kernel, each with
    // the rule that decided it.
    let by_comp = table_of(&html, "components");
    let comps: std::collections::BTreeSet<&str> = m
        .iter()
        .flatten()
        .flat_map(|c| c.components.iter().map(|v| v.component.as_str()))
        .collect();
    for comp in &comps {
        for c in m.iter().flatten() {
            let Some(v) = c.components.iter().find(|v| v.component == *comp) else {
                continue;
            };
            let td = format!(
                "<td class=\"{}\" data-component=\"{comp}\" data-from=\"{}\" data-to=\"{}\"",
                if v.ok { "ok" } else { "bad" },
                c.from,
                c.to
            );
            let at = by_comp.find(&td).unwrap_or_else(|| panic!("{td} missing"));
            let rest = &by_comp[at..];
            let end = rest.find("</td>").expect("end of cell");
            assert!(rest[..end].contains(v.rule.id()), "{td}: rule {:?}", v.rule);
        }
    }
}

/// The `<table id="ID">...</table>` of a page.
fn table_of<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<table id=\"{id}\""))
        .or_else(|| html.find(&format!("id=\"{id}\">")))
        .unwrap_or_else(|| panic!("no table {id}"));
    let end = start + html[start..].find("</table>").expect("end of table");
    &html[start..end]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The text of an HTML fragment: tags dropped, entities decoded.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = html
        .find('>')
        .is_some_and(|gt| html.find('<').is_none_or(|lt| gt < lt));
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[test]
fn cli_exit_codes_and_bad_inputs() {
    let tmp = std::env::temp_dir().join(format!("luo-schema-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let not_json = tmp.join("bad.json");
    std::fs::write(&not_json, "this is not json").expect("write");
    let wrong_version = tmp.join("old.json");
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("generated/schema/7.3/memfd.json")).expect("snapshot"),
    )
    .expect("json");
    v["snapshot_version"] = serde_json::json!(99);
    std::fs::write(&wrong_version, v.to_string()).expect("write");
    let not_snapshot = tmp.join("other.json");
    std::fs::write(&not_snapshot, "{\"hello\": 1}").expect("write");

    let (code, out, _) = luo(&["schema", "diff", "7.3", "7.3"]);
    assert_eq!(code, 0, "{out}");
    // A bare kernel is this tree's build (as in the matrix, check-update and simulate):
    // 7.3 keeps readers of what 6.19 writes. Upstream's frozen 7.3 reads only its own.
    let (code, out, _) = luo(&["schema", "diff", "6.19", "7.3"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("luo (luo:6.19 -> luo:7.3)")
            && out.contains("live update luo:6.19 -> luo:7.3: possible"),
        "{out}"
    );
    let (code, out, _) = luo(&["schema", "diff", "upstream:6.19", "upstream:7.3"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("READER_NOT_KEPT")
            && out.contains("live update upstream:6.19 -> upstream:7.3: NOT possible"),
        "{out}"
    );
    // What upstream's 6.19 wrote, read by this tree's 7.3.
    let (code, out, _) = luo(&["schema", "diff", "--format", "json", "released:6.19", "7.3"]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(json["live_update"], serde_json::json!(true), "{out}");
    let (code, out, _) = luo(&["schema", "diff", "--format", "json", "7.3", "6.19"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(json["compatible"], serde_json::json!(false));
    assert_eq!(json["live_update"], serde_json::json!(false));
    for (args, needle) in [
        (
            vec!["schema", "diff", not_json.to_str().expect("utf8"), "7.3"],
            "not a luo layout snapshot",
        ),
        (
            vec![
                "schema",
                "diff",
                wrong_version.to_str().expect("utf8"),
                "generated/schema/7.3/memfd.json",
            ],
            "format version 99",
        ),
        (
            vec![
                "schema",
                "diff",
                not_snapshot.to_str().expect("utf8"),
                "7.3",
            ],
            "no `snapshot_version`",
        ),
        (
            vec!["schema", "diff", "6.19", "9.9"],
            "unknown kernel `9.9`",
        ),
        (
            vec!["schema", "diff", "upstream:6.19", "upstream:next"],
            "only this tree's view, `luo:next`",
        ),
        (
            vec!["schema", "matrix", "--view", "downstream"],
            "unknown view `downstream`",
        ),
        (
            vec!["schema", "diff", "generated/schema/7.3/memfd.json", "7.3"],
            "two kernels",
        ),
        (
            vec!["schema", "diff", "--format", "yaml", "6.19", "7.3"],
            "invalid value 'yaml'",
        ),
    ] {
        let (code, _, err) = luo(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, out, _) = luo(&["schema", "check"]);
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn check_update_from_tables_agrees_with_the_matrix() {
    use luo_schema::diff::table;
    let sets = real_sets();
    let m = matrix::matrix(&sets);
    for set in &sets {
        // The tables `luo gen` committed are the ones computed from the spec.
        let generated = luo_generated::abi_table::KERNELS
            .iter()
            .find(|(k, _)| *k == set.kernel)
            .expect("generated table")
            .1;
        assert_eq!(
            generated,
            table::build(set).as_slice(),
            "{}: generated/src/abi_table.rs is stale",
            set.kernel
        );
    }
    for a in &sets {
        for b in &sets {
            let verdicts = table::check_update(
                &table::decode(&table::build(a)).expect("table a"),
                &table::decode(&table::build(b)).expect("table b"),
            );
            let from_tables = verdicts.iter().all(|v| v.ok);
            let cell = m
                .iter()
                .flatten()
                .find(|c| c.from == a.label() && c.to == b.label())
                .expect("cell");
            assert_eq!(
                from_tables, cell.ok,
                "{} -> {}: tables say {verdicts:?}, matrix says {:?}",
                a.kernel, b.kernel, cell.components
            );
        }
    }
}

#[test]
fn check_update_reads_the_section_of_the_luo_binary() {
    // The luo binary embeds the default kernel's table in .liveupdate_features;
    // /proc/self/exe is the luo binary itself when luo opens it.
    let (code, out, err) = luo(&["schema", "check-update", "/proc/self/exe", "/proc/self/exe"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("memfd-v2") && out.contains("live update possible"),
        "{out}"
    );
    let tmp = std::env::temp_dir().join(format!("luo-table-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let old = tmp.join("next.bin");
    let (code, _, err) = luo(&["schema", "table", "next", "-o", old.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = luo(&[
        "schema",
        "check-update",
        old.to_str().expect("utf8"),
        "/proc/self/exe",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no reader of `memfd`"), "{out}");
    let (code, _, err) = luo(&["schema", "check-update", "/proc/self/exe", "/bin/sh"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no .liveupdate_features section") || err.contains("ELF"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn check_update_from_the_binary_agrees_with_the_matrix_and_with_real_updates() {
    // One luo build plays every kernel (`simulate --from/--to`); its
    // `.luo_kernels` section holds each kernel's table. For every ordered
    // pair: what check-update decides from the binary alone, what the matrix
    // says, and whether the cross-process live update really works agree.
    let sets = real_sets();
    let m = matrix::matrix(&sets);
    let kernels = ["6.19", "7.0", "7.3", "next"];
    for a in kernels {
        for b in kernels {
            let (check, out, err) = luo(&[
                "schema",
                "check-update",
                "/proc/self/exe",
                "/proc/self/exe",
                "--old-kernel",
                a,
                "--new-kernel",
                b,
            ]);
            assert!(check == 0 || check == 1, "{a} -> {b}: {out}{err}");
            let cell = m
                .iter()
                .flatten()
                .find(|c| c.from == format!("luo:{a}") && c.to == format!("luo:{b}"))
                .expect("cell");
            assert!(out.contains(&format!("view: luo:{a} -> luo:{b}")), "{out}");
            assert_eq!(
                check == 0,
                cell.ok,
                "{a} -> {b}: check-update vs matrix\n{out}"
            );
            let (sim, sout, serr) = luo(&[
                "simulate",
                "--from",
                a,
                "--to",
                b,
                "--sessions",
                "1",
                "--files",
                "2",
                "--size",
                "8192",
            ]);
            assert_eq!(
                sim == 0,
                cell.ok,
                "{a} -> {b}: simulate vs matrix\n{sout}{serr}"
            );
        }
    }
    let (code, _, err) = luo(&[
        "schema",
        "check-update",
        "/proc/self/exe",
        "/proc/self/exe",
        "--old-kernel",
        "5.10",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("does not play kernel `5.10`"), "{err}");
}

/// The PCI FLB as this tree's kernel `next` wrote it before (`pci-v3`) and now (the
/// versionless `"pci"` with `pci_ser.version` = 2): the diff names the change with its rule,
/// the identity carries the version, and a layout change that keeps the version is told to
/// bump the member, not the string.
#[test]
fn pci_turned_versionless() {
    let (spec, diags) = luo_spec::model::load(&root().join("spec"));
    assert!(!diags.has_errors());
    let layouts = Layouts::new();
    let ir = Ir::build(&spec, &layouts);
    let (ci, comp) = spec.component("pci").expect("pci");
    let k = spec
        .kernels
        .iter()
        .find(|k| k.name == "next")
        .expect("next");
    let snap = |id: &str| {
        let vi = comp
            .versions
            .iter()
            .position(|v| v.id == id)
            .expect("version");
        snapshot(
            Scope {
                spec: &spec,
                origin: Origin {
                    comp: ci,
                    ver: Some(vi),
                },
            },
            k,
            &ir,
        )
    };
    let (old, new) = (snap("v3"), snap("data_v2"));
    assert_eq!(new.identity, vec!["pci", "pci_ser.version=2"]);
    let d = diff_component(&old, &new);
    let f = d
        .findings
        .iter()
        .find(|f| f.rule == "COMPAT_VERSIONLESS")
        .unwrap_or_else(|| panic!("{:?}", d.findings));
    assert!(
        f.message.contains("`pci-v3`") && f.message.contains("pci_ser.version = 2"),
        "{}",
        f.message
    );
    // next declares it no longer reads pci-v3.
    assert!(
        d.findings
            .iter()
            .any(|f| f.rule == "READER_REMOVAL_DECLARED")
    );
    // The corpus case that keeps the version: the fix names the member.
    let dir = root().join("tests/schema/kho_struct_version_not_bumped");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("case");
    let d = diff_component(
        &snapshot_of(&read("old.toml"), "old", &[], &[]),
        &snapshot_of(&read("new.toml"), "new", &[], &[]),
    );
    let fix = d
        .findings
        .iter()
        .find(|f| f.rule == "COMPAT_NOT_BUMPED")
        .and_then(|f| f.fix.clone())
        .expect("a fix");
    assert!(fix.contains("`demo_ser.version` from 1 to 2"), "{fix}");
}

/// One view in the compatibility tools: for every ordered pair of kernels the matrix lists,
/// in both views (`luo`: this tree's build, the default; `upstream`: the released kernels'
/// frozen snapshots), `luo schema diff A B` says the live update is possible exactly when
/// `luo schema matrix` does, and both name the view. Through the library and the CLI.
#[test]
fn diff_and_matrix_agree_on_every_pair_in_both_views() {
    use diff::View;
    for (view, flag) in [(View::Luo, "luo"), (View::Upstream, "upstream")] {
        let sets = diff::matrix_sets(&root(), view).expect("sets");
        assert!(sets.len() >= 3, "{view:?}: {} kernels", sets.len());
        let m = matrix::matrix(&sets);
        let (code, out, err) = luo(&["schema", "matrix", "--view", flag, "--format", "json"]);
        assert_eq!(code, 0, "{err}");
        let cli: serde_json::Value = serde_json::from_str(&out).expect("matrix json");
        let mut pairs = 0;
        for a in &sets {
            for b in &sets {
                let cell = m
                    .iter()
                    .flatten()
                    .find(|c| c.from == a.label() && c.to == b.label())
                    .expect("cell");
                let diffs = diff_sets(a, b);
                assert_eq!(
                    diff::handover_ok(&diffs),
                    cell.ok,
                    "{} -> {}: diff {:?}, matrix {:?}",
                    a.label(),
                    b.label(),
                    diffs
                        .iter()
                        .flat_map(|d| &d.findings)
                        .filter(|f| f.severity >= Severity::Breaking)
                        .collect::<Vec<_>>(),
                    cell.components
                );
                assert!(a.label().starts_with(&format!("{flag}:")), "{}", a.label());
                // The CLI: the same kernels by label, the same answer.
                let cli_ok = cli["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|row| row.as_array().into_iter().flatten())
                    .find(|c| c["from"] == a.label().as_str() && c["to"] == b.label().as_str())
                    .map(|c| c["ok"] == serde_json::json!(true))
                    .expect("cell in the CLI matrix");
                let (_, out, err) =
                    luo(&["schema", "diff", "--format", "json", &a.label(), &b.label()]);
                let d: serde_json::Value =
                    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
                assert_eq!(
                    d["live_update"],
                    serde_json::json!(cli_ok),
                    "{} -> {}",
                    a.label(),
                    b.label()
                );
                assert_eq!(cli_ok, cell.ok);
                pairs += 1;
            }
        }
        assert_eq!(pairs, sets.len() * sets.len());
    }
}
