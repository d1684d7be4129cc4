// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Live updates across kernels, each boot playing its kernel at run time
//! (`BootOptions::version`): 6.19 → 7.3 (upstream cannot: exact-match compatibles), 7.0 → 7.3
//! with the test FLBs, 7.3 → next, 6.19 → 7.3 → next in a row, and the reverse directions
//! refused at boot with an error naming the format (upstream: `panic()` in
//! `luo_restore_fail`). Memfds are checked byte for byte and page for page.

use luo_abi::PhysAddr;
use luo_abi::file::File;
use luo_core::blocks::PhysRead;
use luo_core::{BootOptions, ImageError, Kernel, KernelVersion, KexecError};
use luo_generated::luo::next;
use luo_handlers::{memfd, test_flb};
use zerocopy::{FromZeros, IntoBytes};

use KernelVersion::{Next, V6_19, V7_0, V7_3};

const PAGE: usize = 4096;

fn opts(v: KernelVersion) -> BootOptions {
    BootOptions {
        version: v,
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn pages(k: &Kernel, fd: i32) -> Vec<(u64, PhysAddr)> {
    let f = k.file(fd).unwrap();
    let shm = File::as_shmem(&*f).unwrap();
    let folios = shm.pin_folios().unwrap();
    shm.unpin_folios(&folios);
    folios.iter().map(|f| (f.index, f.phys)).collect()
}

type Expect = Vec<(u64, Vec<u8>, Vec<(u64, PhysAddr)>)>;

/// Preserves three memfds (dense, sparse, empty) in session `name`.
fn preserve(k: &Kernel, name: &str, seed: u8) -> Expect {
    let dev = k.open_dev().unwrap();
    let s = k.create_session(dev, name).unwrap();
    let mut out = Vec::new();
    let dense = pattern(4 * PAGE + 77, seed);
    let mut sparse = vec![0u8; 9 * PAGE];
    sparse[8 * PAGE..].copy_from_slice(&pattern(PAGE, seed ^ 0x55));
    for (tok, data) in [(10, dense), (11, sparse), (12, Vec::new())] {
        let fd = k.memfd_create("x").unwrap();
        if tok == 11 {
            k.pwrite(fd, 8 * PAGE as u64, &data[8 * PAGE..]).unwrap();
        } else {
            k.pwrite(fd, 0, &data).unwrap();
        }
        k.preserve_fd(s, fd, tok).unwrap();
        out.push((tok, data, pages(k, fd)));
    }
    out
}

fn retrieve(k: &Kernel, name: &str, want: &Expect) {
    let dev = k.open_dev().unwrap();
    let s = k.retrieve_session(dev, name).unwrap();
    for (tok, data, before) in want {
        let fd = k.retrieve_fd(s, *tok).unwrap();
        let mut buf = vec![0u8; data.len()];
        assert_eq!(k.pread(fd, 0, &mut buf).unwrap(), data.len());
        assert_eq!(&buf, data, "token {tok}");
        assert_eq!(
            &pages(k, fd)[..before.len()],
            &before[..],
            "same pages, token {tok}"
        );
    }
    k.finish_session(s).unwrap();
    k.close(s).unwrap();
    k.close(dev).unwrap();
    assert_eq!(k.stats().kho.incoming_pages, 0, "{:?}", k.stats());
}

fn update(from: KernelVersion, to: KernelVersion) -> Kernel {
    let k = Kernel::boot(&opts(from), None).unwrap();
    assert_eq!(k.version(), from);
    let want = preserve(&k, "vm", 1);
    let k = k.kexec_into(&opts(to)).unwrap();
    retrieve(&k, "vm", &want);
    k
}

fn refused(from: KernelVersion, to: KernelVersion) -> ImageError {
    let k = Kernel::boot(&opts(from), None).unwrap();
    preserve(&k, "vm", 2);
    match k.kexec_into(&opts(to)) {
        Err(KexecError::Boot(e)) => e,
        Err(e) => panic!("{from} → {to}: {e}"),
        Ok(_) => panic!("{from} → {to} must be refused"),
    }
}

#[test]
fn same_kernel_updates() {
    for v in KernelVersion::ALL {
        update(v, v);
    }
}

#[test]
fn from_6_19_to_7_3() {
    update(V6_19, V7_3);
    assert_eq!(memfd::stats().folios_copied, 0);
}

#[test]
fn from_7_3_to_next() {
    update(V7_3, Next);
}

#[test]
fn hops_6_19_to_7_3_to_next() {
    let k = Kernel::boot(&opts(V6_19), None).unwrap();
    let a = preserve(&k, "a", 3);
    let k = k.kexec_into(&opts(V7_3)).unwrap();
    retrieve(&k, "a", &a);
    let b = preserve(&k, "b", 4);
    let k = k.kexec_into(&opts(Next)).unwrap();
    assert_eq!(k.liveupdate_num(), 2);
    retrieve(&k, "b", &b);
    let c = preserve(&k, "c", 5);
    let k = k.kexec_into(&opts(Next)).unwrap();
    retrieve(&k, "c", &c);
    assert_eq!(k.liveupdate_num(), 3);
}

#[test]
fn from_7_0_to_7_3_with_the_test_flbs() {
    let mut o = opts(V7_0);
    o.test_flbs = true;
    let k = Kernel::boot(&o, None).unwrap();
    let want = preserve(&k, "vm", 6);
    let before = test_flb::stats();
    let mut o = opts(V7_3);
    o.test_flbs = true;
    let k = k.kexec_into(&o).unwrap();
    let after = test_flb::stats();
    assert!(after.retrieved_ok >= before.retrieved_ok + 3, "{after:?}");
    assert_eq!(after.mismatches, 0);
    retrieve(&k, "vm", &want);
}

#[test]
fn reverse_directions_are_refused_at_boot() {
    for (from, to, found) in [
        (V7_3, V6_19, "luo-v5"),
        (V7_3, V7_0, "luo-v5"),
        (Next, V7_3, "next"),
        (Next, V6_19, "next"),
        (V6_19, V7_0, "luo-v1"),
    ] {
        let e = refused(from, to);
        let msg = e.to_string();
        assert!(
            matches!(e, ImageError::UnsupportedFormat { .. })
                && msg.contains(found)
                && msg.contains(&format!("kernel {}", to.name())),
            "{from} → {to}: {msg}"
        );
    }
}

/// Memory for `read_incoming_as`: one `next` root at 0x1000.
struct Mem(Vec<u8>);

impl PhysRead for Mem {
    fn read_phys(&self, phys: u64, buf: &mut [u8]) -> Result<(), luo_abi::Errno> {
        let at = phys as usize;
        let src = self
            .0
            .get(at..at + buf.len())
            .ok_or(luo_abi::Errno::EFAULT)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn is_preserved(&self, phys: u64, len: usize) -> bool {
        phys.checked_add(len as u64)
            .is_some_and(|end| end <= self.0.len() as u64)
    }
}

#[test]
fn unknown_required_feature_bit_is_named() {
    let mut ser = next::luo_ser::new_zeroed();
    ser.features.supp = next::LUO_CORE_FEATURES_SUPP | 1 << 5;
    ser.features.req = next::LUO_CORE_FEATURES_REQ | 1 << 5;
    ser.features.active = next::LUO_CORE_FEATURES_ACTIVE | 1 << 5;
    let mut mem = vec![0u8; 0x2000];
    mem[0x1000..0x1000 + size_of::<next::luo_ser>()].copy_from_slice(ser.as_bytes());
    let m = Mem(mem);
    let e = luo_core::luo::read_incoming_as(&m, Some((0x1000, size_of::<next::luo_ser>())), Next)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::UnknownFeature {
                component: "luo",
                bits: 0x20,
                ..
            }
        ),
        "{e}"
    );
    // An unknown *supported* bit alone is ignored.
    let mut ser = next::luo_ser::new_zeroed();
    ser.features.supp = next::LUO_CORE_FEATURES_SUPP | 1 << 9;
    ser.features.req = next::LUO_CORE_FEATURES_REQ;
    ser.features.active = next::LUO_CORE_FEATURES_ACTIVE;
    ser.liveupdate_num = 4;
    let mut mem = vec![0u8; 0x2000];
    mem[0x1000..0x1000 + size_of::<next::luo_ser>()].copy_from_slice(ser.as_bytes());
    let (inc, _) = luo_core::luo::read_incoming_as(
        &Mem(mem),
        Some((0x1000, size_of::<next::luo_ser>())),
        Next,
    )
    .unwrap();
    assert_eq!(inc.liveupdate_num, Some(4));
}
