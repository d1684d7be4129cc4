// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Corrupt 6.19 (`luo-v1` FDT, `luo-session-v2`, `memfd-v1`) and next (feature-negotiated)
//! handovers: typed errors at boot or at the first open, never a panic. Upstream 6.19
//! panics at boot on a bad LUO FDT (`luo_restore_fail`).

use luo_core::image::Image;
use luo_core::{BootOptions, Handover, ImageError, Kernel, KernelVersion};
use luo_sim::inspect::inspect;

fn opts(v: KernelVersion) -> BootOptions {
    BootOptions {
        version: v,
        ..luo_sim::machine::default_options()
    }
}

/// 3 sessions of 2 memfds each.
fn handover(v: KernelVersion) -> Handover {
    let k = Kernel::boot(&opts(v), None).unwrap();
    let dev = k.open_dev().unwrap();
    for s in 0..3u8 {
        let sfd = k.create_session(dev, &format!("s{s}")).unwrap();
        for t in 0..2u8 {
            let m = k.memfd_create("m").unwrap();
            k.pwrite(m, 0, &[s * 2 + t; 9000]).unwrap();
            k.preserve_fd(sfd, m, u64::from(t)).unwrap();
        }
    }
    k.kexec().unwrap()
}

fn root(h: &Handover) -> (u64, usize) {
    h.subtrees().unwrap()["LUO"]
}

/// Replaces the first occurrence of `from` in the `"LUO"` FDT page with `to` (same length).
fn patch_fdt(h: &Handover, from: &[u8], to: &[u8]) {
    let (r, size) = root(h);
    let mut b = vec![0u8; size];
    h.read_phys(r, &mut b).unwrap();
    let at = b.windows(from.len()).position(|w| w == from).unwrap();
    h.write_phys(r + at as u64, to).unwrap();
}

#[test]
fn intact_6_19_handover_inspects_and_boots_in_7_3() {
    let h = handover(KernelVersion::V6_19);
    let r = inspect(&Image::from_handover(&h).unwrap()).unwrap();
    assert_eq!(r.format.as_deref(), Some("luo-v1"));
    assert_eq!(r.sessions.len(), 3);
    assert_eq!(r.sessions[2].files[1].compatible, "memfd-v1");
    assert_eq!(r.sessions[2].files[1].memfd.as_ref().unwrap().size, 9000);
    let k = Kernel::boot(&opts(KernelVersion::V7_3), Some(h)).unwrap();
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, "s2").unwrap();
    let fd = k.retrieve_fd(s, 1).unwrap();
    let mut b = [0u8; 9000];
    k.pread(fd, 0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 5));
}

/// Overwrites the size of the KHO subtree entry `name` in the handover blob.
fn patch_subtree_size(h: &Handover, name: &str, size: u64) {
    let word = |at: u64| {
        let mut b = [0u8; 8];
        h.read_phys(at, &mut b).unwrap();
        u64::from_ne_bytes(b)
    };
    // Blob: magic, nr_ranges, nr_subtrees, arena_pages; ranges of 16 bytes; subtrees of
    // name[64], phys, size.
    let blob = h.blob();
    let (nr_ranges, nr_subtrees) = (word(blob + 8), word(blob + 16));
    let subtrees = blob + 32 + nr_ranges * 16;
    let entry = (0..nr_subtrees)
        .map(|i| subtrees + i * 80)
        .find(|&e| {
            let mut n = [0u8; 64];
            h.read_phys(e, &mut n).unwrap();
            n.starts_with(name.as_bytes()) && n[name.len()] == 0
        })
        .expect("subtree entry");
    h.write_phys(entry + 72, &size.to_ne_bytes()).unwrap();
}

/// A `"LUO"` subtree whose size claims more than was preserved (2^64-1 bytes, 16 TiB, 4 GiB)
/// is a typed error when inspected and when a kernel boots from it, for
/// both FDT kernels: nothing of the claimed size is allocated.
#[test]
fn subtree_size_beyond_preserved_memory_is_refused() {
    for v in [KernelVersion::V6_19, KernelVersion::V7_0] {
        for size in [u64::MAX, 1 << 44, 1 << 32] {
            let h = handover(v);
            patch_subtree_size(&h, "LUO", size);
            assert_eq!(root(&h).1 as u64, size);
            let e = inspect(&Image::from_handover(&h).unwrap()).unwrap_err();
            assert!(
                matches!(e, ImageError::SizeBeyondPreserved { what: "luo-v1 FDT", size: s, .. } if s == size),
                "{v} inspect, size {size:#x}: {e}"
            );
            let e = Kernel::boot(&opts(v), Some(h)).err().expect("boot refused");
            assert!(
                matches!(e, ImageError::SizeBeyondPreserved { size: s, .. } if s == size),
                "{v} boot, size {size:#x}: {e}"
            );
            assert!(
                e.to_string().contains("more than the memory preserved"),
                "{e}"
            );
        }
    }
}

