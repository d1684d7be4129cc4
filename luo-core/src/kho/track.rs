// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The preserved-memory tracker: which blocks (address, order) are preserved or incoming.
//!
//! Upstream's `kho_mem_track` keeps, per order, an xarray of bitmaps of 512 blocks each, and
//! `kho_preserve_folio` sets one bit. The model needs more than upstream checks (a block that
//! overlaps a preserved one is `EEXIST`, a block is unpreserved or restored only with the order
//! it was preserved with), so a chunk here covers one block of the largest order
//! (`1 << MAX_ORDER` pages, 4 MiB: no block straddles two chunks) and holds two bitmaps:
//!
//! * `used`: one bit per page covered by a block, so an overlap check of any range is a few
//!   word tests;
//! * `starts`: the per-order bitmaps of upstream, packed (order `o` has `CHUNK_PAGES >> o`
//!   bits), one bit per block start, which gives a block's order back.
//!
//! Chunks are found through an ordered index (for address-ordered walks: the handover blob,
//! poisoning at kexec) with a one-entry cache in front of it: folios of a memfd are preserved
//! and restored in address order, so nearly every lookup hits the chunk of the previous one.
//! This replaces an ordered map with one entry per block (the `memfd_preserve` and
//! `memfd_retrieve` benchmarks: ~600 and ~380 instructions per folio for the B-tree insert and
//! removal, see bench/ANALYSIS.md).

use std::cell::Cell;
use std::collections::BTreeMap;

use super::MAX_ORDER;

const PAGE_SHIFT: u32 = 12;
/// Pages per chunk: one block of order [`MAX_ORDER`].
const CHUNK_PAGES: usize = 1 << MAX_ORDER;
const CHUNK_SHIFT: u32 = PAGE_SHIFT + MAX_ORDER;
const USED_WORDS: usize = CHUNK_PAGES / 64;
/// Bits of all the per-order start bitmaps: `CHUNK_PAGES + CHUNK_PAGES / 2 + ... + 1`.
const START_WORDS: usize = (2 * CHUNK_PAGES - 1).div_ceil(64);

#[derive(Clone)]
struct Chunk {
    used: [u64; USED_WORDS],
    starts: [u64; START_WORDS],
}

/// Index of the start bit of the order-`order` block at page `page` of a chunk.
fn start_bit(order: u32, page: usize) -> usize {
    2 * CHUNK_PAGES - ((2 * CHUNK_PAGES) >> order) + (page >> order)
}

/// The first and last word of bits `from..to` (`from < to`) and the masks of their bits.
#[inline]
fn words(from: usize, to: usize) -> (usize, usize, u64, u64) {
    let last = to - 1;
    (
        from / 64,
        last / 64,
        !0u64 << (from % 64),
        !0u64 >> (63 - last % 64),
    )
}

/// Sets (`on`) or clears bits `from..to` of `bits`, a word at a time.
#[inline]
fn set_bits(bits: &mut [u64], from: usize, to: usize, on: bool) {
    if from >= to {
        return;
    }
    let (w0, w1, lo, hi) = words(from, to);
    let apply = |w: &mut u64, m: u64| *w = if on { *w | m } else { *w & !m };
    if w0 == w1 {
        apply(&mut bits[w0], lo & hi);
        return;
    }
    apply(&mut bits[w0], lo);
    bits[w0 + 1..w1].fill(if on { !0 } else { 0 });
    apply(&mut bits[w1], hi);
}

/// Whether every bit of `from..to` of `bits` is set.
#[inline]
fn all_set(bits: &[u64], from: usize, to: usize) -> bool {
    if from >= to {
        return true;
    }
    let (w0, w1, lo, hi) = words(from, to);
    if w0 == w1 {
        return bits[w0] & lo & hi == lo & hi;
    }
    bits[w0] & lo == lo && bits[w0 + 1..w1].iter().all(|&w| w == !0) && bits[w1] & hi == hi
}

impl Chunk {
    const EMPTY: Chunk = Chunk {
        used: [0; USED_WORDS],
        starts: [0; START_WORDS],
    };

    fn is_start(&self, order: u32, page: usize) -> bool {
        let b = start_bit(order, page);
        self.starts[b / 64] & (1 << (b % 64)) != 0
    }

    fn flip_start(&mut self, order: u32, page: usize) {
        let b = start_bit(order, page);
        self.starts[b / 64] ^= 1 << (b % 64);
    }

