// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Exhaustive corrupt-image sweep: every single-bit flip of the
//! LUO metadata of a real mixed image — luo_ser, the session block's header
//! and entries, the FLB area's header and entry, every session's file block
//! (header and `luo_file_ser` entries), and each memfd's records (its
//! `memfd_luo_ser`, the folio array's vmalloc chunk and the
//! `memfd_luo_folio_ser` records) — and every truncation of the saved
//! image. Each must give a typed error or a kernel that boots and hands
//! back what it can read — never a panic or an out-of-bounds access (a
//! flipped bit can be a valid different image: upstream has no checksum).
//! The KHO model checks the rest explicitly: every read of the previous
//! kernel's memory stays inside what it preserved (no
//! [`KhoViolation::StrayRead`]), and no page is claimed twice (a second
//! claim is refused and recorded as [`KhoViolation::DoubleClaim`]).

use std::collections::BTreeMap;

use luo_core::image::Image;
use luo_core::kho::KhoViolation;
use luo_core::{Handover, Kernel};
use luo_sim::inspect::inspect;
use luo_testing as testing;

const SESSIONS: u64 = 3;
/// Test files per session (tokens 0 and 1); sessions 0 and 1 also hold a memfd (token 2).
const TEST_FILES: u64 = 2;
const MEMFD_TOKEN: u64 = 2;
const MEMFD_PAGES: usize = 3;

fn has_memfd(s: u64) -> bool {
    s < 2
}

fn memfd_data(s: u64) -> Vec<u8> {
    (0..MEMFD_PAGES * 4096)
        .map(|i| (i as u64 * 7 + s) as u8)
        .collect()
}

fn handover() -> Handover {
    let k = Kernel::boot(&luo_sim::machine::default_options(), None).expect("boot");
    testing::register(&k, true).expect("register");
    let dev = k.open_dev().expect("open");
    for s in 0..SESSIONS {
        let sfd = k.create_session(dev, &format!("s{s}")).expect("create");
        for f in 0..TEST_FILES {
            let fd = k.test_file(10 * s + f).expect("file");
            k.preserve_fd(sfd, fd, f).expect("preserve");
            k.close(fd).expect("close");
        }
        if has_memfd(s) {
            let m = k.memfd_create("m").expect("memfd");
            k.pwrite(m, 0, &memfd_data(s)).expect("pwrite");
            k.preserve_fd(sfd, m, MEMFD_TOKEN).expect("preserve memfd");
        }
    }
    let h = k.kexec().expect("kexec");
    testing::take_log();
    h
}

fn read_u64(h: &Handover, phys: u64) -> u64 {
    let mut b = [0u8; 8];
    h.read_phys(phys, &mut b).expect("read");
    u64::from_ne_bytes(b)
}

/// What a flip led to.
#[derive(Debug, Default)]
struct Outcomes {
    by_kind: BTreeMap<&'static str, u32>,
    /// Second claims of a page, refused by the KHO model.
    refused_double_claims: u32,
    /// Files retrieved with exactly their original value or contents.
    intact_files: u32,
    /// Files retrieved with a different value or contents (a valid different image).
    changed_files: u32,
}

/// Boots from a (possibly corrupt) handover and uses whatever it offers;
/// asserts the KHO model saw no read outside preserved memory.
fn exercise(h: Handover, what: &str, o: &mut Outcomes) {
    let _ = inspect(&Image::from_handover(&h).expect("image"));
    let Ok(k) = Kernel::boot(&luo_sim::machine::default_options(), Some(h)) else {
        *o.by_kind.entry("boot error").or_default() += 1;
        return;
    };
    testing::register(&k, true).expect("register");
    let Ok(dev) = k.open_dev() else {
        // The image is read at the first open (`EIO`, as upstream's deferred restore).
        check_reads(&k, what, o);
        *o.by_kind.entry("refused at first open").or_default() += 1;
        return;
    };
    let mut opened = 0;
    for s in 0..SESSIONS {
        let Ok(sfd) = k.retrieve_session(dev, &format!("s{s}")) else {
            continue;
        };
        for t in 0..=MEMFD_TOKEN {
            let Ok(fd) = k.retrieve_fd(sfd, t) else {
                continue;
            };
            opened += 1;
            let f = k.file(fd).expect("fd");
            let intact = match f.test_value() {
                Some(v) => v == 10 * s + t,
                None => {
                    // Read the whole file: every page it maps must be readable.
                    let mut b = vec![0u8; MEMFD_PAGES * 4096 + 1];
                    k.pread(fd, 0, &mut b).is_ok_and(|n| {
                        t == MEMFD_TOKEN && has_memfd(s) && b[..n] == memfd_data(s)[..]
                    })
                }
            };
            if intact {
                o.intact_files += 1;
            } else {
                o.changed_files += 1;
            }
            let _ = k.close(fd);
        }
        let _ = k.finish_session(sfd);
        let _ = k.close(sfd);
    }
    testing::take_log();
    check_reads(&k, what, o);
    *o.by_kind
        .entry(if opened == 0 {
            "booted, nothing retrievable"
        } else {
            "booted"
        })
        .or_default() += 1;
}

