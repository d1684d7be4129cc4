// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo-gen [--check] [-v] [--root DIR]`: the generator alone, built from
//! `luo-spec` and `luo-schema` only (nothing generated), so it runs whatever state `generated/` is in. CI uses it
//! for `luo gen --check`; the `luo` CLI offers the same as `luo gen`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut root = PathBuf::from(".");
    let (mut check, mut verbose) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "-v" | "--verbose" => verbose = true,
            "--root" => match args.next() {
                Some(dir) => root = PathBuf::from(dir),
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
    luo_schema::commands::gen_command(&root, check, verbose, luo_schema::output::Format::Text)
}
