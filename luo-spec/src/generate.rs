//! `luo gen`: the whole pipeline from `spec/` to the files of `generated/`.
//!
//! `generate` is pure: it returns every output path with its contents, so
//! `--check` compares instead of writing, and tests can run it in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diag::Diagnostics;
use crate::layout::Layouts;
use crate::model::{self, Origin, Scope, Spec};
use crate::render::{c, rust, schema};
use crate::valid;

/// Everything `luo gen` produces: path relative to the repository root → contents.
pub type Outputs = BTreeMap<PathBuf, String>;

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
    let mut out = Outputs::new();
    let mut tables = Vec::new();
    for kernel in &spec.kernels {
        let mut set = schema::KernelSet {
            kernel: kernel.name.clone(),
            components: Default::default(),
        };
        let include = if kernel.default {
            PathBuf::from("generated/include")
        } else {
            Path::new("generated/kernels")
                .join(kernel.dir_name())
                .join("include")
        };
        out.insert(include.join(c::KERNEL_COMPAT_PATH), c::kernel_compat());
        for (ci, comp) in spec.components.iter().enumerate() {
            let Some(ver) = spec.rendered_version(kernel, comp) else {
                continue;
            };
            let scope = Scope {
                spec,
                origin: Origin { comp: ci, ver },
            };
            out.insert(
                include.join(&comp.header),
                c::header(scope, kernel, layouts),
            );
            let snap = schema::snapshot(scope, kernel, layouts);
            let json = serde_json::to_string_pretty(&snap).unwrap_or_default() + "\n";
            out.insert(
                Path::new("generated/schema")
                    .join(kernel.dir_name())
                    .join(format!("{}.json", comp.name)),
                json,
            );
            set.components.insert(comp.name.clone(), snap);
        }
        tables.push((
            kernel.name.clone(),
            kernel.default,
            crate::abi_table::build(&set),
        ));
    }
    let all = crate::abi_table::encode_kernels(
        &tables
            .iter()
            .map(|(k, _, b)| (k.clone(), b.clone()))
            .collect::<Vec<_>>(),
    );
    out.insert(
        "generated/src/abi_table.rs".into(),
        rust::abi_table(&tables, &all),
    );
    out.insert(
        "generated/schema/layout.schema.json".into(),
        schema::snapshot_json_schema(),
    );
    out.insert("spec/spec.schema.json".into(), schema::spec_json_schema());
    for (path, text) in rust::crate_files(spec, layouts) {
        out.insert(Path::new("generated/src").join(path), text);
    }
    out
}

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