/// No read outside preserved memory; counts the refused second claims.
fn check_reads(k: &Kernel, what: &str, o: &mut Outcomes) {
    let v = k.kho().violations();
    assert!(
        !v.iter()
            .any(|x| matches!(x, KhoViolation::StrayRead { .. })),
        "{what}: {v:?}"
    );
    o.refused_double_claims += v.len() as u32;
}

/// The LUO metadata of the image: (what, address, length).
fn metadata(h: &Handover) -> Vec<(String, u64, u64)> {
    let luo_ser = h.subtrees().expect("subtrees")["LUO"].0;
    let sessions_pa = read_u64(h, luo_ser + 16);
    let flbs_pa = read_u64(h, luo_ser + 24);
    let mut m = vec![
        ("luo_ser".to_owned(), luo_ser, 32),
        ("session block".to_owned(), sessions_pa, 16 + SESSIONS * 80),
        ("FLB area".to_owned(), flbs_pa, 16 + 64),
    ];
    for s in 0..SESSIONS {
        // luo_session_ser: name[64], then file_set_ser { files, count }.
        let entry = sessions_pa + 16 + s * 80;
        let (files, count) = (read_u64(h, entry + 64), read_u64(h, entry + 72));
        m.push((format!("s{s} file block"), files, 16 + count * 64));
        for i in 0..count {
            // luo_file_ser: compatible[48], data, token.
            let e = files + 16 + i * 64;
            if read_u64(h, e + 56) != MEMFD_TOKEN {
                continue;
            }
            let ser = read_u64(h, e + 48);
            m.push((format!("s{s} memfd_luo_ser"), ser, 48));
            // memfd_luo_ser.folios: kho_vmalloc { first, total_pages, flags, order } at 32.
            let chunk = read_u64(h, ser + 32);
            m.push((format!("s{s} folio array chunk"), chunk, 16));
            let array = read_u64(h, chunk + 8);
            let nr = read_u64(h, ser + 24);
            m.push((format!("s{s} folio records"), array, nr * 16));
        }
    }
    m
}

#[test]
fn every_bit_of_the_luo_metadata() {
    let regions = metadata(&handover());
    let bytes: u64 = regions.iter().map(|r| r.2).sum();
    let mut o = Outcomes::default();
    let mut flips = 0u32;
    for (what, base, len) in &regions {
        for byte in 0..*len {
            for bit in 0..8 {
                let h = handover();
                let mut b = [0u8; 1];
                h.read_phys(base + byte, &mut b).expect("read");
                b[0] ^= 1 << bit;
                h.write_phys(base + byte, &b).expect("write");
                exercise(h, &format!("{what} byte {byte} bit {bit}"), &mut o);
                flips += 1;
            }
        }
    }
    assert_eq!(u64::from(flips), 8 * bytes);
    eprintln!("{flips} single-bit flips over {regions:?}: {o:#?}");
    assert!(o.by_kind.get("boot error").copied().unwrap_or(0) > 0);
    assert!(
        o.changed_files > 0,
        "some flips must change what is handed over"
    );
}

#[test]
fn intact_image_claims_every_page_once() {
    let mut o = Outcomes::default();
    exercise(handover(), "intact", &mut o);
    // 6 test files and 2 memfds, each exactly as preserved.
    assert_eq!((o.intact_files, o.changed_files), (8, 0), "{o:?}");
    assert_eq!(o.refused_double_claims, 0);
}

#[test]
fn every_truncation_of_the_saved_image() {
    let bytes = Image::from_handover(&handover()).expect("image").to_bytes();
    let mut ok = 0;
    for n in 0..bytes.len() {
        if let Ok(img) = Image::from_bytes(&bytes[..n]) {
            let _ = inspect(&img);
            ok += 1;
        }
    }
    assert!(Image::from_bytes(&bytes).is_ok());
    assert!(
        ok < bytes.len() / 2,
        "truncated images should mostly be refused ({ok} accepted)"
    );
}

/// Regression for what the sweep caught: a pointer redirected to a page the
/// next kernel already restored and freed (the LUO root) was read before
/// anything checked it — by the core's file-block reader, the test FLB's
/// retrieve and the memfd handler's retrieve. Each is now refused before
/// the read.
#[test]
fn pointers_to_a_freed_page_are_not_dereferenced() {
    let probe = handover();
    let regions = metadata(&probe);
    let luo_ser = regions[0].1;
    let at = |name: &str| regions.iter().find(|r| r.0 == name).expect(name).1;
    let file_block = at("s0 file block");
    let flb_area = at("FLB area");
    // (what, address of the pointer): s0's file-set pointer, the FLB data, the memfd record.
    let mut targets = vec![
        ("file block", regions[1].1 + 16 + 64),
        ("FLB data", flb_area + 16 + 48),
    ];
    for i in 0..3 {
        let e = file_block + 16 + i * 64;
        if read_u64(&probe, e + 56) == MEMFD_TOKEN {
            targets.push(("memfd record", e + 48));
        }
    }
    assert_eq!(targets.len(), 3);
    for (what, ptr) in targets {
        let h = handover();
        h.write_phys(ptr, &luo_ser.to_ne_bytes()).expect("write");
        let mut o = Outcomes::default();
        exercise(h, what, &mut o);
        assert!(o.changed_files == 0, "{what}: {o:?}");
    }
}
