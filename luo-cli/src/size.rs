//! Byte sizes on the command line: `4096`, `64K`, `1M`, `1G`, `2T` (binary multiples; `KiB`,
//! `MiB`, ... and a trailing `B` are accepted too).

/// Parses a size; the error says what is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let bad = || {
        format!("`{s}` is not a size: give bytes, or a number with K, M, G or T (1G = 2^30 bytes)")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("iB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(unit);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is more than 2^64 bytes"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_and_without_units() {
        for (s, v) in [
            ("4096", 4096),
            ("64K", 64 << 10),
            ("1M", 1 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("2t", 2 << 40),
            ("512B", 512),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for s in ["", "G", "1X", "-1", "1.5G", "1 G B", "99999999999T"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }
}
