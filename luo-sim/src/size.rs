// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Sizes as people write and read them: `1G`, `512M`, `64K`, `4096`.
//!
//! Suffixes are binary (K = 1024), as for `truncate -s`, `dd` and QEMU's `-m`, in either case,
//! with an optional `i` and `B` (`1GiB`, `1gb`); a bare number is bytes. Printing picks the
//! largest unit that keeps the value readable: an exact `1G`, or `1.5G` to one decimal.

use std::fmt;

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Empty, or not a number followed by a unit.
    #[error("`{0}` is not a size: write a number of bytes, or one with a unit (K, M, G, T)")]
    Syntax(String),
    /// The unit is not one of K, M, G, T, P, E.
    #[error("`{0}`: unknown unit `{1}`; use K, M, G, T, P or E (powers of 1024)")]
    Unit(String, String),
    /// More than 2^64 - 1 bytes.
    #[error("`{0}` is more than 2^64 - 1 bytes")]
    Overflow(String),
}

/// Parses `1G`, `512M`, `1.5G`, `4096`, `64KiB` into bytes.
pub fn parse(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(SizeError::Syntax(s.into()));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return Err(SizeError::Unit(s.into(), unit.trim().into())),
    };
    let overflow = || SizeError::Overflow(s.into());
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = whole.parse().map_err(|_| overflow())?;
    let mut bytes = whole.checked_shl(shift).filter(|v| v >> shift == whole);
    if !frac.is_empty() {
        // A fraction of the unit, exact to the byte: frac / 10^len * 2^shift, rounded down.
        if shift == 0 || frac.len() > 18 {
            return Err(SizeError::Syntax(s.into()));
        }
        let digits: u128 = frac.parse().map_err(|_| SizeError::Syntax(s.into()))?;
        let part = (digits << shift) / 10u128.pow(frac.len() as u32);
        bytes = bytes.and_then(|b| b.checked_add(u64::try_from(part).ok()?));
    }
    bytes.ok_or_else(overflow)
}

/// A byte count that prints as people read it (`1G`, `1.5G`, `512M`, `4096`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
        let b = self.0;
        // Below 10K the exact number says more than `9.8K`.
        if b < 10 * 1024 {
            return write!(f, "{b}");
        }
        let mut unit = 0;
        while unit + 1 < UNITS.len() && b >> (10 * (unit + 2)) > 0 {
            unit += 1;
        }
        let shift = 10 * (unit + 1);
        if b.is_multiple_of(1 << shift) {
            write!(f, "{}{}", b >> shift, UNITS[unit])
        } else {
            write!(f, "{:.1}{}", b as f64 / (1u64 << shift) as f64, UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_in_either_case() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("64K"), Ok(64 << 10));
        assert_eq!(parse("512m"), Ok(512 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("2 tb"), Ok(2 << 40));
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("0.5K"), Ok(512));
        assert_eq!(parse("15E"), Ok(15 << 60));
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in ["", "G", "1.5", "1..5G", ".5G", "1.G", "-1G", "1 X", "1Gx"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse("16E"), Err(SizeError::Overflow(_))));
        assert!(matches!(
            parse("18446744073709551616"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(parse("1Q"), Err(SizeError::Unit(..))));
    }

    #[test]
    fn prints_readably() {
        assert_eq!(Human(4096).to_string(), "4096");
        assert_eq!(Human(10 * 1024).to_string(), "10K");
        assert_eq!(Human(1 << 20).to_string(), "1M");
        assert_eq!(Human(16 << 20).to_string(), "16M");
        assert_eq!(Human(1 << 30).to_string(), "1G");
        assert_eq!(Human(3 << 29).to_string(), "1.5G");
        assert_eq!(Human(70001).to_string(), "68.4K");
        assert_eq!(Human(u64::MAX).to_string(), "16.0E");
        for b in [1 << 20, 512 << 20, 1 << 30, 7 << 40] {
            assert_eq!(parse(&Human(b).to_string()), Ok(b), "round trip");
        }
    }
}
