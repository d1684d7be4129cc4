// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Handed-over records: reading a typed record at a handle, and claiming the folio that holds
//! it, for files (`crate::handler`) and global state (`crate::global`) alike.

use zerocopy::{FromBytes, IntoBytes};

use crate::errno::{Errno, Result};
use crate::kho::{KhoExt, KhoService};
use crate::phys::{Phys, PhysAddr};

/// Reads a `T` from preserved memory at the handle `data` (`EINVAL` for a NULL handle).
pub fn read_ser<T: FromBytes + IntoBytes>(kho: &dyn KhoService, data: u64) -> Result<T> {
    if data == 0 {
        return Err(Errno::EINVAL);
    }
    kho.read_obj(Phys::<T>::new(PhysAddr::new(data)))
}

/// A handed-over record claimed from KHO (`kho_restore_folio`), released (freed) on drop.
///
/// KHO refuses an address that is not an incoming preserved folio, so a corrupt
/// `serialized_data` is never read, and a record is claimed once: a second claim fails.
pub(crate) struct Claimed<'a> {
    kho: &'a dyn KhoService,
    at: PhysAddr,
    order: u32,
    /// The bytes of the claimed folio: what a callback may read of the record.
    bytes: usize,
}

impl<'a> Claimed<'a> {
    pub(crate) fn new(kho: &'a dyn KhoService, data: u64, size: usize) -> Result<Claimed<'a>> {
        if data == 0 {
            return Err(Errno::EINVAL);
        }
        let at = PhysAddr::new(data);
        let order = kho.restore_folio(at)?;
        let bytes = 1usize
            .checked_shl(order)
            .and_then(|n| n.checked_mul(crate::PAGE_SIZE))
            .unwrap_or(0);
        let c = Claimed {
            kho,
            at,
            order,
            bytes,
        };
        // A folio smaller than the record would make the read stray past it.
        if bytes < size {
            return Err(Errno::EINVAL);
        }
        Ok(c)
    }

    /// The bytes of the claimed folio.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        // Nothing to report from a release; KHO keeps its own accounting.
        let _ = self.kho.free_folio(self.at, self.order);
    }
}
