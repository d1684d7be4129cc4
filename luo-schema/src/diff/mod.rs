// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Schema diffing: which change between two kernels' ABIs breaks a live
//! update, decided from layout snapshots before any kexec.
//!
//! Data flow: snapshots (`generated/schema/<kernel>/`, the frozen
//! `schema/released/<kernel>/`, a git revision of `spec/`, or single files)
//! → [`facts`] (what changed) → [`policy`] (what it means, with rule IDs)
//! → [`report`] (text, JSON, exit code). [`matrix`] answers "can kernel A
//! live-update into kernel B" for every pair from what each writes and reads.
//!
//! Every kernel set has a [`View`]: `luo:<k>` is what this tree builds for
//! kernel `k` (our readers of older versions included; what `luo simulate`
//! and `luo schema check-update` run), `upstream:<k>` is the frozen snapshot
//! of a released kernel (upstream's exact-match readers). A bare kernel name
//! means `luo:<k>` in every command, so the diff, the matrix, check-update and
//! simulate answer the same question the same way; outputs name the view.

pub mod facts;
pub mod matrix;
pub mod policy;
pub mod report;
/// The ABI table format (moved to [`luo_spec::abi_table`], which the renderer shares).
pub use luo_spec::abi_table as table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use luo_spec::generate;
use luo_spec::ir::Ir;
use luo_spec::render::schema::{ComponentSnapshot, SNAPSHOT_VERSION, kernel_sets};

pub use policy::{Finding, Severity};

/// Where frozen snapshots of released kernels live (never written by `luo gen`).
pub const RELEASED_DIR: &str = "schema/released";

pub use luo_spec::render::schema::{KernelSet, View};

/// Why an input could not be used (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Not a snapshot.
    #[error("{path} is not a luo layout snapshot: {error}")]
    NotASnapshot {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        error: String,
    },
    /// A snapshot of another format version.
    #[error("{path} has snapshot format version {found}; this luo reads version {expected}")]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
        /// Ours.
        expected: u32,
    },
    /// A kernel name that neither the spec nor the released snapshots know.
    #[error("unknown kernel `{name}`; known: {known}")]
    UnknownKernel {
        /// The name given.
        name: String,
        /// What exists.
        known: String,
    },
    /// The spec has errors.
    #[error("the spec in {0} has errors; run `luo gen` to see them")]
    BadSpec(PathBuf),
    /// A git revision could not be read.
    #[error("cannot read spec/ at git revision `{rev}`: {error}")]
    Git {
        /// The revision.
        rev: String,
        /// git's complaint.
        error: String,
    },
    /// Two inputs of different kinds (a file and a kernel set).
    #[error("{0}")]
    Mismatch(String),
}

