// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A corrupt handover is a typed error, never a panic: targeted corruptions of `luo_ser`,
//! block chains and the FLB area, and random byte flips over every preserved metadata page.

use luo_abi::Errno;
use luo_core::image::Image;
use luo_core::{Handover, ImageError, Kernel};
use luo_sim::inspect::inspect;
use luo_testing as testing;

/// A handover with 3 sessions (2 test files and a memfd each) and the test FLB.
fn handover() -> Handover {
    let k = Kernel::boot(&luo_sim::machine::default_options(), None).unwrap();
    testing::register(&k, true).unwrap();
    let dev = k.open_dev().unwrap();
    for s in 0..3u64 {
        let sfd = k.create_session(dev, &format!("s{s}")).unwrap();
        for f in 0..2 {
            let fd = k.test_file(10 * s + f).unwrap();
            k.preserve_fd(sfd, fd, f).unwrap();
        }
        let m = k.memfd_create("m").unwrap();
        k.pwrite(m, 0, &[s as u8; 5000]).unwrap();
        k.preserve_fd(sfd, m, 9).unwrap();
    }
    let h = k.kexec().unwrap();
    testing::take_log();
    h
}

fn luo_ser(h: &Handover) -> u64 {
    h.subtrees().unwrap()["LUO"].0
}

fn read_u64(h: &Handover, phys: u64) -> u64 {
    let mut b = [0u8; 8];
    h.read_phys(phys, &mut b).unwrap();
    u64::from_ne_bytes(b)
}

fn boot(h: Handover) -> Result<Kernel, ImageError> {
    Kernel::boot(&luo_sim::machine::default_options(), Some(h))
}

#[test]
fn intact_handover_inspects_and_boots() {
    let h = handover();
    let img = Image::from_handover(&h).unwrap();
    let back = Image::from_bytes(&img.to_bytes()).unwrap();
    let r = inspect(&back).unwrap();
    assert_eq!(r.liveupdate_num, Some(0));
    assert_eq!(r.sessions.len(), 3);
    assert_eq!(r.sessions[1].files.len(), 3);
    assert_eq!(r.sessions[1].files[2].memfd.as_ref().unwrap().size, 5000);
    assert_eq!(r.flbs.as_ref().unwrap()[0].count, 6);
    assert!(r.to_text().contains("luo-test-flb-v1"));
    assert!(r.to_json().contains("\"liveupdate_num\": 0"));
    boot(h).unwrap();
}

#[test]
fn bad_luo_root() {
    let h = handover();
    let root = luo_ser(&h);
    h.write_phys(root, b"luo-v4\0\0").unwrap();
    assert!(matches!(boot(h).err(), Some(ImageError::Compatible { .. })));

    let h = handover();
    let root = luo_ser(&h);
    // sessions_pa pointing outside memory: refused before the read.
    h.write_phys(root + 16, &0x7fff_ffff_f000u64.to_ne_bytes())
        .unwrap();
    assert!(matches!(
        boot(h).err(),
        Some(ImageError::NotPreserved { .. })
    ));
}

#[test]
fn bad_session_chain() {
    let h = handover();
    let head = read_u64(&h, luo_ser(&h) + 16);
    // A cycle: the only block points at itself.
    h.write_phys(head, &head.to_ne_bytes()).unwrap();
    assert!(matches!(boot(h).err(), Some(ImageError::BlockCycle { .. })));

    let h = handover();
    let head = read_u64(&h, luo_ser(&h) + 16);
    h.write_phys(head + 8, &0u64.to_ne_bytes()).unwrap();
    assert!(matches!(boot(h).err(), Some(ImageError::BlockEmpty { .. })));

    let h = handover();
    let head = read_u64(&h, luo_ser(&h) + 16);
    h.write_phys(head + 8, &52u64.to_ne_bytes()).unwrap();
    assert!(matches!(
        boot(h).err(),
        Some(ImageError::BlockOverfull { cap: 51, .. })
    ));

    let h = handover();
    let head = read_u64(&h, luo_ser(&h) + 16);
    // A session name without NUL.
    h.write_phys(head + 16, &[b'x'; 64]).unwrap();
    assert!(matches!(
        boot(h).err(),
        Some(ImageError::SessionName { .. })
    ));
}

#[test]
fn bad_flb_area() {
    let h = handover();
    let flbs = read_u64(&h, luo_ser(&h) + 24);
    h.write_phys(flbs, &2u64.to_ne_bytes()).unwrap();
    assert!(matches!(boot(h).err(), Some(ImageError::FlbHeader { .. })));
    let h = handover();
    let flbs = read_u64(&h, luo_ser(&h) + 24);
    h.write_phys(flbs + 8, &64u64.to_ne_bytes()).unwrap();
    assert!(matches!(boot(h).err(), Some(ImageError::FlbHeader { .. })));
}

#[test]
fn bad_file_chains_fail_the_first_open() {
    // A file count that does not match the chain: EIO at open, cached.
    let h = handover();
    let head = read_u64(&h, luo_ser(&h) + 16);
    // Session 0's luo_file_set_ser.count is at entry offset 64 + 8.
    h.write_phys(head + 16 + 72, &4u64.to_ne_bytes()).unwrap();
    let k = boot(h).unwrap();
    testing::register(&k, true).unwrap();
    assert_eq!(k.open_dev(), Err(Errno::EIO));
    assert_eq!(k.open_dev(), Err(Errno::EIO));

    // A file chain cycle.
    let h = handover();
    let head = read_u64(&h, luo_ser(&h) + 16);
    let files = read_u64(&h, head + 16 + 64);
    h.write_phys(files, &files.to_ne_bytes()).unwrap();
    let k = boot(h).unwrap();
    testing::register(&k, true).unwrap();
    assert_eq!(k.open_dev(), Err(Errno::EIO));
}

#[test]
fn random_corruption_never_panics() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut boot_err, mut open_err, mut ok) = (0, 0, 0);
    for _ in 0..150 {
        let h = handover();
        let img = Image::from_handover(&h).unwrap();
        let pages: Vec<u64> = img
            .ranges
            .iter()
            .filter(|r| r.phys < (1 << 40))
            .flat_map(|r| (0..(u64::from(r.count) << r.order)).map(move |i| r.phys + i * 4096))
            .collect();
        for _ in 0..1 + rnd() % 4 {
            let p = pages[(rnd() % pages.len() as u64) as usize];
            // Mostly hit the start of a page, where headers and entries live.
            let off = if rnd() % 2 == 0 {
                rnd() % 96
            } else {
                rnd() % 4096
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(&rnd().to_ne_bytes());
            let n = 1 + (rnd() % 8) as usize;
            let _ = h.write_phys(p + off.min(4096 - 8), &b[..n]);
        }
        // Decoding the image must not panic either.
        let _ = inspect(&Image::from_handover(&h).unwrap());
        let k = match boot(h) {
            Ok(k) => k,
            Err(_) => {
                boot_err += 1;
                continue;
            }
        };
        testing::register(&k, true).unwrap();
        let Ok(dev) = k.open_dev() else {
            open_err += 1;
            continue;
        };
        ok += 1;
        for s in 0..3 {
            if let Ok(sfd) = k.retrieve_session(dev, &format!("s{s}")) {
                for t in [0, 1, 9] {
                    let _ = k.retrieve_fd(sfd, t);
                }
                let _ = k.finish_session(sfd);
                let _ = k.close(sfd);
            }
        }
        let _ = k.kexec();
        testing::take_log();
    }
    eprintln!("boot errors {boot_err}, open errors {open_err}, booted {ok}");
    assert_eq!(boot_err + open_err + ok, 150);
}