    /// Whether a page of `from..to` (`from < to <= CHUNK_PAGES`) is used.
    #[inline]
    fn any_used(&self, from: usize, to: usize) -> bool {
        let (w0, w1, lo, hi) = words(from, to);
        if w0 == w1 {
            return self.used[w0] & lo & hi != 0;
        }
        self.used[w0] & lo != 0
            || self.used[w0 + 1..w1].iter().any(|&w| w != 0)
            || self.used[w1] & hi != 0
    }

    /// Whether any page of the aligned block of `1 << order` pages at `page` is used (as
    /// `any_used`, with one word for blocks up to 64 pages).
    #[inline]
    fn block_used(&self, page: usize, order: u32) -> bool {
        if order < 6 {
            let mask = ((1u64 << (1 << order)) - 1) << (page % 64);
            return self.used[page / 64] & mask != 0;
        }
        self.used[page / 64..(page + (1 << order)) / 64]
            .iter()
            .any(|&w| w != 0)
    }

    /// Marks the aligned block of `1 << order` pages at `page` used (`on`) or free.
    #[inline]
    fn mark_block(&mut self, page: usize, order: u32, on: bool) {
        if order < 6 {
            let mask = ((1u64 << (1 << order)) - 1) << (page % 64);
            let w = &mut self.used[page / 64];
            *w = if on { *w | mask } else { *w & !mask };
            return;
        }
        self.used[page / 64..(page + (1 << order)) / 64].fill(if on { !0 } else { 0 });
    }

    /// The order of the block starting at `page`.
    fn order_at(&self, page: usize) -> Option<u32> {
        (0..=MAX_ORDER)
            .take_while(|&o| page.is_multiple_of(1 << o))
            .find(|&o| self.is_start(o, page))
    }

    /// The block (first page, order) covering `page`, which must be used.
    fn block_at(&self, page: usize) -> Option<(usize, u32)> {
        (0..=MAX_ORDER).find_map(|o| {
            let first = page & !((1 << o) - 1);
            self.is_start(o, first).then_some((first, o))
        })
    }

    /// The first used page at or after `from`.
    fn next_used(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        let mut bits = self.used.get(w)? & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            bits = *self.used.get(w)?;
        }
    }
}

/// Preserved (or incoming) blocks: disjoint, each `PAGE_SIZE << order` bytes at an address
/// aligned to its size, `order <= MAX_ORDER`.
pub(super) struct MemTrack {
    /// Chunk number (address >> 22) → slot in `chunks`. Chunks stay allocated once created,
    /// as upstream's bitmaps (bounded by the memory ever preserved).
    index: BTreeMap<u64, usize>,
    chunks: Vec<Chunk>,
    /// The chunk number looked up last ([`NO_KEY`] at first: chunk numbers are below 2^42).
    hint_key: Cell<u64>,
    /// Its slot, or [`NO_SLOT`] when it has no chunk. Every new chunk becomes the hint, so a
    /// cached miss stays true.
    hint_slot: Cell<usize>,
    blocks: usize,
    pages: u64,
}

const NO_KEY: u64 = u64::MAX;
const NO_SLOT: usize = usize::MAX;

/// (chunk number, page in the chunk) of an address.
fn split(phys: u64) -> (u64, usize) {
    (
        phys >> CHUNK_SHIFT,
        (phys >> PAGE_SHIFT) as usize & (CHUNK_PAGES - 1),
    )
}

impl MemTrack {
    pub(super) fn new() -> MemTrack {
        MemTrack {
            index: BTreeMap::new(),
            chunks: Vec::new(),
            hint_key: Cell::new(NO_KEY),
            hint_slot: Cell::new(NO_SLOT),
            blocks: 0,
            pages: 0,
        }
    }

    /// Number of blocks.
    pub(super) fn len(&self) -> usize {
        self.blocks
    }

    /// Number of pages in all blocks.
    pub(super) fn pages(&self) -> u64 {
        self.pages
    }

    fn slot(&self, key: u64) -> Option<usize> {
        if self.hint_key.get() == key {
            let s = self.hint_slot.get();
            return (s != NO_SLOT).then_some(s);
        }
        let s = self.index.get(&key).copied();
        self.hint_key.set(key);
        self.hint_slot.set(s.unwrap_or(NO_SLOT));
        s
    }

    fn chunk(&self, key: u64) -> Option<&Chunk> {
        self.slot(key).map(|s| &self.chunks[s])
    }

