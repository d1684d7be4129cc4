// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Which kernel a bzImage is: the version string its x86 boot-protocol setup header points to,
//! so a run that kexecs into another image can check each stage booted the image meant for it.
//!
//! The setup header (Documentation/arch/x86/boot.rst in the kernel tree) starts at 0x1f1 of the
//! image; the magic `HdrS` is at 0x202, the protocol version (u16) at 0x206 and, from protocol
//! 2.00, `kernel_version` (u16) at 0x20e: when non-zero, the NUL-terminated string is at
//! `kernel_version + 0x200`. The kernel fills it from `UTS_RELEASE " (" LINUX_COMPILE_BY "@"
//! LINUX_COMPILE_HOST ") " UTS_VERSION` (arch/x86/boot/version.c), the same release and version
//! `uname(2)` returns once that kernel runs.

use std::path::{Path, PathBuf};

use super::{VmError, bail};

/// A kernel image and what it says it is.
#[derive(Clone, Debug)]
pub struct Image {
    /// Where the image is.
    pub path: PathBuf,
    /// Its setup header's version string, if it has one.
    pub ident: Option<String>,
}

impl Image {
    /// Reads `path` and its version string.
    pub fn load(path: &Path) -> Result<Image, VmError> {
        let b = std::fs::read(path)
            .map_err(|e| VmError(format!("cannot read kernel image {}: {e}", path.display())))?;
        Ok(Image {
            path: path.to_path_buf(),
            ident: version_string(&b),
        })
    }

    /// Whether a running kernel whose `uname` gave `release` and `version` is this image:
    /// `None` when the image carries no version string to compare with.
    pub fn is_running(&self, release: &str, version: &str) -> Option<bool> {
        let id = self.ident.as_deref()?;
        Some(
            id.strip_prefix(release)
                .is_some_and(|rest| rest.starts_with(' ') && rest.ends_with(version)),
        )
    }
}

/// The version string of a bzImage, or `None` when `b` is not one (no `HdrS`, a protocol
/// before 2.00, no string or an unterminated one).
pub fn version_string(b: &[u8]) -> Option<String> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    if b.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x200 {
        return None;
    }
    let at = u16_at(0x20e)?;
    if at == 0 {
        return None;
    }
    let start = usize::from(at) + 0x200;
    let tail = b.get(start..)?;
    let end = tail.iter().take(512).position(|&c| c == 0)?;
    let s = std::str::from_utf8(&tail[..end]).ok()?;
    if s.is_empty() {
        return None;
    }
    Some(s.to_owned())
}

