//! Exhaustive corrupt-image sweep (issue 9): every single-bit flip of the
//! LUO metadata of a real image (luo_ser, the session block's header and
//! entries, the FLB area's header and entry) and every truncation of the
//! saved image. Each must give a typed error or a kernel that boots and
//! hands back what it can read — never a panic or an out-of-bounds access
//! (a flipped bit can be a valid different image: upstream has no checksum).

use luo_core::image::Image;
use luo_core::inspect::inspect;
use luo_core::testing;
use luo_core::{BootOptions, Handover, Kernel};

fn handover() -> Handover {
    let k = Kernel::boot(&BootOptions::default(), None).expect("boot");
    testing::register(&k, true).expect("register");
    let dev = k.open_dev().expect("open");
    for s in 0..3u64 {
        let sfd = k.create_session(dev, &format!("s{s}")).expect("create");
        for f in 0..2 {
            let fd = k.test_file(10 * s + f).expect("file");
            k.preserve_fd(sfd, fd, f).expect("preserve");
            k.close(fd).expect("close");
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

/// Boots from a (possibly corrupt) handover and uses whatever it offers.
fn exercise(h: Handover) -> &'static str {
    let _ = inspect(&Image::from_handover(&h).expect("image"));
    let Ok(k) = Kernel::boot(&BootOptions::default(), Some(h)) else {
        return "boot error";
    };
    testing::register(&k, true).expect("register");
    let Ok(dev) = k.open_dev() else {
        return "open error";
    };
    for s in 0..3 {
        if let Ok(sfd) = k.retrieve_session(dev, &format!("s{s}")) {
            for t in 0..2 {
                if let Ok(fd) = k.retrieve_fd(sfd, t) {
                    let _ = k.close(fd);
                }
            }
            let _ = k.finish_session(sfd);
            let _ = k.close(sfd);
        }
    }
    testing::take_log();
    "booted"
}

#[test]
fn every_bit_of_the_luo_metadata() {
    let probe = handover();
    let luo_ser = probe.subtrees().expect("subtrees")["LUO"].0;
    let sessions_pa = read_u64(&probe, luo_ser + 16);
    let flbs_pa = read_u64(&probe, luo_ser + 24);
    // luo_ser (32 B), session block header + 3 entries (16 + 3 * 80 B),
    // FLB header + 1 entry (16 + 64 B).
    let regions = [
        (luo_ser, 32u64),
        (sessions_pa, 16 + 3 * 80),
        (flbs_pa, 16 + 64),
    ];
    let (mut flips, mut outcomes) = (0u32, std::collections::BTreeMap::new());
    for (base, len) in regions {
        for byte in 0..len {
            for bit in 0..8 {
                let h = handover();
                let mut b = [0u8; 1];
                h.read_phys(base + byte, &mut b).expect("read");
                b[0] ^= 1 << bit;
                h.write_phys(base + byte, &b).expect("write");
                *outcomes.entry(exercise(h)).or_insert(0u32) += 1;
                flips += 1;
            }
        }
    }
    assert_eq!(flips, 8 * (32 + 256 + 80));
    eprintln!("{flips} single-bit flips: {outcomes:?}");
    assert!(
        outcomes.get("boot error").copied().unwrap_or(0) > 0,
        "some flips must be caught at boot"
    );
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
