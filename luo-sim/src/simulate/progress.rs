//! Progress bars for the long phases of `luo simulate` (filling and checking memfds).
//!
//! Drawn on standard error only for text output with both standard output and standard error
//! on a terminal, and only once a phase has run for a second: short runs, logs, pipes and
//! `--format json` stay free of control characters.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a phase runs before its bar appears.
const DELAY: Duration = Duration::from_secs(1);

/// Whether bars may be drawn: text output, with stdout and stderr both terminals.
pub(super) fn wanted(json: bool) -> bool {
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
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    shown: bool,
}

impl Progress {
    /// A bar for `what`, `total` bytes long; a no-op when `enabled` is false.
    pub(super) fn bytes(enabled: bool, what: &str, total: u64) -> Progress {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
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

    /// `n` more bytes done.
    pub(super) fn inc(&mut self, n: u64) {
        let Some(bar) = &self.bar else { return };
        bar.inc(n);
        if !self.shown && self.start.elapsed() >= DELAY {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    /// Removes the bar (before the phase's line is printed).
    pub(super) fn finish(self) {
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