/// Images for `stages` stages: the first boots stage 1, `next[i]` stage `i + 2`, the last of
/// `next` every later stage. Returns the distinct images (the first is `first`) and, per stage,
/// the index of its image.
pub fn plan(
    first: &Path,
    next: &[PathBuf],
    stages: u32,
) -> Result<(Vec<Image>, Vec<usize>), VmError> {
    if next.len() >= stages as usize {
        bail!(
            "{} --next-kernel images for {stages} stages: stage N + 1 boots the N-th, so give at \
             most {} (or raise --stages)",
            next.len(),
            stages.saturating_sub(1)
        );
    }
    let mut images = vec![Image::load(first)?];
    let mut per_stage = vec![0];
    for stage in 2..=stages as usize {
        let Some(path) = next.get(stage - 2).or(next.last()) else {
            per_stage.push(0);
            continue;
        };
        if !path.is_file() {
            bail!(
                "--next-kernel {}: no such file (give the bzImage stage {stage} boots into)",
                path.display()
            );
        }
        // The same file under another name is the same image.
        let same = |a: &Path, b: &Path| {
            a == b || std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
        };
        let idx = match images.iter().position(|i| same(&i.path, path)) {
            Some(i) => i,
            None => {
                images.push(Image::load(path)?);
                images.len() - 1
            }
        };
        per_stage.push(idx);
    }
    if images.len() > 1
        && let Some(i) = images.iter().find(|i| i.ident.is_none())
    {
        bail!(
            "{} has no kernel version string in its boot header, so the stages booting it \
             cannot be told from the others: give an x86 bzImage (arch/x86/boot/bzImage)",
            i.path.display()
        );
    }
    Ok((images, per_stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal image: the setup header fields the reader looks at, and `s` at 0x200 + `at`.
    fn fake(s: &str, at: u16, proto: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x200 + usize::from(at) + s.len() + 16];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&proto.to_le_bytes());
        b[0x20e..0x210].copy_from_slice(&at.to_le_bytes());
        let o = 0x200 + usize::from(at);
        b[o..o + s.len()].copy_from_slice(s.as_bytes());
        b
    }

    const ID: &str = "7.2.13 (root@host) #1 SMP PREEMPT_DYNAMIC Tue Dec  8 01:55:00 UTC 2026";

    #[test]
    fn reads_the_setup_header_string() {
        assert_eq!(version_string(&fake(ID, 0x300, 0x20f)).as_deref(), Some(ID));
        assert_eq!(
            version_string(&fake(ID, 0x300, 0x1ff)),
            None,
            "protocol before 2.00"
        );
        assert_eq!(version_string(&fake(ID, 0, 0x20f)), None, "no string");
        let mut b = fake(ID, 0x300, 0x20f);
        b[0x202] = b'X';
        assert_eq!(version_string(&b), None, "no HdrS");
        let mut b = fake(ID, 0x300, 0x20f);
        b.truncate(0x500 + 10);
        assert_eq!(version_string(&b), None, "unterminated");
        assert_eq!(version_string(&[0u8; 16]), None, "short file");
    }

    #[test]
    fn plans_one_image_per_stage() {
        let dir = std::env::temp_dir().join(format!("luo-vmtest-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, bare) = (dir.join("a"), dir.join("b"), dir.join("bare"));
        std::fs::write(&a, fake(ID, 0x300, 0x20f)).unwrap();
        std::fs::write(&b, fake(&ID.replace("01:55", "02:10"), 0x300, 0x20f)).unwrap();
        std::fs::write(&bare, [0u8; 64]).unwrap();
        let idx = |next: &[PathBuf], stages| plan(&a, next, stages).map(|(_, s)| s);

        assert_eq!(
            idx(&[], 3).unwrap(),
            [0, 0, 0],
            "no --next-kernel: the one image"
        );
        assert_eq!(
            idx(std::slice::from_ref(&b), 3).unwrap(),
            [0, 1, 1],
            "the last serves later stages"
        );
        assert_eq!(
            idx(&[b.clone(), a.clone()], 3).unwrap(),
            [0, 1, 0],
            "back to the first"
        );
        let (images, _) = plan(&a, &[dir.join(".").join("a")], 2).unwrap();
        assert_eq!(
            images.len(),
            1,
            "the same file by another path is the same image"
        );

        let e = plan(&a, &[b.clone(), b.clone()], 2).unwrap_err().0;
        assert!(e.contains("at most 1"), "{e}");
        let e = plan(&a, &[dir.join("missing")], 2).unwrap_err().0;
        assert!(e.contains("missing") && e.contains("stage 2"), "{e}");
        let e = plan(&a, std::slice::from_ref(&bare), 2).unwrap_err().0;
        assert!(
            e.contains("bare") && e.contains("no kernel version string"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn matches_uname_release_and_version() {
        let img = Image {
            path: PathBuf::new(),
            ident: Some(ID.into()),
        };
        let v = "#1 SMP PREEMPT_DYNAMIC Tue Dec  8 01:55:00 UTC 2026";
        assert_eq!(img.is_running("7.2.13", v), Some(true));
        assert_eq!(
            img.is_running("7.2.1", v),
            Some(false),
            "release is a whole word"
        );
        let other = "#1 SMP PREEMPT_DYNAMIC Tue Dec  8 02:10:00 UTC 2026";
        assert_eq!(
            img.is_running("7.2.13", other),
            Some(false),
            "another build"
        );
        let none = Image {
            path: PathBuf::new(),
            ident: None,
        };
        assert_eq!(none.is_running("7.2.13", v), None);
    }
}
