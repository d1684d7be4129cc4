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
