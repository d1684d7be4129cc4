// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `gen`: `luo gen` over every spec, in memory: load, validate and lay out `spec/`
//! ([`load_checked`]) and render every output ([`generate`]), without touching the disk
//! beyond reading the specs.

use std::path::{Path, PathBuf};

use luo_spec::generate::{generate, load_checked};

/// The repository's `spec/`.
pub fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

/// One `luo gen` in memory: the number of output files and their total bytes.
pub fn run(spec_dir: &Path) -> (usize, usize) {
    let (spec, layouts, diags) = load_checked(spec_dir);
    assert!(!diags.has_errors(), "the specs have errors: run `luo gen`");
    let out = generate(&spec, &layouts);
    (out.len(), out.values().map(String::len).sum())
}

#[cfg(test)]
mod tests {
    #[test]
    fn generates_every_output() {
        let (files, bytes) = super::run(&super::spec_dir());
        assert!(files > 10 && bytes > 10_000, "{files} files, {bytes} bytes");
    }
}
