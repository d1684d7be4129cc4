// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! [`KhoService`] on the model: the calls handlers make (upstream's `kho_preserve_folio`,
//! `kho_restore_folio`, `kho_preserve_vmalloc`, `kho_alloc_preserve`, subtrees; all in
//! `kernel/liveupdate/kexec_handover.c`).

use std::collections::HashSet;

use luo_abi::file::ShmemFolio;
use luo_abi::kho::{KhoService, VmallocChunk, VmallocDesc};
use luo_abi::{Errno, Phys, PhysAddr};
use luo_generated::kho::{KHO_VMALLOC_SIZE, kho_vmalloc_chunk};
use zerocopy::{FromZeros, IntoBytes};

use super::*;
use crate::mem::lock;

impl KhoService for Kho {
    fn is_enabled(&self) -> bool {
        true
    }

    fn is_kho_boot(&self) -> bool {
        self.kho_boot
    }

    fn alloc_folio(&self, order: u32) -> luo_abi::Result<PhysAddr> {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("alloc_folio")?;
        self.alloc_locked(&mut st, order).map(PhysAddr::new)
    }

    fn free_folio(&self, phys: PhysAddr, order: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.free_locked(&mut st, phys.as_u64(), order)
    }

    fn preserve_folio(&self, phys: PhysAddr, order: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("preserve_folio")?;
        self.preserve_locked(&mut st, phys.as_u64(), order)
    }

