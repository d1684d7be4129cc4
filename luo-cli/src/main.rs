//! `luo`: the command-line front end of the luo framework.
//!
//! `luo gen` turns `spec/` into `generated/` (C headers, Rust ABI types,
//! layout snapshots); `luo gen --check` fails when the committed files are
//! stale; `luo layout` shows a struct pahole-style. The CLI depends only on
//! `luo-spec`, never on the generated crate, so it builds whatever state
//! `generated/` is in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use luo_spec::diag::Severity;
use luo_spec::generate::{self, Change};
use luo_spec::layout::Target;
use luo_spec::model::{Origin, Scope, Spec};

#[derive(Parser)]
#[command(
    name = "luo",
    version,
    about = "Declared, generated, checked Live Update Orchestrator ABIs"
)]
struct Cli {
    /// Repository root (holds `spec/` and `generated/`).
    #[arg(long, global = true, default_value = ".")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write `generated/` from `spec/` and list what changed.
    Gen {
        /// Write nothing; exit 1 and list the files that are stale.
        #[arg(long)]
        check: bool,
        /// Also print notes (PAGE_SIZE or architecture dependent layouts).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Show a struct's layout: offsets, sizes, holes (like pahole).
    Layout {
        /// Struct name.
        name: String,
        /// Target: x86_64, i386, arm64, arm64-16k, arm64-64k.
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// Which definition, when versions differ: `component/version`
        /// (default: the version the default kernel writes).
        #[arg(long)]
        version: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spec_dir = cli.root.join("spec");
    let (spec, layouts, diags) = generate::load_checked(&spec_dir);
    let verbose = matches!(cli.command, Command::Gen { verbose: true, .. });
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
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Gen { check, .. } => run_gen(&cli.root, &spec, &layouts, check),
        Command::Layout {
            name,
            arch,
            version,
        } => layout(&spec, &layouts, &name, &arch, version.as_deref()),
    }
}

fn run_gen(root: &Path, spec: &Spec, layouts: &luo_spec::layout::Layouts, check: bool) -> ExitCode {
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
    layouts: &luo_spec::layout::Layouts,
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
