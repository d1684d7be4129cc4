// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo-sim-daemon [serve] [--socket PATH] [--quiet]` and `luo-sim-daemon kexec [--socket PATH]
//! [--into PATH]`: the luo-sim daemon and its kexec client.
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let mut cmd = "serve".to_owned();
    if let Some(a) = args.peek()
        && !a.starts_with('-')
    {
        cmd = args.next().unwrap_or_default();
    }
    let mut opts = luo_sim::ServeOptions::default();
    let mut into = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => opts.socket = PathBuf::from(args.next().unwrap_or_default()),
            "--quiet" | "-q" => opts.verbose = false,
            "--into" => into = args.next().map(PathBuf::from),
            _ => {
                eprintln!(
                    "usage: luo-sim-daemon [serve|kexec] [--socket PATH] [--quiet] [--into PATH]"
                );
                std::process::exit(2);
            }
        }
    }
    let r = match cmd.as_str() {
        "serve" => luo_sim::serve(&opts),
        "kexec" => luo_sim::kexec(&opts.socket, into.as_deref()).map(|m| println!("{m}")),
        "preload" => {
            println!("{}", luo_sim::PRELOAD);
            Ok(())
        }
        _ => {
            eprintln!("unknown command {cmd}");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("luo-sim: {e}");
        std::process::exit(1);
    }
}
