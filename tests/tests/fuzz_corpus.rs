// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same target bodies cargo-fuzz runs, on stable, in CI.
//!
//! The committed corpora are seeds (`seed-*`, written by [`write_seeds`] from
//! the tree, or by the command in `fuzz/README.md`) and crashers
//! (`regression-*`, each an input that once failed). What a fuzzing run adds
//! stays local (`fuzz/.gitignore`); a run reproduces it from the seeds.

use std::path::{Path, PathBuf};

use luo_tests::fuzz_targets::TARGETS;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn replay_committed_corpora() {
    let root = corpus_root();
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let seeds = files.iter().filter(|f| is_committed(f)).count();
        assert!(
            seeds > 0,
            "no seed for `{name}` in {}: run write_seeds (see fuzz/README.md)",
            dir.display()
        );
        for f in &files {
            target(&std::fs::read(f).expect("corpus file"));
        }
        total += files.len();
    }
    assert!(total >= TARGETS.len());
}

/// A seed or a crasher: the inputs the repository keeps (see `fuzz/.gitignore`).
fn is_committed(f: &Path) -> bool {
    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("seed-") || name.starts_with("regression-")
}

/// Writes the seed inputs of every target from the tree: the component specs
/// (`spec`), their constant expressions (`expr`) and field types (`ty`), the
/// generated ABI tables (`abi_table`), the released layout snapshots alone
/// and paired with the next release (`snapshot_diff`), real 6.19 and 7.0
/// handovers (`fdt_luo`), a record of each memfd version (`memfd_format`) and
/// uAPI sequences (`uapi`), and an image of each LUO format with one small
/// memfd (`boot_image`; the 6.19 and 7.0 ones also for `handover_image`,
/// whose other seeds are saved simulations, `fuzz/README.md`).
/// `cargo test -p luo-tests --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes the seed corpora"]
fn write_seeds() {
    use luo_core::{BootOptions, Kernel, KernelVersion};
    use luo_handlers::memfd::{RecordView, Version, encode};
    use luo_tests::fuzz_targets::FDT_MEM_BASE;
    use zerocopy::FromZeros;

    let root = corpus_root();
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    };
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // spec: every component spec, and one with a kernel file after `\n%%\n`.
    let specs = sorted_files(&tree.join("spec"), "toml");
    for f in &specs {
        put("spec", &stem(f), &std::fs::read(f).expect("spec"));
    }
    let kernel = std::fs::read(tree.join("spec/kernels/7.3.toml")).expect("kernel file");
    let block = std::fs::read(tree.join("spec/block.toml")).expect("block spec");
    put(
        "spec",
        "block-kernel-7.3",
        &[&block[..], b"\n%%\n", &kernel].concat(),
    );

    // expr and ty: every distinct constant expression (`value`, `len`) and
    // field type (`type`) the specs write.
    let mut exprs = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeSet::new();
    for f in specs
        .iter()
        .chain(&sorted_files(&tree.join("spec/kernels"), "toml"))
    {
        let text = std::fs::read_to_string(f).expect("spec");
        let v: toml::Value = toml::from_str(&text).expect("spec parses");
        spec_strings(&v, &mut exprs, &mut types);
    }
    for (i, e) in exprs.iter().enumerate() {
        put("expr", &format!("{i:03}"), e.as_bytes());
    }
    for (i, t) in types.iter().enumerate() {
        put("ty", &format!("{i:03}"), t.as_bytes());
    }

    // abi_table: each kernel's table, and the section holding all of them.
    for (kernel, table) in luo_generated::abi_table::KERNELS {
        put("abi_table", kernel, table);
    }
    put(
        "abi_table",
        "all-kernels",
        &luo_generated::abi_table::ALL_KERNELS,
    );

    // snapshot_diff: each snapshot of the last release, and each component
    // paired with itself in the next release.
    let releases: Vec<PathBuf> = sorted_dirs(&tree.join("schema/released"));
    for pair in releases.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        for f in sorted_files(old, "json") {
            let Ok(next) = std::fs::read(new.join(f.file_name().expect("name"))) else {
                continue;
            };
            let name = format!("{}-{}-{}", stem(old), stem(new), stem(&f));
            let text = [&std::fs::read(&f).expect("snapshot")[..], b"\n%%\n", &next].concat();
            put("snapshot_diff", &name, &text);
        }
    }
    if let Some(last) = releases.last() {
        for f in sorted_files(last, "json") {
            let name = format!("{}-{}", stem(last), stem(&f));
            put(
                "snapshot_diff",
                &name,
                &std::fs::read(&f).expect("snapshot"),
            );
        }
    }

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
    let s = RecordView {
        pos: 3,
        size: 3 * 4096 + 5,
        seals: 0x6,
        nr_folios: 4,
        folios: luo_generated::kho::kho_vmalloc::new_zeroed(),
    };
    for (v, bytes) in [
        (0u8, encode(Version::V1, &s).expect("v1")),
        (1, encode(Version::V2, &s).expect("v2")),
        (2, encode(Version::Next, &s).expect("next")),
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

/// The `.{ext}` files of `dir`, sorted.
fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// The subdirectories of `dir`, in release order (`6.19` before `7.0`).
fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    let key = |p: &PathBuf| -> Vec<u32> {
        stem_full(p)
            .split('.')
            .map(|n| n.parse().unwrap_or(u32::MAX))
            .collect()
    };
    out.sort_by_key(key);
    out
}

/// The file name without its last extension (`memfd.json` → `memfd`; `7.3` stays).
fn stem(p: &Path) -> String {
    if p.is_dir() {
        return stem_full(p);
    }
    p.file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 name")
        .to_string()
}

fn stem_full(p: &Path) -> String {
    p.file_name()
        .and_then(|s| s.to_str())
        .expect("utf-8 name")
        .to_string()
}

/// Collects the constant expressions (`value`, `len`) and field types
/// (`type`) anywhere in a spec file.
fn spec_strings(
    v: &toml::Value,
    exprs: &mut std::collections::BTreeSet<String>,
    types: &mut std::collections::BTreeSet<String>,
) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                match (k.as_str(), v) {
                    ("value" | "len", toml::Value::String(s)) => {
                        exprs.insert(s.clone());
                    }
                    ("type", toml::Value::String(s)) => {
                        types.insert(s.clone());
                    }
                    _ => spec_strings(v, exprs, types),
                }
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| spec_strings(v, exprs, types)),
        _ => {}
    }
}