    fn slot_or_insert(&mut self, key: u64) -> usize {
        if let Some(s) = self.slot(key) {
            return s;
        }
        let s = self.chunks.len();
        self.chunks.push(Chunk::EMPTY);
        self.index.insert(key, s);
        self.hint_key.set(key);
        self.hint_slot.set(s);
        s
    }

    /// The order of the block starting exactly at `phys`.
    pub(super) fn get(&self, phys: u64) -> Option<u32> {
        if self.blocks == 0 || !phys.is_multiple_of(1 << PAGE_SHIFT) {
            return None;
        }
        let (key, page) = split(phys);
        self.chunk(key)?.order_at(page)
    }

    /// Whether a block covers the page containing `phys`.
    pub(super) fn contains_page(&self, phys: u64) -> bool {
        if self.blocks == 0 {
            return false;
        }
        let (key, page) = split(phys);
        self.chunk(key).is_some_and(|c| c.block_used(page, 0))
    }

    /// Whether a block intersects `start..start + len` (`len` 0 counts as 1 byte).
    pub(super) fn overlaps(&self, start: u64, len: u64) -> bool {
        if self.blocks == 0 {
            return false;
        }
        let end = start.saturating_add(len.max(1));
        let (k0, p0) = split(start);
        let (k1, p1) = split(end - 1);
        if k0 == k1 {
            return self.chunk(k0).is_some_and(|c| c.any_used(p0, p1 + 1));
        }
        self.index.range(k0..=k1).any(|(&k, &s)| {
            let from = if k == k0 { p0 } else { 0 };
            let to = if k == k1 { p1 + 1 } else { CHUNK_PAGES };
            self.chunks[s].any_used(from, to)
        })
    }

    /// Adds the block of `order` at `phys`; `false` (nothing changed) if it is misaligned,
    /// of an order above [`MAX_ORDER`], or intersects a block already there.
    pub(super) fn insert(&mut self, phys: u64, order: u32) -> bool {
        if order > MAX_ORDER || !phys.is_multiple_of(1 << (PAGE_SHIFT + order)) {
            return false;
        }
        let (key, page) = split(phys);
        let n = 1usize << order;
        let s = self.slot_or_insert(key);
        let c = &mut self.chunks[s];
        if c.block_used(page, order) {
            return false;
        }
        c.mark_block(page, order, true);
        c.flip_start(order, page);
        self.blocks += 1;
        self.pages += n as u64;
        true
    }

    /// Removes the block starting exactly at `phys`; returns its order.
    pub(super) fn remove(&mut self, phys: u64) -> Option<u32> {
        if self.blocks == 0 || !phys.is_multiple_of(1 << PAGE_SHIFT) {
            return None;
        }
        let (key, page) = split(phys);
        let s = self.slot(key)?;
        let c = &mut self.chunks[s];
        let order = c.order_at(page)?;
        let n = 1usize << order;
        c.mark_block(page, order, false);
        c.flip_start(order, page);
        self.blocks -= 1;
        self.pages -= n as u64;
        Some(order)
    }

    /// The pieces of the run of `count` blocks of `order` from `phys` that fall in each
    /// chunk, as (chunk number, first page, end page); `None` for a misaligned run, an order
    /// above [`MAX_ORDER`], an empty run or one past the address space.
    fn run_pieces(
        phys: u64,
        order: u32,
        count: u64,
    ) -> Option<impl Iterator<Item = (u64, usize, usize)>> {
        if order > MAX_ORDER || count == 0 || !phys.is_multiple_of(1 << (PAGE_SHIFT + order)) {
            return None;
        }
        let len = count
            .checked_shl(PAGE_SHIFT + order)
            .filter(|l| l >> (PAGE_SHIFT + order) == count)?;
        let end = phys.checked_add(len - 1)?;
        let (k0, p0) = split(phys);
        let (k1, p1) = split(end);
        Some((k0..=k1).map(move |k| {
            let from = if k == k0 { p0 } else { 0 };
            let to = if k == k1 { p1 + 1 } else { CHUNK_PAGES };
            (k, from, to)
        }))
    }