/// Read one snapshot file, checking its format version.
pub fn read_snapshot(path: &Path) -> Result<ComponentSnapshot, InputError> {
    let text = std::fs::read_to_string(path).map_err(|error| InputError::Io {
        path: path.into(),
        error,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| InputError::NotASnapshot {
            path: path.into(),
            error: e.to_string(),
        })?;
    match value
        .get("snapshot_version")
        .and_then(serde_json::Value::as_u64)
    {
        None => {
            return Err(InputError::NotASnapshot {
                path: path.into(),
                error: "no `snapshot_version` field".into(),
            });
        }
        Some(v) if v != u64::from(SNAPSHOT_VERSION) => {
            return Err(InputError::WrongVersion {
                path: path.into(),
                found: v,
                expected: SNAPSHOT_VERSION,
            });
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| InputError::NotASnapshot {
        path: path.into(),
        error: e.to_string(),
    })
}

/// Read a directory of snapshots (`<component>.json`).
pub fn read_set(dir: &Path) -> Result<KernelSet, InputError> {
    let entries = std::fs::read_dir(dir).map_err(|error| InputError::Io {
        path: dir.into(),
        error,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut components = BTreeMap::new();
    let mut kernel = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for p in paths {
        let s = read_snapshot(&p)?;
        kernel = s.kernel.clone();
        components.insert(s.component.clone(), s);
    }
    if components.is_empty() {
        return Err(InputError::NotASnapshot {
            path: dir.into(),
            error: "the directory holds no snapshot".into(),
        });
    }
    Ok(KernelSet {
        kernel,
        view: View::Files,
        components,
    })
}

/// A released kernel's frozen snapshots: upstream's view.
pub fn upstream_set(root: &Path, kernel: &str) -> Result<KernelSet, InputError> {
    let dir = root.join(RELEASED_DIR).join(kernel);
    if !dir.is_dir() {
        let known = released_kernels(root).join(", ");
        return Err(InputError::UnknownKernel {
            name: format!("upstream:{kernel}"),
            known: format!(
                "released kernels with frozen snapshots: {known}; a kernel that is not released has only this tree's view, `luo:{kernel}`"
            ),
        });
    }
    let mut set = read_set(&dir)?;
    set.view = View::Upstream;
    Ok(set)
}

/// Kernels with frozen snapshots under `schema/released/`, sorted.
pub fn released_kernels(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root.join(RELEASED_DIR))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Snapshots of every kernel of the spec under `spec_dir`, computed now.
pub fn sets_from_spec(spec_dir: &Path) -> Result<Vec<KernelSet>, InputError> {
    let (spec, layouts, diags) = generate::load_checked(spec_dir);
    if diags.has_errors() {
        return Err(InputError::BadSpec(spec_dir.into()));
    }
    Ok(kernel_sets(&Ir::build(&spec, &layouts)))
}

/// The default kernel of the spec under `spec_dir`, renamed `name`.
pub fn current_set(spec_dir: &Path, name: &str) -> Result<KernelSet, InputError> {
    let (spec, _, _) = generate::load_checked(spec_dir);
    let default = spec.default_kernel().map(|k| k.name.clone());
    let mut set = sets_from_spec(spec_dir)?
        .into_iter()
        .find(|s| Some(&s.kernel) == default.as_ref())
        .ok_or_else(|| InputError::UnknownKernel {
            name: "default".into(),
            known: "no kernel has `default = true`".into(),
        })?;
    set.kernel = name.into();
    Ok(set)
}

/// A temporary directory, removed when dropped: on every path out of the code that made it.
struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory under the system's temporary directory.
    fn new(tag: &str) -> std::io::Result<TempDir> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("luo-{tag}-{}-{n}", std::process::id()));
        // `create_dir`, not `create_dir_all`: a directory already there (or a link planted in
        // its place) is an error rather than something to write into.
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Resolves `rev` to a commit of the repository at `root`. The revision comes from the
/// command line: one starting with `-` is refused (git would read it as an option, such as
/// `--output=FILE`), and `--end-of-options` makes sure git reads whatever else it is as a
/// revision only.
fn commit_of(root: &Path, rev: &str) -> Result<String, InputError> {
    let git_err = |error: String| InputError::Git {
        rev: rev.into(),
        error,
    };
    if rev.is_empty() || rev.starts_with('-') || rev.contains(['\0', '\n']) {
        return Err(git_err(
            "not a revision (empty, or starting with `-`); give a commit, branch or tag, \
             e.g. `git:HEAD~1`"
                .into(),
        ));
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .map_err(|e| git_err(format!("cannot run git: {e}")))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(git_err(format!(
            "no such commit in {} (`git log --oneline` lists them)",
            root.display()
        )));
    }
    Ok(hash)
}

/// Exports `spec/` at a git revision into a temporary directory (removed when the returned
/// value is dropped); the spec is at `<dir>/spec`.
fn spec_at_revision(root: &Path, rev: &str) -> Result<TempDir, InputError> {
    let git_err = |error: String| InputError::Git {
        rev: rev.into(),
        error,
    };
    let commit = commit_of(root, rev)?;
    let archive = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", &commit, "--", "spec"])
        .output()
        .map_err(|e| git_err(e.to_string()))?;
    if !archive.status.success() {
        return Err(git_err(
            String::from_utf8_lossy(&archive.stderr).trim().to_string(),
        ));
    }
    let dir = TempDir::new("spec").map_err(|e| git_err(e.to_string()))?;
    let mut tar = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dir.0)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| git_err(e.to_string()))?;
    if let Some(mut stdin) = tar.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(&archive.stdout)
            .map_err(|e| git_err(e.to_string()))?;
    }
    let status = tar.wait().map_err(|e| git_err(e.to_string()))?;
    if !status.success() {
        return Err(git_err("tar failed".into()));
    }
    Ok(dir)
}

