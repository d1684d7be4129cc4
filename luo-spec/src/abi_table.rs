// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The ABI table embedded in every binary that plays a kernel, so a live
//! update can be checked *before* the kexec from the two binaries alone.
//!
//! Format: the `.liveupdate_features` section proposed for upstream's
//! feature negotiation (`liveupdate_ver_hdr` and its entries) — `struct liveupdate_ver_hdr { u32 magic
//! ('LVUP' = 0x4c565550); u32 version (1) }` followed by 80-byte
//! `struct liveupdate_feature_entry { char name[48]; u32 feat_bytes; u32
//! reserved; u64 supp; u64 req; u64 active }`, native endian.
//!
//! We use the format for compatible-string ABIs too, with two conventions
//! of our own, both in fields upstream leaves free:
//!
//! - `reserved` says what the entry is: [`KIND_WRITES`] or [`KIND_READS`];
//! - `name` is the version's identity (its compatible strings joined with
//!   `+`, or the feature-negotiated handler name);
//! - a feature-negotiated entry has `feat_bytes = 8` and the upstream
//!   meaning of supp/req/active (a reader's `supp` is every bit it knows);
//!   a compatible-string entry has `feat_bytes = 0` and carries the layout
//!   fingerprint in `supp`, so an unchanged string over a changed layout is
//!   caught too.

use crate::elf::ElfError;
use std::fmt;

use crate::render::schema::KernelSet;

/// `'LVUP'`.
pub const MAGIC: u32 = 0x4c56_5550;
/// Format version.
pub const VERSION: u32 = 1;
/// Section name.
pub const SECTION: &str = ".liveupdate_features";
/// Size of one entry.
pub const ENTRY_SIZE: usize = 80;
/// Size of `name`.
pub const NAME_LEN: usize = 48;
/// Entry describes what the binary writes.
pub const KIND_WRITES: u32 = 1;
/// Entry describes what the binary can read.
pub const KIND_READS: u32 = 2;

/// Section holding the tables of every kernel a binary can play (ours: one
/// build plays 6.19, 7.0, 7.3 or next, chosen at run time).
pub const KERNELS_SECTION: &str = ".luo_kernels";
/// Magic of [`KERNELS_SECTION`]: `'LUOK'`.
pub const KERNELS_MAGIC: u32 = 0x4c55_4f4b;
/// Bytes of a kernel name in [`KERNELS_SECTION`].
pub const KERNEL_NAME_LEN: usize = 16;

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Identity of the version.
    pub name: String,
    /// 8 for feature-negotiated entries, 0 otherwise.
    pub feat_bytes: u32,
    /// [`KIND_WRITES`] or [`KIND_READS`].
    pub kind: u32,
    /// Supported bits, or the layout fingerprint.
    #[serde(serialize_with = "hex")]
    pub supp: u64,
    /// Required bits.
    #[serde(serialize_with = "hex")]
    pub req: u64,
    /// Active bits.
    #[serde(serialize_with = "hex")]
    pub active: u64,
}

/// 64-bit masks and fingerprints as `"0x..."` strings in JSON: a JSON number above 2^53 loses
/// bits in most readers (`jq` among them).
fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#018x}"))
}

/// Why a table could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// No `.liveupdate_features` section in an ELF file.
    NoSection,
    /// Shorter than its header, or not a whole number of entries.
    BadLength(usize),
    /// Wrong magic.
    BadMagic(u32),
    /// Unknown format version.
    BadVersion(u32),
    /// An entry that breaks the format.
    BadEntry {
        /// Entry index.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A malformed ELF file.
    BadElf(&'static str),
    /// The binary does not play that kernel.
    UnknownKernel(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::NoSection => write!(f, "no {SECTION} section: not built with an ABI table"),
            TableError::BadLength(n) => write!(
                f,
                "{n} bytes is not a header plus whole {ENTRY_SIZE}-byte entries"
            ),
            TableError::BadMagic(m) => write!(f, "bad magic {m:#x} (expected {MAGIC:#x} 'LVUP')"),
            TableError::BadVersion(v) => {
                write!(f, "table version {v}; this luo reads version {VERSION}")
            }
            TableError::BadEntry { index, why } => write!(f, "entry {index}: {why}"),
            TableError::BadElf(why) => write!(f, "malformed ELF file: {why}"),
            TableError::UnknownKernel(k) => write!(f, "the binary does not play kernel `{k}`"),
        }
    }
}

