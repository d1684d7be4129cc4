//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same target bodies cargo-fuzz runs, on stable, in CI.

use std::path::Path;

use luo_tests::fuzz_targets::TARGETS;

#[test]
fn replay_committed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "empty corpus for `{name}`");
        for f in &files {
            target(&std::fs::read(f).expect("corpus file"));
        }
        total += files.len();
    }
    assert!(total >= TARGETS.len());
}
