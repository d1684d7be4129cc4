//! The spec-side commands (`luo gen`, `luo layout`) as library functions,
//! so the `luo` CLI and the standalone `luo-gen` binary share them. They
//! depend on nothing generated: a spec edit that breaks `luo-generated`
//! never makes the generator unbuildable.

use std::path::Path;
use std::process::ExitCode;

use crate::diag::Severity;
use crate::generate::{self, Change};
use crate::layout::{Layouts, Target};
use crate::model::{Origin, Scope, Spec};

/// Load and check `root/spec`, printing diagnostics; `None` (after
/// printing) when the spec has errors.
pub fn load(root: &Path, verbose: bool) -> Option<(Spec, Layouts)> {
    let spec_dir = root.join("spec");
    let (spec, layouts, diags) = generate::load_checked(&spec_dir);
    let shown = diags.render(
        &spec.sources,
        if verbose {
            Severity::Note
        } else {
            Severity::Warning
        },
    );
    if !shown.is_empty() {
        eprint!("{shown}");
    }
    if diags.has_errors() {
        eprintln!(
            "error: {} error(s) in {}; nothing generated",
            diags.count(Severity::Error),
            spec_dir.display()
        );
        return None;
    }
    Some((spec, layouts))
}

/// `luo gen [--check]`: exit 0 when written or up to date, 1 when stale
/// (`--check`), 2 on a bad spec or an I/O error.
pub fn gen_command(root: &Path, check: bool, verbose: bool) -> ExitCode {
    let Some((spec, layouts)) = load(root, verbose) else {
        return ExitCode::from(2);
    };
    run_gen(root, &spec, &layouts, check)
}

/// `luo layout NAME [--arch A] [--version comp/ver]`.
pub fn layout_command(root: &Path, name: &str, arch: &str, version: Option<&str>) -> ExitCode {
    let Some((spec, layouts)) = load(root, false) else {
        return ExitCode::from(2);
    };
    layout(&spec, &layouts, name, arch, version)
}

fn run_gen(root: &Path, spec: &Spec, layouts: &Layouts, check: bool) -> ExitCode {
    let outputs = generate::generate(spec, layouts);
    let changes = generate::diff(root, &outputs);
    if check {
        if changes.is_empty() {
            println!(
                "luo gen --check: {} generated files are up to date",
                outputs.len()
            );
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "luo gen --check: {} stale file(s); run `luo gen`:",
            changes.len()
        );
        for c in &changes {
            eprintln!("  {c}");
        }
        return ExitCode::FAILURE;
    }
    if let Err(e) = generate::write(root, &outputs, &changes) {
        eprintln!("error: writing generated files: {e}");
        return ExitCode::from(2);
    }
    for c in &changes {
        println!("{c}");
    }
    let n = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
    println!(
        "luo gen: {} files, {} added, {} modified, {} removed",
        outputs.len(),
        n(|c| matches!(c, Change::Added(_))),
        n(|c| matches!(c, Change::Modified(_))),
        n(|c| matches!(c, Change::Removed(_)))
    );
    ExitCode::SUCCESS
}

fn layout(
    spec: &Spec,
    layouts: &Layouts,
    name: &str,
    arch: &str,
    version: Option<&str>,
) -> ExitCode {
    let Some(target) = Target::from_name(arch) else {
        eprintln!(
            "error: unknown target `{arch}`; use x86_64, i386, arm64, arm64-16k or arm64-64k"
        );
        return ExitCode::from(2);
    };
    let scope = match find_scope(spec, name, version) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let l = match layouts.layout(scope, name, target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let where_ = match scope.version() {
        Some(v) => format!("{}/{}", scope.component().name, v.id),
        None => scope.component().name.clone(),
    };
    let strukt = scope.find_struct(name).map(|(_, s)| s);
    println!("struct {name} {{ /* {where_}, {target} */");
    let mut holes = l.holes.iter().peekable();
    for (i, f) in l.fields.iter().enumerate() {
        let ty = strukt
            .and_then(|s| s.fields.get(i))
            .map(|m| m.ty.to_string())
            .unwrap_or_default();
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
        println!("\t{decl:<48} /* {:>5} {:>5} */", f.offset, f.size);
        while let Some(h) = holes.peek() {
            if h.after.as_deref() == Some(f.name.as_str())
                && l.fields
                    .get(i + 1)
                    .is_none_or(|n| n.name != f.name && h.offset <= n.offset)
            {
                println!("\n\t/* XXX {} byte hole, try to pack */\n", h.size);
                holes.next();
            } else {
                break;
            }
        }
    }
    println!(
        "\n\t/* size: {}, alignment: {}, holes: {} */",
        l.size,
        l.align,
        l.holes.len()
    );
    println!("}};");
    ExitCode::SUCCESS
}

fn find_scope<'a>(spec: &'a Spec, name: &str, version: Option<&str>) -> Result<Scope<'a>, String> {
    if let Some(v) = version {
        let (c, ver) = v
            .split_once('/')
            .map_or((v, None), |(c, ver)| (c, Some(ver)));
        let (ci, comp) = spec
            .component(c)
            .ok_or_else(|| format!("unknown component `{c}`"))?;
        let vi = match ver {
            Some(ver) => Some(
                comp.versions
                    .iter()
                    .position(|x| x.id == ver)
                    .ok_or_else(|| format!("`{c}` has no version `{ver}`"))?,
            ),
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
    fallback.ok_or_else(|| format!("no struct `{name}` in the spec"))
}

/// Output format of the schema commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Text,
    /// For tools.
    Json,
}

