// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Unit tests of the KHO model.

use luo_abi::Phys;
use luo_abi::file::ShmemFolio;
use luo_abi::kho::KhoExt;

use super::*;

fn pa(p: u64) -> PhysAddr {
    PhysAddr::new(p)
}

#[test]
fn folios_preserve_and_cross() {
    let k = Kho::new(BackingKind::Heap, 256).unwrap();
    let f = k.alloc_folio(2).unwrap();
    assert!(f.as_u64().is_multiple_of(4 * PAGE));
    k.write(f, b"folio data").unwrap();
    k.preserve_folio(f, 2).unwrap();
    assert_eq!(k.preserve_folio(f, 2), Err(Errno::EEXIST));
    assert_eq!(
        k.preserve_pages(pa(f.as_u64() + PAGE), 1),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        k.preserve_folio(pa(f.as_u64() + PAGE), 0),
        Err(Errno::EEXIST)
    );
    assert_eq!(k.unpreserve_folio(f, 1), Err(Errno::EINVAL));
    assert_eq!(k.free_folio(f, 2), Err(Errno::EINVAL));
    let lost = k.alloc_folio(0).unwrap();
    k.write(lost, b"forgotten").unwrap();
    let blob = k.alloc_preserve(100).unwrap();
    k.write_obj(Phys::<u64>::new(blob), &0xfeed_u64).unwrap();
    k.add_subtree("test", blob, 8).unwrap();
    assert_eq!(k.add_subtree("test", blob, 8), Err(Errno::EEXIST));
    assert_eq!(
        k.stats(),
        KhoStats {
            preserved_pages: 5,
            preserved_ranges: 2,
            incoming_pages: 0,
            arena_pages_in_use: 6,
            regions: 0
        }
    );

    let h = k.kexec().unwrap();
    assert_eq!(k.alloc_folio(0), Err(Errno::EINVAL));
    drop(k);
    let k2 = Kho::boot(h).unwrap();
    assert!(k2.is_kho_boot());
    assert_eq!(k2.stats().incoming_pages, 5);
    let mut buf = [0u8; 10];
    k2.read(f, &mut buf).unwrap();
    assert_eq!(&buf, b"folio data");
    k2.read(lost, &mut buf).unwrap();
    assert_eq!(buf, [POISON; 10]);
    // New allocations avoid incoming memory.
    for _ in 0..50 {
        let p = k2.alloc_folio(0).unwrap().as_u64();
        assert!(!(f.as_u64()..f.as_u64() + 4 * PAGE).contains(&p));
        assert_ne!(p, blob.as_u64());
    }
    let (sp, ss) = k2.retrieve_subtree("test").unwrap();
    assert_eq!((sp, ss), (blob, 8));
    assert_eq!(k2.read_obj(Phys::<u64>::new(sp)).unwrap(), 0xfeed);
    assert_eq!(k2.restore_folio(pa(f.as_u64() + PAGE)), Err(Errno::EINVAL));
    assert_eq!(k2.restore_folio(f), Ok(2));
    assert_eq!(k2.restore_folio(f), Err(Errno::EINVAL));
    k2.restore_free(blob).unwrap();
    k2.free_folio(f, 2).unwrap();
    assert_eq!(k2.stats().incoming_pages, 0);
    assert_eq!(k2.retrieve_subtree("nope"), Err(Errno::ENOENT));
}

fn folio(phys: PhysAddr, order: u32) -> ShmemFolio {
    ShmemFolio {
        index: 0,
        phys,
        order,
        dirty: false,
        uptodate: true,
    }
}

