//! A synthetic file for the tests: an identity plus a position, a size and seals, which a
//! toy memfd handler hands over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use luo_abi::file::{File, FileId, FileKind, FileRef};

/// A memfd-like synthetic file.
pub struct TestFile {
    id: u64,
    kind: FileKind,
    /// File position.
    pub pos: AtomicU64,
    /// File size.
    pub size: AtomicU64,
    /// Seals.
    pub seals: AtomicU32,
}

impl TestFile {
    /// A memfd-kind file.
    pub fn memfd(id: u64, pos: u64, size: u64, seals: u32) -> FileRef {
        Arc::new(TestFile {
            id,
            kind: FileKind::Memfd,
            pos: AtomicU64::new(pos),
            size: AtomicU64::new(size),
            seals: AtomicU32::new(seals),
        })
    }

    /// A file no memfd handler accepts.
    pub fn other(id: u64) -> FileRef {
        Arc::new(TestFile {
            id,
            kind: FileKind::Other,
            pos: AtomicU64::new(0),
            size: AtomicU64::new(0),
            seals: AtomicU32::new(0),
        })
    }

    /// (pos, size, seals).
    pub fn state(&self) -> (u64, u64, u32) {
        (
            self.pos.load(Ordering::SeqCst),
            self.size.load(Ordering::SeqCst),
            self.seals.load(Ordering::SeqCst),
        )
    }
}

impl File for TestFile {
    fn kind(&self) -> FileKind {
        self.kind
    }
    fn id(&self) -> FileId {
        FileId(self.id)
    }
}
