// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! How the `luo` commands print: one convention for all of them.
//!
//! `--format text` (the default) is for people. `--format json` is for tools: a command that
//! answers once prints one JSON document; a command that reports as it goes (`luo simulate`,
//! phase by phase) prints JSON Lines, one object per line, each with an `"event"` key. In
//! both, standard output carries only the answer: diagnostics, progress and "wrote FILE"
//! notes go to standard error, so `luo ... --format json | jq .` always parses.

use std::fmt::Display;
use std::io::{self, Write};

use serde::Serialize;

/// Output format of every command (`--format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For tools: one JSON document, or JSON Lines for a stream.
    Json,
}

/// Where a command's answer goes, in the format asked for.
///
/// A command hands it both forms and the reporter prints the one asked for: text lines are
/// dropped in JSON mode and JSON values in text mode, so the two never mix on stdout.
pub struct Reporter<W: Write = io::Stdout> {
    out: W,
    format: Format,
}

impl Reporter {
    /// A reporter on standard output.
    pub fn stdout(format: Format) -> Self {
        Reporter::new(io::stdout(), format)
    }
}

impl<W: Write> Reporter<W> {
    /// A reporter on any writer (tests).
    pub fn new(out: W, format: Format) -> Self {
        Reporter { out, format }
    }

    /// The format asked for.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether tools read this output.
    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// Text for people (with its own line ends); nothing in JSON mode.
    pub fn text(&mut self, text: impl Display) -> io::Result<()> {
        match self.format {
            Format::Text => write!(self.out, "{text}"),
            Format::Json => Ok(()),
        }
    }

    /// One line for people; nothing in JSON mode.
    pub fn line(&mut self, text: impl Display) -> io::Result<()> {
        self.text(format_args!("{text}\n"))
    }

    /// One JSON value on one line (a whole document, or one JSON Lines record); nothing in
    /// text mode.
    pub fn json(&mut self, value: &impl Serialize) -> io::Result<()> {
        match self.format {
            Format::Text => Ok(()),
            Format::Json => {
                serde_json::to_writer(&mut self.out, value).map_err(io::Error::other)?;
                writeln!(self.out)
            }
        }
    }

    /// Flush what was written (before an `execve`, or at the end).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer, back (tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (the proleptic Gregorian calendar; the
/// days-from-civil inverse of Howard Hinnant's date algorithms).
pub fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Today's UTC date, `YYYY-MM-DD` (what reports say they describe).
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    civil_date(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_never_mix() {
        let mut r = Reporter::new(Vec::new(), Format::Json);
        r.line("for people").unwrap();
        r.json(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(String::from_utf8(r.into_inner()).unwrap(), "{\"a\":1}\n");
        let mut r = Reporter::new(Vec::new(), Format::Text);
        r.line("for people").unwrap();
        r.json(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(String::from_utf8(r.into_inner()).unwrap(), "for people\n");
    }
}
