//! Fuzz target bodies. Each takes arbitrary bytes and must never panic,
//! hang or allocate without bound; they assert the invariants that must
//! hold whatever the input.

use luo_spec::diag::Severity;
use luo_spec::layout::Layouts;
use luo_spec::model::load_texts;
use luo_spec::schema_diff::{diff_component, table};
use luo_spec::{generate, valid};

/// Split input into a component file and an optional kernel file at the
/// first `\n%%\n`.
fn split(text: &str) -> (&str, Option<&str>) {
    match text.split_once("\n%%\n") {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    }
}

/// The spec pipeline on arbitrary text: parse, validate, and — when the
/// spec is clean — generate every output. Diagnostics must render and
/// point inside the file.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (component, kernel) = split(text);
    let mut files = vec![("spec/fuzz.toml", component)];
    if let Some(k) = kernel {
        files.push(("kernels/fuzz.toml", k));
    }
    let (spec, mut diags) = load_texts(&files);
    let layouts = Layouts::new();
    valid::check(&spec, &layouts, &mut diags);
    for d in diags.iter() {
        if let Some(file) = d.file {
            assert!(
                d.span.start <= spec.sources.text(file).len() + 1,
                "diagnostic span outside the file: {d:?}"
            );
        }
    }
    let rendered = diags.render(&spec.sources, Severity::Note);
    assert!(diags.iter().next().is_none() || !rendered.is_empty());
    if !diags.has_errors() {
        let out = generate::generate(&spec, &layouts);
        assert!(out.keys().any(|p| p.ends_with("spec.schema.json")));
    }
}

/// Constant expressions: parse, print, re-parse to the same tree.
pub fn expr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = luo_spec::expr::Expr::parse(text) {
        let printed = e.to_c();
        let again = luo_spec::expr::Expr::parse(&printed).expect("printed expression re-parses");
        assert_eq!(again.to_c(), printed);
    }
}

/// Field types: parse, print, re-parse to the same type.
pub fn ty(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = luo_spec::ty::Ty::parse(text) {
        let printed = t.to_string();
        assert_eq!(
            luo_spec::ty::Ty::parse(&printed).as_ref(),
            Ok(&t),
            "`{printed}` does not re-parse to the same type"
        );
    }
}

/// The `.liveupdate_features` table reader, raw and inside ELF files: any
/// table that decodes re-encodes to the same bytes, and checking an update
/// against itself never fails for feature reasons it cannot explain.
pub fn abi_table(data: &[u8]) {
    // The multi-kernel section is parsed by the same code paths.
    let _ = table::decode_kernels(data);
    if let Ok(entries) = table::from_file_bytes(data) {
        if !data.starts_with(b"\x7fELF") {
            assert_eq!(table::encode(&entries), data, "decode/encode round trip");
        }
        let verdicts = table::check_update(&entries, &entries);
        assert_eq!(
            verdicts.len(),
            entries
                .iter()
                .filter(|e| e.kind == table::KIND_WRITES)
                .count()
        );
    }
}

/// Snapshot JSON: anything that parses as two snapshots diffs without panic.
pub fn snapshot_diff(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = split(text);
    let Ok(old) = serde_json::from_str::<luo_spec::render::schema::ComponentSnapshot>(a) else {
        return;
    };
    let new = b
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_else(|| old.clone());
    let d = diff_component(&old, &new);
    if b.is_none() {
        assert!(
            d.facts.is_empty(),
            "a snapshot differs from itself: {:?}",
            d.facts
        );
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// A saved handover image (the model's KHO state plus the LUO subtree):
/// decode and inspect must never panic; an image that decodes re-encodes
/// to one that inspects the same.
pub fn handover_image(data: &[u8]) {
    let Ok(img) = luo_core::image::Image::from_bytes(data) else {
        return;
    };
    let first = luo_core::inspect::inspect(&img);
    let again =
        luo_core::image::Image::from_bytes(&img.to_bytes()).expect("a decoded image re-encodes");
    let second = luo_core::inspect::inspect(&again);
    match (first, second) {
        (Ok(a), Ok(b)) => assert_eq!(a.to_json(), b.to_json()),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "re-encoding changed the verdict: {:?} vs {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
}

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("expr", expr),
    ("ty", ty),
    ("abi_table", abi_table),
    ("snapshot_diff", snapshot_diff),
    ("handover_image", handover_image),
];