impl std::error::Error for TableError {}

/// The table of one kernel: what it writes and reads.
pub fn build(set: &KernelSet) -> Vec<u8> {
    let mut entries = Vec::new();
    // Unversioned shared ABIs (kexec_handover.h) have no identity to check.
    for snap in set
        .components
        .values()
        .filter(|s| s.abi == "kho" && s.version.is_some())
    {
        let name = snap.identity.join("+");
        entries.push(match &snap.features {
            Some(f) => Entry {
                name,
                feat_bytes: 8,
                kind: KIND_WRITES,
                supp: f.supported,
                req: f.required,
                active: f.active,
            },
            None => Entry {
                name,
                feat_bytes: 0,
                kind: KIND_WRITES,
                supp: snap.fingerprint,
                req: 0,
                active: 0,
            },
        });
        for r in &snap.reads {
            let name = r.identity.join("+");
            entries.push(match r.known_features {
                Some(known) => Entry {
                    name,
                    feat_bytes: 8,
                    kind: KIND_READS,
                    supp: known,
                    req: 0,
                    active: 0,
                },
                None => Entry {
                    name,
                    feat_bytes: 0,
                    kind: KIND_READS,
                    supp: r.fingerprint,
                    req: 0,
                    active: 0,
                },
            });
        }
    }
    encode(&entries)
}

/// The [`KERNELS_SECTION`] contents: `u32 magic, u32 count`, then per kernel
/// `char name[16]`, `u32 len` and a `.liveupdate_features` table of `len` bytes.
pub fn encode_kernels(tables: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&KERNELS_MAGIC.to_ne_bytes());
    out.extend_from_slice(
        &u32::try_from(tables.len())
            .unwrap_or(u32::MAX)
            .to_ne_bytes(),
    );
    for (name, table) in tables {
        let mut n = [0u8; KERNEL_NAME_LEN];
        let bytes = name.as_bytes();
        let len = bytes.len().min(KERNEL_NAME_LEN - 1);
        n[..len].copy_from_slice(&bytes[..len]);
        out.extend_from_slice(&n);
        out.extend_from_slice(&u32::try_from(table.len()).unwrap_or(u32::MAX).to_ne_bytes());
        out.extend_from_slice(table);
    }
    out
}

/// Parse [`KERNELS_SECTION`] contents: kernel name and its entries.
pub fn decode_kernels(bytes: &[u8]) -> Result<Vec<(String, Vec<Entry>)>, TableError> {
    if bytes.len() < 8 {
        return Err(TableError::BadLength(bytes.len()));
    }
    if u32_at(bytes, 0) != KERNELS_MAGIC {
        return Err(TableError::BadMagic(u32_at(bytes, 0)));
    }
    let count = u32_at(bytes, 4) as usize;
    let mut at = 8;
    let mut out = Vec::new();
    for index in 0..count {
        let bad = TableError::BadEntry {
            index,
            why: "truncated kernel table",
        };
        let head = bytes.get(at..at + KERNEL_NAME_LEN + 4).ok_or(bad.clone())?;
        let name_end = head[..KERNEL_NAME_LEN]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(KERNEL_NAME_LEN);
        let name = String::from_utf8_lossy(&head[..name_end]).into_owned();
        let len = u32_at(head, KERNEL_NAME_LEN) as usize;
        at += KERNEL_NAME_LEN + 4;
        let table = bytes
            .get(at..at.checked_add(len).ok_or(bad.clone())?)
            .ok_or(bad)?;
        out.push((name, decode(table)?));
        at += len;
    }
    Ok(out)
}

