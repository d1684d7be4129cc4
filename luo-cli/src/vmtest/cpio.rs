// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A cpio "newc" archive writer: the initramfs format the kernel unpacks
//! (Documentation/driver-api/early-userspace/buffer-format.rst upstream).

/// An archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 13 fields of 8 hex digits.
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A directory (`name` without a leading slash).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | (perm & 0o7777), data);
    }

    /// The archive bytes, trailer included.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `cpio` tool reads what we write (names, modes, contents) when it is installed.
    #[test]
    fn cpio_tool_lists_and_extracts_the_archive() {
        let mut c = Cpio::new();
        c.dir("d");
        c.file("d/x", 0o755, b"hello\n");
        c.file("e", 0o644, b"");
        let bytes = c.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("note: cpio is not installed; listing not checked");
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" d"));
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].ends_with(" d/x"));
        assert!(lines[1].contains(" 6 "), "{}", lines[1]);
        assert!(lines[2].starts_with("-rw-r--r--") && lines[2].ends_with(" e"));
    }
}