/// What a diff argument names.
#[derive(Debug)]
pub enum Input {
    /// One component snapshot.
    Component(Box<ComponentSnapshot>),
    /// A kernel's snapshots.
    Kernel(KernelSet),
}

/// Resolve a command-line argument: a `.json` snapshot, a directory of
/// snapshots, `upstream:<kernel>` (also `released:<kernel>`: the frozen
/// snapshots of a released kernel), `luo:<kernel>`, `git:<rev>[:<kernel>]`,
/// `current`, or a kernel name — this tree's build of it (`luo:<kernel>`),
/// as in the matrix, check-update and simulate.
pub fn resolve(root: &Path, arg: &str) -> Result<Input, InputError> {
    let path = Path::new(arg);
    if arg.ends_with(".json") || path.is_file() {
        return read_snapshot(path).map(|s| Input::Component(Box::new(s)));
    }
    if path.is_dir() && !arg.contains(':') && !known_kernel_name(root, arg) {
        return read_set(path).map(Input::Kernel);
    }
    if let Some(rest) = arg.strip_prefix("git:") {
        let (rev, kernel) = rest
            .split_once(':')
            .map_or((rest, None), |(r, k)| (r, Some(k)));
        let tmp = spec_at_revision(root, rev)?;
        let spec_dir = tmp.0.join("spec");
        let result = match kernel {
            None => current_set(&spec_dir, &format!("git:{rev}")),
            Some(k) => sets_from_spec(&spec_dir).and_then(|sets| pick(sets, k)),
        };
        return result.map(Input::Kernel);
    }
    if let Some(k) = arg
        .strip_prefix("upstream:")
        .or_else(|| arg.strip_prefix("released:"))
    {
        return upstream_set(root, k).map(Input::Kernel);
    }
    let name = arg.strip_prefix("luo:").unwrap_or(arg);
    if name == "current" {
        return current_set(&root.join("spec"), "current").map(Input::Kernel);
    }
    pick(sets_from_spec(&root.join("spec"))?, name).map(Input::Kernel)
}

fn known_kernel_name(root: &Path, name: &str) -> bool {
    root.join("spec/kernels")
        .join(format!("{name}.toml"))
        .is_file()
}

/// Kernel `name` of this tree's build (the `luo:` view), as `luo gen` would write it.
pub fn spec_set(spec_dir: &Path, name: &str) -> Result<KernelSet, InputError> {
    pick(sets_from_spec(spec_dir)?, name)
}

fn pick(sets: Vec<KernelSet>, name: &str) -> Result<KernelSet, InputError> {
    let known = sets
        .iter()
        .map(|s| s.kernel.clone())
        .collect::<Vec<_>>()
        .join(", ");
    sets.into_iter()
        .find(|s| s.kernel == name)
        .ok_or_else(|| InputError::UnknownKernel {
            name: name.into(),
            known,
        })
}

/// Every kernel for the matrix in `view`: [`View::Luo`], as this tree builds
/// them (what each kernel's spec says it writes and reads, our multi-version
/// readers included) plus `current` (the default kernel); [`View::Upstream`],
/// every released kernel's frozen snapshot (upstream's exact-match readers).
pub fn matrix_sets(root: &Path, view: View) -> Result<Vec<KernelSet>, InputError> {
    match view {
        View::Upstream => released_kernels(root)
            .iter()
            .map(|k| upstream_set(root, k))
            .collect(),
        View::Luo | View::Files => {
            let mut out = sets_from_spec(&root.join("spec"))?;
            out.push(current_set(&root.join("spec"), "current")?);
            Ok(out)
        }
    }
}

