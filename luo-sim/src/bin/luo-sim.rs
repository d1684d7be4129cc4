// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo-sim`: the model's live update, end to end, across two processes.
//!
//! ```text
//! luo-sim simulate [--sessions N] [--files N] [--size SIZE] [--seed N] [--hops N] [--next PATH] [--save-image PATH] [--format text|json]
//!                  [--from KERNEL] [--to KERNEL]...   (6.19, 7.0, 7.2, 7.3, next)
//!                  [--scenario basic|vm] [--hugetlb-form subsystem|flb]   (vm: kernel next)
//! luo-sim stage2          (run by stage 1 through execve, with the handover inherited)
//! luo-sim inspect IMAGE [--json]
//! ```

use std::ffi::OsString;
use std::process::ExitCode;

use luo_sim::simulate::{self, Options};

fn usage() -> ExitCode {
    eprintln!(
        "usage: luo-sim simulate [--sessions N] [--files N] [--size BYTES] [--seed N] \
         [--hops N] [--next PATH] [--save-image PATH] [--format text|json] [--from K] [--to K]... \
         [--scenario basic|vm] [--hugetlb-form subsystem|flb]\n       luo-sim stage2\n       \
         luo-sim inspect IMAGE [--json]"
    );
    ExitCode::from(2)
}

fn parse(args: &[OsString]) -> Option<Options> {
    let mut o = Options::default();
    let mut per_session = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--json" {
            o.json = true;
            continue;
        }
        let v = it.next()?;
        match a {
            // `--format json` as every `luo` command spells it; `--json` above is the same.
            "--format" => o.json = parse_format(v.to_str()?)?,
            "--sessions" => {
                o.sessions = v.to_str()?.parse().ok()?;
                per_session = true;
            }
            "--files" => {
                o.files = v.to_str()?.parse().ok()?;
                per_session = true;
            }
            "--size" => o.size = luo_sim::size::parse(v.to_str()?).ok()?,
            "--seed" => o.seed = v.to_str()?.parse().ok()?,
            "--hops" => o.hops = v.to_str()?.parse().ok()?,
            "--next" => o.next = Some(v.into()),
            "--save-image" => o.save_image = Some(v.into()),
            "--from" => {
                let k = v.to_str()?.parse().ok()?;
                if o.kernels.is_empty() {
                    o.kernels.push(k);
                } else {
                    o.kernels[0] = k;
                }
            }
            "--scenario" => o.scenario = v.to_str()?.parse().ok()?,
            "--hugetlb-form" => o.hugetlb_form = simulate::parse_hugetlb_form(v.to_str()?).ok()?,
            "--to" => {
                if o.kernels.is_empty() {
                    o.kernels.push(luo_core::KernelVersion::default());
                }
                o.kernels.push(v.to_str()?.parse().ok()?);
            }
            _ => return None,
        }
    }
    // One VM's files in one session: the basic scenario's shape does not apply.
    if o.scenario == simulate::Scenario::Vm && per_session {
        return None;
    }
    // The vm scenario's handlers are kernel next's (as `luo simulate` defaults it).
    if o.scenario == simulate::Scenario::Vm && o.kernels.is_empty() {
        o.kernels.push(luo_core::KernelVersion::Next);
    }
    Some(o)
}

fn parse_format(v: &str) -> Option<bool> {
    match v {
        "text" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut out = std::io::stdout();
    match args.first().and_then(|a| a.to_str()) {
        Some("simulate") => {
            let Some(opts) = parse(&args[1..]) else {
                return usage();
            };
            // Returns only if something failed before or at execve.
            if let Err(e) = simulate::stage1(&opts, &mut out) {
                eprintln!("luo-sim: stage 1: {e}");
            }
            ExitCode::FAILURE
        }
        // The last stage prints the report itself.
        Some("stage2") => match simulate::stage2(&mut out) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("luo-sim: stage 2: {e}");
                ExitCode::FAILURE
            }
        },
        Some("inspect") => {
            let json = args.iter().any(|a| a == "--json");
            let Some(path) = args[1..].iter().find(|a| *a != "--json") else {
                return usage();
            };
            let report = luo_core::image::Image::load(std::path::Path::new(path))
                .and_then(|img| luo_sim::inspect::inspect(&img));
            match report {
                Ok(r) if json => {
                    println!("{}", r.to_json());
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    print!("{}", r.to_text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("luo-sim: inspect: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
