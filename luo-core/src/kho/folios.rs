// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The order of every live arena allocation, found by its first page.
//!
//! The kernel keeps a folio's order in its `struct page`; the model keeps one byte per arena
//! page (0: no allocation starts there, else the order plus one). A lookup is an index, with
//! no hashing of the address (this map is consulted on every allocation, free and restore of
//! arena memory: every LUO block, every handler record, every page of a folio array).

use super::MAX_ORDER;

pub(super) struct FolioOrders {
    base: u64,
    orders: Vec<u8>,
}

const PAGE_SHIFT: u32 = 12;

impl FolioOrders {
    /// No allocation yet in an arena of `pages` pages from `base`.
    pub(super) fn new(base: u64, pages: u64) -> FolioOrders {
        FolioOrders {
            base,
            orders: vec![0; usize::try_from(pages).unwrap_or(0)],
        }
    }

    fn slot(&self, phys: u64) -> Option<usize> {
        let off = phys.checked_sub(self.base)?;
        if off & ((1 << PAGE_SHIFT) - 1) != 0 {
            return None;
        }
        let i = usize::try_from(off >> PAGE_SHIFT).ok()?;
        (i < self.orders.len()).then_some(i)
    }

    /// Records the allocation of `order` at `phys` (an arena page; ignored otherwise).
    pub(super) fn insert(&mut self, phys: u64, order: u32) {
        if let Some(i) = self.slot(phys)
            && order <= MAX_ORDER
        {
            self.orders[i] = order as u8 + 1;
        }
    }

    /// The order of the allocation starting at `phys`.
    pub(super) fn get(&self, phys: u64) -> Option<u32> {
        let o = self.orders[self.slot(phys)?];
        (o != 0).then(|| u32::from(o) - 1)
    }

    /// Forgets the allocation starting at `phys`; returns its order.
    pub(super) fn remove(&mut self, phys: u64) -> Option<u32> {
        let i = self.slot(phys)?;
        let o = std::mem::take(&mut self.orders[i]);
        (o != 0).then(|| u32::from(o) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_first_page() {
        let base = 1 << 30;
        let mut f = FolioOrders::new(base, 16);
        f.insert(base + 4096, 2);
        f.insert(base + 16 * 4096, 0); // outside: ignored
        f.insert(base, MAX_ORDER + 1); // no such order: ignored
        assert_eq!(f.get(base + 4096), Some(2));
        assert_eq!(f.get(base + 4097), None);
        assert_eq!(f.get(base), None);
        assert_eq!(f.get(base - 4096), None);
        assert_eq!(f.get(base + 16 * 4096), None);
        assert_eq!(f.remove(base + 4096), Some(2));
        assert_eq!(f.remove(base + 4096), None);
    }
}
