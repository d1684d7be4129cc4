// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Regression: folios of every order up to `MAX_ORDER` are naturally aligned in *physical*
//! memory, so `kho_preserve_folio` accepts them. The arena used to start at 1 MiB and align
//! folios only within itself, which made every 2 MiB (order 9) HugeTLB folio unpreservable.

use luo_abi::kho::KhoService;
use luo_core::kho::MAX_ORDER;
use luo_core::{BootOptions, Kernel};

#[test]
fn huge_folio_misaligned_by_arena_base() {
    let k = Kernel::boot(&BootOptions::default(), None).unwrap();
    let kho = k.kho();
    for order in 0..=MAX_ORDER {
        // Two of each, so the second one is not at the arena's start by luck.
        for _ in 0..2 {
            let phys = kho.alloc_folio(order).unwrap();
            let size = 4096u64 << order;
            assert!(
                phys.as_u64().is_multiple_of(size),
                "order {order} folio at {:#x}",
                phys.as_u64()
            );
            kho.preserve_folio(phys, order).unwrap();
        }
    }
}