/// `luo schema diff OLD NEW`: exit 0 compatible, 1 breaking, 2 input error.
pub fn schema_diff_command(root: &Path, old: &str, new: &str, format: Format) -> ExitCode {
    use crate::schema_diff::{diff_inputs, report, resolve};
    let inputs = resolve(root, old).and_then(|o| Ok((o, resolve(root, new)?)));
    let diffs = match inputs.and_then(|(o, n)| diff_inputs(&o, &n)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match format {
        Format::Text => print!("{}", report::render_text(&diffs)),
        Format::Json => print!("{}", report::render_json(&diffs)),
    }
    ExitCode::from(report::exit_code(&diffs))
}

/// `luo schema matrix [--view luo|upstream] [--html FILE]`: every kernel pair in one view;
/// exit 0, or 2 on bad input.
pub fn schema_matrix_command(
    root: &Path,
    view: crate::schema_diff::View,
    html: Option<&Path>,
    format: Format,
) -> ExitCode {
    use crate::schema_diff::{matrix, matrix_sets};
    let sets = match matrix_sets(root, view) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let m = matrix::matrix(&sets);
    match format {
        Format::Text => print!("{}", matrix::render_text(&sets, &m)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default()),
    }
    if let Some(path) = html {
        if let Err(e) = std::fs::write(path, matrix::render_html(&sets, &m)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

/// `luo schema check`: the current spec against every released kernel's
/// frozen snapshots; exit 1 on any breaking change or policy error.
pub fn schema_check_command(root: &Path) -> ExitCode {
    use crate::schema_diff::{diff_sets, report, sets_from_spec, upstream_set};
    let Some((spec, _)) = load(root, false) else {
        return ExitCode::from(2);
    };
    let current = match sets_from_spec(&root.join("spec")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut worst = 0u8;
    let mut checked = 0;
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
        if changed.is_empty() {
            println!("{}: unchanged since release", kernel.name);
        } else {
            println!("{}: the spec changed since release", kernel.name);
            print!("{}", report::render_text(&changed));
        }
        worst = worst.max(code);
        checked += 1;
    }
    println!("luo schema check: {checked} released kernel(s) checked");
    ExitCode::from(worst)
}

/// `luo schema freeze KERNEL`: write a released kernel's snapshots once.
pub fn schema_freeze_command(root: &Path, kernel: &str) -> ExitCode {
    use crate::schema_diff::{RELEASED_DIR, sets_from_spec};
    let dir = root.join(RELEASED_DIR).join(kernel);
    if dir.exists() {
        eprintln!(
            "error: {} exists; released snapshots are never rewritten",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let set = match sets_from_spec(&root.join("spec"))
        .map(|s| s.into_iter().find(|s| s.kernel == kernel))
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("error: unknown kernel `{kernel}`");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    for (name, snap) in &set.components {
        let json = serde_json::to_string_pretty(snap).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(dir.join(format!("{name}.json")), json) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    println!(
        "froze {} components of {kernel} in {}",
        set.components.len(),
        dir.display()
    );
    ExitCode::SUCCESS
}

/// `luo schema table KERNEL [-o FILE]`: a kernel's `.liveupdate_features`
/// table, as a binary playing it embeds it.
pub fn schema_table_command(root: &Path, kernel: &str, out: Option<&Path>) -> ExitCode {
    use crate::schema_diff::{sets_from_spec, table};
    let set = match sets_from_spec(&root.join("spec"))
        .map(|s| s.into_iter().find(|s| s.kernel == kernel))
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("error: unknown kernel `{kernel}`");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = table::build(&set);
    let written = match out {
        Some(path) => std::fs::write(path, &bytes),
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
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
) -> ExitCode {
    use crate::schema_diff::table;
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
    // The tables are what this tree built into the binaries: the luo view.
    println!(
        "view: luo:{} -> luo:{} (the ABI tables built into the binaries)",
        old_kernel.unwrap_or("default"),
        new_kernel.unwrap_or("default")
    );
    for v in &verdicts {
        println!(
            "{} {}: {}",
            if v.ok { "ok  " } else { "FAIL" },
            v.written,
            v.reason
        );
    }
    let ok = verdicts.iter().all(|v| v.ok);
    println!(
        "{}",
        if ok {
            "live update possible"
        } else {
            "live update NOT possible"
        }
    );
    ExitCode::from(u8::from(!ok))
}
