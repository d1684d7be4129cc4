// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Typed errors for handover images: a corrupt image is an error, never a panic.

use luo_abi::Errno;

/// Why a handover image (the KHO blob, `luo_ser`, block chains, the FLB area) was refused.
///
/// Upstream panics at boot on most of these (`luo_restore_fail()`); the model reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The KHO handover blob does not start with the model's magic.
    #[error("KHO handover blob at {phys:#x}: bad magic {found:#x}")]
    BadMagic {
        /// Where the blob was expected.
        phys: u64,
        /// The first 8 bytes found there.
        found: u64,
    },
    /// A structure does not fit in the memory it claims.
    #[error("{what} at {phys:#x}: truncated or outside memory")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Its address.
        phys: u64,
    },
    /// A preserved range is not aligned to its order.
    #[error("preserved range {phys:#x} (order {order}) is misaligned")]
    Misaligned {
        /// Start of the range.
        phys: u64,
        /// Its order.
        order: u32,
    },
    /// A preserved range lies outside every memory region of the handover.
    #[error("preserved range {phys:#x} (+{pages} pages) lies outside memory")]
    OutOfRange {
        /// Start of the range.
        phys: u64,
        /// Its length in pages.
        pages: u64,
    },
    /// Two preserved ranges overlap.
    #[error("preserved range {phys:#x} overlaps another one")]
    Overlap {
        /// Start of the later range.
        phys: u64,
    },
    /// A subtree entry is malformed (name not NUL-terminated or not UTF-8).
    #[error("KHO subtree entry {index}: bad name")]
    SubtreeName {
        /// Index of the entry.
        index: usize,
    },
    /// A session entry's name has no NUL within 64 bytes.
    #[error("session entry {index}: name not NUL-terminated")]
    SessionName {
        /// Index of the entry in the chain.
        index: usize,
    },
    /// The `LUO` subtree is smaller than `struct luo_ser`.
    #[error("LUO subtree is {size} bytes, smaller than struct luo_ser ({need})")]
    LuoTooSmall {
        /// Size recorded for the subtree.
        size: usize,
        /// `sizeof(struct luo_ser)`.
        need: usize,
    },
    /// `luo_ser.compatible` is not this kernel's `LUO_ABI_COMPATIBLE`.
    #[error("LUO compatible {found:?} does not match {expected:?}")]
    Compatible {
        /// What the image holds (lossy).
        found: String,
        /// What this kernel reads.
        expected: &'static str,
    },
    /// The image's LUO format is one this kernel does not read. Upstream `panic()`s at boot
    /// (`luo_restore_fail`); here the boot fails cleanly.
    #[error("LUO handover format {found} is not read by kernel {kernel} (it reads {reads})")]
    UnsupportedFormat {
        /// The format found (`luo-v1`, `luo-v5`, `next`, or what the compatible said).
        found: String,
        /// The kernel booting.
        kernel: &'static str,
        /// The formats it reads.
        reads: String,
    },
    /// A feature-negotiated header requires bits this kernel does not know (upstream would
    /// panic at boot).
    #[error("{component}: unknown required feature bits {bits:#x} (this kernel knows {known:#x})")]
    UnknownFeature {
        /// The component (`luo`).
        component: &'static str,
        /// The unknown required bits.
        bits: u64,
        /// The bits this kernel knows.
        known: u64,
    },
    /// A feature header is malformed (non-zero reserved words, active bits not supported).
    #[error("{component}: bad feature header: {why}")]
    BadFeatures {
        /// The component.
        component: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The 6.19/7.0 `luo-v1` FDT is malformed or lacks a node or property.
    #[error("luo-v1 FDT: {why}")]
    Fdt {
        /// What is wrong.
        why: String,
    },
    /// A 6.19/7.0 session or file array holds more entries than its fixed area.
    #[error("{what}: count {count} above the maximum {max}")]
    TooMany {
        /// Which array.
        what: &'static str,
        /// The count found.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A block chain visits a block twice.
    #[error("{what} block chain has a cycle at {phys:#x}")]
    BlockCycle {
        /// Which chain.
        what: &'static str,
        /// The block seen twice.
        phys: u64,
    },
    /// A block has `count == 0`.
    #[error("{what} block at {phys:#x} has count 0")]
    BlockEmpty {
        /// Which chain.
        what: &'static str,
        /// The block.
        phys: u64,
    },
    /// A block's `count` exceeds its capacity.
    #[error("{what} block at {phys:#x} has count {count}, more than {cap}")]
    BlockOverfull {
        /// Which chain.
        what: &'static str,
        /// The block.
        phys: u64,
        /// Its count.
        count: u64,
        /// The per-block capacity.
        cap: u64,
    },
    /// A chain is longer than `KHO_MAX_BLOCKS`.
    #[error("{what} block chain is longer than {max} blocks")]
    TooManyBlocks {
        /// Which chain.
        what: &'static str,
        /// `KHO_MAX_BLOCKS`.
        max: u64,
    },
    /// A block is not page-aligned.
    #[error("{what} block at {phys:#x} is not page-aligned")]
    BlockMisaligned {
        /// Which chain.
        what: &'static str,
        /// The block.
        phys: u64,
    },
    /// A session's file count does not match the entries found in its chain.
    #[error("session {session:?}: file count {expected} but {found} entries")]
    FileCount {
        /// The session name (lossy).
        session: String,
        /// `luo_file_set_ser.count`.
        expected: u64,
        /// Entries found.
        found: u64,
    },
    /// The FLB area header is invalid.
    #[error("FLB area at {phys:#x}: pgcnt {pgcnt}, count {count}")]
    FlbHeader {
        /// Its address.
        phys: u64,
        /// `pgcnt`.
        pgcnt: u64,
        /// `count`.
        count: u64,
    },
    /// A preserved page the image needs is missing from the preserved-memory map.
    #[error("{what} at {phys:#x} is not preserved memory")]
    NotPreserved {
        /// What it is.
        what: &'static str,
        /// Its address.
        phys: u64,
    },
    /// A size read from the handover claims more memory than the previous kernel preserved
    /// there: refused before anything of that size is allocated.
    #[error(
        "{what} at {phys:#x} claims {size} bytes, more than the memory preserved there: \
         the handover is corrupt"
    )]
    SizeBeyondPreserved {
        /// What claims the size.
        what: &'static str,
        /// Its address.
        phys: u64,
        /// The size it claims.
        size: u64,
    },
    /// The image file could not be read.
    #[error("cannot read the image file: {0}")]
    File(String),
    /// The handover descriptor (environment or image file) is malformed.
    #[error("handover descriptor: {0}")]
    Descriptor(String),
    /// A host error while reading the handover.
    #[error("host error while reading the handover: {0}")]
    Host(Errno),
}

impl ImageError {
    /// The errno upstream would return where it does not panic.
    pub fn errno(&self) -> Errno {
        match self {
            ImageError::Host(e) => *e,
            _ => Errno::EINVAL,
        }
    }
}

impl From<ImageError> for Errno {
    fn from(e: ImageError) -> Errno {
        e.errno()
    }
}
