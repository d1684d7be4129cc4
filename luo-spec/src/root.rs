// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Where the repository is: the directory holding `spec/kernels/`.
//!
//! `luo gen`, `luo layout` and `luo schema` read `spec/` and write `generated/`,
//! `schema/` and `spec/spec.schema.json` relative to it. Run from a
//! subdirectory they find it by walking up, as git finds `.git`; run outside
//! any repository they refuse, instead of reading an empty spec and writing the
//! generated tree into the current directory.

use std::path::{Path, PathBuf};

/// What marks a repository root: the kernels the spec describes.
const MARKER: &str = "spec/kernels";

/// Whether `dir` is a repository root.
pub fn is_root(dir: &Path) -> bool {
    dir.join(MARKER).is_dir()
}

/// The repository root: `explicit` (`--root DIR`) when given, which must be one; else the
/// first of the current directory and its ancestors that is one. The error names where it
/// looked and what to do.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = explicit {
        if is_root(dir) {
            return Ok(dir.to_path_buf());
        }
        return Err(format!(
            "--root {}: no {MARKER}/ there; give the directory of the luo repository \
             (the one holding spec/ and generated/)",
            dir.display()
        ));
    }
    let cwd = std::env::current_dir()
        .map_err(|e| format!("cannot read the current directory: {e}; give --root DIR"))?;
    cwd.ancestors()
        .find(|d| is_root(d))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "not inside a luo repository: neither {} nor a directory above it holds \
                 {MARKER}/; run this inside the repository or give --root DIR",
                cwd.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_root_must_hold_the_spec() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert_eq!(find(Some(&repo)), Ok(repo.clone()));
        let e = find(Some(&repo.join("spec"))).unwrap_err();
        assert!(e.contains("--root") && e.contains("spec/kernels"), "{e}");
    }
}
