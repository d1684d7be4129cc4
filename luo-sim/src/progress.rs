// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Progress bars for long work: the phases of `luo simulate` that fill and check memfds, the
//! stages of `luo vmtest`.
//!
//! Drawn on standard error only for text output with both standard output and standard error
//! on a terminal, and only once the work has run for a second: short runs, logs, pipes and
//! `--format json` stay free of control characters.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a phase runs before its bar appears.
const DELAY: Duration = Duration::from_secs(1);

/// Whether bars may be drawn: text output, with stdout and stderr both terminals.
pub fn wanted(json: bool) -> bool {
    allowed(
        json,
        std::io::stdout().is_terminal(),
        std::io::stderr().is_terminal(),
    )
}

fn allowed(json: bool, stdout_tty: bool, stderr_tty: bool) -> bool {
    !json && stdout_tty && stderr_tty
}

/// A bar over a number of bytes, hidden until the work has taken [`DELAY`].
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    shown: bool,
}

impl Progress {
    /// A bar for `what`, `total` bytes long; a no-op when `enabled` is false.
    pub fn bytes(enabled: bool, what: &str, total: u64) -> Progress {
        Progress::new(
            enabled,
            what,
            total,
            "{msg:>10} [{bar:24}] {binary_bytes}/{binary_total_bytes} eta {eta}",
        )
    }

    /// A bar for `what` over `total` steps (program runs, stages).
    pub fn steps(enabled: bool, what: &str, total: u64) -> Progress {
        Progress::new(
            enabled,
            what,
            total,
            "{msg} [{bar:24}] {pos}/{len} {elapsed}",
        )
    }

    fn new(enabled: bool, what: &str, total: u64, template: &str) -> Progress {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.to_string());
            bar
        });
        Progress {
            bar,
            start: Instant::now(),
            shown: false,
        }
    }

    /// `n` more done.
    pub fn inc(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        self.show_when_due();
    }

    /// Done so far, and what is running now.
    pub fn set(&mut self, pos: u64, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(what.to_string());
        }
        self.show_when_due();
    }

    fn show_when_due(&mut self) {
        let Some(bar) = &self.bar else { return };
        if !self.shown && self.start.elapsed() >= DELAY {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    /// Removes the bar (before the result is printed).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_for_people_at_a_terminal() {
        assert!(allowed(false, true, true));
        assert!(!allowed(true, true, true), "--format json");
        assert!(!allowed(false, false, true), "stdout piped");
        assert!(!allowed(false, true, false), "stderr piped");
    }

    #[test]
    fn a_disabled_bar_does_nothing() {
        let mut p = Progress::bytes(false, "x", 10);
        p.inc(5);
        assert!(p.bar.is_none() && !p.shown);
        p.finish();
    }
}
