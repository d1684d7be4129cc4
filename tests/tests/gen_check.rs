// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `generated/` equals what the generator produces from `spec/` (the same
//! check as `luo gen --check`), and generation is deterministic.

use std::path::Path;

use luo_spec::generate::{diff, generate, load_checked};

#[test]
fn generated_files_are_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (spec, layouts, diags) = load_checked(&root.join("spec"));
    assert!(
        !diags.has_errors(),
        "{}",
        diags.render(&spec.sources, luo_spec::diag::Severity::Error)
    );
    let outputs = generate(&spec, &layouts);
    let again = generate(&spec, &layouts);
    assert_eq!(outputs, again, "generation is not deterministic");
    let stale = diff(&root, &outputs);
    assert!(
        stale.is_empty(),
        "stale generated files (run `luo gen`):\n{}",
        stale
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        outputs
            .keys()
            .any(|p| p.ends_with("generated/include/uapi/linux/liveupdate.h"))
    );
}

#[test]
fn rust_keywords_as_member_names_become_raw_identifiers() {
    // Upstream names members `type`: C keeps the name, Rust must use a raw
    // identifier everywhere the member is named (field, accessor, offset_of,
    // reserved check), or the generated crate would not compile.
    let component = r#"[component]
name = "demo"
abi = "kho"
header = "linux/kho/abi/demo.h"
guard = "_DEMO_H"

[[version]]
id = "v1"
[[version.struct]]
name = "demo_ser"
packed = true
fields = [
    { name = "type", type = "u64" },
    { name = "match", type = "u32", bits = 31 },
    { name = "mut", type = "u32", bits = 1, reserved = true },
]
"#;
    let kernel = "name = \"k\"\ndefault = true\nwrites = { demo = \"v1\" }\n";
    let (spec, mut diags) =
        luo_spec::model::load_texts(&[("spec/demo.toml", component), ("kernels/k.toml", kernel)]);
    let layouts = luo_spec::layout::Layouts::new();
    luo_spec::valid::check(&spec, &layouts, &mut diags);
    assert!(
        !diags.has_errors(),
        "{}",
        diags.render(&spec.sources, luo_spec::diag::Severity::Error)
    );
    let out = generate(&spec, &layouts);
    let rust = &out[Path::new("generated/src/demo/v1.rs")];
    for needle in [
        "pub r#type: u64",
        "pub const fn r#match(&self)",
        "offset_of!(demo_ser, r#type)",
        "self.r#mut() != 0",
    ] {
        assert!(rust.contains(needle), "missing `{needle}` in:\n{rust}");
    }
    let header = &out[Path::new("generated/include/linux/kho/abi/demo.h")];
    assert!(
        header.contains("u64 type;"),
        "C keeps the upstream name:\n{header}"
    );
}