#[test]
fn targeted_fdt_corruptions() {
    let boot = |h| Kernel::boot(&opts(KernelVersion::V7_3), Some(h)).err();
    let h = handover(KernelVersion::V6_19);
    patch_fdt(&h, b"luo-v1\0", b"luo-v2\0");
    assert!(matches!(boot(h), Some(ImageError::Compatible { ref found, .. }) if found == "luo-v2"));
    let h = handover(KernelVersion::V6_19);
    patch_fdt(&h, b"luo-session-v2", b"luo-session-v1");
    assert!(matches!(
        boot(h),
        Some(ImageError::Compatible {
            expected: "luo-session-v2",
            ..
        })
    ));
    let h = handover(KernelVersion::V6_19);
    patch_fdt(&h, b"luo-session\0", b"luo-sessiox\0");
    assert!(matches!(boot(h), Some(ImageError::Fdt { .. })));
    // A session count above LUO_SESSION_MAX.
    let h = handover(KernelVersion::V6_19);
    let (r, size) = root(&h);
    let mut b = vec![0u8; size];
    h.read_phys(r, &mut b).unwrap();
    let tree = luo_core::fdt::parse(&b).unwrap();
    let area = tree
        .find("luo-session")
        .unwrap()
        .prop_as_u64("luo-session-header")
        .unwrap();
    h.write_phys(area, &10_000u64.to_ne_bytes()).unwrap();
    assert!(matches!(boot(h), Some(ImageError::TooMany { .. })));
}

fn random(v: KernelVersion, to: KernelVersion, rounds: u32) {
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(rounds);
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut boot_err, mut ok) = (0, 0);
    for _ in 0..rounds {
        let h = handover(v);
        let img = Image::from_handover(&h).unwrap();
        let pages: Vec<u64> = img
            .ranges
            .iter()
            .filter(|r| r.phys < (1 << 40))
            .flat_map(|r| (0..(u64::from(r.count) << r.order)).map(move |i| r.phys + i * 4096))
            .collect();
        for _ in 0..1 + rnd() % 4 {
            let p = pages[(rnd() % pages.len() as u64) as usize];
            let off = if rnd() % 2 == 0 {
                rnd() % 256
            } else {
                rnd() % 4096
            };
            let b = rnd().to_ne_bytes();
            let n = 1 + (rnd() % 8) as usize;
            let _ = h.write_phys(p + off.min(4096 - 8), &b[..n]);
        }
        let _ = inspect(&Image::from_handover(&h).unwrap());
        let Ok(k) = Kernel::boot(&opts(to), Some(h)) else {
            boot_err += 1;
            continue;
        };
        ok += 1;
        if let Ok(dev) = k.open_dev() {
            for s in 0..3 {
                if let Ok(sfd) = k.retrieve_session(dev, &format!("s{s}")) {
                    for t in 0..2 {
                        let _ = k.retrieve_fd(sfd, t);
                    }
                    let _ = k.finish_session(sfd);
                    let _ = k.close(sfd);
                }
            }
        }
        let _ = k.kexec();
    }
    eprintln!("{v} → {to}: boot errors {boot_err}, booted {ok}");
}

#[test]
fn random_corruption_of_6_19_images_never_panics() {
    random(KernelVersion::V6_19, KernelVersion::V7_3, 80);
}

#[test]
fn random_corruption_of_next_images_never_panics() {
    random(KernelVersion::Next, KernelVersion::Next, 60);
}

#[test]
fn every_byte_of_the_6_19_fdt_flipped() {
    let (r, size) = root(&handover(KernelVersion::V6_19));
    let mut errs = 0;
    // The FDT is small: flip each byte of its used part once.
    let used = {
        let h = handover(KernelVersion::V6_19);
        let mut b = vec![0u8; size];
        h.read_phys(r, &mut b).unwrap();
        u32::from_be_bytes(b[4..8].try_into().unwrap()) as u64
    };
    for off in 0..used {
        let h = handover(KernelVersion::V6_19);
        let mut b = [0u8; 1];
        h.read_phys(r + off, &mut b).unwrap();
        h.write_phys(r + off, &[b[0] ^ 0xa5]).unwrap();
        let _ = inspect(&Image::from_handover(&h).unwrap());
        if Kernel::boot(&opts(KernelVersion::V7_3), Some(h)).is_err() {
            errs += 1;
        }
    }
    assert!(errs > used / 2, "{errs} of {used} flips refused");
}
