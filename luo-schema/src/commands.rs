// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The spec-side commands (`luo gen`, `luo layout`) as library functions,
//! so the `luo` CLI and the standalone `luo-gen` binary share them. They
//! depend on nothing generated: a spec edit that breaks `luo-generated`
//! never makes the generator unbuildable.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

pub use crate::output::Format;
use crate::output::Reporter;
use luo_spec::diag::Severity;
use luo_spec::generate::{self, Change};
use luo_spec::layout::{Layouts, Target};
use luo_spec::model::{Origin, Scope, Spec};

/// The exit code of a command that wrote its answer, or 2 when standard output failed.
fn written(r: io::Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("error: writing standard output: {e}");
        ExitCode::from(2)
    })
}

/// Load and check `root/spec`, printing diagnostics; `None` (after
/// printing) when the spec has errors. With `--format json` a spec with errors is also
/// the command's JSON document on stdout: `{"errors": N, "diagnostics": [...]}`.
pub fn load(root: &Path, verbose: bool, format: Format) -> Option<(Spec, Layouts)> {
    let spec_dir = root.join("spec");
    let (spec, layouts, diags) = generate::load_checked(&spec_dir);
    let min = if verbose {
        Severity::Note
    } else {
        Severity::Warning
    };
    let shown = diags.render(&spec.sources, min);
    if !shown.is_empty() {
        eprint!("{shown}");
    }
    if diags.has_errors() {
        let errors = diags.count(Severity::Error);
        eprintln!(
            "error: {errors} error(s) in {}; nothing generated",
            spec_dir.display()
        );
        let doc = json!({
            "spec": spec_dir.display().to_string(),
            "errors": errors,
            "diagnostics": diags.to_json(&spec.sources, min),
        });
        if let Err(e) = Reporter::stdout(format).json(&doc) {
            eprintln!("error: writing standard output: {e}");
        }
        return None;
    }
    Some((spec, layouts))
}

/// `luo gen [--check]`: exit 0 when written or up to date, 1 when stale
/// (`--check`), 2 on a bad spec or an I/O error.
pub fn gen_command(root: &Path, check: bool, verbose: bool, format: Format) -> ExitCode {
    let Some((spec, layouts)) = load(root, verbose, format) else {
        return ExitCode::from(2);
    };
    let mut out = Reporter::stdout(format);
    written(run_gen(root, &spec, &layouts, check, &mut out))
}

/// `luo layout NAME [--arch A] [--version comp/ver]`.
pub fn layout_command(
    root: &Path,
    name: &str,
    arch: &str,
    version: Option<&str>,
    format: Format,
) -> ExitCode {
    let Some((spec, layouts)) = load(root, false, format) else {
        return ExitCode::from(2);
    };
    let mut out = Reporter::stdout(format);
    written(layout(&spec, &layouts, name, arch, version, &mut out))
}

fn change_json(c: &Change) -> serde_json::Value {
    let (kind, path) = match c {
        Change::Added(p) => ("added", p),
        Change::Modified(p) => ("modified", p),
        Change::Removed(p) => ("removed", p),
    };
    json!({ "change": kind, "path": path.display().to_string() })
}

