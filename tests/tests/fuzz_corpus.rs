//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same target bodies cargo-fuzz runs, on stable, in CI.

use std::path::Path;

use luo_tests::fuzz_targets::TARGETS;

#[test]
fn replay_committed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "empty corpus for `{name}`");
        for f in &files {
            target(&std::fs::read(f).expect("corpus file"));
        }
        total += files.len();
    }
    assert!(total >= TARGETS.len());
}

/// Writes the seed inputs of the `fdt_luo`, `memfd_format`, `uapi`,
/// `handover_image` (FDT images) and `boot_image` targets into their corpora, from real images and the generated layouts:
/// `cargo test -p luo-tests --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes the seed corpora"]
fn write_seeds() {
    use luo_core::memfd_record::{Format, Next, Ser, V1, V2};
    use luo_core::{BootOptions, Kernel, KernelVersion};
    use luo_tests::fuzz_targets::FDT_MEM_BASE;
    use zerocopy::FromZeros;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::write(root.join(target).join(format!("seed-{name}")), bytes).expect("write seed");
    };

    // fdt_luo: real 6.19 and 7.0 handovers, relocated so the FDT is at
    // FDT_MEM_BASE, the session area one page later and the FLB area after it.
    for (v, tag) in [(KernelVersion::V6_19, "6.19"), (KernelVersion::V7_0, "7.0")] {
        let opts = BootOptions {
            version: v,
            initcalls: luo_sim::machine::initcalls(),
            ..BootOptions::default()
        };
        let k = Kernel::boot(&opts, None).expect("boot");
        luo_testing::register(&k, v != KernelVersion::V6_19).expect("register");
        let dev = k.open_dev().expect("dev");
        for s in 0..2u64 {
            let sfd = k.create_session(dev, &format!("s{s}")).expect("create");
            let fd = k.test_file(s).expect("file");
            k.preserve_fd(sfd, fd, s).expect("preserve");
        }
        let h = k.kexec().expect("kexec");
        let (fdt_pa, size) = h.subtrees().expect("subtrees")["LUO"];
        let mut fdt = vec![0u8; size];
        h.read_phys(fdt_pa, &mut fdt).expect("read fdt");
        let tree = luo_core::fdt::parse(&fdt).expect("parse");
        let pa = |node: &str, prop: &str| tree.find(node).and_then(|n| n.prop_as_u64(prop));
        let sessions = pa("luo-session", "luo-session-header").expect("session area");
        let flbs = pa("luo-flb", "luo-flb-header");
        let mut mem =
            luo_core::fdt_luo::build(0, FDT_MEM_BASE + 4096, flbs.map(|_| FDT_MEM_BASE + 8192))
                .expect("luo-v1 FDT");
        mem.resize(4096, 0);
        let mut area = vec![0u8; 8 + 2 * 80];
        h.read_phys(sessions, &mut area).expect("session area");
        mem.extend_from_slice(&area);
        if let Some(f) = flbs {
            mem.resize(8192, 0);
            let mut area = vec![0u8; 16 + 64];
            h.read_phys(f, &mut area).expect("flb area");
            mem.extend_from_slice(&area);
        }
        put("fdt_luo", tag, &mem);
    }

    // handover_image: the FDT kernels' images (the fuzzer found only luo-v5 ones), so the
    // `"LUO"` subtree's size field leads to the FDT reader; boot_image: an image of each LUO
    // format. One session with one small memfd each.
    for (v, tag) in [
        (KernelVersion::V6_19, "6.19"),
        (KernelVersion::V7_0, "7.0"),
        (KernelVersion::V7_3, "7.3"),
        (KernelVersion::Next, "next"),
    ] {
        let k = Kernel::boot(&luo_sim::machine::boot_options(v), None).expect("boot");
        let dev = k.open_dev().expect("dev");
        let sfd = k.create_session(dev, "s").expect("create");
        let m = k.memfd_create("m").expect("memfd");
        k.pwrite(m, 0, b"seed").expect("write");
        k.preserve_fd(sfd, m, 1).expect("preserve");
        let h = k.kexec().expect("kexec");
        let img = luo_core::image::Image::from_handover(&h)
            .expect("image")
            .to_bytes();
        if matches!(v, KernelVersion::V6_19 | KernelVersion::V7_0) {
            put("handover_image", tag, &img);
        }
        put("boot_image", tag, &img);
    }

    // memfd_format: a record of each version.
    let s = Ser {
        pos: 3,
        size: 3 * 4096 + 5,
        seals: 0x6,
        nr_folios: 4,
        folios: luo_generated::kho::kho_vmalloc::new_zeroed(),
    };
    for (v, bytes) in [
        (0u8, V1::encode(&s)),
        (1, V2::encode(&s)),
        (2, Next::encode(&s)),
    ] {
        put(
            "memfd_format",
            &format!("v{v}"),
            &[&[v][..], &bytes].concat(),
        );
    }

    // uapi: op sequences (see `World::step`): preserve a test file and a
    // memfd, kexec, retrieve both, finish, close; and one closing its
    // session before two kexecs.
    put(
        "uapi",
        "cross",
        &[
            0, 1, 0, 0, 0, 3, 7, 4, 50, 3, 6, 0, 2, 1, 0, 6, 0, 3, 2, 0, 10, 0, 2, 0, 0, 0, 7, 0,
            1, 0, 7, 0, 2, 0, 8, 0, 0, 0, 9, 1,
        ],
    );
    put(
        "uapi",
        "close",
        &[0, 1, 0, 1, 0, 3, 9, 6, 0, 2, 3, 0, 9, 1, 10, 10],
    );
}

/// A deterministic sweep of the `boot_image` seeds (an image of each LUO format): every
/// 8-byte word of the KHO blob (range addresses, orders and counts, subtree addresses and
/// sizes) set to values no preserved memory can back, then bytes of the lowest saved page
/// flipped, each run through the decoder and the boot path as the fuzz targets run them.
/// The subtree size set to 2^64-1 or 2^44 is the case that used to abort.
#[test]
fn blob_words_and_page_bytes_swept_through_decoder_and_boot() {
    use luo_tests::fuzz_targets::{boot_image, handover_image};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/boot_image");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .expect("boot_image corpus")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3, "{seeds:?}");
    let mut runs = 0;
    for seed in &seeds {
        let bytes = std::fs::read(seed).expect("seed");
        // Image header: magic, arena_pages, blob_len, nr_regions, nr_pages; then the blob.
        let blob_len = u64::from_ne_bytes(bytes[16..24].try_into().expect("8")) as usize;
        let blob = 40..40 + blob_len;
        for at in blob.clone().step_by(8).skip(1) {
            for v in [u64::MAX, 1 << 44, 1 << 32, 0] {
                let mut b = bytes.clone();
                b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
                handover_image(&b);
                boot_image(&b);
                runs += 1;
            }
        }
        // The saved pages follow the blob and the region bases: flip the first 256 bytes of
        // the lowest saved page one by one.
        let nr_regions = u64::from_ne_bytes(bytes[24..32].try_into().expect("8")) as usize;
        let page = blob.end + 8 * nr_regions + 8;
        for at in page..page + 256 {
            let mut b = bytes.clone();
            b[at] ^= 0xa5;
            handover_image(&b);
            boot_image(&b);
            runs += 1;
        }
    }
    assert!(runs > 1000, "{runs} runs");
}
