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

/// Writes the seed inputs of the `fdt_luo`, `memfd_format` and `uapi`
/// targets into their corpora, from real images and the generated layouts:
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
