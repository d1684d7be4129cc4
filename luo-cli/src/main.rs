//! `luo`: the command-line front end of the luo framework.
//!
//! `luo gen` turns `spec/` into `generated/` (C headers, Rust ABI types,
//! layout snapshots); `luo gen --check` fails when the committed files are
//! stale; `luo layout` shows a struct pahole-style. The spec-side commands
//! live in `luo_spec::commands` (also built as the standalone `luo-gen`), so
//! generating never depends on the generated crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use luo_spec::commands;

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
    match cli.command {
        Command::Gen { check, verbose } => commands::gen_command(&cli.root, check, verbose),
        Command::Layout {
            name,
            arch,
            version,
        } => commands::layout_command(&cli.root, &name, &arch, version.as_deref()),
    }
}
