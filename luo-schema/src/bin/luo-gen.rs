// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo-gen [--check] [-v] [--root DIR]`: the generator alone, built from
//! `luo-spec` and `luo-schema` only (nothing generated), so it runs whatever state `generated/` is in. CI uses it
//! for `luo gen --check`; the `luo` CLI offers the same as `luo gen`. Without
//! `--root` it finds the repository by walking up from the current directory.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut root: Option<PathBuf> = None;
    let (mut check, mut verbose) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "-v" | "--verbose" => verbose = true,
            "--root" => match args.next() {
                Some(dir) => root = Some(PathBuf::from(dir)),
                None => {
                    eprintln!("error: --root needs a directory");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: luo-gen [--check] [-v] [--root DIR]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!(
                    "error: unknown argument `{other}`; usage: luo-gen [--check] [-v] [--root DIR]"
                );
                return ExitCode::from(2);
            }
        }
    }
    match luo_spec::root::find(root.as_deref()) {
        Ok(root) => luo_schema::commands::gen_command(
            &root,
            check,
            verbose,
            luo_schema::output::Format::Text,
        ),
        Err(e) => {
            eprintln!("luo-gen: {e}");
            ExitCode::from(2)
        }
    }
}
