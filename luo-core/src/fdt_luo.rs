//! The 6.19/7.0 handover format: a `luo-v1` FDT in the `"LUO"` subtree, `luo-session-v2`
//! session arrays and (7.0) the `luo-flb-v1` node. Reader and writer pending.

use crate::blocks::PhysRead;
use crate::error::ImageError;
use crate::luo::Incoming;
use crate::version::LuoFormat;

/// The FDT header magic (big-endian in the blob).
pub const FDT_MAGIC: u32 = 0xd00d_feed;

/// Which flavour of `luo-v1` the FDT is (with or without the `luo-flb` node).
pub fn flavour<M: PhysRead + ?Sized>(
    _mem: &M,
    _root: u64,
    _size: usize,
) -> Result<LuoFormat, ImageError> {
    Ok(LuoFormat::V1)
}

/// Reads a `luo-v1` FDT image.
pub fn read<M: PhysRead + ?Sized>(
    _mem: &M,
    _root: u64,
    _size: usize,
) -> Result<(Incoming, Vec<u64>), ImageError> {
    Err(ImageError::UnsupportedFormat {
        found: "luo-v1 (FDT)".into(),
        kernel: "model",
        reads: "no FDT reader yet".into(),
    })
}