/// Whether the diff says the live update works: no handover (`kho`)
/// component has a breaking finding or a policy error. The matrix's cell for
/// the same pair in the same view gives the same answer (uAPI and in-kernel
/// API findings are about userspace and C users, not about the handover).
pub fn handover_ok(diffs: &[ComponentDiff]) -> bool {
    diffs
        .iter()
        .filter(|d| d.abi == "kho")
        .flat_map(|d| &d.findings)
        .all(|f| f.severity < Severity::Breaking)
}

/// Diff two inputs: facts and findings per component.
pub fn diff_inputs(old: &Input, new: &Input) -> Result<Vec<ComponentDiff>, InputError> {
    match (old, new) {
        (Input::Component(o), Input::Component(n)) => {
            if o.component != n.component {
                return Err(InputError::Mismatch(format!(
                    "the snapshots are of different components (`{}` and `{}`)",
                    o.component, n.component
                )));
            }
            Ok(vec![diff_component(o, n)])
        }
        (Input::Kernel(o), Input::Kernel(n)) => Ok(diff_sets(o, n)),
        _ => Err(InputError::Mismatch(
            "compare a snapshot file with a snapshot file, or two kernels".into(),
        )),
    }
}

/// The diff of one component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentDiff {
    /// Component.
    pub component: String,
    /// `uapi`, `kho` or `kernel`.
    pub abi: String,
    /// Old kernel.
    pub old_kernel: String,
    /// New kernel.
    pub new_kernel: String,
    /// Facts.
    pub facts: Vec<facts::Fact>,
    /// Classified findings.
    pub findings: Vec<Finding>,
}

/// Diff two snapshots of one component.
pub fn diff_component(old: &ComponentSnapshot, new: &ComponentSnapshot) -> ComponentDiff {
    let facts = facts::diff(old, new);
    let findings = policy::classify(old, new, &facts);
    ComponentDiff {
        component: new.component.clone(),
        abi: new.abi.clone(),
        old_kernel: old.kernel.clone(),
        new_kernel: new.kernel.clone(),
        facts,
        findings,
    }
}

/// Diff two kernels component by component.
pub fn diff_sets(old: &KernelSet, new: &KernelSet) -> Vec<ComponentDiff> {
    let mut out = Vec::new();
    for (name, o) in &old.components {
        match new.components.get(name) {
            Some(n) => {
                let mut d = diff_component(o, n);
                (d.old_kernel, d.new_kernel) = (old.label(), new.label());
                out.push(d);
            }
            None => out.push(ComponentDiff {
                component: name.clone(),
                abi: o.abi.clone(),
                old_kernel: old.label(),
                new_kernel: new.label(),
                facts: Vec::new(),
                findings: vec![Finding {
                    rule: "COMPONENT_REMOVED",
                    severity: if o.abi == "kho" {
                        Severity::Breaking
                    } else {
                        Severity::Note
                    },
                    component: name.clone(),
                    subject: o.header.clone(),
                    message: format!("`{}` has no `{name}`", new.label()),
                    fix: None,
                }],
            }),
        }
    }
    for (name, n) in new
        .components
        .iter()
        .filter(|(k, _)| !old.components.contains_key(*k))
    {
        out.push(ComponentDiff {
            component: name.clone(),
            abi: n.abi.clone(),
            old_kernel: old.label(),
            new_kernel: new.label(),
            facts: Vec::new(),
            findings: vec![Finding {
                rule: "COMPONENT_ADDED",
                severity: Severity::Compatible,
                component: name.clone(),
                subject: n.header.clone(),
                message: format!("new in `{}`", new.label()),
                fix: None,
            }],
        });
    }
    out
}
