// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Small helpers for fixed-size C strings.

/// The UTF-8 string before the first NUL of `buf`; `None` without a NUL or if not UTF-8.
pub fn cstr(buf: &[u8]) -> Option<&str> {
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end]).ok()
}

/// The bytes before the first NUL (or all of them), lossily as text, for diagnostics.
pub fn lossy(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Copies `s` into a zeroed `N`-byte buffer; `None` unless it fits with its NUL.
pub fn to_cbuf<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() >= N || b.contains(&0) {
        return None;
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings() {
        assert_eq!(cstr(b"ab\0cd"), Some("ab"));
        assert_eq!(cstr(b"abc"), None);
        assert_eq!(lossy(b"abc"), "abc");
        assert_eq!(to_cbuf::<4>("abc"), Some(*b"abc\0"));
        assert_eq!(to_cbuf::<3>("abc"), None);
    }
}
