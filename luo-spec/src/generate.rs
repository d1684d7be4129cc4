// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo gen`: the whole pipeline from `spec/` to the files of `generated/`:
//! load and check the spec, build the IR once ([`crate::ir`]), run each
//! backend over it ([`crate::render`]).
//!
//! `generate` is pure: it returns every output path with its contents, so
//! `--check` compares instead of writing, and tests can run it in memory.

use std::path::{Path, PathBuf};

use crate::diag::Diagnostics;
use crate::ir::Ir;
use crate::layout::Layouts;
use crate::model::{self, Spec};
use crate::render::{Backend, c, rust, schema};
use crate::valid;

/// Everything `luo gen` produces: path relative to the repository root → contents.
pub use crate::render::Outputs;

/// Directories `luo gen` owns completely: files there that it does not
/// produce are stale.
pub const OWNED_DIRS: [&str; 4] = [
    "generated/include",
    "generated/kernels",
    "generated/schema",
    "generated/src",
];

/// Load and check the spec under `spec_dir`.
pub fn load_checked(spec_dir: &Path) -> (Spec, Layouts, Diagnostics) {
    let (spec, mut diags) = model::load(spec_dir);
    let layouts = Layouts::new();
    valid::check(&spec, &layouts, &mut diags);
    (spec, layouts, diags)
}

/// Render every output. Call only on a spec without errors.
pub fn generate(spec: &Spec, layouts: &Layouts) -> Outputs {
    let ir = Ir::build(spec, layouts);
    let schemas = schema::Schemas {
        table: crate::abi_table::build,
        all_tables: crate::abi_table::encode_kernels,
    };
    let backends: [&dyn Backend; 3] = [&c::CHeaders, &rust::RustCrate, &schemas];
    let mut out = Outputs::new();
    for backend in backends {
        backend.render(&ir, &mut out);
    }
    // The Rust crate is ours and carries the project's licence; the C headers carry the
    // licence of the upstream headers they stand in for (their backend writes it).
    for (path, text) in out.iter_mut() {
        if path.extension().is_some_and(|e| e == "rs") && !text.starts_with(RUST_SPDX) {
            text.insert_str(0, RUST_SPDX);
        }
    }
    out
}

/// The licence line of every generated Rust file.
const RUST_SPDX: &str = "// SPDX-License-Identifier: GPL-2.0-only OR MIT\n";

/// A difference between the outputs and the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file that does not exist yet.
    Added(PathBuf),
    /// A file whose contents differ.
    Modified(PathBuf),
    /// A file in an owned directory that `luo gen` no longer produces.
    Removed(PathBuf),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added(p) => write!(f, "added     {}", p.display()),
            Change::Modified(p) => write!(f, "modified  {}", p.display()),
            Change::Removed(p) => write!(f, "removed   {}", p.display()),
        }
    }
}

/// Compare outputs with the tree under `root`.
pub fn diff(root: &Path, outputs: &Outputs) -> Vec<Change> {
    let mut changes = Vec::new();
    for (path, text) in outputs {
        match std::fs::read_to_string(root.join(path)) {
            Ok(existing) if &existing == text => {}
            Ok(_) => changes.push(Change::Modified(path.clone())),
            Err(_) => changes.push(Change::Added(path.clone())),
        }
    }
    for dir in OWNED_DIRS {
        for file in walk(&root.join(dir)) {
            let rel = file
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or(file);
            if !outputs.contains_key(&rel) {
                changes.push(Change::Removed(rel));
            }
        }
    }
    changes
}

/// Apply changes: write added and modified files, delete removed ones.
pub fn write(root: &Path, outputs: &Outputs, changes: &[Change]) -> std::io::Result<()> {
    for change in changes {
        match change {
            Change::Added(p) | Change::Modified(p) => {
                let full = root.join(p);
                if let Some(parent) = full.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(full, &outputs[p])?;
            }
            Change::Removed(p) => std::fs::remove_file(root.join(p))?,
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