    fn unpreserve_folio(&self, phys: PhysAddr, order: u32) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::unpreserve_locked(&mut st, phys.as_u64(), order)
    }

    fn restore_folio(&self, phys: PhysAddr) -> luo_abi::Result<u32> {
        let mut st = lock(&self.st);
        self.restore_locked(&mut st, phys.as_u64())
    }

    fn is_incoming(&self, phys: PhysAddr) -> bool {
        lock(&self.st).inc.contains_page(phys.as_u64())
    }

    /// One hold of the lock and one region lookup for the whole batch; each folio is still
    /// an allocation site and gets every check of [`KhoService::preserve_folio`].
    fn preserve_folios(&self, folios: &[ShmemFolio]) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        let mut region = None;
        for (done, f) in folios.iter().enumerate() {
            let r = alloc_site("preserve_folio")
                .and_then(|()| self.preserve_in(&mut st, f.phys.as_u64(), f.order, &mut region));
            if let Err(e) = r {
                for g in &folios[..done] {
                    let _ = Kho::unpreserve_locked(&mut st, g.phys.as_u64(), g.order);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// One hold of the lock and one region lookup for the whole batch.
    fn free_folios(&self, phys: &[PhysAddr], orders: &[u32]) -> luo_abi::Result {
        if phys.len() != orders.len() {
            return Err(Errno::EINVAL);
        }
        let mut st = lock(&self.st);
        let mut region = None;
        let mut r = Ok(());
        for (&p, &o) in phys.iter().zip(orders) {
            let e = self.free_in(&mut st, p.as_u64(), o, &mut region);
            if r.is_ok() {
                r = e;
            }
        }
        r
    }

    /// One hold of the lock for the whole batch.
    fn restore_folios(&self, phys: &[PhysAddr], orders: &mut Vec<u32>) -> luo_abi::Result {
        let mut st = lock(&self.st);
        orders.reserve(phys.len());
        for p in phys {
            orders.push(self.restore_locked(&mut st, p.as_u64())?);
        }
        Ok(())
    }

    fn preserve_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.preserve_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn unpreserve_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::unpreserve_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn restore_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.restore_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn free_range(&self, phys: PhysAddr, order: u32, count: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        self.free_range_locked(&mut st, phys.as_u64(), order, count)
    }

    fn preserve_pages(&self, phys: PhysAddr, nr_pages: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("preserve_pages")?;
        let p = phys.as_u64();
        let len = (nr_pages as u64).checked_mul(PAGE).ok_or(Errno::EINVAL)?;
        if nr_pages == 0 || p == 0 || !phys.is_page_aligned() || !self.preservable(&st, p, len) {
            return Err(Errno::EINVAL);
        }
        if st.out.overlaps(p, len) {
            return Err(Errno::EEXIST);
        }
        for i in 0..nr_pages as u64 {
            st.out.insert(p + i * PAGE, 0);
        }
        Ok(())
    }

    fn unpreserve_pages(&self, phys: PhysAddr, nr_pages: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        if nr_pages == 0 || !(0..nr_pages as u64).all(|i| st.out.get(p + i * PAGE) == Some(0)) {
            return Err(Errno::EINVAL);
        }
        for i in 0..nr_pages as u64 {
            st.out.remove(p + i * PAGE);
        }
        Ok(())
    }

    fn restore_pages(&self, phys: PhysAddr, nr_pages: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        if nr_pages == 0 || !(0..nr_pages as u64).all(|i| st.inc.get(p + i * PAGE) == Some(0)) {
            return Err(Errno::EINVAL);
        }
        for i in 0..nr_pages as u64 {
            self.restore_locked(&mut st, p + i * PAGE)?;
        }
        Ok(())
    }

    fn preserve_vmalloc(&self, pages: &[PhysAddr], order: u16) -> luo_abi::Result<VmallocDesc> {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("preserve_vmalloc")?;
        let order32 = u32::from(order);
        let block = order_bytes(order32.min(MAX_ORDER + 1));
        if pages.is_empty() || order32 > MAX_ORDER {
            return Err(Errno::EINVAL);
        }
        let total = u32::try_from((pages.len() as u64) << order).map_err(|_| Errno::EINVAL)?;
        let mut seen = HashSet::new();
        for p in pages {
            let a = p.as_u64();
            if a == 0 || !a.is_multiple_of(block) || !self.preservable(&st, a, block) {
                return Err(Errno::EINVAL);
            }
            if !seen.insert(a) || st.out.overlaps(a, block) {
                return Err(Errno::EEXIST);
            }
        }
        // Chunk pages, allocated first so a failure leaves nothing behind.
        let per = KHO_VMALLOC_SIZE as usize;
        let n_chunks = pages.len().div_ceil(per);
        let mut chunks = Vec::with_capacity(n_chunks);
        for _ in 0..n_chunks {
            match self.alloc_locked(&mut st, 0) {
                Ok(c) => chunks.push(c),
                Err(e) => {
                    for c in chunks {
                        let _ = self.free_locked(&mut st, c, 0);
                    }
                    return Err(e);
                }
            }
        }
        for (i, group) in pages.chunks(per).enumerate() {
            let mut chunk = kho_vmalloc_chunk::new_zeroed();
            chunk.hdr.next = Phys::new(PhysAddr::new(chunks.get(i + 1).copied().unwrap_or(0)));
            for (slot, p) in chunk.phys.iter_mut().zip(group) {
                *slot = p.as_u64();
            }
            self.write_locked(&st, chunks[i], chunk.as_bytes())?;
        }
        for &c in &chunks {
            st.out.insert(c, 0);
        }
        for p in pages {
            for i in 0..(1u64 << order) {
                st.out.insert(p.as_u64() + i * PAGE, 0);
            }
        }
        Ok(VmallocDesc {
            first: Phys::<VmallocChunk>::new(PhysAddr::new(chunks[0])),
            total_pages: total,
            flags: KHO_VMALLOC_ALLOC,
            order,
        })
    }

    fn unpreserve_vmalloc(&self, desc: &VmallocDesc) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let (chunks, entries) = self.walk_vmalloc(&st, desc, false)?;
        let n = 1u64 << desc.order;
        if !entries
            .iter()
            .all(|&e| (0..n).all(|i| st.out.get(e + i * PAGE) == Some(0)))
        {
            return Err(Errno::EINVAL);
        }
        for e in entries {
            for i in 0..n {
                st.out.remove(e + i * PAGE);
            }
        }
        for c in chunks {
            st.out.remove(c);
            self.free_locked(&mut st, c, 0)?;
        }
        Ok(())
    }

    fn restore_vmalloc(&self, desc: &VmallocDesc) -> luo_abi::Result<Vec<PhysAddr>> {
        let mut st = lock(&self.st);
        let (chunks, entries) = self.walk_vmalloc(&st, desc, true)?;
        let n = 1u64 << desc.order;
        if !entries
            .iter()
            .all(|&e| (0..n).all(|i| st.inc.get(e + i * PAGE) == Some(0)))
        {
            return Err(Errno::EINVAL);
        }
        for &e in &entries {
            for i in 0..n {
                self.restore_locked(&mut st, e + i * PAGE)?;
            }
            // The area's pages become one allocation of `order` each.
            if self.arena_index(e).is_some() {
                for i in 0..n {
                    st.folios.remove(e + i * PAGE);
                }
                st.folios.insert(e, u32::from(desc.order));
            }
        }
        for c in chunks {
            self.restore_locked(&mut st, c)?;
            self.free_locked(&mut st, c, 0)?;
        }
        Ok(entries.into_iter().map(PhysAddr::new).collect())
    }

    fn alloc_preserve(&self, size: usize) -> luo_abi::Result<PhysAddr> {
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let order = order_for_pages(luo_abi::kho::pages_for(size) as u64).ok_or(Errno::EINVAL)?;
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        alloc_site("alloc_preserve")?;
        let phys = self.alloc_locked(&mut st, order)?;
        if let Err(e) = self.preserve_locked(&mut st, phys, order) {
            let _ = self.free_locked(&mut st, phys, order);
            return Err(e);
        }
        Ok(PhysAddr::new(phys))
    }

    fn unpreserve_free(&self, phys: PhysAddr) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        let order = st.out.get(p).ok_or(Errno::EINVAL)?;
        if st.folios.get(p) != Some(order) {
            return Err(Errno::EINVAL);
        }
        Kho::unpreserve_locked(&mut st, p, order)?;
        self.free_locked(&mut st, p, order)
    }

    fn restore_free(&self, phys: PhysAddr) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let p = phys.as_u64();
        if self.arena_index(p).is_none() {
            return Err(Errno::EINVAL);
        }
        let order = self.restore_locked(&mut st, p)?;
        self.free_locked(&mut st, p, order)
    }

    fn add_subtree(&self, name: &str, phys: PhysAddr, size: usize) -> luo_abi::Result {
        let mut st = lock(&self.st);
        Kho::check_alive(&st)?;
        if name.is_empty() || name.len() >= 64 || name.contains('\0') {
            return Err(Errno::EINVAL);
        }
        if st.sub_out.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        alloc_site("add_subtree")?;
        st.sub_out.insert(name.to_owned(), (phys.as_u64(), size));
        Ok(())
    }

    fn remove_subtree(&self, phys: PhysAddr) -> luo_abi::Result {
        let mut st = lock(&self.st);
        let name = st
            .sub_out
            .iter()
            .find(|(_, (p, _))| *p == phys.as_u64())
            .map(|(n, _)| n.clone())
            .ok_or(Errno::ENOENT)?;
        st.sub_out.remove(&name);
        Ok(())
    }

    fn retrieve_subtree(&self, name: &str) -> luo_abi::Result<(PhysAddr, usize)> {
        let st = lock(&self.st);
        st.sub_in
            .get(name)
            .map(|&(p, s)| (PhysAddr::new(p), s))
            .ok_or(Errno::ENOENT)
    }

    fn read(&self, phys: PhysAddr, buf: &mut [u8]) -> luo_abi::Result {
        let st = lock(&self.st);
        self.read_locked(&st, phys.as_u64(), buf)
    }

    fn write(&self, phys: PhysAddr, buf: &[u8]) -> luo_abi::Result {
        let st = lock(&self.st);
        self.write_locked(&st, phys.as_u64(), buf)
    }
}