/// `preserve_folios` is a loop of `preserve_folio` that undoes itself on an error;
/// `restore_folios` a loop of `restore_folio` that stops at the first error.
#[test]
fn batched_folio_calls_match_the_per_folio_calls() {
    let k = Kho::new(BackingKind::Heap, 256).unwrap();
    let a = k.alloc_folio(0).unwrap();
    let b = k.alloc_folio(2).unwrap();
    let c = k.alloc_folio(0).unwrap();
    let unallocated = pa(ARENA_BASE + 200 * PAGE);
    for (bad, err) in [
        (folio(a, 0), Errno::EEXIST),
        (folio(pa(b.as_u64() + PAGE), 0), Errno::EEXIST),
        (folio(pa(c.as_u64() + 8), 0), Errno::EINVAL),
        (folio(c, 1), Errno::EINVAL),
        (folio(unallocated, 0), Errno::EINVAL),
    ] {
        let batch = [folio(a, 0), folio(b, 2), bad, folio(c, 0)];
        assert_eq!(k.preserve_folios(&batch), Err(err), "{bad:?}");
        assert!(k.outgoing_map().is_empty(), "{bad:?}");
    }
    // Every folio is an allocation site; a fault at any of them undoes the batch.
    let all = [folio(a, 0), folio(b, 2), folio(c, 0)];
    for n in 0..all.len() {
        inject_alloc_faults(Some(n), Errno::ENOMEM);
        assert_eq!(k.preserve_folios(&all), Err(Errno::ENOMEM));
        assert_eq!(take_alloc_faults(), vec!["preserve_folio"; n + 1]);
        assert!(k.outgoing_map().is_empty());
    }
    k.preserve_folios(&all).unwrap();
    let mut want = vec![(a.as_u64(), 0), (b.as_u64(), 2), (c.as_u64(), 0)];
    want.sort();
    assert_eq!(k.outgoing_map(), want);
    assert_eq!(k.preserve_folios(&[folio(c, 0)]), Err(Errno::EEXIST));
    assert_eq!(k.stats().preserved_pages, 6);

    let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
    let mut orders = Vec::new();
    assert_eq!(
        k2.restore_folios(&[b, unallocated, a], &mut orders),
        Err(Errno::EINVAL)
    );
    assert_eq!(orders, [2]);
    orders.clear();
    assert_eq!(
        k2.restore_folios(&[a, c, pa(b.as_u64() + PAGE)], &mut orders),
        Err(Errno::EINVAL)
    );
    assert_eq!(orders, [0, 0]);
    assert_eq!(
        k2.violations(),
        vec![KhoViolation::DoubleClaim {
            phys: b.as_u64() + PAGE
        }]
    );
    assert_eq!((k2.stats().incoming_pages, k2.claimed_pages()), (0, 6));
    assert_eq!(k2.restore_folios(&[], &mut orders), Ok(()));
    // `free_folios` tries every folio and returns the first error.
    assert_eq!(k2.free_folios(&[a, c], &[0]), Err(Errno::EINVAL));
    let in_use = k2.stats().arena_pages_in_use;
    assert_eq!(
        k2.free_folios(&[a, unallocated, c, b], &[0, 0, 0, 2]),
        Err(Errno::EINVAL)
    );
    assert_eq!(k2.stats().arena_pages_in_use, in_use - 6);
    assert_eq!(k2.free_folios(&[a], &[0]), Err(Errno::EINVAL));
}

#[test]
#[cfg_attr(miri, ignore = "host memfd syscalls")]
fn batched_preserve_over_regions() {
    let k = Kho::new(BackingKind::Heap, 64).unwrap();
    let r1 = k.new_region("one").unwrap();
    let r2 = k.new_region("two").unwrap();
    let f = |p: u64, order| folio(pa(p), order);
    k.preserve_folios(&[
        f(r1.base(), 0),
        f(r1.base() + 4 * PAGE, 2),
        f(r2.base() + PAGE, 0),
        f(r1.base() + REGION_SPAN - PAGE, 0),
    ])
    .unwrap();
    assert_eq!(k.stats().preserved_pages, 7);
    // The region found for the first folio does not vouch for an address past its span,
    // nor does a region whose last reference is gone.
    let gone = r2.base();
    drop(r2);
    for bad in [f(gone + 8 * PAGE, 0), f(REGION_BASE + 5 * REGION_SPAN, 0)] {
        assert_eq!(
            k.preserve_folios(&[f(r1.base() + PAGE, 0), bad]),
            Err(Errno::EINVAL)
        );
    }
    assert_eq!(k.stats().preserved_pages, 7);
}

#[test]
fn incoming_until_claimed() {
    let k = Kho::new(BackingKind::Heap, 64).unwrap();
    let p = k.alloc_preserve(8).unwrap();
    let q = k.alloc_folio(0).unwrap();
    let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
    assert!(k2.is_incoming(p));
    // Never preserved, or not a page of the arena at all: nothing to peek at.
    assert!(!k2.is_incoming(q));
    assert!(!k2.is_incoming(PhysAddr::new(1 << 60)));
    k2.restore_folio(p).unwrap();
    assert!(!k2.is_incoming(p), "claimed");
    assert_eq!(k2.violations(), vec![]);
}

#[test]
fn a_second_claim_is_refused_and_named() {
    let k = Kho::new(BackingKind::Heap, 64).unwrap();
    let p = k.alloc_preserve(8).unwrap();
    let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
    assert!(crate::blocks::PhysRead::is_preserved(&k2, p.as_u64(), 8));
    k2.restore_free(p).unwrap();
    // Freed: no longer readable as handed-over memory, and not claimable again.
    assert!(!crate::blocks::PhysRead::is_preserved(&k2, p.as_u64(), 8));
    assert_eq!(k2.restore_free(p), Err(Errno::EINVAL));
    let mut b = [0u8; 8];
    k2.read(p, &mut b).unwrap();
    assert_eq!(
        k2.violations(),
        vec![
            KhoViolation::DoubleClaim { phys: p.as_u64() },
            KhoViolation::StrayRead {
                phys: p.as_u64(),
                len: 8
            }
        ]
    );
    assert_eq!(k2.claimed_pages(), 1);
}