/// The table of `kernel` from a file: the ELF section of every kernel the
/// binary plays, or a raw table when no kernel is named.
pub fn from_file_for_kernel(bytes: &[u8], kernel: Option<&str>) -> Result<Vec<Entry>, TableError> {
    let Some(kernel) = kernel else {
        return from_file_bytes(bytes);
    };
    if !bytes.starts_with(b"\x7fELF") {
        return Err(TableError::BadElf(
            "a kernel can only be chosen in a binary",
        ));
    }
    let kernels = decode_kernels(elf_section(bytes, KERNELS_SECTION)?)?;
    kernels
        .into_iter()
        .find(|(k, _)| k == kernel)
        .map(|(_, e)| e)
        .ok_or(TableError::UnknownKernel(kernel.to_string()))
}

/// Serialize entries behind the header.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * ENTRY_SIZE);
    out.extend_from_slice(&MAGIC.to_ne_bytes());
    out.extend_from_slice(&VERSION.to_ne_bytes());
    for e in entries {
        let mut name = [0u8; NAME_LEN];
        let bytes = e.name.as_bytes();
        let n = bytes.len().min(NAME_LEN - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        out.extend_from_slice(&name);
        out.extend_from_slice(&e.feat_bytes.to_ne_bytes());
        out.extend_from_slice(&e.kind.to_ne_bytes());
        for v in [e.supp, e.req, e.active] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// Parse a table (the section's bytes).
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, TableError> {
    if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(ENTRY_SIZE) {
        return Err(TableError::BadLength(bytes.len()));
    }
    match (u32_at(bytes, 0), u32_at(bytes, 4)) {
        (MAGIC, VERSION) => {}
        (MAGIC, v) => return Err(TableError::BadVersion(v)),
        (m, _) => return Err(TableError::BadMagic(m)),
    }
    bytes[8..]
        .chunks_exact(ENTRY_SIZE)
        .enumerate()
        .map(|(index, e)| {
            let raw = &e[..NAME_LEN];
            let len = raw
                .iter()
                .position(|b| *b == 0)
                .ok_or(TableError::BadEntry {
                    index,
                    why: "name is not NUL-terminated",
                })?;
            if raw[len..].iter().any(|b| *b != 0) {
                return Err(TableError::BadEntry {
                    index,
                    why: "bytes after the name's NUL must be zero",
                });
            }
            let name = std::str::from_utf8(&raw[..len])
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or(TableError::BadEntry {
                    index,
                    why: "name is not ASCII",
                })?;
            let feat_bytes = u32_at(e, 48);
            let kind = u32_at(e, 52);
            if kind != KIND_WRITES && kind != KIND_READS {
                return Err(TableError::BadEntry {
                    index,
                    why: "unknown entry kind",
                });
            }
            if feat_bytes != 0 && feat_bytes != 8 {
                return Err(TableError::BadEntry {
                    index,
                    why: "feat_bytes must be 0 or 8",
                });
            }
            Ok(Entry {
                name: name.to_string(),
                feat_bytes,
                kind,
                supp: u64_at(e, 56),
                req: u64_at(e, 64),
                active: u64_at(e, 72),
            })
        })
        .collect()
}

/// The table of a file: the section of an ELF binary, or a raw table.
pub fn from_file_bytes(bytes: &[u8]) -> Result<Vec<Entry>, TableError> {
    if bytes.starts_with(b"\x7fELF") {
        decode(elf_section(bytes, SECTION)?)
    } else {
        decode(bytes)
    }
}

/// The contents of a named section of a 64-bit little-endian ELF file
/// ([`crate::elf::section`]).
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8], TableError> {
    crate::elf::section(elf, name).map_err(|e| match e {
        ElfError::NoSection => TableError::NoSection,
        e => TableError::BadElf(e.why()),
    })
}

/// One component's verdict from two tables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// What the old binary writes.
    pub written: String,
    /// Whether the new binary can read it.
    pub ok: bool,
    /// Why.
    pub reason: String,
}