    /// Adds `count` blocks of `order` back to back from `phys` (one bitmap update per chunk,
    /// a word per 64 pages); `false` (nothing changed) if the run is misaligned, of an order
    /// above [`MAX_ORDER`], empty, or intersects a block already there.
    pub(super) fn insert_run(&mut self, phys: u64, order: u32, count: u64) -> bool {
        let Some(pieces) = Self::run_pieces(phys, order, count) else {
            return false;
        };
        if self.overlaps(phys, count << (PAGE_SHIFT + order)) {
            return false;
        }
        for (k, from, to) in pieces {
            let s = self.slot_or_insert(k);
            let c = &mut self.chunks[s];
            set_bits(&mut c.used, from, to, true);
            // The start bits of one order are consecutive, one per block.
            let b = start_bit(order, from);
            set_bits(&mut c.starts, b, b + ((to - from) >> order), true);
        }
        self.blocks += count as usize;
        self.pages += count << order;
        true
    }

    /// Whether the run of `count` blocks of `order` from `phys` is exactly `count` blocks of
    /// this tracker, each of that order.
    pub(super) fn has_run(&self, phys: u64, order: u32, count: u64) -> bool {
        let Some(mut pieces) = Self::run_pieces(phys, order, count) else {
            return false;
        };
        self.blocks as u64 >= count
            && pieces.all(|(k, from, to)| {
                // A start bit of `order` for every block: blocks are disjoint, so each one
                // covers exactly its pages.
                let b = start_bit(order, from);
                self.chunk(k)
                    .is_some_and(|c| all_set(&c.starts, b, b + ((to - from) >> order)))
            })
    }

    /// Removes the run of `count` blocks of `order` from `phys`; `false` (nothing changed)
    /// unless [`MemTrack::has_run`].
    pub(super) fn remove_run(&mut self, phys: u64, order: u32, count: u64) -> bool {
        if !self.has_run(phys, order, count) {
            return false;
        }
        let pieces = Self::run_pieces(phys, order, count).into_iter().flatten();
        for (k, from, to) in pieces {
            let Some(s) = self.slot(k) else { continue };
            let c = &mut self.chunks[s];
            set_bits(&mut c.used, from, to, false);
            let b = start_bit(order, from);
            set_bits(&mut c.starts, b, b + ((to - from) >> order), false);
        }
        self.blocks -= count as usize;
        self.pages -= count << order;
        true
    }