fn run_gen(
    root: &Path,
    spec: &Spec,
    layouts: &Layouts,
    check: bool,
    out: &mut Reporter,
) -> io::Result<ExitCode> {
    let outputs = generate::generate(spec, layouts);
    let changes = generate::diff(root, &outputs);
    let list: Vec<_> = changes.iter().map(change_json).collect();
    if check {
        out.json(&json!({
            "files": outputs.len(),
            "up_to_date": changes.is_empty(),
            "stale": list,
        }))?;
        if changes.is_empty() {
            out.line(format_args!(
                "luo gen --check: {} generated files are up to date",
                outputs.len()
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "luo gen --check: {} stale file(s); run `luo gen`:",
            changes.len()
        );
        for c in &changes {
            eprintln!("  {c}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let Err(e) = generate::write(root, &outputs, &changes) {
        eprintln!("error: writing generated files: {e}");
        return Ok(ExitCode::from(2));
    }
    for c in &changes {
        out.line(c)?;
    }
    let n = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
    let (added, modified, removed) = (
        n(|c| matches!(c, Change::Added(_))),
        n(|c| matches!(c, Change::Modified(_))),
        n(|c| matches!(c, Change::Removed(_))),
    );
    out.line(format_args!(
        "luo gen: {} files, {added} added, {modified} modified, {removed} removed",
        outputs.len(),
    ))?;
    out.json(&json!({
        "files": outputs.len(),
        "added": added,
        "modified": modified,
        "removed": removed,
        "changes": list,
    }))?;
    Ok(ExitCode::SUCCESS)
}

fn layout(
    spec: &Spec,
    layouts: &Layouts,
    name: &str,
    arch: &str,
    version: Option<&str>,
    out: &mut Reporter,
) -> io::Result<ExitCode> {
    let Some(target) = Target::from_name(arch) else {
        eprintln!(
            "error: unknown target `{arch}`; use x86_64, i386, arm64, arm64-16k or arm64-64k"
        );
        return Ok(ExitCode::from(2));
    };
    let scope = match find_scope(spec, name, version) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let l = match layouts.layout(scope, name, target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let where_ = match scope.version() {
        Some(v) => format!("{}/{}", scope.component().name, v.id),
        None => scope.component().name.clone(),
    };
    let strukt = scope.find_struct(name).map(|(_, s)| s);
    let ty_of = |i: usize| {
        strukt
            .and_then(|s| s.fields.get(i))
            .map(|m| m.ty.to_string())
            .unwrap_or_default()
    };
    if out.is_json() {
        let fields: Vec<_> = l
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                json!({
                    "name": f.name, "type": ty_of(i), "offset": f.offset, "size": f.size,
                    "align": f.align, "count": f.count,
                    "bits": f.bits.map(|(shift, width)| json!({"shift": shift, "width": width})),
                })
            })
            .collect();
        let holes: Vec<_> = l
            .holes
            .iter()
            .map(|h| json!({"after": h.after, "offset": h.offset, "size": h.size}))
            .collect();
        out.json(&json!({
            "struct": name, "definition": where_, "target": target.to_string(),
            "size": l.size, "align": l.align, "fields": fields, "holes": holes,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    out.line(format_args!("struct {name} {{ /* {where_}, {target} */"))?;
    let mut holes = l.holes.iter().peekable();
    for (i, f) in l.fields.iter().enumerate() {
        let ty = ty_of(i);
        let decl = match f.bits {
            Some((shift, width)) => {
                format!(
                    "{ty} {}:{width}; /* bits {shift}..{} */",
                    f.name,
                    shift + width
                )
            }
            None if f.count > 1
                || strukt
                    .and_then(|s| s.fields.get(i))
                    .is_some_and(|m| m.len.is_some()) =>
            {
                format!("{ty} {}[{}];", f.name, f.count)
            }
            None => format!("{ty} {};", f.name),
        };
        out.line(format_args!(
            "\t{decl:<48} /* {:>5} {:>5} */",
            f.offset, f.size
        ))?;
        while let Some(h) = holes.peek() {
            if h.after.as_deref() == Some(f.name.as_str())
                && l.fields
                    .get(i + 1)
                    .is_none_or(|n| n.name != f.name && h.offset <= n.offset)
            {
                out.line(format_args!(
                    "\n\t/* XXX {} byte hole, try to pack */\n",
                    h.size
                ))?;
                holes.next();
            } else {
                break;
            }
        }
    }
    out.line(format_args!(
        "\n\t/* size: {}, alignment: {}, holes: {} */",
        l.size,
        l.align,
        l.holes.len()
    ))?;
    out.line("};")?;
    Ok(ExitCode::SUCCESS)
}

fn find_scope<'a>(spec: &'a Spec, name: &str, version: Option<&str>) -> Result<Scope<'a>, String> {
    if let Some(v) = version {
        let (c, ver) = v
            .split_once('/')
            .map_or((v, None), |(c, ver)| (c, Some(ver)));
        let (ci, comp) = spec.component(c).ok_or_else(|| {
            let known: Vec<&str> = spec.components.iter().map(|c| c.name.as_str()).collect();
            format!("unknown component `{c}`; components: {}", known.join(", "))
        })?;
        let vi =
            match ver {
                Some(ver) => Some(comp.versions.iter().position(|x| x.id == ver).ok_or_else(
                    || {
                        let known: Vec<&str> =
                            comp.versions.iter().map(|x| x.id.as_str()).collect();
                        format!(
                            "`{c}` has no version `{ver}`; its versions: {}",
                            known.join(", ")
                        )
                    },
                )?),
                None => None,
            };
        return Ok(Scope {
            spec,
            origin: Origin { comp: ci, ver: vi },
        });
    }
    // Default: as the default kernel writes it; else any definition.
    let kernel = spec.default_kernel();
    let mut fallback = None;
    for scope in spec.scopes() {
        let own = match scope.version() {
            Some(v) => &v.items,
            None => &scope.component().common,
        };
        if !own.structs.iter().any(|s| s.name == name) {
            continue;
        }
        let written = match (kernel, scope.origin.ver) {
            (_, None) => true,
            (Some(k), Some(_)) => {
                spec.rendered_version(k, scope.component()) == Some(scope.origin.ver)
            }
            (None, Some(_)) => false,
        };
        if written {
            return Ok(scope);
        }
        fallback.get_or_insert(scope);
    }
    fallback.ok_or_else(|| {
        // The closest names, as a compiler suggests them.
        let mut names: Vec<&str> = spec
            .scopes()
            .into_iter()
            .flat_map(|sc| {
                let own = sc.version().map_or(&sc.component().common, |v| &v.items);
                own.structs.iter().map(|s| s.name.as_str())
            })
            .filter(|n| n.contains(name) || name.contains(*n))
            .collect();
        names.sort_unstable();
        names.dedup();
        let hint = if names.is_empty() {
            "the structs are the `[[struct]]` and `[[version.struct]]` entries of spec/*.toml"
                .into()
        } else {
            format!(
                "did you mean {}?",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!("no struct `{name}` in the spec; {hint}")
    })
}

/// `luo schema diff OLD NEW`: exit 0 compatible, 1 breaking, 2 input error.
pub fn schema_diff_command(root: &Path, old: &str, new: &str, format: Format) -> ExitCode {
    use crate::diff::{diff_inputs, report, resolve};
    let inputs = resolve(root, old).and_then(|o| Ok((o, resolve(root, new)?)));
    let diffs = match inputs.and_then(|(o, n)| diff_inputs(&o, &n)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = Reporter::stdout(format);
    written((|| {
        out.text(report::render_text(&diffs))?;
        out.json(&report::to_json(&diffs))?;
        Ok(ExitCode::from(report::exit_code(&diffs)))
    })())
}

/// `luo schema matrix [--view luo|upstream] [--html FILE]`: every kernel pair in one view;
/// exit 0, or 2 on bad input.
pub fn schema_matrix_command(
    root: &Path,
    view: crate::diff::View,
    html: Option<&Path>,
    format: Format,
) -> ExitCode {
    use crate::diff::{matrix, matrix_sets};
    let sets = match matrix_sets(root, view) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let m = matrix::matrix(&sets);
    let about = matrix::About::of_tree(root);
    let mut out = Reporter::stdout(format);
    let shown = (|| {
        out.text(matrix::render_text(&sets, &m, &about))?;
        out.json(&matrix::to_json(&sets, &m, &about))
    })();
    if let Err(e) = shown {
        return written(Err(e));
    }
    if let Some(path) = html {
        if let Err(e) = std::fs::write(path, matrix::render_html(&sets, &m, &about)) {
            eprintln!(
                "error: cannot write {}: {e}; check that its directory exists and is writable",
                path.display()
            );
            return ExitCode::from(2);
        }
        eprintln!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

/// `luo schema check`: the current spec against every released kernel's
/// frozen snapshots; exit 1 on any breaking change or policy error.
pub fn schema_check_command(root: &Path, format: Format) -> ExitCode {
    use crate::diff::{diff_sets, report, sets_from_spec, upstream_set};
    let Some((spec, _)) = load(root, false, format) else {
        return ExitCode::from(2);
    };
    let current = match sets_from_spec(&root.join("spec")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = Reporter::stdout(format);
    let mut worst = 0u8;
    let mut kernels = Vec::new();
    for kernel in spec.kernels.iter().filter(|k| k.released) {
        let frozen = match upstream_set(root, &kernel.name) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "error: released kernel `{}` has no frozen snapshots ({e}); run `luo schema freeze {}`",
                    kernel.name, kernel.name
                );
                return ExitCode::from(2);
            }
        };
        let Some(now) = current.iter().find(|s| s.kernel == kernel.name) else {
            continue;
        };
        let diffs = diff_sets(&frozen, now);
        let code = report::exit_code(&diffs);
        let changed: Vec<_> = diffs
            .iter()
            .filter(|d| !d.findings.is_empty())
            .cloned()
            .collect();
        let shown = if changed.is_empty() {
            out.line(format_args!("{}: unchanged since release", kernel.name))
        } else {
            out.line(format_args!(
                "{}: the spec changed since release",
                kernel.name
            ))
            .and_then(|()| out.text(report::render_text(&changed)))
        };
        if let Err(e) = shown {
            return written(Err(e));
        }
        kernels.push(json!({
            "kernel": kernel.name,
            "snapshots": root
                .join(crate::diff::RELEASED_DIR)
                .join(&kernel.name)
                .display()
                .to_string(),
            "compatible": code == 0,
            "components": changed,
        }));
        worst = worst.max(code);
    }
    let checked = kernels.len();
    written((|| {
        out.line(format_args!(
            "luo schema check: {checked} released kernel(s) checked"
        ))?;
        out.json(&json!({
            "compatible": worst == 0,
            "checked": checked,
            "kernels": kernels,
        }))?;
        Ok(ExitCode::from(worst))
    })())
}

/// `luo schema freeze KERNEL`: write a released kernel's snapshots once.
pub fn schema_freeze_command(root: &Path, kernel: &str, format: Format) -> ExitCode {
    use crate::diff::{RELEASED_DIR, spec_set};
    let dir = root.join(RELEASED_DIR).join(kernel);
    if dir.exists() {
        eprintln!(
            "error: {} exists; released snapshots are never rewritten",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let set = match spec_set(&root.join("spec"), kernel) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    for (name, snap) in &set.components {
        let path = dir.join(format!("{name}.json"));
        let json = serde_json::to_string_pretty(snap).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let mut out = Reporter::stdout(format);
    written((|| {
        out.line(format_args!(
            "froze {} components of {kernel} in {}",
            set.components.len(),
            dir.display()
        ))?;
        out.json(&json!({
            "kernel": kernel,
            "directory": dir.display().to_string(),
            "components": set.components.keys().collect::<Vec<_>>(),
        }))?;
        Ok(ExitCode::SUCCESS)
    })())
}

/// `luo schema table KERNEL [-o FILE]`: a kernel's `.liveupdate_features`
/// table, as a binary playing it embeds it. The table is raw bytes; with
/// `--format json` its entries are listed instead (and `-o` still gets the bytes).
pub fn schema_table_command(
    root: &Path,
    kernel: &str,
    out_file: Option<&Path>,
    format: Format,
) -> ExitCode {
    use crate::diff::{spec_set, table};
    let set = match spec_set(&root.join("spec"), kernel) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = table::build(&set);
    if let Some(path) = out_file
        && let Err(e) = std::fs::write(path, &bytes)
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    match format {
        Format::Json => {
            let entries = table::from_file_bytes(&bytes).unwrap_or_default();
            let mut out = Reporter::stdout(format);
            written(
                out.json(&json!({
                    "kernel": kernel,
                    "bytes": bytes.len(),
                    "entries": entries,
                }))
                .map(|()| ExitCode::SUCCESS),
            )
        }
        Format::Text if out_file.is_some() => ExitCode::SUCCESS,
        Format::Text => {
            written(io::Write::write_all(&mut io::stdout(), &bytes).map(|()| ExitCode::SUCCESS))
        }
    }
}

/// `luo schema check-update OLD NEW [--old-kernel K] [--new-kernel K]`: from
/// two binaries (or raw tables) alone, will a live update from OLD to NEW
/// work? A binary that plays several kernels is asked for one by name.
/// Exit 0 yes, 1 no, 2 on unreadable input.
pub fn check_update_command(
    old: &Path,
    new: &Path,
    old_kernel: Option<&str>,
    new_kernel: Option<&str>,
    format: Format,
) -> ExitCode {
    use crate::diff::table;
    let read = |p: &Path, k: Option<&str>| -> Result<Vec<table::Entry>, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        table::from_file_for_kernel(&bytes, k).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (o, n) = match (read(old, old_kernel), read(new, new_kernel)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let verdicts = table::check_update(&o, &n);
    let ok = verdicts.iter().all(|v| v.ok);
    let mut out = Reporter::stdout(format);
    // The tables are what this tree built into the binaries: the luo view.
    let view = (
        format!("luo:{}", old_kernel.unwrap_or("default")),
        format!("luo:{}", new_kernel.unwrap_or("default")),
    );
    written((|| {
        out.line(format_args!(
            "view: {} -> {} (the ABI tables built into the binaries)",
            view.0, view.1
        ))?;
        for v in &verdicts {
            out.line(format_args!(
                "{} {}: {}",
                if v.ok { "ok  " } else { "FAIL" },
                v.written,
                v.reason
            ))?;
        }
        out.line(if ok {
            "live update possible"
        } else {
            "live update NOT possible"
        })?;
        out.json(&json!({
            "old": old.display().to_string(),
            "new": new.display().to_string(),
            "view": { "old": view.0, "new": view.1 },
            "possible": ok,
            "components": verdicts,
        }))?;
        Ok(ExitCode::from(u8::from(!ok)))
    })())
}