/// Can a kernel with table `old` live-update into one with table `new`?
pub fn check_update(old: &[Entry], new: &[Entry]) -> Vec<Verdict> {
    old.iter()
        .filter(|e| e.kind == KIND_WRITES)
        .map(|w| {
            let reader = new.iter().find(|r| r.kind == KIND_READS && r.name == w.name);
            let (ok, reason) = match reader {
                None => {
                    let names: Vec<String> = new.iter().filter(|r| r.kind == KIND_READS).map(|r| format!("`{}`", r.name)).collect();
                    (false, format!("the new kernel has no reader of `{}`; it reads {}", w.name, names.join(", ")))
                }
                Some(r) if w.feat_bytes == 8 => {
                    let unknown = w.req & !r.supp;
                    if unknown == 0 {
                        (true, format!("reads `{}`; every required feature bit ({:#x}) is known", w.name, w.req))
                    } else {
                        (false, format!("`{}` requires feature bits {unknown:#x} the new kernel does not know", w.name))
                    }
                }
                Some(r) if r.supp != w.supp => (
                    false,
                    format!("both say `{}`, but the layouts differ (fingerprint {:#x} vs {:#x}): a layout change without a new compatible string", w.name, w.supp, r.supp),
                ),
                Some(_) => (true, format!("reads `{}` with the same layout", w.name)),
            };
            Verdict { written: w.name.clone(), ok, reason }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let entries = vec![
            Entry {
                name: "memfd-v2".into(),
                feat_bytes: 0,
                kind: KIND_WRITES,
                supp: 0x1234,
                req: 0,
                active: 0,
            },
            Entry {
                name: "memfd".into(),
                feat_bytes: 8,
                kind: KIND_READS,
                supp: 3,
                req: 0,
                active: 0,
            },
        ];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), 8 + 2 * ENTRY_SIZE);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(decode(&bytes[..20]), Err(TableError::BadLength(20)));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(decode(&bad), Err(TableError::BadMagic(_))));
        let mut bad = bytes.clone();
        bad[8 + 52] = 9;
        assert!(matches!(
            decode(&bad),
            Err(TableError::BadEntry { index: 0, .. })
        ));
        assert!(matches!(
            from_file_bytes(b"\x7fELF\x02\x01"),
            Err(TableError::BadElf(_))
        ));
    }

    #[test]
    fn name_padding_after_the_nul_must_be_zero() {
        // Found by the `abi_table` fuzz target: junk after the terminator
        // decoded fine and re-encoded differently.
        let mut bytes = encode(&[Entry {
            name: "block/v1".into(),
            feat_bytes: 0,
            kind: KIND_WRITES,
            supp: 1,
            req: 0,
            active: 0,
        }]);
        bytes[8 + 13] = 1;
        assert_eq!(
            decode(&bytes),
            Err(TableError::BadEntry {
                index: 0,
                why: "bytes after the name's NUL must be zero"
            })
        );
    }

    #[test]
    fn features_and_fingerprints_decide() {
        let w = |name: &str, fb, supp, req| Entry {
            name: name.into(),
            feat_bytes: fb,
            kind: KIND_WRITES,
            supp,
            req,
            active: supp,
        };
        let r = |name: &str, fb, supp| Entry {
            name: name.into(),
            feat_bytes: fb,
            kind: KIND_READS,
            supp,
            req: 0,
            active: 0,
        };
        assert!(check_update(&[w("memfd", 8, 3, 3)], &[r("memfd", 8, 7)])[0].ok);
        assert!(!check_update(&[w("memfd", 8, 7, 4)], &[r("memfd", 8, 3)])[0].ok);
        assert!(check_update(&[w("memfd-v2", 0, 9, 0)], &[r("memfd-v2", 0, 9)])[0].ok);
        assert!(!check_update(&[w("memfd-v2", 0, 9, 0)], &[r("memfd-v2", 0, 8)])[0].ok);
        assert!(!check_update(&[w("memfd-v1", 0, 9, 0)], &[r("memfd-v2", 0, 9)])[0].ok);
    }
}