    /// The blocks starting in `start..end`, in address order, as (address, order).
    pub(super) fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let (k0, _) = split(start);
        let keys = if end > start {
            let (k1, _) = split(end - 1);
            self.index.range(k0..=k1)
        } else {
            self.index.range(k0..k0)
        };
        keys.flat_map(move |(&k, &s)| {
            let c = &self.chunks[s];
            let base = k << CHUNK_SHIFT;
            let mut next = 0usize;
            std::iter::from_fn(move || {
                loop {
                    let used = c.next_used(next)?;
                    let (first, order) = c.block_at(used)?;
                    next = first + (1 << order);
                    let phys = base + ((first as u64) << PAGE_SHIFT);
                    if phys >= end {
                        return None;
                    }
                    if phys >= start {
                        return Some((phys, order));
                    }
                }
            })
        })
    }

    /// Every block, in address order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.range(0, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 1 << PAGE_SHIFT;

    /// The map semantics the tracker replaces: disjoint blocks in an ordered map.
    fn model_overlaps(m: &BTreeMap<u64, u32>, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len.max(1));
        m.range(..end)
            .next_back()
            .is_some_and(|(&p, &o)| p + (PAGE << o) > start)
    }

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random preserve / unpreserve / lookup sequences against the ordered-map semantics,
    /// over a few chunks (so blocks meet at chunk borders) in two distant areas.
    #[test]
    fn random_operations_match_the_ordered_map() {
        let steps = if cfg!(miri) { 300 } else { 40_000 };
        for seed in [1u64, 0x9e37_79b9_7f4a_7c15, 42] {
            let mut rng = Rng(seed);
            let mut t = MemTrack::new();
            let mut m: BTreeMap<u64, u32> = BTreeMap::new();
            let areas = [0x40_0000u64, 1 << 40];
            for _ in 0..steps {
                let area = areas[rng.below(2) as usize];
                // Small orders mostly, so blocks pack densely; order 10 now and then.
                let order = match rng.below(8) {
                    0 => MAX_ORDER,
                    1 => rng.below(MAX_ORDER as u64 + 1) as u32,
                    _ => rng.below(3) as u32,
                };
                let pages = 3 * CHUNK_PAGES as u64;
                let page = rng.below(pages);
                let aligned = area + ((page >> order) << order) * PAGE;
                match rng.below(6) {
                    0..=2 => {
                        let expect = !model_overlaps(&m, aligned, PAGE << order);
                        assert_eq!(t.insert(aligned, order), expect, "{aligned:#x} {order}");
                        if expect {
                            m.insert(aligned, order);
                        }
                        // Misaligned blocks are refused.
                        if order > 0 {
                            assert!(!t.insert(aligned + PAGE, order));
                        }
                    }
                    3 => assert_eq!(t.remove(aligned), m.remove(&aligned)),
                    4 => {
                        let p = area + page * PAGE;
                        assert_eq!(t.get(p), m.get(&p).copied());
                        assert_eq!(t.contains_page(p + 5), model_overlaps(&m, p, PAGE));
                    }
                    _ => {
                        let start = area + page * PAGE + rng.below(PAGE);
                        let len = rng.below(2 * CHUNK_PAGES as u64 * PAGE);
                        assert_eq!(t.overlaps(start, len), model_overlaps(&m, start, len));
                        let end = start.saturating_add(len);
                        let want: Vec<(u64, u32)> =
                            m.range(start..end).map(|(&p, &o)| (p, o)).collect();
                        assert_eq!(t.range(start, end).collect::<Vec<_>>(), want);
                    }
                }
                assert_eq!(t.len(), m.len());
            }
            let all: Vec<(u64, u32)> = m.iter().map(|(&p, &o)| (p, o)).collect();
            assert_eq!(t.iter().collect::<Vec<_>>(), all);
            assert_eq!(t.pages(), m.values().map(|&o| 1u64 << o).sum::<u64>());
        }
    }

    /// Runs against the same blocks inserted one by one, at chunk borders and with overlaps.
    #[test]
    fn runs_match_blocks_one_by_one() {
        let steps = if cfg!(miri) { 200 } else { 20_000 };
        let mut rng = Rng(7);
        let mut runs = MemTrack::new();
        let mut single = MemTrack::new();
        for _ in 0..steps {
            let order = match rng.below(4) {
                0 => rng.below(MAX_ORDER as u64 + 1) as u32,
                _ => rng.below(2) as u32,
            };
            let count = 1 + rng.below((3 * CHUNK_PAGES as u64) >> order);
            let page = rng.below(4 * CHUNK_PAGES as u64) >> order << order;
            let phys = 0x4000_0000 + page * PAGE;
            let blocks: Vec<u64> = (0..count).map(|i| phys + ((i * PAGE) << order)).collect();
            if rng.below(2) == 0 {
                let free = blocks.iter().all(|&b| !single.overlaps(b, PAGE << order));
                assert_eq!(runs.insert_run(phys, order, count), free);
                if free {
                    for &b in &blocks {
                        assert!(single.insert(b, order));
                    }
                }
            } else {
                let all = blocks.iter().all(|&b| single.get(b) == Some(order));
                assert_eq!(runs.has_run(phys, order, count), all);
                assert_eq!(runs.remove_run(phys, order, count), all);
                if all {
                    for &b in &blocks {
                        assert_eq!(single.remove(b), Some(order));
                    }
                }
            }
            assert_eq!((runs.len(), runs.pages()), (single.len(), single.pages()));
        }
        assert_eq!(
            runs.iter().collect::<Vec<_>>(),
            single.iter().collect::<Vec<_>>()
        );
        assert!(!runs.insert_run(PAGE, 1, 1), "misaligned");
        assert!(!runs.insert_run(0, 0, 0), "empty");
        assert!(
            !runs.insert_run(!0 << 20, 0, 1 << 20),
            "past the address space"
        );
    }

    #[test]
    fn edges() {
        let mut t = MemTrack::new();
        assert!(!t.overlaps(0, 0));
        assert_eq!(t.iter().count(), 0);
        assert!(!t.insert(PAGE, MAX_ORDER + 1));
        assert!(!t.insert(PAGE, 1));
        let top = !((PAGE << MAX_ORDER) - 1);
        assert!(t.insert(top, MAX_ORDER));
        assert!(t.overlaps(u64::MAX, 0));
        assert!(t.overlaps(0, u64::MAX));
        assert_eq!(t.get(top + 1), None);
        assert_eq!(t.remove(top + 1), None);
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(top, MAX_ORDER)]);
        assert_eq!(t.range(top + PAGE, u64::MAX).count(), 0);
        assert_eq!(t.remove(top), Some(MAX_ORDER));
        assert_eq!((t.len(), t.pages()), (0, 0));
        assert!(!t.overlaps(0, u64::MAX));
    }
}
