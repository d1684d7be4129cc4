// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Measuring: interleaved wall-clock rounds with medians, and instruction counts under
//! `valgrind --tool=callgrind`.
//!
//! Wall time on a shared 2-core machine drifts by tens of percent from one minute to the
//! next, so the variants of a row are timed **in alternation**: round `r` times a batch of
//! every variant before round `r + 1` starts, and each variant's value is the median over
//! rounds. A ratio is then a ratio of medians taken under the same conditions.
//!
//! Instruction counts do not drift: the report runs this binary under callgrind once with
//! `n` iterations of a variant and once with none, and divides the difference by `n`, which
//! cancels the setup.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// A wall-clock sample set of one variant: nanoseconds per iteration, one value per round.
#[derive(Clone, Debug)]
pub struct Samples {
    /// ns per iteration, one per round.
    pub ns: Vec<f64>,
}

impl Samples {
    /// The median.
    pub fn median(&self) -> f64 {
        median(&self.ns)
    }
}

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Times `variants` in alternation: `rounds` rounds, each running every variant once on a
/// batch of `batch` iterations (the closure gets the batch size and must do that many).
/// One warm-up round is discarded.
pub fn interleaved(
    variants: &mut [&mut dyn FnMut(u64)],
    batch: u64,
    rounds: usize,
) -> Vec<Samples> {
    let mut out = vec![Samples { ns: Vec::new() }; variants.len()];
    for r in 0..=rounds {
        for (i, f) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            f(batch);
            let ns = t.elapsed().as_nanos() as f64 / batch as f64;
            if r > 0 {
                out[i].ns.push(ns);
            }
        }
    }
    out
}

/// Calibrates a batch size so that one batch of `f` takes about `target_ms`.
pub fn calibrate(f: &mut dyn FnMut(u64), target_ms: f64) -> u64 {
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        f(n);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if ms >= target_ms / 4.0 || n >= 1 << 40 {
            let per = ms / n as f64;
            return ((target_ms / per.max(1e-9)) as u64).max(1);
        }
        n *= 4;
    }
}

/// Whether `valgrind --tool=callgrind` can run here.
pub fn callgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Instructions executed by `exe args` under callgrind (its `Collected` total), or an error
/// message.
pub fn callgrind_total(exe: &Path, args: &[String]) -> Result<u64, String> {
    callgrind_collect(exe, args, &[])
}

/// Instructions executed by `exe args` inside the functions named in `toggles` (callgrind's
/// `--toggle-collect`: only those calls and what they call are counted).
pub fn callgrind_collect(exe: &Path, args: &[String], toggles: &[&str]) -> Result<u64, String> {
    let out_file =
        std::env::temp_dir().join(format!("luo-bench-callgrind.{}.out", std::process::id()));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .args(toggles.iter().map(|t| format!("--toggle-collect={t}")))
        .arg(exe)
        .args(args)
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let _ = std::fs::remove_file(&out_file);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "valgrind failed: {}",
            err.lines().last().unwrap_or("")
        ));
    }
    err.lines()
        .find_map(|l| {
            let rest = l.split("Collected :").nth(1)?;
            rest.trim().parse::<u64>().ok()
        })
        .ok_or_else(|| "no `Collected` line in callgrind's output".to_string())
}

/// Instructions per iteration of `exe <child args..> <n>`: (total(n) − total(0)) / n.
pub fn callgrind_per_iter(exe: &Path, child: &[&str], n: u64) -> Result<f64, String> {
    let args = |k: u64| -> Vec<String> {
        child
            .iter()
            .map(|s| s.to_string())
            .chain([k.to_string()])
            .collect()
    };
    let base = callgrind_total(exe, &args(0))?;
    let full = callgrind_total(exe, &args(n))?;
    Ok(full.saturating_sub(base) as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let mut calls = 0u64;
        let mut f = |n: u64| calls += n;
        let s = interleaved(&mut [&mut f], 10, 3);
        assert_eq!(s[0].ns.len(), 3);
        assert_eq!(calls, 40, "one warm-up round plus three");
    }
}
