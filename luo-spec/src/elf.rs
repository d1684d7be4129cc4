// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! One named section of an ELF binary, read with the `object` crate (its read-only ELF
//! parser, no other format): how the schema tools find the ABI tables a binary carries
//! (`.liveupdate_features`, `.luo_kernels`). Only 64-bit little-endian files are read, the
//! only ones the tables are built into. A corrupt file is an [`ElfError`], never a panic or
//! a read outside the file.

use object::LittleEndian;
use object::elf::FileHeader64;
use object::read::elf::{FileHeader, SectionHeader};

/// Why a section could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// The file ends inside its header, or before the end of the section.
    Truncated,
    /// Not a 64-bit little-endian ELF file.
    Unsupported,
    /// The section header table or its string table is out of the file or malformed.
    SectionTable,
    /// No section of that name.
    NoSection,
}

impl ElfError {
    /// What is wrong, in a few words.
    pub fn why(self) -> &'static str {
        match self {
            ElfError::Truncated => "truncated",
            ElfError::Unsupported => "only 64-bit little-endian ELF is supported",
            ElfError::SectionTable => "section header table",
            ElfError::NoSection => "no such section",
        }
    }
}

/// The contents of section `name` of the 64-bit little-endian ELF file `elf`.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8], ElfError> {
    // EI_CLASS and EI_DATA: checked first so a 32-bit or big-endian file says so.
    match elf.get(4..6) {
        None => return Err(ElfError::Truncated),
        Some([2, 1]) => {}
        Some(_) => return Err(ElfError::Unsupported),
    }
    let header = FileHeader64::<LittleEndian>::parse(elf).map_err(|_| ElfError::Truncated)?;
    let endian = LittleEndian;
    let sections = header
        .sections(endian, elf)
        .map_err(|_| ElfError::SectionTable)?;
    let (_, section) = sections
        .section_by_name(endian, name.as_bytes())
        .ok_or(ElfError::NoSection)?;
    section.data(endian, elf).map_err(|_| ElfError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: &[u8] = b"the table";

    /// A minimal ELF64 LE file: the header, `.shstrtab`, a section `.tbl` holding
    /// [`SECTION`], then the section header table (null, `.shstrtab`, `.tbl`).
    fn elf() -> Vec<u8> {
        let strtab = b"\0.shstrtab\0.tbl\0";
        let (str_off, data_off) = (64usize, 64 + strtab.len());
        let shoff = data_off + SECTION.len();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // ELFDATA2LSB
        f[6] = 1; // EV_CURRENT
        f[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes()); // e_shstrndx
        f.extend_from_slice(strtab);
        f.extend_from_slice(SECTION);
        let header = |name: u32, kind: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h[0x30..0x38].copy_from_slice(&1u64.to_le_bytes()); // sh_addralign
            h
        };
        f.extend(header(0, 0, 0, 0));
        f.extend(header(1, 3, str_off, strtab.len())); // SHT_STRTAB
        f.extend(header(11, 1, data_off, SECTION.len())); // SHT_PROGBITS
        f
    }

    #[test]
    fn finds_a_section_by_name() {
        let f = elf();
        assert_eq!(section(&f, ".tbl"), Ok(SECTION));
        assert_eq!(section(&f, ".other"), Err(ElfError::NoSection));
        // A misaligned copy reads the same.
        let shifted = [&[0u8][..], &f].concat();
        assert_eq!(section(&shifted[1..], ".tbl"), Ok(SECTION));
    }

    #[test]
    fn a_truncated_file_is_an_error_at_every_length() {
        let f = elf();
        for len in 0..f.len() {
            let r = section(&f[..len], ".tbl");
            assert!(
                matches!(
                    r,
                    Err(ElfError::Truncated | ElfError::SectionTable | ElfError::NoSection)
                ),
                "{len} bytes: {r:?}"
            );
        }
        assert_eq!(section(&f[..3], ".tbl"), Err(ElfError::Truncated));
        assert_eq!(section(&f[..40], ".tbl"), Err(ElfError::Truncated));
        // Cut inside the section header table.
        assert_eq!(
            section(&f[..f.len() - 1], ".tbl"),
            Err(ElfError::SectionTable)
        );
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let f = elf();
        let shoff = f.len() - 3 * 64;
        // 32-bit, then big-endian.
        for (at, v) in [(4, 1u8), (5, 2)] {
            let mut bad = f.clone();
            bad[at] = v;
            assert_eq!(section(&bad, ".tbl"), Err(ElfError::Unsupported));
        }
        // The section's data past the end of the file.
        let mut bad = f.clone();
        bad[shoff + 2 * 64 + 0x18..shoff + 2 * 64 + 0x20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(section(&bad, ".tbl"), Err(ElfError::Truncated));
        // e_shstrndx past the table.
        let mut bad = f.clone();
        bad[0x3e] = 7;
        assert_eq!(section(&bad, ".tbl"), Err(ElfError::SectionTable));
        // e_shentsize too small for a section header.
        let mut bad = f.clone();
        bad[0x3a] = 16;
        assert_eq!(section(&bad, ".tbl"), Err(ElfError::SectionTable));
        // The section table offset past the end of the file.
        let mut bad = f;
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(section(&bad, ".tbl"), Err(ElfError::SectionTable));
    }
}