#[test]
fn vmalloc_chains_round_trip() {
    let k = Kho::new(BackingKind::Heap, 2048).unwrap();
    let pages: Vec<PhysAddr> = (0..600).map(|_| k.alloc_folio(0).unwrap()).collect();
    for (i, p) in pages.iter().enumerate() {
        k.write(*p, &(i as u64).to_ne_bytes()).unwrap();
    }
    let d = k.preserve_vmalloc(&pages, 0).unwrap();
    assert_eq!(d.total_pages, 600);
    assert_eq!(k.stats().preserved_pages, 602);
    assert_eq!(k.preserve_vmalloc(&pages[..1], 0), Err(Errno::EEXIST));
    k.unpreserve_vmalloc(&d).unwrap();
    assert_eq!(k.stats().preserved_pages, 0);
    let d = k.preserve_vmalloc(&pages, 0).unwrap();
    let k2 = Kho::boot(k.kexec().unwrap()).unwrap();
    let mut bad = d;
    bad.total_pages += 1;
    assert_eq!(k2.restore_vmalloc(&bad), Err(Errno::EINVAL));
    bad = d;
    bad.flags = 0x80;
    assert_eq!(k2.restore_vmalloc(&bad), Err(Errno::EINVAL));
    let back = k2.restore_vmalloc(&d).unwrap();
    assert_eq!(back, pages);
    for (i, p) in back.iter().enumerate() {
        let mut b = [0u8; 8];
        k2.read(*p, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), i as u64);
        k2.free_folio(*p, 0).unwrap();
    }
    assert_eq!(k2.restore_vmalloc(&d), Err(Errno::EINVAL));
    assert_eq!(k2.stats().incoming_pages, 0);
}

#[test]
#[cfg_attr(miri, ignore = "host memfd syscalls")]
fn regions_cross_without_copy() {
    let k = Kho::new(BackingKind::Heap, 64).unwrap();
    let r = k.new_region("data").unwrap();
    r.write(0, &vec![7u8; 3 * PAGE_SIZE]).unwrap();
    let other = k.new_region("unpreserved").unwrap();
    other.write(0, b"x").unwrap();
    k.preserve_pages(pa(r.base()), 2).unwrap();
    assert_eq!(k.stats().regions, 2);
    let h = k.kexec().unwrap();
    assert_eq!(h.regions.len(), 1);
    drop((k, r, other));
    let k2 = Kho::boot(h).unwrap();
    let r2 = k2.region_at(REGION_BASE + 5).unwrap();
    let mut b = vec![0u8; 3 * PAGE_SIZE];
    r2.read(0, &mut b).unwrap();
    assert!(b[..2 * PAGE_SIZE].iter().all(|&x| x == 7));
    assert!(b[2 * PAGE_SIZE..].iter().all(|&x| x == POISON));
    k2.restore_pages(pa(REGION_BASE), 2).unwrap();
    drop(r2);
    k2.release_idle_regions();
    assert_eq!(k2.stats().regions, 0);
}

#[test]
fn absurd_arguments_are_errors() {
    let k = Kho::new(BackingKind::Heap, 16).unwrap();
    let top = PhysAddr::new(!(PAGE - 1));
    assert_eq!(k.preserve_pages(top, usize::MAX), Err(Errno::EINVAL));
    assert_eq!(
        k.preserve_pages(pa(ARENA_BASE), usize::MAX / 2),
        Err(Errno::EINVAL)
    );
    assert_eq!(k.preserve_folio(top, 0), Err(Errno::EINVAL));
    assert_eq!(k.preserve_folio(pa(ARENA_BASE), 64), Err(Errno::EINVAL));
    assert_eq!(k.alloc_folio(40), Err(Errno::EINVAL));
    assert_eq!(k.restore_pages(top, usize::MAX), Err(Errno::EINVAL));
    assert_eq!(k.unpreserve_pages(top, 3), Err(Errno::EINVAL));
    let mut b = [0u8; 16];
    assert_eq!(k.read(top, &mut b), Err(Errno::EFAULT));
    assert_eq!(k.write(pa(u64::MAX - 3), &b), Err(Errno::EFAULT));
    assert_eq!(k.alloc_preserve(usize::MAX), Err(Errno::EINVAL));
    let d = VmallocDesc {
        first: Phys::new(top),
        total_pages: u32::MAX,
        flags: 0,
        order: 9,
    };
    assert_eq!(k.restore_vmalloc(&d), Err(Errno::EINVAL));
}

#[test]
fn corrupt_blob_is_an_error() {
    let k = Kho::new(BackingKind::Heap, 64).unwrap();
    let p = k.alloc_preserve(10).unwrap();
    let h = k.kexec().unwrap();
    // Smash the first range: misaligned address.
    let at = h.blob + size_of::<BlobHeader>() as u64 - ARENA_BASE;
    h.arena.write(at, &(p.as_u64() + 1).to_ne_bytes()).unwrap();
    assert!(matches!(
        Kho::boot(h).err(),
        Some(ImageError::Misaligned { .. })
    ));
    let k = Kho::new(BackingKind::Heap, 64).unwrap();
    let h = k.kexec().unwrap();
    h.arena.write(h.blob - ARENA_BASE, &[0u8; 8]).unwrap();
    assert!(matches!(
        Kho::boot(h).err(),
        Some(ImageError::BadMagic { .. })
    ));
}
